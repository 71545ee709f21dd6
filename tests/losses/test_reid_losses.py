"""DR50/ACL losses on hand-computed cases (numbers derived in the comments)."""

import math

import pytest
import torch

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


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ---------------------------------------------------------------- identity (cross-entropy) loss


def two_domain_logits():
    """Domain 0 has 2 classes (global labels 0-1), domain 1 has 3 (global labels 2-4).

    Sample 0: domain 0, label 0, logits [2, 0]; sample 1: domain 1, label 3 (local 1),
    logits [0, 1, 0]. The other classifier's rows hold junk that must be ignored.
    """
    logits_domain0 = torch.tensor([[2.0, 0.0], [50.0, -50.0]])
    logits_domain1 = torch.tensor([[-40.0, 7.0, 3.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 3])
    domain_ids = torch.tensor([0, 1])
    return [logits_domain0, logits_domain1], labels, domain_ids


def test_domain_cross_entropy_hand_computed():
    logits, labels, domain_ids = two_domain_logits()
    # Domain 0 (eps/(n-1) = 0.1): log p = [2 - L, -L], L = log(1 + e^2);
    #   loss = 0.9 (L - 2) + 0.1 L = 0.326928.
    # Domain 1 (eps/(n-1) = 0.05): M = log(2 + e); log p = [-M, 1 - M, -M];
    #   loss = 0.05 M * 2 + 0.9 (M - 1) = 0.651445.
    # Mean over the two present domains = 0.489186.
    loss = domain_cross_entropy(logits, labels, domain_ids, class_offsets=[0, 2], epsilon=0.1)
    assert loss.item() == pytest.approx(0.4891864, abs=1e-6)
    # Offsets are derived from the logit widths when omitted.
    assert domain_cross_entropy(logits, labels, domain_ids).item() == pytest.approx(0.4891864)


def test_domain_cross_entropy_only_present_domains_count():
    logits, labels, domain_ids = two_domain_logits()
    only_domain0 = domain_cross_entropy([logits[0][:1], logits[1][:1]], labels[:1], domain_ids[:1])
    assert only_domain0.item() == pytest.approx(0.3269280, abs=1e-6)


def test_domain_cross_entropy_averages_over_nonzero_losses_only():
    # eps = 0: sample A (logits [100, 0], label 0) has log p = -log(1 + e^-100) == 0 exactly in
    # fp32, so its loss is 0 and it is not counted; sample B (logits [0, 0], label 1) has log 2.
    # fast-reid divides by the non-zero count (1), giving log 2 rather than log 2 / 2.
    logits = [torch.tensor([[100.0, 0.0], [0.0, 0.0]])]
    loss = domain_cross_entropy(logits, torch.tensor([0, 1]), torch.tensor([0, 0]), epsilon=0.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


def test_domain_cross_entropy_gradient_only_reaches_own_domain_rows():
    logits, labels, domain_ids = two_domain_logits()
    logits = [t.clone().requires_grad_(True) for t in logits]
    domain_cross_entropy(logits, labels, domain_ids).backward()
    assert logits[0].grad[0].abs().sum() > 0 and logits[1].grad[1].abs().sum() > 0
    assert torch.all(logits[0].grad[1] == 0) and torch.all(logits[1].grad[0] == 0)


def test_domain_cross_entropy_rejects_inconsistent_offsets_and_labels():
    logits, labels, domain_ids = two_domain_logits()
    with pytest.raises(ValueError, match="class_offsets"):
        domain_cross_entropy(logits, labels, domain_ids, class_offsets=[2, 5])
    with pytest.raises(ValueError, match=r"labels of domain 1 must lie in \[2, 5\)"):
        domain_cross_entropy(logits, torch.tensor([0, 1]), domain_ids)


# ---------------------------------------------------------------- triplet losses


def square_batch():
    """p0=(0,0) id0, p1=(2,0) id0, p2=(1,1) id1, p3=(4,0) id1.

    Distances: d01 = 2, d02 = d12 = sqrt2, d03 = 4, d13 = 2, d23 = sqrt10.
    Hardest (pos, neg) per anchor: a0 (2, sqrt2), a1 (2, sqrt2), a2 (sqrt10, sqrt2), a3 (sqrt10, 2).
    """
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0], [4.0, 0.0]])
    return features, torch.tensor([0, 0, 1, 1])


