"""Time one DR50 / ACL iteration with a meta step: basic step + meta-train + meta-test + outer step.

    python bench/bench_dr50_meta.py --quick                                   # reduced width, 64x32
    python bench/bench_dr50_meta.py --width 1.0 --height 256 --width-px 128 --device cuda
    python bench/bench_dr50_meta.py --quick --compile --channels-last

--compile wraps the basic-step and meta-train forwards (as model.compile does in ReIDModule); the
meta-test forward is functional_call on the plain module. --channels-last stores the conv weights
as channels_last. The first iteration (with the compilation) is a warm-up and is not reported.

Prints a table and writes bench/results/dr50_meta.json. The step is the ReIDModule's (same
functions: bn_mode, meta_gradients, fast_weights, functional_call), without Lightning.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch.func import functional_call

from metareid.losses.reid import ACLLosses
from metareid.models import DR50, MetaEmbeddingHead, ReIDBaseline
from metareid.models.compile import training_forward
from metareid.models.meta_ops import bn_mode, fast_weights, meta_gradients


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--width", type=float, default=0.125, help="DR50 width multiplier")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width-px", type=int, default=32)
    parser.add_argument(
        "--batch", type=int, default=64, help="basic batch (domain batches are half)"
    )
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 100, 100])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the basic / meta-train forwards"
    )
    parser.add_argument("--channels-last", action="store_true", help="channels_last conv weights")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "dr50_meta.json"))
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    device = torch.device(args.device)

    backbone = DR50(width_mult=args.width)
    net = ReIDBaseline(backbone, MetaEmbeddingHead(backbone.out_channels, args.classes)).to(device)
    forward = training_forward(net, compile=args.compile, channels_last=args.channels_last)
    losses = ACLLosses()
    params = [p for p in net.parameters() if p.requires_grad]
    main_opt = torch.optim.SGD(params, lr=0.04, momentum=0.9, weight_decay=5e-4)
    meta_opt = torch.optim.SGD(params, lr=0.04, momentum=0.0, weight_decay=5e-4)
    offsets = torch.tensor([0, *args.classes]).cumsum(0)

    def batch(size: int, domains: list[int]) -> tuple:
        per = size // len(domains) // 2 * 2  # whole identity pairs (K = 2)
        labels = torch.cat(
            [
                torch.randint(0, args.classes[d] // 2, (per // 2,)).repeat_interleave(2)
                + offsets[d]
                for d in domains
            ]
        )
        domain_ids = torch.tensor(domains).repeat_interleave(per)
        images = torch.rand(len(labels), 3, args.height, args.width_px) * 255
        return images.to(device), labels.to(device), domain_ids.to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    timings: dict[str, list[float]] = {"basic": [], "meta_train": [], "meta_test": [], "outer": []}
    for _ in range(repeats + 1):
        images, labels, domains = batch(args.batch, [0, 1, 2])
        sync()
        t0 = time.perf_counter()
        with bn_mode(net, "general"):
            loss = sum(losses.basic(forward(images), labels, domains).values())
        main_opt.zero_grad()
        loss.backward()
        main_opt.step()
        sync()
        t1 = time.perf_counter()
        tr_images, tr_labels, tr_domains = batch(args.batch, [0, 1])
        te_images, te_labels, te_domains = batch(args.batch // 2, [2])
        with bn_mode(net, "hold"):
            mtr = sum(losses.meta_train(forward(tr_images), tr_labels, tr_domains).values())
            grads = meta_gradients(mtr, net)
            sync()
            t2 = time.perf_counter()
            weights = fast_weights(net, grads, meta_opt.param_groups[0]["lr"])
            weights.update(dict(net.named_buffers()))
            out = functional_call(net, weights, (te_images,))
            mte = sum(losses.meta_test(out, te_labels, te_domains).values())
            sync()
            t3 = time.perf_counter()
        meta_opt.zero_grad()
        (mtr + mte).backward()
        meta_opt.step()
        sync()
        t4 = time.perf_counter()
        for key, value in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            timings[key].append(value)
    result = {
        "machine": platform.machine(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "width_mult": args.width,
        "image": [args.height, args.width_px],
        "batch": args.batch,
        "compile": args.compile,
        "channels_last": args.channels_last,
        "params": sum(p.numel() for p in net.parameters()),
    }
    # The first iteration is warm-up; report the median of the rest.
    for key, values in timings.items():
        kept = sorted(values[1:])
        result[f"{key}_s"] = kept[len(kept) // 2]
    result["meta_iteration_s"] = sum(result[f"{k}_s"] for k in timings)
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(
            f"{key:<{width}}  {value:.4g}"
            if isinstance(value, float)
            else f"{key:<{width}}  {value}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
