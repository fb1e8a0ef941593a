"""Goal 4 of performance round two: what JPEG decoding can feed a GPU at ImageNet scale.

Per CPU core (one process, one thread) and, with CUDA, on the GPU: images/s of
file -> RGB uint8 -> shorter side to 256 (bilinear, antialiased) -> centre 256 crop, the
imagefolder loader's work per image, by

- ``pil``: PIL's decoder (Image.open(...).convert("RGB")), torchvision's resize and crop;
- ``torchvision``: torchvision.io.decode_image file by file (what the loader's workers do);
- ``torchvision-batched``: torchvision.io.decode_jpeg over a list of files at once;
- ``nvjpeg``: decode_jpeg(list, device="cuda"), resize and crop on the GPU (with CUDA only;
  the same call imagefolder's ``decode_device = "cuda"`` makes).

Then, for GPU training speeds (images/s), the DataLoader workers one core's rate needs.
The candidates alternate over rounds; the median counts. The JPEGs are generated (256-500 px,
photo-like smooth colour plus noise) unless ``--folder`` points at real ones.

    python benchmarks/decode_throughput.py                         # 200 generated JPEGs, 3 rounds
    python benchmarks/decode_throughput.py --folder /data/imagenet/train --images 500
    python benchmarks/decode_throughput.py --gpu-speeds 5000,10000,20000
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import wait_for_idle  # noqa: E402

from testbed.data import workers_needed  # noqa: E402
from testbed_builtins.imagefolder import _resize_crop, load_image  # noqa: E402

warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities")
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # PIL's buffer, only read
RESIZE = CROP = 256


def generate(folder: Path, count: int) -> list[str]:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(count):
        h, w = (int(v) for v in torch.randint(256, 501, (2,), generator=g))
        coarse = torch.rand(1, 3, 6, 8, generator=g) * 255
        smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]
        pixels = (smooth + torch.randn(3, h, w, generator=g) * 8).clamp(0, 255).round().to(torch.uint8)
        path = folder / f"img{i:04d}.JPEG"
        Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB").save(path, quality=90)
        paths.append(str(path))
    return paths


def pil(paths):
    import numpy as np
    from PIL import Image

    for p in paths:
        with Image.open(p) as im:
            image = torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1)
        _resize_crop(image, RESIZE, CROP)


def torchvision_each(paths):
    for p in paths:
        load_image(p, RESIZE, CROP)


def batched(paths, device="cpu", batch=64):
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    for start in range(0, len(paths), batch):
        datas = [read_file(p) for p in paths[start : start + batch]]
        images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
        out = [_resize_crop(im, RESIZE, CROP) for im in images]
        if device != "cpu":
            torch.stack(out).cpu()  # what the loader keeps: uint8 on the host (and a sync)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--folder", help="time these JPEGs (searched recursively) instead of generated ones")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gpu-speeds", default="2000,5000,10000,20000", help="training images/s to size workers for")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.folder:
        paths = sorted(str(p) for p in Path(args.folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[: args.images]
    else:
        paths = generate(Path(tempfile.mkdtemp(prefix="decode-bench-")), args.images)
    candidates = {"pil": pil, "torchvision": torchvision_each, "torchvision-batched": batched}
    if torch.cuda.is_available():
        candidates["nvjpeg"] = lambda ps: batched(ps, "cuda")
    for fn in candidates.values():  # warm-up: page cache, libraries, CUDA context
        fn(paths[:16])
    rates: dict[str, list[float]] = {k: [] for k in candidates}
    for r in range(args.rounds):
        wait_for_idle(10.0)
        for name in list(candidates) if r % 2 == 0 else list(reversed(candidates)):
            tick = time.perf_counter()
            candidates[name](paths)
            if name == "nvjpeg":
                torch.cuda.synchronize()
            rates[name].append(len(paths) / (time.perf_counter() - tick))
    medians = {k: statistics.median(v) for k, v in rates.items()}
    speeds = [int(s) for s in args.gpu_speeds.split(",") if s]
    cpu_best = max(v for k, v in medians.items() if k != "nvjpeg")
    doc = {
        "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "images": len(paths),
        "rounds": args.rounds,
        "resize": RESIZE,
        "crop": CROP,
        "images_per_s": medians,
        "workers_needed": {s: workers_needed(s, medians["torchvision"]) for s in speeds},
        "workers_needed_best_cpu_decoder": {s: workers_needed(s, cpu_best) for s in speeds},
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(
        f"JPEG decode + resize {RESIZE} + centre crop {CROP}, {len(paths)} files, median of {args.rounds} rounds "
        f"(CPU: one core, one thread{'; GPU: ' + doc['gpu'] if doc['gpu'] else ''})"
    )
    for k, v in medians.items():
        print(f"  {k:<20}{v:>9.0f} images/s{'' if k == 'nvjpeg' else ' per core'}")
    print("DataLoader workers (one core each, torchvision decode as the loader does it) a GPU training speed needs:")
    for s in speeds:
        best = doc["workers_needed_best_cpu_decoder"][s]
        print(f"  {s:>6} images/s: {doc['workers_needed'][s]:>3} workers ({best} with the fastest CPU decoder)")


if __name__ == "__main__":
    main()
