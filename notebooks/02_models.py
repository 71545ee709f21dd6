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
# # 02 — Models: MetaGait and DR50, layer by layer
#
# * tensor shapes after every top-level layer, on real (synthetic) inputs;
# * parameter tables at the released sizes, next to the counts of the specification
#   (`metagait.md` §3.4, `dr50.md` §2.6);
# * what the meta components compute over a batch: the **MHN mixing weights** of MetaGait's
#   channel attention and the **routing weights** of DR50's CODE blocks.
#
# The networks are freshly initialised: the weights show the spread the modules start from, not
# what training makes of them. `METAREID_NOTEBOOK_QUICK=1` (default) runs the 1/4-width MetaGait
# and 1/8-width DR50 of the CPU demos; `0` runs the released widths. Figures go to
# `METAREID_NOTEBOOK_OUT` (default `outputs/notebooks/02_models` in the repository).

# %%
import os
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from einops import rearrange
from torch import nn

import metareid
from metareid.data.gait.casiab import CasiaBDataset
from metareid.data.gait.frame_sampling import cut_silhouettes
from metareid.data.gait.synthetic import generate_synthetic_casiab
from metareid.data.reid.multisource import load_resized_image
from metareid.data.reid.synthetic import generate_synthetic_reid
from metareid.models import DR50, GaitGL, MetaGait
from metareid.models.reid_baseline import IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD

QUICK = os.environ.get("METAREID_NOTEBOOK_QUICK", "1") != "0"
ROOT = Path(os.environ.get("PROJECT_ROOT") or Path(metareid.__file__).resolve().parents[2])
OUT = Path(os.environ.get("METAREID_NOTEBOOK_OUT") or ROOT / "outputs" / "notebooks" / "02_models")
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
print(f"quick={QUICK}, figures -> {OUT}")


# %%
def count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def shape_of(output) -> str:
    """Shapes of a module output (a tensor, or a tuple/dict of them)."""
    if isinstance(output, torch.Tensor):
        return str(list(output.shape))
    if isinstance(output, dict):
        return ", ".join(f"{key}: {shape_of(value)}" for key, value in output.items())
    if isinstance(output, tuple | list):
        return "(" + ", ".join(shape_of(value) for value in output) + ")"
    return type(output).__name__


