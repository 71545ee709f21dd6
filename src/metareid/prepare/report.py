"""Bookkeeping shared by every preparation command: problems, counted skips, counts, progress.

A *problem* is something the user can fix (a corrupt image, a misplaced folder, a ``.mat`` without
a field). With ``strict=True`` (the default) the first problem stops the run with a message that
names the path and the fix; with ``strict=False`` the item is skipped and the problem is listed in
the final report. Things that are part of the data rather than mistakes (near-empty silhouette
frames, junk boxes) are *drops*: counted, never fatal.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from metareid.utils.progress import track

__all__ = [
    "MANIFEST_NAME",
    "PrepareError",
    "PrepareReport",
    "Problem",
    "default_workers",
    "fatal",
    "read_manifest",
    "run_parallel",
    "track",
]

# Hidden so that loaders listing the dataset root (subject ids, image files) never see it.
MANIFEST_NAME = ".metareid_prepare.json"
# How many problems the rendered report prints before summarising the rest.
MAX_LISTED = 20

TaskT = TypeVar("TaskT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class Problem:
    """A fixable defect of the input, tied to the file or folder that has it."""

    path: str
    message: str
    fix: str

    def describe(self) -> str:
        return f"{self.path}: {self.message}. Fix: {self.fix}"


class PrepareError(RuntimeError):
    """A :class:`Problem` that stops the run; ``str()`` names the path and the fix.

    ``skippable`` problems are those ``strict=False`` would have skipped; the others (a missing
    dataset root, a wrong root depth) stop every run.
    """

    def __init__(self, problem: Problem, skippable: bool = True) -> None:
        hint = " (or pass --strict false to skip and list it)" if skippable else ""
        super().__init__(problem.describe() + hint)
        self.problem = problem


def fatal(path: str | Path, message: str, fix: str) -> PrepareError:
    """An error that stops every run, strict or not (e.g. a dataset root at the wrong depth)."""
    return PrepareError(Problem(str(path), message, fix), skippable=False)


@dataclass
class Comparison:
    """A found count next to the count it should have."""

    name: str
    found: int
    expected: int
    source: str

    @property
    def ok(self) -> bool:
        return self.found == self.expected


@dataclass
class PrepareReport:
    """Everything a preparation or check run has to tell the user at the end.

    Attributes:
        dataset: dataset key (``casiab``, ``market1501`` ...).
        action: ``"prepare"`` or ``"check"``.
        strict: raise on the first problem instead of listing it.
        counts: named totals (written sequences, images per split ...), in insertion order.
        dropped: counted drops that are part of the data (e.g. ``near-empty frames``).
        dropped_sequences: sequences that produced no output because no frame survived.
        problems: problems recorded instead of raised (``strict=False`` or ``check``).
        warnings: remarks that need no action (short sequences, unused ids ...).
        comparisons: found vs expected counts.
    """

    dataset: str
    action: str = "prepare"
    strict: bool = True
    counts: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_sequences: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)

    # ------------------------------------------------------------------ recording
    def add(self, key: str, amount: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + amount

    def add_counts(self, counts: Mapping[str, int]) -> None:
        for key, value in counts.items():
            self.add(key, value)

    def drop(self, key: str, amount: int = 1) -> None:
        if amount:
            self.dropped[key] = self.dropped.get(key, 0) + amount

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def problem(self, path: str | Path, message: str, fix: str) -> None:
        """Raise :class:`PrepareError` in strict mode, otherwise record a counted skip."""
        self.record(Problem(str(path), message, fix))

    def record(self, problem: Problem) -> None:
        if self.strict:
            raise PrepareError(problem)
        self.problems.append(problem)

    def compare(self, found: Mapping[str, int], expected: Mapping[str, int], source: str) -> None:
        """Compare every key of ``expected`` that ``found`` also has."""
        for name, value in expected.items():
            if name in found:
                self.comparisons.append(Comparison(name, int(found[name]), int(value), source))

    # ------------------------------------------------------------------ conclusions
    def finish_prepare(
        self,
        out: Path,
        counts: Mapping[str, int],
        expected: Mapping[str, int] | None,
        source: str = "official release",
    ) -> None:
        """End a prepare run: record the final ``counts``, compare them with ``expected``
        (skipped when ``None`` or empty) and write the manifest into ``out``."""
        self.add_counts(counts)
        if expected:
            self.compare(counts, expected, source)
        self.write_manifest(out, counts)

    def finish_check(
        self,
        root: Path,
        counts: Mapping[str, int],
        release_counts: Mapping[str, int] | None,
        expect: str,
    ) -> PrepareReport:
        """End a check run: record ``counts`` and compare them with the release
        (``expect="release"``), the prepare manifest in ``root`` (``"manifest"``) or nothing
        (``"none"``); returns this report."""
        self.add_counts(counts)
        if expect == "release":
            if release_counts:
                self.compare(counts, release_counts, "official release")
        elif expect == "manifest":
            manifest = read_manifest(root)
            if manifest is None:
                self.problem(
                    root,
                    "no prepare manifest to compare with",
                    "use --expect release or none, or re-run prepare into this folder",
                )
            else:
                self.compare(counts, manifest.get("counts", {}), "prepare manifest")
        elif expect != "none":
            raise ValueError(f"expect must be 'release', 'manifest' or 'none', got {expect!r}")
        return self

    # ------------------------------------------------------------------ summary
    @property
    def mismatches(self) -> list[Comparison]:
        return [c for c in self.comparisons if not c.ok]

    @property
    def ok(self) -> bool:
        """No listed problem and every compared count as expected."""
        return not self.problems and not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "action": self.action,
            "strict": self.strict,
            "counts": dict(self.counts),
            "dropped": dict(self.dropped),
            "dropped_sequences": sorted(self.dropped_sequences),
            "problems": [asdict(p) for p in self.problems],
            "warnings": list(self.warnings),
            "comparisons": [asdict(c) | {"ok": c.ok} for c in self.comparisons],
        }

    def write_manifest(self, out: Path, counts: Mapping[str, int]) -> Path:
        """Store ``counts`` (what ``--check --expect manifest`` verifies) and this report."""
        path = Path(out) / MANIFEST_NAME
        payload = {"dataset": self.dataset, "counts": dict(counts), "report": self.to_dict()}
        path.write_text(json.dumps(payload, indent=2))
        return path

    def render(self, console: Console | None = None) -> None:
        """Print the final report: counts, drops, comparisons, problems and warnings."""
        console = console or Console(stderr=True)
        title = f"{self.action} {self.dataset}: " + ("OK" if self.ok else "needs attention")
        table = Table(title=title, show_header=True, header_style="bold")
        table.add_column("item")
        table.add_column("value", justify="right")
        for key, value in self.counts.items():
            table.add_row(key, f"{value:,}")
        for key, value in self.dropped.items():
            table.add_row(f"dropped: {key}", f"{value:,}")
        if self.dropped_sequences:
            table.add_row("sequences without any valid frame", f"{len(self.dropped_sequences):,}")
        table.add_row(
            "problems skipped" if self.action == "prepare" else "problems", str(len(self.problems))
        )
        console.print(table)
        if self.comparisons:
            compared = Table(title="expected counts", header_style="bold")
            for column in ("count", "found", "expected", "source", ""):
                compared.add_column(column)
            for c in self.comparisons:
                mark = "[green]ok[/green]" if c.ok else "[red]MISMATCH[/red]"
                compared.add_row(c.name, f"{c.found:,}", f"{c.expected:,}", c.source, mark)
            console.print(compared)
        self._print_list(console, "sequences without valid frames", sorted(self.dropped_sequences))
        self._print_list(console, "problems", [p.describe() for p in self.problems])
        self._print_list(console, "warnings", self.warnings)

    @staticmethod
    def _print_list(console: Console, heading: str, lines: list[str]) -> None:
        if not lines:
            return
        console.print(f"[bold]{heading} ({len(lines)}):[/bold]")
        for line in lines[:MAX_LISTED]:
            console.print(f"  - {line}", markup=False, highlight=False)
        if len(lines) > MAX_LISTED:
            console.print(f"  ... and {len(lines) - MAX_LISTED} more (all listed in the manifest)")


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The manifest a previous ``prepare`` wrote into ``root``, or ``None``."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def run_parallel(
    worker: Callable[[TaskT], ResultT],
    tasks: list[TaskT],
    *,
    workers: int,
    description: str,
    show_progress: bool = True,
) -> Iterator[ResultT]:
    """Apply ``worker`` to every task, in ``workers`` processes when more than one, with progress.

    Results arrive in completion order. ``worker`` must be a module-level function and must not
    raise for bad input: it returns the problem inside its result, so that the parent decides
    (strict or not) and a single bad file cannot take a pool down.
    """
    if workers <= 1 or len(tasks) <= 1:
        yield from track(map(worker, tasks), len(tasks), description, show_progress)
        return
    chunksize = max(1, len(tasks) // (workers * 16))
    with multiprocessing.Pool(workers) as pool:
        results = pool.imap_unordered(worker, tasks, chunksize=chunksize)
        yield from track(results, len(tasks), description, show_progress)
