"""uint8 batches (data.uint8_batches): a quarter of the bytes, the same network inputs and run."""

import numpy as np
import torch

from hydra_helpers import TINY_GAIT
from metareid.data.gait.frame_sampling import frames_to_tensor, silhouettes_to_float
from train import train


def test_uint8_batches_scale_to_the_same_float_values():
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 3, 64, 64), dtype=np.uint8)
    as_float = frames_to_tensor(frames, cut=True)
    as_bytes = frames_to_tensor(frames, cut=True, as_uint8=True)
    assert as_bytes.dtype == torch.uint8 and as_bytes.shape == as_float.shape == (2, 3, 64, 44)
    assert as_bytes.element_size() * 4 == as_float.element_size()
    assert torch.equal(silhouettes_to_float(as_bytes), as_float)  # bit for bit
    assert silhouettes_to_float(as_float) is as_float


def test_a_run_with_uint8_batches_equals_the_float_run(make_config, synthetic_gait_root):
    results = []
    for flag in ("false", "true"):
        cfg = make_config(
            "train",
            [*TINY_GAIT, f"data.root={synthetic_gait_root}", f"data.uint8_batches={flag}",
             "trainer.deterministic=true"],
        )
        results.append(train(cfg))
    float_run, uint8_run = results
    assert float_run["train/loss"] == uint8_run["train/loss"]
    assert float_run["test/Mean"] == uint8_run["test/Mean"]
