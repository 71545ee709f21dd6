"""LR factor schedules (metagait spec §2.6, dr50 spec §1.4 / §4.6)."""

from __future__ import annotations

import io
import math
import pickle

import pytest
import torch
from omegaconf import OmegaConf

from metareid.schedulers import WarmupCosine, WarmupMultiStep, build_lambda_lr

METAGAIT_LR = 3.5e-4
# (step, learning rate) checked in the spec by stepping the original WarmupMultiStepLR.
METAGAIT_CURVE = [
    (0, 3.5e-6),
    (5000, 1.7675e-4),
    (9999, 3.4997e-4),
    (10000, 3.5e-4),
    (79999, 3.5e-4),
    (80000, 3.5e-5),
    (99999, 3.5e-5),
    (100000, 3.5e-6),
    (119999, 3.5e-6),
]


def make_optimizer(lr: float, kind: str = "adam") -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.zeros(2))]
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=5e-4)
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def lr_after_resuming_at(schedule, base_lr: float, step: int) -> float:
    """LR of a real LambdaLR constructed as if resumed with ``step`` scheduler steps taken."""
    optimizer = make_optimizer(base_lr)
    for group in optimizer.param_groups:
        group["initial_lr"] = base_lr
    scheduler = build_lambda_lr(optimizer, schedule, last_step=step - 1)
    assert scheduler.last_epoch == step
    return optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize(("step", "expected_lr"), METAGAIT_CURVE)
def test_metagait_curve_via_resumed_lambda_lr(step, expected_lr):
    lr = lr_after_resuming_at(WarmupMultiStep(), METAGAIT_LR, step)
    assert lr == pytest.approx(expected_lr, rel=1e-4)


def test_metagait_curve_by_stepping_a_real_scheduler():
    optimizer = make_optimizer(METAGAIT_LR)
    scheduler = build_lambda_lr(optimizer, WarmupMultiStep())
    optimizer.step()  # torch warns if the scheduler steps before the optimizer ever did
    wanted = {step: lr for step, lr in METAGAIT_CURVE if step <= 10000}
    seen = {}
    for step in range(10001):
        if step in wanted:
            seen[step] = optimizer.param_groups[0]["lr"]
        scheduler.step()
    for step, lr in wanted.items():
        assert seen[step] == pytest.approx(lr, rel=1e-4)
    # The exact linear formula, not just the 4-digit spec values.
    assert seen[5000] == pytest.approx(METAGAIT_LR * (0.01 * 0.5 + 0.5), rel=1e-12)


def test_gaitgl_multistep_without_warmup():
    schedule = WarmupMultiStep(warmup_iters=0, milestones=(70000,), gamma=0.1)
    assert [schedule(t) for t in (0, 69999)] == [1.0, 1.0]
    assert schedule(70000) == pytest.approx(0.1)
    assert schedule(79999) == pytest.approx(0.1)
    assert lr_after_resuming_at(schedule, 1e-4, 70000) == pytest.approx(1e-5)


def test_constant_warmup():
    schedule = WarmupMultiStep(warmup_iters=100, warmup_factor=0.1, warmup_method="constant")
    assert schedule(0) == schedule(99) == pytest.approx(0.1)
    assert schedule(100) == 1.0


def test_multistep_accepts_hydra_lists_and_rejects_bad_arguments():
    schedule = WarmupMultiStep(milestones=OmegaConf.create([5, 7]))
    assert schedule.milestones == (5, 7)
    with pytest.raises(ValueError, match="increasing"):
        WarmupMultiStep(milestones=(100, 50))
    with pytest.raises(ValueError, match="warmup_method"):
        WarmupMultiStep(warmup_method="exp")


