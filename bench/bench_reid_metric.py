"""Time ReIDRetrieval on a random Market-1501-sized problem (3,368 queries x 15,913 gallery).

Features are identity-clustered Gaussians so that the metric values are non-trivial; the figure
of interest is the wall time of ``compute()`` (distance, sorting and CMC/mAP/mINP).

    python bench/bench_reid_metric.py            # full size, 2048-d
    python bench/bench_reid_metric.py --quick    # 500 x 2,000, 256-d
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from metareid.evaluation.reid import ReIDRetrieval

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "reid_metric.json"


def make_problem(num_query: int, num_gallery: int, dim: int, num_ids: int, noise: float, seed: int):
    """Identity-clustered features; cameras 0-5; every query identity also in the gallery."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_ids, dim, generator=generator)
    query_pids = torch.randint(0, num_ids, (num_query,), generator=generator)
    gallery_pids = torch.cat(
        [query_pids, torch.randint(0, num_ids, (num_gallery - num_query,), generator=generator)]
    )[:num_gallery]
    pids = torch.cat([query_pids, gallery_pids])
    features = centers[pids] + noise * torch.randn(len(pids), dim, generator=generator)
    camids = torch.randint(0, 6, (len(pids),), generator=generator)
    is_query = torch.arange(len(pids)) < num_query
    return features, pids, camids, is_query


def time_metric(problem, chunk_size: int, repeats: int, batch_size: int = 512):
    features, pids, camids, is_query = problem
    timings, results = [], None
    for _ in range(repeats):
        metric = ReIDRetrieval(query_chunk_size=chunk_size)
        start = time.perf_counter()
        for begin in range(0, len(pids), batch_size):
            batch = slice(begin, begin + batch_size)
            metric.update(features[batch], pids[batch], camids[batch], is_query[batch])
        results = metric.compute()
        timings.append(time.perf_counter() - start)
    return timings, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=3368)
    parser.add_argument("--gallery", type=int, default=15913)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--ids", type=int, default=750)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--noise",
        type=float,
        default=None,
        help="per-dimension noise std (default 0.55 * dim**0.25)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="500 x 2000 problem, 256-d")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH)
    args = parser.parse_args()
    if args.quick:
        args.queries, args.gallery, args.dim, args.ids = 500, 2000, 256, 200
    if args.noise is None:
        # Squared-distance gaps grow like dim and their spread like sqrt(dim) * noise^2, so this
        # keeps the retrieval task similarly hard (mAP well below 100) at every dimension.
        args.noise = 0.55 * args.dim**0.25
    if args.gallery < args.queries:
        parser.error("--gallery must be at least --queries (every query id is put in the gallery)")

    problem = make_problem(args.queries, args.gallery, args.dim, args.ids, args.noise, args.seed)
    timings, results = time_metric(problem, args.chunk_size, args.repeats)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    record = {
        "queries": args.queries,
        "gallery": args.gallery,
        "dim": args.dim,
        "chunk_size": args.chunk_size,
        "noise": args.noise,
        "seconds_per_run": timings,
        "best_seconds": min(timings),
        "peak_rss_mib": round(peak_rss_mib, 1),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "metrics": {key: round(float(value), 4) for key, value in results.items() if key != "cmc"},
    }
    rows = [
        ("problem", f"{args.queries} x {args.gallery}, {args.dim}-d"),
        ("query chunk", str(args.chunk_size)),
        ("torch threads", str(record["torch_threads"])),
        ("best time [s]", f"{record['best_seconds']:.2f}"),
        ("all runs [s]", ", ".join(f"{t:.2f}" for t in timings)),
        ("peak RSS [MiB]", f"{peak_rss_mib:.0f}"),
        ("rank1 / mAP / mINP", "{rank1:.2f} / {mAP:.2f} / {mINP:.2f}".format(**record["metrics"])),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
