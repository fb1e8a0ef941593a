"""Issue 19, item 10: the saturation statistics are measured on the same images every epoch, the
centre patches of the first held-out batch, also at the final epoch, whose ten-crop views start
with a padded top-left corner."""

from __future__ import annotations

import torch

from testbed.assembly import build_for_training, build_pipeline
from testbed.data import center_crop, load_dataset
from testbed.distributed import Dist
from testbed.evaluation import SaturationProbe, evaluate, saturation_of
from testbed.experiment import build_experiment


def _tiny_parts(registry, tiny_config):
    tiny_config["augment"] = {"test": "ten-crop"}
    variant = build_experiment(tiny_config, registry).baseline
    data = load_dataset(variant.config["data"], registry)
    torch.manual_seed(0)
    built = build_for_training(variant.config, data, registry, torch.device("cpu"))
    return built.module, build_pipeline(variant, data, built, registry, torch.device("cpu"))


def _counting_forwards(model) -> list:
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_the_final_ten_crop_epoch_measures_saturation_on_the_centre(registry, tiny_config):
    model, pipeline = _tiny_parts(registry, tiny_config)
    batch = 50

    _, _, per_epoch = evaluate(model, pipeline, batch, "fp32", Dist(), views=False, probe=True)
    _, _, final = evaluate(model, pipeline, batch, "fp32", Dist(), views=True, probe=True)

    # Independently: the probe on the first batch's centre patch and on ten-crop's first view.
    views, _ = next(pipeline.test_batches(batch, views=True))
    centre, _ = next(pipeline.test_batches(batch, views=False))
    measured = {}
    for name, images in (("centre", centre[0]), ("corner", views[0])):
        probe = SaturationProbe(model)
        with torch.inference_mode():
            model(images.contiguous(memory_format=pipeline.memory_format))
        probe.close()
        measured[name] = probe.result()
    assert measured["centre"] != measured["corner"]  # the corner is another view: the test can tell them apart
    assert per_epoch == measured["centre"]
    assert final == measured["centre"]


def test_the_probe_rides_on_ten_crops_centre_view_without_a_pass_of_its_own(registry, tiny_config):
    model, pipeline = _tiny_parts(registry, tiny_config)
    centre, _ = next(pipeline.test_batches(50, views=False))
    expected = saturation_of(model.eval(), centre[0].contiguous(memory_format=pipeline.memory_format))
    calls = _counting_forwards(model)
    _, _, final = evaluate(model, pipeline, 50, "fp32", Dist(), views=True, probe=True)
    assert len(calls) == 2 * 10  # 100 held-out images in 2 batches, ten views each: no extra pass
    assert final == expected


def test_views_without_the_centre_get_the_probe_pass_of_their_own(registry, tiny_config):
    model, pipeline = _tiny_parts(registry, tiny_config)
    centre, _ = next(pipeline.test_batches(50, views=False))
    expected = saturation_of(model.eval(), centre[0].contiguous(memory_format=pipeline.memory_format))
    pipeline.test_views = lambda x: center_crop(x, pipeline.input_size).flip(-1).unsqueeze(0)  # mirrored only
    calls = _counting_forwards(model)
    _, _, final = evaluate(model, pipeline, 50, "fp32", Dist(), views=True, probe=True)
    assert len(calls) == 2 * 1 + 1
    assert final == expected
    assert final != saturation_of(model, next(pipeline.test_batches(50))[0][0].contiguous(memory_format=pipeline.memory_format))
