"""Time a MetaGait training step and evaluation throughput.

    python bench/bench_metagait.py          # reference shapes, n=8 sequences × 30 frames
    python bench/bench_metagait.py --batch 64 --device cuda --precision 16-mixed
    python bench/bench_metagait.py --channels 16 32 64 --bins 16 --quick
    python bench/bench_metagait.py --device cuda --precision bf16-mixed --compile --channels-last

--compile / --channels-last apply to the training step only (model.compile / model.channels_last
do the same in training: metareid.models.compile); the evaluation forward stays eager. The first
compiled step (graph capture + kernel generation) is a warm-up and is not timed.

Prints a table and writes bench/results/metagait.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from metareid.losses.gait_triplet import BatchAllTripletLoss
from metareid.losses.part_cross_entropy import PartCrossEntropyLoss
from metareid.models import MetaGait
from metareid.models.compile import training_forward


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8, help="training sequences per step (P·K)")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--eval-batch", type=int, default=8, help="sequences per inference batch")
    parser.add_argument("--eval-frames", type=int, default=80, help="length of evaluated sequences")
    parser.add_argument("--channels", type=int, nargs=3, default=[32, 64, 128])
    parser.add_argument("--bins", type=int, default=64)
    parser.add_argument("--classes", type=int, default=74)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32", choices=["32", "16-mixed", "bf16-mixed"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    parser.add_argument(
        "--channels-last", action="store_true", help="channels_last_3d Conv3d weights"
    )
    parser.add_argument("--quick", action="store_true", help="1 warm-up, 2 repeats")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "metagait.json"))
    args = parser.parse_args()
    repeats, warmup = (2, 1) if args.quick else (args.repeats, 2)

    device = torch.device(args.device)
    net = MetaGait(channels=tuple(args.channels), class_num=args.classes, bin_num=args.bins).to(
        device
    )
    train_forward = training_forward(net, compile=args.compile, channels_last=args.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=3.5e-4, weight_decay=5e-4)
    triplet, cross_entropy = BatchAllTripletLoss(0.2), PartCrossEntropyLoss()
    autocast_dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(args.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "16-mixed")

    p = max(args.batch // 8, 1)
    labels = torch.arange(p, device=device).repeat_interleave(args.batch // p)
    sils = torch.rand(labels.numel(), args.frames, 64, 44, device=device).round()

    def train_step() -> None:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = train_forward(sils)
        loss = (
            triplet(out["embeddings"].float(), labels)[0]
            + cross_entropy(out["logits"].float(), labels)[0]
        )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    net.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_times = _timed(train_step, device, repeats, warmup)
    train_peak = (
        torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    )

    eval_sils = torch.rand(args.eval_batch, args.eval_frames, 64, 44, device=device).round()
    lengths = (
        torch.linspace(args.eval_frames // 2, args.eval_frames, args.eval_batch).long().to(device)
    )

    def eval_step() -> None:
        with (
            torch.no_grad(),
            torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None),
        ):
            net(eval_sils, seq_lens=lengths)

    net.eval()
    eval_times = _timed(eval_step, device, repeats, warmup)

    train_s = sorted(train_times)[len(train_times) // 2]
    eval_s = sorted(eval_times)[len(eval_times) // 2]
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "precision": args.precision,
        "compile": args.compile,
        "channels_last": args.channels_last,
        "channels": args.channels,
        "bins": args.bins,
        "train_batch": int(labels.numel()),
        "train_frames": args.frames,
        "train_step_s": train_s,
        "train_sequences_per_s": labels.numel() / train_s,
        "train_peak_gib": train_peak,
        "eval_batch": args.eval_batch,
        "eval_frames_max": args.eval_frames,
        "eval_sequences_per_s": args.eval_batch / eval_s,
        "params": sum(p.numel() for p in net.parameters()),
    }
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
