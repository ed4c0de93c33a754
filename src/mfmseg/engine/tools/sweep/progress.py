"""What the running trainings are doing: their logs' last lines and a live line of iteration, it/s and ETA."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Sequence

from mfmseg.engine.tools.sweep.plan import SweepRun




def _tail_text(path: Path, size: int) -> str:
    """The last `size` bytes of a file that keeps growing ('' while it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def log_tail(path: Path, lines: int = 6) -> list[str]:
    """The last lines of a child's log; tqdm's carriage-return updates count as lines."""
    return [s.strip() for s in re.split(r"[\r\n]+", _tail_text(path, 16384)) if s.strip()][-lines:]


def last_train_row(path: Path) -> dict | None:
    """The newest complete `train` row of a run's metrics.jsonl (read from its end: the file grows all run long;
    a row being written is not JSON yet and is passed over)."""
    for line in reversed(_tail_text(path, 8192).splitlines()):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("kind") == "train":
            return row
    return None


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}" if minutes >= 60 else f"{minutes}:{s:02d}"


def run_progress(run: SweepRun) -> str:
    """`LABEL sS: iteration/max, it/s, ETA` from the run's newest log row ('starting' before its first)."""
    row = last_train_row(run.work_dir / "metrics.jsonl")
    name = f"{run.spec.label} s{run.seed}"
    if row is None:
        return f"{name}: starting"
    done, speed = int(row.get("iter", 0)), float(row.get("it_per_s") or 0.0)
    eta = f", ETA {_duration((run.max_iters - done) / speed)}" if speed > 0 and run.max_iters > done else ""
    return f"{name}: {done}/{run.max_iters} it, {speed:.2f} it/s{eta}"


class LiveLine:
    """The running trainings' progress as one line redrawn in place, at most once a second, on a terminal only:
    a long run between two one-line results must not look hung. A log (not a terminal) gets nothing from it: its
    one line per finished run says enough, without a redraw per second."""

    def __init__(self, stream) -> None:
        self.stream = stream if stream is not None and stream.isatty() else None
        self.drawn_at = 0.0
        self.visible = False

    def draw(self, runs: Sequence[SweepRun]) -> None:
        if self.stream is None or not runs or time.monotonic() - self.drawn_at < 1.0:
            return
        self.drawn_at = time.monotonic()
        width = shutil.get_terminal_size().columns - 1
        self.stream.write("\r" + " | ".join(run_progress(r) for r in runs)[:width] + "\x1b[K")
        self.stream.flush()
        self.visible = True

    def clear(self) -> None:
        """Before any other output: the next line starts on a clean one."""
        if self.visible:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.visible = False