def test_pairwise_euclidean_clamps_self_distance():
    features, _ = square_batch()
    distances = pairwise_euclidean(features)
    assert distances[0, 3].item() == pytest.approx(4.0)
    assert distances[2, 3].item() == pytest.approx(math.sqrt(10))
    assert torch.allclose(distances.diagonal(), torch.full((4,), 1e-6))


def test_batch_hard_triplet_hinge_hand_computed():
    features, labels = square_batch()
    # gaps d_ap - d_an: 2 - sqrt2, 2 - sqrt2, sqrt10 - sqrt2, sqrt10 - 2; all > -0.3, so
    # loss = mean(gap + 0.3) = 1.320479.
    loss = batch_hard_triplet(features, labels, margin=0.3)
    assert loss.item() == pytest.approx(1.3204787, abs=1e-5)


def test_batch_hard_triplet_soft_margin_hand_computed():
    features, labels = square_batch()
    # margin 0 -> mean softplus(gap) over the same four gaps = 1.349916.
    loss = batch_hard_triplet(features, labels, margin=0.0)
    assert loss.item() == pytest.approx(1.3499156, abs=1e-5)


def test_batch_hard_triplet_positive_includes_self():
    # Two singletons at distance 1: the only positive is the anchor itself (distance 1e-6),
    # so the soft-margin loss is softplus(1e-6 - 1) = 0.313262 and the 0.3 hinge is 0.
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1])
    assert batch_hard_triplet(features, labels, 0.0).item() == pytest.approx(0.3132620, abs=1e-6)
    assert batch_hard_triplet(features, labels, 0.3).item() == 0.0


def test_batch_hard_triplet_gradient_moves_hard_pairs():
    features, labels = square_batch()
    features.requires_grad_(True)
    batch_hard_triplet(features, labels).backward()
    # Every point is an anchor, hardest positive or hardest negative of an active triplet.
    assert torch.all(features.grad.abs().sum(dim=1) > 0)


def test_cross_domain_triplet_hand_computed():
    # Domain 0: p0=(0,0) id0, p1=(1,0) id1. Domain 1: p2=(0,2) id2, p3=(0,3) id2.
    # a0: positives {self, p2, p3} -> d_ap = 3; negatives {p1} -> d_an = 1; gap 2.
    # a1: positives {self, p2 (sqrt5), p3 (sqrt10)} -> sqrt10; negatives {p0} -> 1.
    # a2, a3: no same-domain impostor (p2, p3 share the identity and are neither positive nor
    # negative), so d_an = +inf and they contribute 0 while still counting in the mean.
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 3.0]])
    labels = torch.tensor([0, 1, 2, 2])
    domain_ids = torch.tensor([0, 0, 1, 1])
    expected = (softplus(2.0) + softplus(math.sqrt(10) - 1.0)) / 4  # 1.099529
    loss = cross_domain_triplet(features, labels, domain_ids)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert expected == pytest.approx(1.0995291, abs=1e-6)


def test_cross_domain_triplet_ignores_identity_across_domains():
    # Same identity label in two domains is still a positive (other domain) and never a negative.
    features = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([5, 5, 6])
    domain_ids = torch.tensor([0, 1, 0])
    # a0: pos {self, p1 (3)}, neg {p2 (1)} -> softplus(2); a1: pos {self, p0, p2 (sqrt10)},
    # neg none -> 0; a2: pos {self, p1 (sqrt10)}, neg {p0 (1)} -> softplus(sqrt10 - 1).
    expected = (softplus(2.0) + softplus(math.sqrt(10) - 1.0)) / 3
    loss = cross_domain_triplet(features, labels, domain_ids)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


# ---------------------------------------------------------------- SCT and center loss


def test_domain_sct_loss_hand_computed():
    # Domain 0: (1,0), (0,1) -> centroid (0.5, 0.5), cosine 1/sqrt2 each.
    # Domain 1: (2,0), (4,0) -> re-normalised to (1,0) twice, cosine 1.
    # Mean over domains: (1/sqrt2 + 1) / 2 = 0.853553.
    features = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [4.0, 0.0]])
    domain_ids = torch.tensor([0, 1, 0, 1])
    loss = domain_sct_loss(features, domain_ids)
    assert loss.item() == pytest.approx(0.8535534, abs=1e-6)


