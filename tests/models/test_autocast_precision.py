"""Precision claims of the gait layers under bf16 autocast (issue 8 §1).

``gait_layers`` says its masked means accumulate in fp32 so that a long bf16 sum and its count
do not lose digits: the result must be the fp32 mean rounded once to bf16, where a bf16 sum
divided by a bf16 count rounds twice and misses it.
"""

from __future__ import annotations

import torch

from metareid.models.gait_layers import mask_frames, masked_global_average, temporal_mean

LENGTHS = torch.tensor([30, 17, 9, 25])


def bf16_clip() -> torch.Tensor:
    """``[4, 64, 30, 16, 11]`` bf16 features, padded frames zeroed."""
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(4, 64, 30, 16, 11, generator=generator).bfloat16()
    return mask_frames(features, LENGTHS)


def test_masked_global_average_accumulates_in_fp32_under_autocast():
    features = bf16_clip()
    count = (LENGTHS * 16 * 11).float()[:, None]
    expected = (features.float().sum(dim=(2, 3, 4)) / count).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = masked_global_average(features, LENGTHS)
    assert result.dtype == torch.bfloat16
    assert torch.equal(result, expected)
    # A bf16 sum over a bf16 count rounds twice and misses the fp32 mean on these inputs.
    twice_rounded = features.sum(dim=(2, 3, 4)) / (LENGTHS * 16 * 11).bfloat16()[:, None]
    assert not torch.equal(twice_rounded, expected)


def test_temporal_mean_accumulates_in_fp32_under_autocast():
    features = bf16_clip()
    count = LENGTHS.float()[:, None, None, None]
    expected = (features.float().sum(dim=2) / count).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = temporal_mean(features, LENGTHS)
    assert result.dtype == torch.bfloat16
    assert torch.equal(result, expected)
    twice_rounded = features.sum(dim=2) / LENGTHS.bfloat16()[:, None, None, None]
    assert not torch.equal(twice_rounded, expected)