def trace_shapes(net: nn.Module, run: Callable[[], object]) -> list[tuple[str, str, str, str]]:
    """``(name, type, output shape, parameters)`` of every top-level child, in call order."""
    calls = []
    hooks = [
        child.register_forward_hook(
            lambda module, args, output, name=name: calls.append(
                (name, type(module).__name__, shape_of(output), f"{count(module):,}")
            )
        )
        for name, child in net.named_children()
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def print_table(header: list[str], rows: list[list[object]]) -> None:
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    for index, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


# %% [markdown]
# ## 1. MetaGait
#
# Input: a batch of whole synthetic CASIA-B sequences `[n, s, 64, 44]` (the first `s` frames of
# each; silhouettes in [0, 1]). Output: `embeddings`/`features [n, parts, c]`,
# `logits [n, parts, classes]`.

# %%
gait_root = OUT / "data" / "synthetic_casiab"
partition = generate_synthetic_casiab(
    gait_root, num_subjects=4, train_subjects=2, views=["000", "090", "180"], frames=(10, 14)
)
gait_set = CasiaBDataset(gait_root, partition, split="test")
FRAMES = 10
chosen = [
    i for i, record in enumerate(gait_set.samples) if record.type in ("nm-01", "bg-01", "cl-01")
]
sils = torch.from_numpy(np.stack([cut_silhouettes(gait_set.load(i)[:FRAMES]) for i in chosen]))
sample_names = [
    f"{gait_set.samples[i].subject} {gait_set.samples[i].type} {gait_set.samples[i].view}"
    for i in chosen
]
print("batch:", list(sils.shape))

metagait = MetaGait(
    channels=[8, 16, 32] if QUICK else [32, 64, 128],
    bin_num=16 if QUICK else 64,
    class_num=24 if QUICK else 74,
).eval()
print_table(
    ["layer", "type", "output shape", "parameters"],
    trace_shapes(metagait, lambda: metagait(sils)),
)

# %% [markdown]
# ### Parameters at the released size
#
# `channels=[32, 64, 128]`, 64 parts, 74 training classes. The specification lists the counts of
# the released network, measured by running it (`metagait.md` §3.4).

# %%
SPEC_METAGAIT = {
    "conv3d": 864,
    "LTA": 3_072,
    "GLConvA0": 110_592,
    "GLConvA1": 442_368,
    "GLConvB2": 884_736,
    "HPP": 1,
    "Head0": 1_048_576,
    "Bn": 256,
    "Head1": 606_208,
    "eca": 2_559,
    "se": 32_768,
}
released_metagait = MetaGait()
rows = [
    [name, f"{count(child):,}", f"{SPEC_METAGAIT.get(name, 0):,}"]
    for name, child in released_metagait.named_children()
    if count(child)
]
rows.append(["total", f"{count(released_metagait):,}", f"{sum(SPEC_METAGAIT.values()):,}"])
print_table(["module", "parameters", "spec"], rows)
print(f"GaitGL (no eca/se): {count(GaitGL()):,}")
assert count(released_metagait) == sum(SPEC_METAGAIT.values()) == 3_132_000

# %% [markdown]
# ### MHN mixing weights
#
# MetaGait's channel attention (`eca`) has three ECA gates (1-D convolutions over channels with
# kernels 1, 3 and 5). The meta hyper network `eca.dynamic_conv` turns the global descriptor of
# each sample into three **unnormalised** mixing weights; the released code pairs weight 0 with
# k=1, weight 1 with k=5 and weight 2 with k=3. A forward hook records them.

# %%
recorded = {}
hook = metagait.eca.dynamic_conv.register_forward_hook(
    lambda module, args, output: recorded.update(mix=output.detach())
)
with torch.no_grad():
    metagait(sils)
hook.remove()
mix = recorded["mix"]  # [n, 3]
print("mixing weights:", list(mix.shape))
print("mean over the batch:", [f"{value:+.4f}" for value in mix.mean(0).tolist()])

figure, axis = plt.subplots(figsize=(max(6, 0.45 * len(mix)), 3.2))
positions = np.arange(len(mix))
for offset, (column, label) in zip(
    (-0.27, 0, 0.27), ((0, "k=1"), (1, "k=5"), (2, "k=3")), strict=True
):
    axis.bar(positions + offset, mix[:, column].numpy(), width=0.27, label=f"w{column} ({label})")
axis.set_xticks(positions, sample_names, rotation=90, fontsize=7)
axis.axhline(0, color="black", linewidth=0.5)
axis.set_ylabel("mixing weight")
axis.set_title("MetaGait MHN mixing weights per sequence (untrained)")
axis.legend(fontsize=8)
figure.tight_layout()
figure.savefig(OUT / "metagait_mhn_weights.png", dpi=100)

# %% [markdown]
# ## 2. DR50
#
# Input: pixel-normalised images `[n, 3, 64, 32]` from three synthetic ReID domains (each with
# its own imaging style). Every stage ends in a CODE block: a static IN branch, K=4 expert
# bottlenecks mixed by the per-sample `router{i}` weights, a gate fusing both, then SE.

# %%
reid_root = OUT / "data" / "synthetic_reid"
domains = ("synA", "synB", "synC")
domain_roots = generate_synthetic_reid(
    reid_root,
    domains=domains,
    ids_per_domain=6,
    cameras=2,
    images_per_id_per_camera=1,
    distractors_per_domain=0,
    junk_per_domain=0,
    overwrite=True,
)
PER_DOMAIN = 6  # 3 training identities x 2 cameras
image_files = []
for name in domains:
    files = sorted((domain_roots[name] / "bounding_box_train").glob("*.jpg"))[:PER_DOMAIN]
    assert len(files) == PER_DOMAIN, f"{name}: only {len(files)} training images"
    image_files += files
images = torch.stack([load_resized_image(path, (64, 32)) for path in image_files]).float()
mean = torch.tensor(IMAGENET_PIXEL_MEAN).view(1, 3, 1, 1)
std = torch.tensor(IMAGENET_PIXEL_STD).view(1, 3, 1, 1)
normalised = (images - mean) / std
print("batch:", list(normalised.shape))

dr50 = DR50(width_mult=0.125 if QUICK else 1.0).eval()
print_table(
    ["layer", "type", "output shape", "parameters"],
    trace_shapes(dr50, lambda: dr50(normalised)),
)

# %% [markdown]
# ### Parameters per stage at the released size
#
# Grouped as in `dr50.md` §2.6 (main blocks / static branch / experts / router / norms + gate +
# SE + map); the specification's analytical total is ≈ 29.62 M.

# %%
released_dr50 = DR50()
groups = {
    "main": "layer{}",
    "static": "adaptor{}_base",
    "experts": "adaptor{}_sub",
    "router": "router{}",
    "norms+gate+SE+map": (
        "invariant_norm{}",
        "specific_norm{}",
        "meta_fuse{}",
        "meta_se{}",
        "map{}",
    ),
}
rows = []
for stage in range(1, 5):
    row = [f"stage {stage}"]
    for names in groups.values():
        names = (names,) if isinstance(names, str) else names
        total = sum(count(getattr(released_dr50, name.format(stage))) for name in names)
        row.append(f"{total / 1e6:.3f} M")
    rows.append(row)
stem = count(released_dr50.conv1) + count(released_dr50.bn1)
print_table(["", *groups], rows)
print(f"stem: {stem:,}; total: {count(released_dr50):,}")
print(f"1/8 width (CPU demo): {count(DR50(width_mult=0.125)):,}")

# %% [markdown]
# ### Routing weights over the batch
#
# `DR50.forward` returns the softmax routing weights of the four CODE blocks concatenated,
# `[n, 4·K]`. Rows are grouped by source domain.

# %%
with torch.no_grad():
    _, routing, _ = dr50(normalised)
routing = rearrange(routing, "n (stage k) -> stage n k", stage=4)
print("routing weights per stage:", list(routing.shape[1:]))
for stage, weights in enumerate(routing, start=1):
    per_domain = rearrange(weights, "(domain n) k -> domain n k", domain=len(domains)).mean(1)
    print(
        f"stage {stage}: "
        + "; ".join(
            f"{name} " + " ".join(f"{w:.3f}" for w in row.tolist())
            for name, row in zip(domains, per_domain, strict=True)
        )
    )
assert torch.allclose(routing.sum(-1), torch.ones(()), atol=1e-5)

figure, axes = plt.subplots(1, 4, figsize=(10, 4.2), sharey=True)
for stage, (axis, weights) in enumerate(zip(axes, routing, strict=True), start=1):
    image = axis.imshow(weights.numpy(), vmin=0, vmax=1, cmap="magma", aspect="auto")
    axis.set_title(f"router{stage}")
    axis.set_xticks(range(weights.shape[1]), [f"e{k}" for k in range(weights.shape[1])])
    axis.set_xlabel("expert")
axes[0].set_yticks([PER_DOMAIN * (d + 0.5) - 0.5 for d in range(len(domains))], list(domains))
for boundary in range(1, len(domains)):
    for axis in axes:
        axis.axhline(PER_DOMAIN * boundary - 0.5, color="white", linewidth=1)
figure.colorbar(image, ax=list(axes), label="routing weight", shrink=0.85)
figure.suptitle("DR50 routing weights per image (untrained)")
figure.savefig(OUT / "dr50_routing_weights.png", dpi=100)