def test_domain_sct_loss_gradient_flows():
    features = torch.randn(6, 4, requires_grad=True)
    domain_sct_loss(features, torch.tensor([0, 0, 0, 1, 1, 1])).backward()
    assert features.grad.abs().sum() > 0


def test_center_loss_hand_computed():
    # Own-class distances 4 (row 0, class 0) and 6 (row 1, class 2): (4 + 6) / 2 = 5.
    distmat = torch.tensor([[4.0, 1.0, 2.0], [3.0, 5.0, 6.0]])
    assert center_loss(distmat, torch.tensor([0, 2])).item() == pytest.approx(5.0)


def test_center_loss_masked_entries_are_clamped_to_1e_minus_12():
    # All distances zero: each of the 2 x 3 masked entries is clamped up to 1e-12, so the released
    # formula yields 6e-12 / 2 = 3e-12 instead of 0.
    loss = center_loss(torch.zeros(2, 3), torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(3e-12, rel=1e-4)


def test_center_loss_gradient_only_on_own_class():
    distmat = torch.tensor([[4.0, 1.0, 2.0], [3.0, 5.0, 6.0]], requires_grad=True)
    center_loss(distmat, torch.tensor([0, 2])).backward()
    expected = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.5]])
    assert torch.equal(distmat.grad, expected)


# ---------------------------------------------------------------- domain-aware cluster losses


