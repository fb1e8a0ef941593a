"""testbed.memory: freed blocks stay mapped, so reusing them costs no page faults.

Each case runs in its own interpreter: the malloc setting holds for a whole process."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the setting is glibc's (Linux); elsewhere it is a no-op"
)

# A training step's pattern: the same activation-sized tensors allocated, written and freed on
# every step (here 16 MiB activations of a small convolution), counted after a warm-up.
CHILD = """
import json, resource, torch
from testbed.memory import keep_freed_memory
kept = keep_freed_memory()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 8, 3, padding=1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x = torch.randn(32, 3, 64, 64)  # conv1's output: 32 x 32 x 64 x 64 floats = 16 MiB

def step():
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()

for _ in range(10):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(json.dumps({"kept": kept, "faulted": faults / (16 * 2**20 // resource.getpagesize())}))
"""


def run_child(malloc: str) -> dict:
    env = {**os.environ, "TESTBED_MALLOC": malloc}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_steps_reuse_freed_memory_without_page_faults():
    result = run_child("")
    assert result["kept"] is True
    assert result["faulted"] < 0.25, f"a step faulted on {result['faulted']:.0%} of an activation's pages"


def transparent_huge_pages_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(transparent_huge_pages_always(), reason="with huge pages always on, a fresh mapping faults once per 2 MiB")
def test_system_malloc_faults_again_which_is_what_the_setting_removes():
    result = run_child("system")
    assert result["kept"] is False
    assert result["faulted"] > 1, f"with glibc's defaults a step faulted on only {result['faulted']:.0%} of an activation's pages"


def test_a_job_records_whether_the_setting_holds():
    import torch

    from testbed.distributed import Dist
    from testbed.jobs import environment
    from testbed.memory import freed_memory_kept, keep_freed_memory

    kept = keep_freed_memory()
    assert freed_memory_kept() is kept is (os.environ.get("TESTBED_MALLOC", "").lower() != "system")
    assert environment(torch.device("cpu"), Dist())["freed_memory_kept"] is kept
