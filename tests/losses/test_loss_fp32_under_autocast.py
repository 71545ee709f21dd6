"""Every training loss computes in fp32 inside a bf16 autocast region (issue 8 §1).

Lightning runs ``training_step`` under autocast, so the losses are called inside it. Each loss
must return, on the same fp32 inputs, what it returns outside autocast (loss, logged scalars and
gradients) to 1e-6 relative. Embeddings get a large common offset: that is where a bf16
``|a|^2 + |b|^2 - 2ab`` expansion loses every digit of the distance.
"""

from __future__ import annotations

import pytest
import torch

from metareid.losses.gait_triplet import BatchAllTripletLoss
from metareid.losses.part_cross_entropy import PartCrossEntropyLoss
from metareid.losses.reid import (
    ACLLosses,
    batch_hard_triplet,
    center_loss,
    cross_domain_triplet,
    domain_cross_entropy,
    domain_sct_loss,
    inter_cluster_loss,
    intra_cluster_loss,
    pairwise_euclidean,
)

RELATIVE = 1e-6


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def assert_same(autocast_value, reference, what: str) -> None:
    torch.testing.assert_close(
        autocast_value, reference, rtol=RELATIVE, atol=0.0, msg=lambda m: f"{what}: {m}"
    )


def run_twice(make_inputs, loss_fn):
    """``loss_fn(*inputs)`` outside and inside bf16 autocast, each on fresh leaf copies.

    Returns ``[(outputs, gradients)]`` for fp32 then autocast; ``outputs`` is the list of scalar
    tensors the call returns (loss first), ``gradients`` those of every floating input.
    """
    runs = []
    for use_autocast in (False, True):
        inputs = make_inputs()
        leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.is_floating_point()]
        for leaf in leaves:
            leaf.requires_grad_(True)
        if use_autocast:
            with bf16_autocast():
                result = loss_fn(*inputs)
        else:
            result = loss_fn(*inputs)
        if isinstance(result, tuple):
            loss, info = result
            outputs = [loss, *info.values()]
        else:
            loss, outputs = result, [result]
        assert loss.dtype == torch.float32
        gradients = torch.autograd.grad(loss, leaves, allow_unused=True)
        runs.append((outputs, gradients))
    return runs


def assert_autocast_equals_fp32(make_inputs, loss_fn, name: str) -> None:
    (reference, reference_grads), (mixed, mixed_grads) = run_twice(make_inputs, loss_fn)
    for index, (value, expected) in enumerate(zip(mixed, reference, strict=True)):
        assert_same(value.detach().float(), expected.detach().float(), f"{name} output {index}")
    for index, (grad, expected) in enumerate(zip(mixed_grads, reference_grads, strict=True)):
        if expected is not None:
            assert_same(grad, expected, f"{name} gradient of input {index}")


def gait_embeddings(seed: int = 0) -> torch.Tensor:
    """``[8, 4, 16]``: 4 identities x 2 sequences, offset 8 from the origin."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 4, 16, generator=generator)
    noise = 0.5 * torch.randn(8, 4, 16, generator=generator)
    return 8.0 + centres.repeat_interleave(2, dim=0) + noise


GAIT_LABELS = torch.arange(4).repeat_interleave(2)


def test_gait_triplet_is_fp32_under_autocast():
    loss_fn = BatchAllTripletLoss(margin=0.2)
    assert_autocast_equals_fp32(lambda: (gait_embeddings(), GAIT_LABELS), loss_fn, "triplet")


def test_part_cross_entropy_is_fp32_under_autocast():
    def make_inputs():
        generator = torch.Generator().manual_seed(1)
        logits = 20.0 * torch.randn(8, 4, 10, generator=generator)
        return logits, torch.randint(0, 10, (8,), generator=generator)

    for smoothing in (False, True):
        loss_fn = PartCrossEntropyLoss(scale=16.0, label_smoothing=smoothing)
        assert_autocast_equals_fp32(make_inputs, loss_fn, f"part CE smoothing={smoothing}")


def reid_outputs(num_samples=8, dim=6, classes=(3, 4), experts=16, seed=0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    neck = 10.0 + torch.randn(num_samples, dim, generator=generator)
    centers = 10.0 + torch.randn(sum(classes), dim, generator=generator)
    return {
        "logits": [5.0 * torch.randn(num_samples, n, generator=generator) for n in classes],
        "center_distmat": torch.cdist(neck, centers).pow(2),
        "neck_feat": neck,
        "features": neck,
        "routing_weights": torch.rand(num_samples, experts, generator=generator),
    }


REID_LABELS = torch.tensor([0, 0, 1, 1, 3, 3, 6, 6])
REID_DOMAINS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])


@pytest.mark.parametrize(
    ("name", "make_inputs", "loss_fn"),
    [
        (
            "pairwise_euclidean",
            lambda: (reid_outputs()["features"],),
            lambda f: pairwise_euclidean(f).sum(),
        ),
        (
            "batch_hard_triplet",
            lambda: (reid_outputs()["features"], REID_LABELS),
            batch_hard_triplet,
        ),
        (
            "cross_domain_triplet",
            lambda: (reid_outputs()["features"], REID_LABELS, REID_DOMAINS),
            cross_domain_triplet,
        ),
        ("domain_sct_loss", lambda: (reid_outputs()["features"], REID_DOMAINS), domain_sct_loss),
        ("center_loss", lambda: (reid_outputs()["center_distmat"], REID_LABELS), center_loss),
        (
            "intra_cluster_loss",
            lambda: (reid_outputs()["routing_weights"], REID_DOMAINS),
            lambda w, d: intra_cluster_loss(w, d, centroid="vector"),
        ),
        (
            "inter_cluster_loss",
            lambda: (reid_outputs()["routing_weights"], REID_DOMAINS),
            lambda w, d: inter_cluster_loss(w, d, centroid="vector"),
        ),
    ],
)
def test_acl_loss_functions_are_fp32_under_autocast(name, make_inputs, loss_fn):
    assert_autocast_equals_fp32(make_inputs, loss_fn, name)


def test_acl_domain_cross_entropy_is_fp32_under_autocast():
    def loss_fn(logit_a, logit_b):
        return domain_cross_entropy([logit_a, logit_b], REID_LABELS, REID_DOMAINS)

    assert_autocast_equals_fp32(lambda: tuple(reid_outputs()["logits"]), loss_fn, "domain CE")


@pytest.mark.parametrize("step", ["basic", "meta_train", "meta_test"])
def test_acl_recipe_steps_are_fp32_under_autocast(step):
    losses = ACLLosses()
    terms = {}
    for use_autocast in (False, True):
        outputs = reid_outputs()
        if use_autocast:
            with bf16_autocast():
                terms[use_autocast] = getattr(losses, step)(outputs, REID_LABELS, REID_DOMAINS)
        else:
            terms[use_autocast] = getattr(losses, step)(outputs, REID_LABELS, REID_DOMAINS)
    assert terms[True].keys() == terms[False].keys()
    for key, value in terms[True].items():
        assert_same(value, terms[False][key], f"ACLLosses.{step} {key}")
