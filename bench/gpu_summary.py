"""Collect the JSON of one `bench/gpu_session.sh` run into `summary.md` and `summary.json`.

The device tool returns at most 8 files, so every benchmark writes its JSON into a work folder and
this script folds them (and the nvidia-smi utilisation samples of the training run) into two.

    python bench/gpu_summary.py --json-dir <work>/json --util <work>/gpu_util.csv --out $OUT
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path


def utilisation_stats(util_csv: Path, skip_seconds: float = 20.0) -> dict[str, float] | None:
    """Mean / median / 10th percentile of GPU utilisation (%) over the sampled training run.

    ``util_csv`` rows are ``timestamp, utilization.gpu, memory.used`` as nvidia-smi writes them;
    the first ``skip_seconds`` (process start, model build, first batches, autotuning) are left out.
    """
    if not util_csv.is_file():
        return None
    samples = []
    for line in util_csv.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[1].replace(".", "").isdigit():
            samples.append((float(parts[1]), float(parts[2])))
    if not samples:
        return None
    period_s = 0.2
    kept = samples[int(skip_seconds / period_s):] or samples
    utilisation = sorted(u for u, _ in kept)
    return {
        "samples": len(kept),
        "util_mean": statistics.fmean(utilisation),
        "util_median": statistics.median(utilisation),
        "util_p10": utilisation[int(0.1 * (len(utilisation) - 1))],
        "memory_used_max_mib": max(m for _, m in kept),
    }


def _format(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json-dir", type=Path, required=True)
    parser.add_argument("--util", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    results = {p.stem: json.loads(p.read_text()) for p in sorted(args.json_dir.glob("*.json"))}
    if args.util is not None:
        stats = utilisation_stats(args.util)
        if stats is not None:
            results["gpu_utilisation"] = stats
    lines = ["# GPU session summary", ""]
    for name, values in results.items():
        lines += [f"## {name}", "", "| key | value |", "|---|---|"]
        flat = values if isinstance(values, dict) else {"value": values}
        lines += [f"| {key} | {_format(value)} |" for key, value in flat.items()]
        lines.append("")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text("\n".join(lines))
    (args.out / "summary.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
