"""LRN against the paper's formula written out as a direct loop, for both alpha conventions."""

from __future__ import annotations

import pytest
import torch

from testbed_builtins.normalizations import lrn, window_sum


def lrn_by_the_formula(a: torch.Tensor, n: int, alpha: float, beta: float, k: float, convention: str) -> torch.Tensor:
    """b[i] = a[i] / (k + scale * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a[j]^2)^beta, one channel at a time."""
    scale = alpha / n if convention == "divided-by-n" else alpha
    channels = a.shape[1]
    out = []
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        total = sum(a[:, j] ** 2 for j in range(lo, hi + 1))
        out.append(a[:, i] / (k + scale * total) ** beta)
    return torch.stack(out, dim=1)


CASES = [
    dict(size=5, alpha=1e-4, beta=0.75, k=2.0),  # the paper's values
    dict(size=3, alpha=0.5, beta=0.75, k=1.0),  # large alpha so the sum matters
    dict(size=7, alpha=2.0, beta=0.5, k=0.5),
    dict(size=1, alpha=1.0, beta=1.0, k=1.0),
]


@pytest.mark.parametrize("convention", ["per-term", "divided-by-n"])
@pytest.mark.parametrize("params", CASES)
def test_values_and_gradients_match_the_formula(convention, params):
    torch.manual_seed(0)
    a = (torch.randn(2, 9, 4, 3, dtype=torch.float64) * 3).requires_grad_()
    module = lrn(9, alpha_convention=convention, **params)
    got = module(a)
    want = lrn_by_the_formula(a, params["size"], params["alpha"], params["beta"], params["k"], convention)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(got)
    (grad_got,) = torch.autograd.grad(got, a, g)
    (grad_want,) = torch.autograd.grad(want, a, g)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("convention", ["per-term", "divided-by-n"])
def test_gradcheck_float64(convention):
    torch.manual_seed(1)
    a = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    module = lrn(6, size=5, alpha=0.7, beta=0.75, k=1.5, alpha_convention=convention)
    assert torch.autograd.gradcheck(module, (a,), eps=1e-6, atol=1e-7)


def test_float32_within_1e5_of_the_formula():
    torch.manual_seed(2)
    a = torch.relu(torch.randn(8, 48, 13, 13)) * 40  # post-ReLU activations at the paper's scale
    module = lrn(48)
    want = lrn_by_the_formula(a.double(), 5, 1e-4, 0.75, 2.0, "divided-by-n")
    torch.testing.assert_close(module(a).double(), want, rtol=1e-5, atol=1e-5)


def test_divided_by_n_is_what_torch_local_response_norm_computes():
    torch.manual_seed(3)
    a = torch.randn(4, 16, 5, 5, dtype=torch.float64) * 5
    ours = lrn(16, size=5, alpha=0.3, beta=0.75, k=2.0, alpha_convention="divided-by-n")(a)
    theirs = torch.nn.LocalResponseNorm(5, alpha=0.3, beta=0.75, k=2.0)(a)
    torch.testing.assert_close(ours, theirs)


def test_the_two_conventions_differ_by_a_factor_n_in_alpha():
    a = torch.randn(2, 10, 3, 3, dtype=torch.float64) * 4
    per_term = lrn(10, size=5, alpha=0.2, alpha_convention="per-term")(a)
    divided = lrn(10, size=5, alpha=1.0, alpha_convention="divided-by-n")(a)
    torch.testing.assert_close(per_term, divided)
    assert not torch.allclose(per_term, lrn(10, size=5, alpha=0.2, alpha_convention="divided-by-n")(a))


def test_window_sum_clips_at_the_ends():
    x = torch.arange(1.0, 7.0).view(1, 6, 1, 1)  # channels 1..6
    got = window_sum(x, 2).flatten().tolist()
    assert got == [1 + 2 + 3, 1 + 2 + 3 + 4, 1 + 2 + 3 + 4 + 5, 2 + 3 + 4 + 5 + 6, 3 + 4 + 5 + 6, 4 + 5 + 6]


@pytest.mark.parametrize("bad", [dict(size=4), dict(size=0), dict(k=0.0), dict(alpha=-1.0)])
def test_impossible_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        lrn(8, **bad)


def test_half_precision_input_is_normalised_in_float32():
    a = torch.randn(2, 8, 4, 4) * 10
    out = lrn(8)(a.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), lrn(8)(a), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("towers", [1, 2])
