"""Dataset preparation: raw releases → the folders the DataModules read, and their validation.

``python src/prepare.py <dataset> --raw <dir> --out <dir>`` prepares (resumable, parallel, with a
final report); ``python src/prepare.py <dataset> --check <dir>`` validates a prepared folder
without modifying it. Every dataset module offers ``prepare_<dataset>(raw, out, ...)`` and
``check_<dataset>(root, ...)`` returning a :class:`~metareid.prepare.report.PrepareReport`.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from metareid.prepare.casiab import check_casiab, prepare_casiab
from metareid.prepare.cuhk03 import BOX_TYPES, check_cuhk03, prepare_cuhk03
from metareid.prepare.cuhksysu import check_cuhksysu, prepare_cuhksysu
from metareid.prepare.market1501 import (
    LINK_MODES,
    check_dukemtmc,
    check_market1501,
    prepare_dukemtmc,
    prepare_market1501,
)
from metareid.prepare.msmt17 import check_msmt17, prepare_msmt17
from metareid.prepare.oumvlp_grew import check_grew, check_oumvlp, prepare_grew, prepare_oumvlp
from metareid.prepare.report import (
    MANIFEST_NAME,
    PrepareError,
    PrepareReport,
    default_workers,
)

__all__ = ["DATASETS", "DatasetCommands", "build_parser", "main"]


@dataclass(frozen=True)
class DatasetCommands:
    prepare: Callable[..., PrepareReport]
    check: Callable[..., PrepareReport]
    summary: str


DATASETS: dict[str, DatasetCommands] = {
    "casiab": DatasetCommands(prepare_casiab, check_casiab, "CASIA-B silhouettes → 64×64 pkl"),
    "oumvlp": DatasetCommands(prepare_oumvlp, check_oumvlp, "OU-MVLP silhouettes → 64×64 pkl"),
    "grew": DatasetCommands(prepare_grew, check_grew, "GREW silhouettes → pkl"),
    "market1501": DatasetCommands(prepare_market1501, check_market1501, "Market-1501 (+500k)"),
    "dukemtmc": DatasetCommands(prepare_dukemtmc, check_dukemtmc, "DukeMTMC-reID"),
    "msmt17": DatasetCommands(prepare_msmt17, check_msmt17, "MSMT17 V1/V2 → V1 layout"),
    "cuhk03": DatasetCommands(prepare_cuhk03, check_cuhk03, "CUHK03 .mat → PNG + new split"),
    "cuhksysu": DatasetCommands(prepare_cuhksysu, check_cuhksysu, "CUHK-SYSU crops"),
}

# CLI option → keyword of the prepare/check functions. Options are only forwarded when given, and
# an option the chosen dataset does not take is an error rather than silently ignored.
DATASET_OPTIONS = {
    "partition": "partition",
    "packed": "packed",
    "link": "link",
    "boxes": "boxes",
    "with_distractors": "with_distractors",
}


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    datasets = "\n".join(f"  {name:<11} {c.summary}" for name, c in DATASETS.items())
    parser = argparse.ArgumentParser(
        prog="prepare.py",
        description="Prepare a raw dataset release for metareid, or check a prepared folder.",
        epilog=f"datasets:\n{datasets}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--raw", type=Path, help="extracted raw release")
    parser.add_argument("--out", type=Path, help="output folder (re-running resumes)")
    parser.add_argument("--check", type=Path, metavar="DIR", help="validate a prepared folder")
    parser.add_argument(
        "--workers", type=int, default=default_workers(), help="processes (default: %(default)s)"
    )
    parser.add_argument(
        "--strict",
        type=_parse_bool,
        default=True,
        metavar="{true,false}",
        help="stop at the first problem (default); false skips and lists problems",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    group = parser.add_argument_group("dataset options")
    group.add_argument("--partition", type=Path, help="gait partition JSON (TRAIN_SET/TEST_SET)")
    group.add_argument(
        "--packed",
        action="store_true",
        default=None,
        help="gait: also write the packed store <out>/packed (one memory-mapped frame array)",
    )
    parser.add_argument(
        "--pack", type=Path, metavar="DIR", help="gait: write the packed store of a prepared tree"
    )
    group.add_argument("--link", choices=LINK_MODES, help="how ReID images are placed (symlink)")
    group.add_argument("--boxes", nargs="+", choices=BOX_TYPES, help="CUHK03 box types (both)")
    group.add_argument(
        "--with-distractors",
        action="store_true",
        default=None,
        help="Market-1501: also take the images/ folder of the 500k distractors",
    )
    checks = parser.add_argument_group("check options")
    checks.add_argument(
        "--expect",
        choices=("release", "manifest", "none"),
        default="release",
        help="compare counts with the official release (default), the prepare manifest, or nothing",
    )
    checks.add_argument("--quick", action="store_true", help="do not decode every file")
    return parser


def _dataset_kwargs(
    args: argparse.Namespace,
    function: Callable[..., PrepareReport],
    parser: argparse.ArgumentParser,
) -> dict:
    accepted = inspect.signature(function).parameters
    kwargs = {}
    for option, keyword in DATASET_OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            continue
        if keyword not in accepted:
            parser.error(f"--{option.replace('_', '-')} does not apply to {args.dataset}")
        kwargs[keyword] = value
    return kwargs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status.

    0: done (prepare) or everything as expected (check); 1: check found problems; 2: stopped by
    a problem (strict mode) or a wrong input folder.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = DATASETS[args.dataset]
    console = Console(stderr=True)
    common = {"workers": max(1, args.workers), "show_progress": not args.no_progress}
    try:
        if args.pack is not None:
            from metareid.prepare.casiab import pack_gait_dataset

            report = pack_gait_dataset(args.dataset, args.pack)
            report.render(console)
            return 0
        if args.check is not None:
            if args.raw is not None or args.out is not None:
                parser.error("--check takes no --raw/--out")
            kwargs = _dataset_kwargs(args, commands.check, parser)
            report = commands.check(
                args.check, expect=args.expect, deep=not args.quick, **common, **kwargs
            )
            report.render(console)
            return 0 if report.ok or not args.strict else 1
        if args.raw is None or args.out is None:
            parser.error("give --raw and --out to prepare, or --check DIR to validate")
        kwargs = _dataset_kwargs(args, commands.prepare, parser)
        report = commands.prepare(args.raw, args.out, strict=args.strict, **common, **kwargs)
    except PrepareError as error:
        console.print(f"[red]error:[/red] {error}", highlight=False)
        return 2
    report.render(console)
    console.print(f"report stored in {args.out / MANIFEST_NAME}", highlight=False)
    return 0
