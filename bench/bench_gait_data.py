"""Training-data throughput of the gait pipelines: pkl tree vs packed store vs OpenGait-style.

Sequences per second delivered by a ``DataLoader`` of P×K = 8×8 sequences, 30 frames
``fixed_ordered`` (the released training batch), for three paths, with 0, 2 and 4 workers:

- ``pkl``: this project's ``GaitDataModule`` on the pkl tree (``data.format=pkl``);
- ``packed``: the same DataModule on the packed store (``data.format=packed``);
- ``opengait``: a minimal RE-IMPLEMENTATION of the released OpenGait-style per-sample path
  (spec metagait.md §6: a dataset that unpickles one sequence per ``__getitem__``, a collate
  function that loops over the batch in Python drawing each clip with ``random``/``numpy``, and
  a per-sequence cut-and-scale transform). It is written here from the spec, for comparison only;
  it is not the released code.

The data is a synthetic tree the size of CASIA-B (124 ids × 110 sequences × ~90 frames, random
blob silhouettes, written fast with numpy), cached under ``data_cache/bench_gait_data/``.

    python bench/bench_gait_data.py            # full size (about 5 GB of pkl + 3.5 GB packed)
    python bench/bench_gait_data.py --quick    # a tiny tree, a few batches: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from metareid.data.gait.casiab import TYPES, VIEWS, pack_gait_tree
from metareid.data.gait.datamodule import GaitDataModule
from metareid.data.gait.packed import has_packed_store

REPO = Path(__file__).resolve().parents[1]
RESULTS_PATH = REPO / "bench" / "results" / "gait_data.json"
DATA_DIR = REPO / "data_cache" / "bench_gait_data"
P, K, FRAMES = 8, 8, 30
# Ratios printed beside the table (side by side in one run: this machine is shared and noisy).
RATIOS = (("packed", "pkl"), ("packed_u8", "pkl"), ("packed_u8", "opengait"))


# ------------------------------------------------------------------------------- the data
def write_tree(root: Path, subjects: int, frames: tuple[int, int], seed: int = 0) -> Path:
    """A CASIA-B-shaped pkl tree of random blob silhouettes (all 10 types × 11 views per id)
    plus its partition (first 74 ids train, or the first ~60 % for smaller trees)."""
    done = root / ".complete"
    if done.is_file():
        return root
    rng = np.random.default_rng(seed)
    rows = np.arange(64)[:, None]
    cols = np.arange(64)[None, :]
    for subject in range(1, subjects + 1):
        for type_name in TYPES:
            for view in VIEWS:
                length = int(rng.integers(frames[0], frames[1] + 1))
                centre = 32 + rng.normal(0, 2, size=(length, 2))
                radius = rng.uniform(8, 14)
                inside = (rows - centre[:, 0, None, None]) ** 2 / 4 + (
                    cols - centre[:, 1, None, None]
                ) ** 2 < radius**2
                folder = root / f"{subject:03d}" / type_name / view
                folder.mkdir(parents=True, exist_ok=True)
                with open(folder / f"{view}.pkl", "wb") as handle:
                    pickle.dump(inside.astype(np.uint8) * 255, handle, protocol=4)
    ids = [f"{i:03d}" for i in range(1, subjects + 1)]
    train = 74 if subjects == 124 else max(2, int(subjects * 0.6))
    (root / "partition.json").write_text(
        json.dumps({"TRAIN_SET": ids[:train], "TEST_SET": ids[train:]})
    )
    done.write_text("")
    return root


# ------------------------------------------------------- OpenGait-style (re-implemented, §6)
class OpenGaitStyleDataset(Dataset):
    """Spec §6.1: one sample per view directory, unpickled on every ``__getitem__``."""

    def __init__(self, root: Path, train_ids: list[str]) -> None:
        self.samples = []
        for label, subject in enumerate(sorted(train_ids)):
            for type_dir in sorted((root / subject).iterdir()):
                for view_dir in sorted(type_dir.iterdir()):
                    paths = sorted(str(p) for p in view_dir.glob("*.pkl"))
                    self.samples.append((label, type_dir.name, view_dir.name, paths))
        self.indices_by_label: dict[int, list[int]] = {}
        for index, (label, *_) in enumerate(self.samples):
            self.indices_by_label.setdefault(label, []).append(index)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        label, type_name, view, paths = self.samples[index]
        data = []
        for path in paths:
            with open(path, "rb") as handle:
                data.append(pickle.load(handle))
        return data, [label, type_name, view, paths]


class OpenGaitStyleTripletSampler:
    """Spec §6.2: P ids without replacement, K sequences each, shuffled; infinite."""

    def __init__(self, dataset: OpenGaitStyleDataset, p: int, k: int) -> None:
        self.dataset, self.p, self.k = dataset, p, k

    def __iter__(self):
        labels = list(self.dataset.indices_by_label)
        while True:
            batch = []
            for label in random.sample(labels, self.p):
                batch += random.sample(self.dataset.indices_by_label[label], self.k)
            random.shuffle(batch)
            yield batch


def opengait_style_collate(batch, frames_num: int = FRAMES, skip: int = 0):
    """Spec §6.3 ``fixed_ordered`` + §6.4 transform, per sequence in Python."""
    seqs, labels = [], []
    for data, info in batch:
        sequence = data[0]
        indices = list(range(len(sequence)))
        window = frames_num + skip
        if len(indices) < window:
            indices = indices * -(-window // len(indices))
        start = random.randint(0, len(indices) - window)
        positions = indices[start : start + window]
        # The reference draws with the legacy global numpy stream; kept for a like-for-like cost.
        chosen = sorted(np.random.choice(positions, frames_num, replace=False).tolist())  # noqa: NPY002
        clip = sequence[chosen]
        cut = (clip.shape[-1] // 64) * 10
        seqs.append(clip[..., cut : clip.shape[-1] - cut] / 255.0)
        labels.append(info[0])
    return torch.tensor(np.asarray(seqs), dtype=torch.float32), torch.tensor(labels)


# ------------------------------------------------------------------------------- timing
def sequences_per_second(loader, batches: int, warmup: int) -> float:
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * P * K / (time.perf_counter() - start)


def datamodule_loader(root: Path, data_format: str, workers: int):
    """``pkl`` / ``packed``: float32 batches; ``packed_u8``: the store with
    ``data.uint8_batches`` (bytes handed over, scaled on the device)."""
    uint8 = data_format.endswith("_u8")
    data_format = data_format.removesuffix("_u8")
    datamodule = GaitDataModule(
        str(root),
        p=P,
        k=K,
        frames_num_fixed=FRAMES,
        num_workers=workers,
        format=data_format,
        uint8_batches=uint8,
        validate=False,
        num_classes=None,
    )
    datamodule.setup("fit")
    return datamodule.train_dataloader()


def opengait_loader(root: Path, workers: int):
    partition = json.loads((root / "partition.json").read_text())
    dataset = OpenGaitStyleDataset(root, partition["TRAIN_SET"])
    return DataLoader(
        dataset,
        batch_sampler=OpenGaitStyleTripletSampler(dataset, P, K),
        collate_fn=opengait_style_collate,
        num_workers=workers,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny tree, few batches")
    parser.add_argument("--subjects", type=int, default=124)
    parser.add_argument("--frames", type=int, nargs=2, default=(70, 110), metavar=("MIN", "MAX"))
    parser.add_argument("--batches", type=int, default=50, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument(
        "--paths", nargs="+", default=["pkl", "packed", "packed_u8", "opengait"]
    )
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=RESULTS_PATH)
    args = parser.parse_args()
    if args.quick:
        args.subjects, args.frames, args.batches, args.warmup = 16, (20, 40), 2, 1
    root = args.data_dir / f"casiab_like_{args.subjects}ids_{args.frames[0]}-{args.frames[1]}"
    began = time.perf_counter()
    write_tree(root, args.subjects, tuple(args.frames))
    if not has_packed_store(root):
        pack_gait_tree(root, "casiab", root / "partition.json")
    print(f"data: {root} (ready in {time.perf_counter() - began:.0f} s)")

    results = []
    for workers in args.workers:
        for path in args.paths:
            if path == "opengait":
                loader = opengait_loader(root, workers)
            else:
                loader = datamodule_loader(root, path, workers)
            rate = sequences_per_second(loader, args.batches, args.warmup)
            results.append({"path": path, "workers": workers, "sequences_per_s": rate})
            print(f"  {path:<9} workers={workers}: {rate:9.1f} sequences/s", flush=True)
            del loader

    by_key = {(r["path"], r["workers"]): r["sequences_per_s"] for r in results}
    header = f"{'workers':>7} | " + " | ".join(f"{p:>12}" for p in args.paths)
    ratios = [(a, b) for a, b in RATIOS if {a, b} <= set(args.paths)]
    header += "".join(f" | {a}/{b}" for a, b in ratios)
    print(f"\nsequences/s, P×K = {P}×{K}, {FRAMES} frames fixed_ordered")
    print(header)
    print("-" * len(header))
    for workers in args.workers:
        cells = [f"{by_key[(p, workers)]:12.1f}" for p in args.paths]
        line = f"{workers:>7} | " + " | ".join(cells)
        for a, b in ratios:
            width = len(f"{a}/{b}")
            line += f" | {by_key[(a, workers)] / by_key[(b, workers)]:{width - 1}.1f}x"
        print(line)
    payload = {
        "benchmark": "gait data pipeline throughput",
        "quick": args.quick,
        "batch": {"p": P, "k": K, "frames": FRAMES, "sample_type": "fixed_ordered"},
        "data": {"subjects": args.subjects, "frames": list(args.frames), "root": str(root)},
        "timed_batches": args.batches,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "torch": torch.__version__,
        "opengait_path": "re-implemented from spec metagait.md §6, not the released code",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
