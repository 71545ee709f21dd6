# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 — Gait data: CASIA-B trees, P×K batches, clips
#
# What the gait pipeline reads and how it batches it:
#
# 1. the **embedded synthetic CASIA-B** (rendered walking bodies, exact CASIA-B pkl layout);
# 2. a tiny **fabricated "real" tree** under the real CASIA-B ids and partition file, with the
#    defects a prepared dataset can have (missing ids, an empty view folder, a corrupt pkl) and
#    what the reader says about them;
# 3. one **P×K training batch** of fixed-ordered clips, shown as image strips;
# 4. the **sequence-length histogram**.
#
# Sizes: `METAREID_NOTEBOOK_QUICK=1` (default) renders 6 subjects at 3 views in about a second;
# `METAREID_NOTEBOOK_QUICK=0` renders the demo's 40 subjects at all 11 views. Figures go to
# `METAREID_NOTEBOOK_OUT` (default `outputs/notebooks/01_gait_data` in the repository).

# %%
import os
import pickle
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from einops import rearrange

import metareid
from metareid.data.gait.casiab import TYPES, VIEWS, CasiaBDataset
from metareid.data.gait.datamodule import GaitDataModule
from metareid.data.gait.frame_sampling import cut_silhouettes
from metareid.data.gait.synthetic import generate_synthetic_casiab

QUICK = os.environ.get("METAREID_NOTEBOOK_QUICK", "1") != "0"
ROOT = Path(os.environ.get("PROJECT_ROOT") or Path(metareid.__file__).resolve().parents[2])
OUT = Path(
    os.environ.get("METAREID_NOTEBOOK_OUT") or ROOT / "outputs" / "notebooks" / "01_gait_data"
)
OUT.mkdir(parents=True, exist_ok=True)
print(f"quick={QUICK}, figures -> {OUT}")

# %% [markdown]
# ## 1. The embedded synthetic CASIA-B
#
# `generate_synthetic_casiab` writes `root/<id>/<type>/<view>/<view>.pkl` (pickled
# `uint8 [T, 64, 64]`) plus `partition.json` (first subjects train, the rest test). A sequence
# depends only on `(seed, subject, type, view)`, so the quick and full trees agree where they
# overlap.

# %%
SYNTHETIC = dict(
    num_subjects=6 if QUICK else 40,
    train_subjects=3 if QUICK else 24,
    views=["000", "090", "180"] if QUICK else list(VIEWS),
    frames=(8, 14) if QUICK else (20, 40),
    seed=0,
)
synthetic_root = OUT / "data" / "synthetic_casiab"
partition_file = generate_synthetic_casiab(synthetic_root, **SYNTHETIC)
pkl_files = sorted(synthetic_root.rglob("*.pkl"))
print(f"{len(pkl_files)} sequences, partition {partition_file.read_text()}")
for path in pkl_files[:4]:
    print("  ", path.relative_to(synthetic_root))

# %%
synthetic_train = CasiaBDataset(synthetic_root, partition_file, split="train")
synthetic_test = CasiaBDataset(synthetic_root, partition_file, split="test")
print(synthetic_train)
print(synthetic_test)
first = synthetic_train[0]
print({key: getattr(value, "shape", value) for key, value in first.items()})

# %% [markdown]
# ## 2. A fabricated "real" CASIA-B tree
#
# The real dataset is not redistributable, so here is a stand-in with the real layout: three test
# ids of the OpenGait partition (`CASIA-B_include_005.json`: ids 001–074 train, 075–124 test),
# NM/BG/CL sequences at two views, drawn as crude walking figures. Three defects are planted:
# 47 test ids absent, an empty view folder, and a corrupt pkl.


# %%
def walking_figure(num_frames: int, phase: float, stride: float, condition: str) -> np.ndarray:
    """A crude silhouette sequence ``uint8 [T, 64, 64]``: head, torso, two swinging legs, plus a
    bag (``bg-*``) or a wider coat (``cl-*``)."""
    rows, columns = np.mgrid[0:64, 0:64]
    torso_half_width = 8 if condition.startswith("cl") else 6
    frames = np.zeros((num_frames, 64, 64), dtype=np.uint8)
    for t in range(num_frames):
        swing = stride * np.sin(phase + 2 * np.pi * t / 12)
        body = ((rows - 10) / 5) ** 2 + ((columns - 32) / 4) ** 2 <= 1  # head
        body |= ((rows - 26) / 11) ** 2 + ((columns - 32) / torso_half_width) ** 2 <= 1
        if condition.startswith("bg"):
            body |= (rows >= 18) & (rows <= 32) & (columns >= 22) & (columns <= 27)
        for side in (-1, 1):  # legs: thick segments from the hip, swinging in opposite phase
            along = np.clip((rows - 36) / 26, 0, 1)
            centre = 32 + along * side * swing
            body |= (rows >= 36) & (rows <= 62) & (np.abs(columns - centre) <= 2.5)
        frames[t][body] = 255
    return frames


real_root = OUT / "data" / "fabricated_casiab"
rng = np.random.default_rng(0)
for subject in ("075", "076", "077"):
    for condition in ("nm-01", "nm-02", "nm-03", "nm-04", "nm-05", "nm-06", "bg-01", "cl-01"):
        for view in ("000", "090"):
            folder = real_root / subject / condition / view
            folder.mkdir(parents=True, exist_ok=True)
            if (subject, condition, view) == ("077", "bg-01", "000"):
                continue  # an empty view folder: the pretreatment found no usable frame
            frames = walking_figure(
                int(rng.integers(10, 20)), rng.uniform(0, 6), 4 + int(subject) % 4, condition
            )
            with open(folder / f"{view}.pkl", "wb") as handle:
                pickle.dump(frames, handle)
