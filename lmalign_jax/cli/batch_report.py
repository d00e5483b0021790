"""What ``lmalign batch`` tells the user: per-series progress on stderr while it runs, and the
summary of every series at the end (text table, TSV, exit status)."""

from __future__ import annotations

import math
import sys
import time

from ..workflow.batch_series import RESUMED, STATUS_BAD, STATUS_ERROR, STATUS_FAILED, STATUS_OK, Outcome
from .common import EXIT_OK, note

__all__ = ["TSV_COLUMNS", "BatchProgress", "batch_exit_code", "summary_table", "summary_tsv"]


class BatchProgress:
    """Per-series status on stderr: a line when each series is done; on a terminal also a
    running line with the stage counts."""

    def __init__(self, names: list[str], *, quiet: bool = False):
        self.names, self.quiet = names, quiet
        self.tty = sys.stderr.isatty()
        self.stage_counts: dict[str, int] = {}
        self.done = 0
        self.start = time.perf_counter()

    def _status_line(self):
        if self.tty and self.stage_counts:
            stages = ", ".join(f"{k} {v}" for k, v in self.stage_counts.items())
            sys.stderr.write(
                f"\r\033[Klmalign: {self.done}/{len(self.names)} series done; stages finished: {stages}; "
                f"{time.perf_counter() - self.start:.0f} s"
            )
            sys.stderr.flush()

    def event(self, index: int, event: str, detail: str) -> None:
        """An ``align_batch`` progress event of series ``index`` (of ``names``)."""
        if event in ("done", "error"):
            return
        self.stage_counts[event] = self.stage_counts.get(event, 0) + 1
        self._status_line()

    def finished(self, outcome: Outcome) -> None:
        """A series' outputs are written (or it failed)."""
        self.done += 1
        if self.tty:
            sys.stderr.write("\r\033[K")
        if not self.quiet or outcome.exit_code != EXIT_OK:
            width = len(str(len(self.names)))
            rms = f", rms {outcome.rms_residual_px:.4f} px" if outcome.rms_residual_px is not None else ""
            why = f": {_remark(outcome)}" if _remark(outcome) else ""
            note(
                f"[{self.done:>{width}}/{len(self.names)}] {outcome.series}: {outcome.status}{why}{rms} "
                f"({outcome.seconds:.2f} s)"
            )
        self._status_line()

    def close(self):
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _fmt(value, spec: str) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and not math.isfinite(value))
        else format(value, spec)
    )


def _remark(o: Outcome) -> str:
    """What to say of a series beyond its status: why it failed, or that its outputs were kept."""
    return o.detail if o.exit_code != EXIT_OK or o.detail == RESUMED else ""


def summary_table(outcomes: list[Outcome]) -> str:
    """The summary as an aligned text table."""
    width = max([6, *(len(o.series) for o in outcomes)])
    lines = [f"{'series':<{width}}  views  markers  points   rms px  mean px  status     time s  detail"]
    for o in outcomes:
        lines.append(
            f"{o.series:<{width}}  {_fmt(o.views, 'd'):>5}  {_fmt(o.markers_fitted, 'd'):>7}  "
            f"{_fmt(o.points, 'd'):>6}  {_fmt(o.rms_residual_px, '.4f'):>7}  "
            f"{_fmt(o.mean_residual_px, '.4f'):>7}  {o.status:<9}  {o.seconds:6.2f}  {_remark(o)}"
        )
    counts = {
        k: sum(o.status == k for o in outcomes) for k in (STATUS_OK, STATUS_FAILED, STATUS_BAD, STATUS_ERROR)
    }
    crashed = f", {counts[STATUS_ERROR]} internal error" if counts[STATUS_ERROR] else ""
    lines.append(
        f"{len(outcomes)} series: {counts[STATUS_OK]} converged, {counts[STATUS_FAILED]} failed, "
        f"{counts[STATUS_BAD]} bad input{crashed}"
    )
    return "\n".join(lines) + "\n"


TSV_COLUMNS = (
    "series",
    "markers",
    "tilts",
    "views",
    "markers_fitted",
    "points",
    "rms_residual_px",
    "mean_residual_px",
    "status",
    "exit_code",
    "seconds",
    "detail",
)


def summary_tsv(outcomes: list[Outcome]) -> str:
    """The summary as tab-separated values, one row per series (empty cells where unknown)."""

    def cell(v):
        return (
            ""
            if v is None
            else (f"{v:.6g}" if isinstance(v, float) else str(v)).replace("\t", " ").replace("\n", " ")
        )

    rows = ["\t".join(TSV_COLUMNS)] + ["\t".join(cell(getattr(o, c)) for c in TSV_COLUMNS) for o in outcomes]
    return "\n".join(rows) + "\n"


def batch_exit_code(outcomes: list[Outcome]) -> int:
    """2 if any input was bad, else 1 if any alignment failed, else 0."""
    codes = {o.exit_code for o in outcomes}
    return max(codes, default=EXIT_OK)  # 3 internal error > 2 bad input > 1 failed > 0