def routing_batch():
    """K = 2 router weights; rows are L2-normalised inside the losses.

    Domain 0: (3,0), (2,0) -> (1,0) twice; domain 1: (0.6, 0.8); domain 2: (0,1).
    Scalar centroids: m0 = 0.5, m1 = 0.7, m2 = 0.5. Vector centroids: (1,0), (0.6,0.8), (0,1).
    """
    weights = torch.tensor([[3.0, 0.0], [2.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    return weights, torch.tensor([0, 0, 1, 2])


def test_intra_cluster_loss_scalar_centroid_quirk():
    weights, domain_ids = routing_batch()
    # Domains 0 and 1 only. Domain 0: ||(1,0) - 0.5|| = sqrt(0.5) -> (sqrt(0.5) - 0.1)^2 = 0.368579.
    # Domain 1: ||(0.6,0.8) - 0.7|| = sqrt(0.02) -> (sqrt(0.02) - 0.1)^2 = 0.001716.
    # Mean over domains: 0.185147.
    loss = intra_cluster_loss(weights[:3], domain_ids[:3], margin=0.1)
    assert loss.item() == pytest.approx(0.1851472, abs=1e-6)


def test_intra_cluster_loss_vector_centroid():
    weights, domain_ids = routing_batch()
    # Every sample equals its domain's per-dimension centroid: loss 0 (and no NaN gradient).
    weights.requires_grad_(True)
    loss = intra_cluster_loss(weights, domain_ids, centroid="vector")
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(weights.grad).all()


def test_inter_cluster_loss_scalar_centroid_three_domains():
    weights, domain_ids = routing_batch()
    # Pairs: |0.5 - 0.7| = 0.2 -> 0.01; |0.5 - 0.5| = 0 -> 0.09; |0.7 - 0.5| = 0.2 -> 0.01.
    # Mean over 3 pairs = 0.11 / 3.
    loss = inter_cluster_loss(weights, domain_ids, margin=0.3)
    assert loss.item() == pytest.approx(0.11 / 3, abs=1e-6)


def test_inter_cluster_loss_vector_centroid():
    weights, domain_ids = routing_batch()
    # ||(1,0)-(0.6,0.8)|| = 0.894 and ||(1,0)-(0,1)|| = 1.414 exceed 0.3 -> 0;
    # ||(0.6,0.8)-(0,1)|| = sqrt(0.4) = 0.632 -> 0. Use margin 0.7: only the last pair is active,
    # (0.7 - sqrt(0.4))^2 / 3 = 0.0015497.
    loss = inter_cluster_loss(weights, domain_ids, margin=0.7, centroid="vector")
    assert loss.item() == pytest.approx((0.7 - math.sqrt(0.4)) ** 2 / 3, abs=1e-6)


def test_inter_cluster_loss_single_domain_is_constant_mean_domain_id():
    weights = torch.rand(5, 16, requires_grad=True)
    loss = inter_cluster_loss(weights, torch.full((5,), 2))
    assert loss.item() == 2.0
    assert not loss.requires_grad


def test_cluster_losses_gradient_reaches_router_weights():
    weights = torch.rand(6, 16, requires_grad=True)
    domain_ids = torch.tensor([0, 0, 1, 1, 2, 2])
    (intra_cluster_loss(weights, domain_ids) + inter_cluster_loss(weights, domain_ids)).backward()
    assert weights.grad.abs().sum() > 0


def test_cluster_losses_reject_unknown_centroid():
    weights, domain_ids = routing_batch()
    with pytest.raises(ValueError, match="centroid"):
        intra_cluster_loss(weights, domain_ids, centroid="median")


# ---------------------------------------------------------------- ACLLosses recipe


def fake_outputs(num_samples=8, dim=6, classes=(3, 4), experts=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    neck = torch.randn(num_samples, dim, generator=generator, requires_grad=True)
    centers = torch.randn(sum(classes), dim, generator=generator)
    return {
        "logits": [torch.randn(num_samples, n, generator=generator) for n in classes],
        "center_distmat": torch.cdist(neck, centers).pow(2),
        "neck_feat": neck,
        "features": torch.nn.functional.normalize(neck, dim=1),
        "routing_weights": torch.rand(num_samples, experts, generator=generator),
    }


def test_acl_losses_basic_terms_and_weights():
    outputs = fake_outputs()
    labels = torch.tensor([0, 0, 1, 1, 3, 3, 6, 6])
    domain_ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    losses = ACLLosses().basic(outputs, labels, domain_ids)
    assert set(losses) == {
        "loss_cls",
        "loss_triplet",
        "loss_domain_intra",
        "loss_domain_inter",
        "loss_center",
    }
    ce = domain_cross_entropy(outputs["logits"], labels, domain_ids, epsilon=0.1)
    assert losses["loss_cls"].item() == pytest.approx(0.5 * ce.item())
    center = center_loss(outputs["center_distmat"], labels)
    assert losses["loss_center"].item() == pytest.approx(5e-4 * center.item())
    triplet = batch_hard_triplet(outputs["features"], labels, 0.3)
    assert losses["loss_triplet"].item() == pytest.approx(triplet.item())
    sum(losses.values()).backward()
    assert outputs["neck_feat"].grad.abs().sum() > 0


def test_acl_losses_meta_train_terms():
    outputs = fake_outputs()
    labels = torch.tensor([0, 0, 1, 1, 3, 3, 6, 6])
    domain_ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    losses = ACLLosses().meta_train(outputs, labels, domain_ids)
    assert set(losses) == {
        "loss_triplet_add",
        "loss_triplet_mtrain",
        "loss_stc",
        "loss_domain_intra",
        "loss_domain_inter",
    }
    features = outputs["features"]
    expected_add = cross_domain_triplet(features, labels, domain_ids, 0.0)
    assert losses["loss_triplet_add"].item() == pytest.approx(expected_add.item())
    assert losses["loss_stc"].item() == pytest.approx(domain_sct_loss(features, domain_ids).item())


def test_acl_losses_meta_test_constant_inter_and_center_weight():
    outputs = fake_outputs()
    labels = torch.tensor([3, 3, 4, 4, 5, 5, 6, 6])
    domain_ids = torch.ones(8, dtype=torch.long)
    losses = ACLLosses().meta_test(outputs, labels, domain_ids)
    assert set(losses) == {
        "loss_triplet_mtest",
        "loss_domain_intra",
        "loss_domain_inter",
        "loss_center",
    }
    assert losses["loss_domain_inter"].item() == 1.0
    assert not losses["loss_domain_inter"].requires_grad
    center = center_loss(outputs["center_distmat"], labels)
    assert losses["loss_center"].item() == pytest.approx(1e-3 * center.item())


def test_acl_losses_missing_output_key_names_it():
    outputs = fake_outputs()
    del outputs["routing_weights"]
    with pytest.raises(KeyError, match="routing_weights"):
        ACLLosses().meta_test(outputs, torch.zeros(8, dtype=torch.long), torch.zeros(8))


def test_losses_run_in_fp32_under_autocast():
    features, labels = square_batch()
    reference = batch_hard_triplet(features, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = batch_hard_triplet(features, labels)
    assert under_autocast.dtype == torch.float32
    assert under_autocast.item() == pytest.approx(reference.item(), abs=1e-6)
