"""Cross-rank gathering for losses that must see the whole global batch.

Metric-learning losses (batch-all triplet for gait, cross-domain triplet / cluster losses for ReID)
change meaning when each rank only sees its own slice of the batch. ``gather_with_grad`` returns
the concatenation of every rank's tensor while keeping the autograd path to the local slice.

Why no ``× world_size`` factor: every rank computes the same global loss ``L``; the backward of
the gather sums the incoming gradients of all ranks (each equal to ``dL/dx_local``), so the local
slice receives ``world · dL/dx_local``; DDP then averages parameter gradients over ``world``
ranks, which leaves exactly the single-device full-batch gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def distributed_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        rank, world = distributed_world()
        ctx.rank, ctx.local_size = rank, tensor.shape[0]
        gathered = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.local_size
        return grad[start : start + ctx.local_size]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor [b, ...]`` of all ranks along dim 0 → ``[world·b, ...]``.

    Every rank must pass the same local batch size ``b`` (the identity sampler guarantees it).
    Gradients flow back to the local slice; integer tensors (labels) are gathered without grad.
    Identity when not running distributed.
    """
    _, world = distributed_world()
    if world == 1:
        return tensor
    if not tensor.is_floating_point():
        gathered = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)
    return _GatherWithGrad.apply(tensor)