def test_schedule_state_survives_weights_only_checkpoint():
    optimizer = make_optimizer(METAGAIT_LR)
    scheduler = build_lambda_lr(optimizer, WarmupMultiStep(milestones=(3, 9)))
    optimizer.step()
    for _ in range(5):
        scheduler.step()
    buffer = io.BytesIO()
    torch.save({"scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["scheduler"]

    restored_optimizer = make_optimizer(METAGAIT_LR)
    restored = build_lambda_lr(restored_optimizer, WarmupMultiStep())
    restored.load_state_dict(state)
    assert restored.lr_lambdas[0].milestones == (3, 9)
    assert restored.last_epoch == 5
    assert restored.get_last_lr() == scheduler.get_last_lr()
    assert pickle.loads(pickle.dumps(WarmupMultiStep()))(80000) == pytest.approx(0.1)


# ACL: base 0.04, floor 4e-5, 60 epochs, 10 warm-up epochs; 100 iterations per epoch here.
ACL = dict(base_lr=0.04, eta_min=4e-5, max_epochs=60, warmup_epochs=10, warmup_factor=0.01)
IPE = 100


def acl_lr(step: int) -> float:
    return 0.04 * WarmupCosine(iters_per_epoch=IPE, **ACL)(step)


def test_acl_cosine_hand_values():
    assert acl_lr(0) == pytest.approx(4e-4, rel=1e-12)
    # Last warm-up iteration: 0.04 * (0.01 * (1 - 999/1000) + 999/1000) = 0.0399604.
    assert acl_lr(999) == pytest.approx(0.0399604, rel=1e-9)
    assert acl_lr(999) == pytest.approx(0.04, rel=1e-3)
    # Epoch 10 (first after warm-up): 4e-5 + 0.03996 * (1 + cos(pi / 50)) / 2, all epoch long.
    epoch10 = 4e-5 + 0.03996 * (1 + math.cos(math.pi / 50)) / 2
    assert acl_lr(1000) == pytest.approx(epoch10, rel=1e-12)
    assert acl_lr(1099) == pytest.approx(epoch10, rel=1e-12)
    assert acl_lr(1100) < acl_lr(1099)
    # Epoch 34: cos(pi * 25 / 50) = 0 -> 4e-5 + 0.03996 / 2 = 0.02002.
    assert acl_lr(3400) == pytest.approx(0.02002, rel=1e-9)
    # Epoch 59 is the floor; later steps hold it.
    assert acl_lr(5900) == pytest.approx(4e-5, rel=1e-9)
    assert acl_lr(5999) == pytest.approx(4e-5, rel=1e-9)
    assert acl_lr(7000) == pytest.approx(4e-5, rel=1e-9)


def test_acl_cosine_through_a_real_sgd_scheduler():
    optimizer = make_optimizer(0.04, kind="sgd")
    scheduler = build_lambda_lr(optimizer, WarmupCosine(iters_per_epoch=IPE, **ACL))
    optimizer.step()
    for step in range(60 * IPE):
        if step % 250 == 0 or step in (999, 1000, 5999):
            assert optimizer.param_groups[0]["lr"] == pytest.approx(acl_lr(step), rel=1e-12)
        scheduler.step()


def test_cosine_with_warmup_not_a_whole_number_of_epochs():
    # Warm-up ends mid-epoch 9 (step 950): the rest of epoch 9 runs at the base rate, and the
    # cosine has stepped once by epoch 10 (T = 60 - ceil(9.5) = 50 epochs).
    schedule = WarmupCosine(iters_per_epoch=IPE, warmup_iters=950, base_lr=0.04, eta_min=4e-5)
    assert schedule(949) < 1.0
    assert schedule(950) == 1.0 and schedule(999) == 1.0
    assert 0.04 * schedule(1000) == pytest.approx(acl_lr(1000), rel=1e-12)


def test_cosine_checks_base_lr_against_the_optimizer():
    with pytest.raises(ValueError, match="base_lr"):
        build_lambda_lr(make_optimizer(0.01, kind="sgd"), WarmupCosine(iters_per_epoch=IPE))
    with pytest.raises(ValueError, match="eta_min"):
        WarmupCosine(iters_per_epoch=IPE, base_lr=0.01, eta_min=0.1)
    with pytest.raises(ValueError, match="max_epochs"):
        WarmupCosine(iters_per_epoch=IPE, max_epochs=10, warmup_epochs=10)