def test_towers_and_memory_formats_match_the_formula_per_tower(channels_last, towers):
    """forward_towers normalises each tower's channels on its own, in either memory format."""
    torch.manual_seed(4)
    a = (torch.randn(3, 12, 5, 4, dtype=torch.float64) * 3).requires_grad_()
    x = a.contiguous(memory_format=torch.channels_last) if channels_last else a
    module = lrn(12 // towers, size=5, alpha=0.6, beta=0.75, k=1.0)
    got = module.forward_towers(x, towers)
    parts = a.chunk(towers, dim=1)
    want = torch.cat([lrn_by_the_formula(p, 5, 0.6, 0.75, 1.0, "divided-by-n") for p in parts], dim=1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(want)
    (grad_got,) = torch.autograd.grad(got, a, g)
    (grad_want,) = torch.autograd.grad(want, a, g)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
# channels-last on a CPU: 1 x 10 and 2 x 12 one convolution, 2 x 40 the towers as pixels of one convolution, 2 x 64 shifted adds
@pytest.mark.parametrize("towers,channels", [(1, 10), (2, 12), (2, 80), (2, 128)])
@pytest.mark.parametrize("no_grad", [torch.no_grad, torch.inference_mode])
def test_forward_only_path_matches_the_formula(channels_last, towers, channels, no_grad):
    """Evaluation (no gradient wanted) takes a path that saves nothing; same values as the formula."""
    torch.manual_seed(5)
    a = torch.randn(2, channels, 3, 4, dtype=torch.float64) * 4
    x = a.contiguous(memory_format=torch.channels_last) if channels_last else a
    module = lrn(channels // towers, size=5, alpha=0.9, beta=0.75, k=1.5)
    with no_grad():
        got = module.forward_towers(x, towers)
    assert not got.requires_grad
    parts = a.chunk(towers, dim=1)
    want = torch.cat([lrn_by_the_formula(p, 5, 0.9, 0.75, 1.5, "divided-by-n") for p in parts], dim=1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("channels,size", [(128, 5), (80, 5), (128, 9)])
def test_wide_towers_values_and_gradients_match_the_formula(channels_last, channels, size):
    """Two wide towers: in channels-last on a CPU, 2 x 64 channels with a window of 5 take the
    shifted adds along the channels, 2 x 40 and 2 x 64 with a window of 9 the towers as pixels of one convolution."""
    torch.manual_seed(6)
    a = (torch.randn(2, channels, 3, 3, dtype=torch.float64) * 3).requires_grad_()
    x = a.contiguous(memory_format=torch.channels_last) if channels_last else a
    got = lrn(channels // 2, size=size, alpha=0.6, beta=0.75, k=1.0).forward_towers(x, 2)
    want = torch.cat([lrn_by_the_formula(p, size, 0.6, 0.75, 1.0, "divided-by-n") for p in a.chunk(2, dim=1)], dim=1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(want)
    (grad_got,) = torch.autograd.grad(got, a, g)
    (grad_want,) = torch.autograd.grad(want, a, g)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
def test_window_sum_in_either_format_clips_at_ends_and_towers(channels_last):
    x = torch.arange(1.0, 9.0).view(1, 8, 1, 1).expand(2, 8, 2, 3).contiguous()  # channels 1..8, two towers of 4
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = window_sum(x, 1, towers=2)
    per_tower = [1 + 2, 1 + 2 + 3, 2 + 3 + 4, 3 + 4, 5 + 6, 5 + 6 + 7, 6 + 7 + 8, 7 + 8]
    assert got[1, :, 1, 2].tolist() == per_tower
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    scaled = window_sum(x, 1, towers=2, weight=0.5, offset=3.0)  # the LRN's k + scale * S
    assert scaled[1, :, 1, 2].tolist() == [3.0 + 0.5 * s for s in per_tower]


@pytest.mark.parametrize("towers,per,half", [(2, 6, 2), (1, 64, 4), (2, 40, 2), (2, 64, 2), (1, 130, 1)])
def test_every_channels_last_window_sum_matches_shifted_sums(towers, per, half):
    """Each way a channels-last window sum can go (one convolution, the towers as its pixels, shifted adds
    along the channels) against the sum written out from its definition, k and scale included."""
    torch.manual_seed(7)
    x = torch.rand(3, towers * per, 4, 5, dtype=torch.float64)
    want = torch.zeros_like(x)
    for c in range(towers * per):
        lo, hi = max(c - half, c // per * per), min(c + half, c // per * per + per - 1)
        want[:, c] = x[:, lo : hi + 1].sum(dim=1)
    got = window_sum(x.contiguous(memory_format=torch.channels_last), half, towers, weight=0.25, offset=2.0)
    torch.testing.assert_close(got, 2.0 + 0.25 * want, rtol=1e-12, atol=1e-12)


def test_training_after_a_first_use_under_inference_mode():
    """The channels-last window matrix is cached; made first during evaluation (inference_mode),
    it must still serve a training step's backward (a resumed job evaluates before it trains)."""
    from testbed_builtins import normalizations

    normalizations._WEIGHTS.clear()
    a = (torch.randn(2, 14, 3, 3) * 3).contiguous(memory_format=torch.channels_last)
    module = lrn(7, size=5, alpha=0.5)
    with torch.inference_mode():
        evaluated = module.forward_towers(a, 2)
    x = a.clone().requires_grad_()
    module.forward_towers(x, 2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    torch.testing.assert_close(module.forward_towers(a, 2).detach(), evaluated)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("no_grad", [False, True])
def test_lrn_under_bf16_autocast_stays_in_float32(channels_last, no_grad):
    """Under autocast the window sum's convolution or matrix product would run in bf16, where
    k + scale * S rounds to a multiple of 2^-6 near k = 2: the LRN computes in float32 whatever
    autocast says, so a float32 input gets exactly the float32 result."""
    torch.manual_seed(8)
    a = torch.rand(2, 96, 5, 5) * 60
    x = (a.contiguous(memory_format=torch.channels_last) if channels_last else a).requires_grad_(not no_grad)
    module = lrn(48, size=5, alpha=1e-4, beta=0.75, k=2.0)
    want = module.forward_towers(x, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = module.forward_towers(x, 2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 input: only its and the output's rounding
        low = module.forward_towers(x.detach().to(torch.bfloat16), 2)
    torch.testing.assert_close(low.float(), want.detach(), rtol=2 * 2**-8, atol=1e-3)
