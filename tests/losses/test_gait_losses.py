"""Gait losses: batch-all part triplet and per-part cross-entropy (metagait spec §5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from metareid.losses.gait_triplet import BatchAllTripletLoss
from metareid.losses.part_cross_entropy import PartCrossEntropyLoss

# Four samples on the line y = 2, at multiples of 1/8 so every distance is exact in float32:
# identity 0 at x = 0 and x = 1, identity 1 at x = 1.125 and x = 4.
LINE_POSITIONS = [0.0, 1.0, 1.125, 4.0]
LINE_LABELS = torch.tensor([0, 0, 1, 1])
MARGIN = 0.25


def line_embeddings(scale: float = 1.0) -> torch.Tensor:
    """[4, 1, 2] embeddings at ``scale * LINE_POSITIONS``."""
    return torch.tensor([[[scale * x, 2.0]] for x in LINE_POSITIONS])


def brute_force_triplet(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> float:
    """Direct transcription of spec §5.1 with explicit loops, in float64."""
    x = embeddings.double()
    n, num_parts, _ = x.shape
    part_losses = []
    for part in range(num_parts):
        total, nonzero = 0.0, 0
        for anchor in range(n):
            for positive in range(n):
                if labels[positive] != labels[anchor]:
                    continue
                for negative in range(n):
                    if labels[negative] == labels[anchor]:
                        continue
                    d_pos = torch.linalg.norm(x[anchor, part] - x[positive, part])
                    d_neg = torch.linalg.norm(x[anchor, part] - x[negative, part])
                    term = max(0.0, float(d_pos - d_neg) + margin)
                    total += term
                    nonzero += term > 0
        part_losses.append(total / nonzero if nonzero else 0.0)
    return sum(part_losses) / num_parts


def test_triplet_hand_computed_single_part():
    # Distances: d01 = 1, d02 = 1.125, d03 = 4, d12 = 0.125, d13 = 3, d23 = 2.875; margin 0.25.
    # Terms relu(d(a, pos) - d(a, neg) + 0.25), the anchor itself counting as a positive:
    # anchor 0: pos 1 / neg 2: 1 - 1.125 + 0.25 = 0.125
    # anchor 1: pos 1 (itself) / neg 2: 0 - 0.125 + 0.25 = 0.125; pos 0 / neg 2: 1.125
    # anchor 2: pos 2 (itself) / neg 1: 0.125; pos 3 / neg 0: 2.0; pos 3 / neg 1: 3.0
    # anchor 3: pos 2 / neg 1: 2.875 - 3 + 0.25 = 0.125
    # all other terms are <= 0 -> loss = 6.625 / 7 (5 non-zero terms and 6.375 / 5 = 1.275
    # if the anchor were not its own positive). Mean distance = 2 * 12.125 / 16.
    loss, info = BatchAllTripletLoss(margin=MARGIN)(line_embeddings(), LINE_LABELS)
    assert loss.item() == pytest.approx(6.625 / 7, abs=1e-6)
    assert info["loss"].item() == pytest.approx(6.625 / 7, abs=1e-6)
    assert info["hard_loss"].item() == pytest.approx(3.0, abs=1e-6)
    assert info["loss_num"].item() == 7
    assert info["mean_dist"].item() == pytest.approx(24.25 / 16, abs=1e-6)
    assert all(not value.requires_grad and value.dim() == 0 for value in info.values())


def test_triplet_averages_parts():
    # Part 1 triples every distance (d01 = 3, d02 = 3.375, d03 = 12, d12 = 0.375, d13 = 9,
    # d23 = 8.625): anchor 1: pos 0 / neg 2: 3 - 0.375 + 0.25 = 2.875; anchor 2: pos 3 / neg 0:
    # 5.5 and pos 3 / neg 1: 8.5; nothing else is positive -> part loss 16.875 / 3 = 5.625.
    # Part 0 is the case above (6.625 / 7, 7 terms, hardest 3.0).
    embeddings = torch.cat([line_embeddings(1.0), line_embeddings(3.0)], dim=1)  # [4, 2, 2]
    loss, info = BatchAllTripletLoss(margin=MARGIN)(embeddings, LINE_LABELS)
    assert loss.item() == pytest.approx((6.625 / 7 + 5.625) / 2, abs=1e-6)
    assert info["hard_loss"].item() == pytest.approx((3.0 + 8.5) / 2, abs=1e-6)
    assert info["loss_num"].item() == (7 + 3) / 2
    assert info["mean_dist"].item() == pytest.approx(4 * 24.25 / 16 / 2, abs=1e-6)


def test_triplet_zero_when_identities_are_separated():
    embeddings = torch.tensor([[[0.0, 0.0]], [[0.0, 0.1]], [[10.0, 0.0]], [[10.0, 0.1]]])
    embeddings.requires_grad_(True)
    loss, info = BatchAllTripletLoss(margin=0.2)(embeddings, LINE_LABELS)
    assert loss.item() == 0.0
    assert info["loss_num"].item() == 0
    loss.backward()
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


def test_triplet_single_identity_batch_gives_zero_with_graph():
    embeddings = torch.randn(3, 2, 4, requires_grad=True)
    loss, info = BatchAllTripletLoss()(embeddings, torch.tensor([5, 5, 5]))
    assert loss.item() == 0.0 and info["loss_num"].item() == 0
    loss.backward()
    assert embeddings.grad is not None


def test_triplet_gradient_flows_and_is_finite_with_duplicate_samples():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(6, 3, 5, generator=generator)
    embeddings[1] = embeddings[0]  # identical samples: distance exactly at the sqrt kink
    embeddings.requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss, _ = BatchAllTripletLoss(margin=0.5)(embeddings, labels)
    loss.backward()
    assert torch.isfinite(embeddings.grad).all()
    assert embeddings.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triplet_matches_brute_force_on_random_data(dtype):
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(7, 3, 4, generator=generator).to(dtype)
    labels = torch.tensor([3, 3, 8, 8, 8, 1, 1])
    loss, _ = BatchAllTripletLoss(margin=0.3)(embeddings, labels)
    assert loss.dtype == torch.float32
    expected = brute_force_triplet(embeddings.float(), labels, margin=0.3)
    assert loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_triplet_rejects_bad_shapes():
    loss_fn = BatchAllTripletLoss()
    with pytest.raises(ValueError, match=r"\[n, parts, channels\]"):
        loss_fn(torch.randn(4, 8), torch.arange(4))
    with pytest.raises(ValueError, match="labels"):
        loss_fn(torch.randn(4, 2, 8), torch.arange(3))


def test_cross_entropy_equals_torch_per_part():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 3, 7, generator=generator)
    labels = torch.tensor([0, 6, 2, 2, 4])
    loss, info = PartCrossEntropyLoss(scale=2.0)(logits, labels)
    per_part = [F.cross_entropy(2.0 * logits[:, part], labels) for part in range(3)]
    assert loss.item() == pytest.approx(sum(per_part).item() / 3, rel=1e-6)
    assert info["loss"].item() == pytest.approx(loss.item())


def test_cross_entropy_label_smoothing_hand_computed():
    # logits [0, ln 3] -> p = [1/4, 3/4]; label 0: NLL = ln 4,
    # mean over classes of -log p = (ln 4 + ln 4/3) / 2; loss = 0.9 NLL + 0.1 * that mean.
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    loss, _ = PartCrossEntropyLoss(label_smoothing=True, eps=0.1)(logits, torch.tensor([0]))
    expected = 0.9 * math.log(4.0) + 0.1 * (math.log(4.0) + math.log(4.0 / 3.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    unsmoothed, _ = PartCrossEntropyLoss(label_smoothing=False, eps=0.1)(logits, torch.tensor([0]))
    assert unsmoothed.item() == pytest.approx(math.log(4.0), rel=1e-6)


def test_cross_entropy_smoothing_matches_torch_on_random_data():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 2, 6, generator=generator)
    labels = torch.tensor([1, 5, 0, 3])
    loss, _ = PartCrossEntropyLoss(label_smoothing=True, eps=0.2)(logits, labels)
    expected = F.cross_entropy(
        logits.reshape(8, 6), labels.repeat_interleave(2), label_smoothing=0.2
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_cross_entropy_accuracy_and_fp32_compute():
    # sample 0: both parts predict class 1 (its label); sample 1 (label 0): part 0 predicts 0,
    # part 1 predicts 2 -> 3 of 4 (sample, part) pairs correct.
    logits = torch.tensor(
        [
            [[0.0, 5.0, 0.0], [0.0, 4.0, 1.0]],
            [[3.0, 0.0, 0.0], [0.0, 0.0, 2.0]],
        ],
        dtype=torch.float16,
    )
    loss, info = PartCrossEntropyLoss()(logits, torch.tensor([1, 0]))
    assert info["accuracy"].item() == pytest.approx(0.75)
    assert loss.dtype == torch.float32


def test_cross_entropy_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="class_num"):
        PartCrossEntropyLoss()(torch.randn(2, 3, 4), torch.tensor([0, 4]))