# A file cut short by an interrupted copy.
(real_root / "076" / "cl-01" / "090" / "090.pkl").write_bytes(b"\x80\x04\x95")

# %% [markdown]
# By default the reader stops at the first unusable file and names it; `strict=False` leaves
# such sequences out and counts them. Missing ids and sequences are reported either way.

# %%
try:
    CasiaBDataset(real_root, "CASIA-B_include_005.json", split="test")
except ValueError as error:
    print("strict=True:", error)

real_test = CasiaBDataset(real_root, "CASIA-B_include_005.json", split="test", strict=False)
print(real_test)
print(f"missing ids: {len(real_test.missing_ids)} (e.g. {real_test.missing_ids[:3]})")
print(f"missing sequences: {real_test.missing_sequences}")
print(
    f"skipped: {[(str(path.relative_to(real_root)), reason) for path, reason in real_test.skipped]}"
)
assert len(real_test.skipped) == 1 and len(real_test.missing_ids) == 47

# %%
# Middle frames of the same conditions in both trees (cut to 64x44 as the network sees them).
shown = [("nm-01", "000"), ("nm-01", "090"), ("bg-01", "090"), ("cl-01", "090")]
figure, axes = plt.subplots(2, len(shown), figsize=(1.6 * len(shown), 4.2))
for row, (dataset, subject, title) in enumerate(
    [(synthetic_test, synthetic_test.label_set[0], "synthetic"), (real_test, "075", "fabricated")]
):
    for column, (condition, view) in enumerate(shown):
        index = next(
            i
            for i, record in enumerate(dataset.samples)
            if (record.subject, record.type, record.view) == (subject, condition, view)
        )
        clip = cut_silhouettes(dataset.load(index))
        axes[row, column].imshow(clip[len(clip) // 2], cmap="gray")
        axes[row, column].set_title(f"{title} {subject}\n{condition} {view}", fontsize=8)
        axes[row, column].axis("off")
figure.tight_layout()
figure.savefig(OUT / "casiab_trees.png", dpi=100)

# %% [markdown]
# ## 3. One P×K training batch
#
# `GaitDataModule` draws P identities and K sequences of each (an infinite sampler; batch `b`
# depends only on `(seed, b)`), then a **fixed-ordered** clip of F consecutive frames from each
# sequence (wrapping around short ones), cut to 64×44 and scaled to [0, 1].

# %%
P, K, FRAMES = 3, 2, 8 if QUICK else 16
datamodule = GaitDataModule(
    root=str(synthetic_root), p=P, k=K, frames_num_fixed=FRAMES, num_workers=0, seed=0
)
datamodule.setup("fit")
batch = next(iter(datamodule.train_dataloader()))
print({key: tuple(value.shape) for key, value in batch.items()})
label_counts = Counter(batch["labels"].tolist())
print("sequences per identity:", dict(label_counts))
assert len(label_counts) == P and set(label_counts.values()) == {K}

# %%
# Each row is one clip: its F frames side by side.
order = batch["labels"].argsort(stable=True)
strips = rearrange(batch["sils"][order], "n s h w -> (n h) (s w)")
strip_height = 0.8 * P * K  # inches; the width follows the strips' aspect ratio plus labels
figure, axis = plt.subplots(
    figsize=(1.6 + strip_height * strips.shape[1] / strips.shape[0], strip_height)
)
axis.imshow(strips, cmap="gray", aspect="equal")
height = batch["sils"].shape[-2]
row_labels = [
    f"{int(batch['subjects'][i]):03d} {TYPES[int(batch['type_index'][i])]} "
    f"{VIEWS[int(batch['view_index'][i])]}"
    for i in order.tolist()
]
axis.set_yticks([height * (row + 0.5) for row in range(P * K)], row_labels, fontsize=8)
axis.set_xticks([])
axis.set_title(f"P×K = {P}×{K} batch, fixed-ordered clips of {FRAMES} frames")
figure.tight_layout()
figure.savefig(OUT / "pxk_batch.png", dpi=100)

# %% [markdown]
# ## 4. Sequence lengths
#
# Training clips have a fixed length; evaluation uses whole sequences (batched with zero padding
# and their lengths). Real CASIA-B sequences hold about 60–130 frames; the synthetic ones are
# shorter to keep the CPU demo fast.

# %%
lengths = {
    name: [len(dataset.load(i)) for i in range(len(dataset))]
    for name, dataset in (("train", synthetic_train), ("test", synthetic_test))
}
figure, axis = plt.subplots(figsize=(5, 3))
low, high = SYNTHETIC["frames"]
axis.hist(
    list(lengths.values()), bins=np.arange(low, high + 2) - 0.5, stacked=True, label=list(lengths)
)
axis.set_xlabel("frames per sequence")
axis.set_ylabel("sequences")
axis.legend()
figure.tight_layout()
figure.savefig(OUT / "sequence_lengths.png", dpi=100)
for name, values in lengths.items():
    print(f"{name}: {len(values)} sequences, {min(values)}-{max(values)} frames", end=", ")
    print(f"mean {np.mean(values):.1f}")
