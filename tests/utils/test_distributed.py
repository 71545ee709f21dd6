"""gather_with_grad: under 2-process DDP the gradient equals the single-device full-batch one."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metareid.utils.distributed import gather_with_grad


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # Pairwise, label-dependent: its value changes if any rank only sees its own slice.
    dist_matrix = torch.cdist(features, features)
    same = labels[:, None] == labels[None, :]
    return (dist_matrix * same).sum() / same.sum() - (dist_matrix * ~same).mean()


def _worker(rank: int, world: int, port: int, inputs, labels, weight, out_dir) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Linear(inputs.shape[1], 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(weight)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    local = slice(rank * 4, rank * 4 + 4)
    features = gather_with_grad(ddp(inputs[local]))
    all_labels = gather_with_grad(labels[local])
    loss = _batch_loss(features, all_labels)
    loss.backward()
    torch.save((loss.item(), model.weight.grad.clone()), f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_gathered_loss_gradient_equals_full_batch_gradient(tmp_path):
    torch.manual_seed(1)
    inputs, labels = torch.randn(8, 5), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    weight = torch.randn(3, 5)

    reference = torch.nn.Linear(5, 3, bias=False)
    with torch.no_grad():
        reference.weight.copy_(weight)
    full_loss = _batch_loss(reference(inputs), labels)
    full_loss.backward()

    mp.spawn(_worker, args=(2, _free_port(), inputs, labels, weight, str(tmp_path)), nprocs=2)
    for rank in range(2):
        loss, grad = torch.load(tmp_path / f"rank{rank}.pt")
        assert abs(loss - full_loss.item()) < 1e-6
        torch.testing.assert_close(grad, reference.weight.grad, rtol=1e-5, atol=1e-6)


def test_gather_is_identity_without_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
