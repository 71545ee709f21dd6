"""Is image decoding the bottleneck of DR50 training? Decoded + resized images/s per core.

ReID crops are small JPEGs (Market-1501: 128×64, MSMT17 / CUHK03 / CUHK-SYSU crops up to a few
hundred pixels high) resized to 256×128 (`load_resized_image`, the loader's own path). The script
writes JPEGs of a few crop sizes, times decoding + bicubic resize on one core, and sets the rate
against what one ACL iteration consumes (64 merged images, plus 3 × 32 single-domain images on
every third iteration: ≈ 96 images per iteration on average). Prints a table, writes JSON.

    python bench/bench_reid_decode.py [--images 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metareid.data.reid.multisource import load_resized_image

RESULTS_PATH = Path(__file__).parent / "results" / "reid_decode.json"
# Images one ACL iteration reads on average: 64 merged + (3 × 32) / 3 for the meta step.
IMAGES_PER_ITERATION = 64 + 32
CROP_SIZES = ((128, 64), (256, 128), (384, 160))


def write_jpegs(folder: Path, size: tuple[int, int], count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs (quality 90) of smooth random content, like person crops compress."""
    rng = np.random.default_rng(seed)
    paths = []
    height, width = size
    for index in range(count):
        coarse = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        path = folder / f"{height}x{width}_{index:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def images_per_second(paths: list[Path], image_size: tuple[int, int]) -> float:
    load_resized_image(paths[0], image_size)  # warm-up
    start = time.perf_counter()
    for path in paths:
        load_resized_image(path, image_size)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="images per crop size")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one loader worker = one core
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in CROP_SIZES:
            paths = write_jpegs(Path(tmp), size, args.images)
            rate = images_per_second(paths, (256, 128))
            results.append(
                {
                    "crop": list(size),
                    "images_per_s_per_core": rate,
                    "acl_iterations_per_s_per_core": rate / IMAGES_PER_ITERATION,
                }
            )
    print("decode + resize to 256×128, one core")
    print(f"{'crop':>9} | {'images/s':>9} | {'ACL iterations/s fed':>21}")
    for row in results:
        crop = "×".join(str(v) for v in row["crop"])
        print(
            f"{crop:>9} | {row['images_per_s_per_core']:9.0f} | "
            f"{row['acl_iterations_per_s_per_core']:21.1f}"
        )
    save(args.out, results)


def save(out: Path, results: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}
    out.write_text(
        json.dumps(
            {
                "benchmark": "ReID JPEG decode + resize to 256x128 (load_resized_image), 1 core",
                "images_per_iteration": IMAGES_PER_ITERATION,
                "machine": machine,
                "results": results,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
