"""Rank the evaluations of one or several runs by a label-free metric: which checkpoint to keep without target
labels (`mfmseg select RUN_DIR... --by METRIC`, issue 19).

Every evaluation of a run logs its label-free metrics in `metrics.jsonl` (`engine.evaluation.label_free`); with
`train.keep_checkpoints=true` the inference weights of each evaluated iteration are kept as
`checkpoints/iter_<N>.pth`. Ranking reads only these files: no model is run. Where the val split had labels, the
table shows the true mIoU beside the metric, so the ranking can be checked, but never uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mfmseg.engine.evaluation.label_free import METRICS
from mfmseg.errors import UserError
from mfmseg.files import read_jsonl

CHECKPOINT_DIR = "checkpoints"
SELECTABLE = (*METRICS, "mIoU")  # mIoU: with a labelled val split (the usual, label-using selection)


def kept_checkpoint(run_dir: Path, iteration: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"iter_{iteration:06d}.pth"


@dataclass
class Candidate:
    run: str
    iteration: int
    value: float
    miou: float | None
    checkpoint: Path | None  # None: the weights of that iteration were not kept


def metric_value(row: dict, metric: str) -> float | None:
    """The metric of one `kind: val` row of metrics.jsonl (label-free values live under `label_free`)."""
    value = row.get("mIoU") if metric == "mIoU" else (row.get("label_free") or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def read_candidates(run_dir: Path, metric: str) -> list[Candidate]:
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        raise UserError(f"{run_dir} is not a training work dir (no metrics.jsonl)")
    found: dict[int, Candidate] = {}
    for row in read_jsonl(log):
        if row.get("kind") != "val":
            continue
        value = metric_value(row, metric)
        if value is None:
            continue
        it = int(row["iter"])
        ckpt = kept_checkpoint(run_dir, it)
        found[it] = Candidate(str(run_dir), it, value, metric_value(row, "mIoU"), ckpt if ckpt.is_file() else None)
    return list(found.values())


def rank_candidates(run_dirs: Sequence[str | Path], metric: str) -> list[Candidate]:
    """Every logged evaluation of every run, best first by `metric`."""
    if metric not in SELECTABLE:
        raise UserError(f"unknown metric '{metric}': choose one of {', '.join(SELECTABLE)}")
    candidates = [c for run in run_dirs for c in read_candidates(Path(run), metric)]
    if not candidates:
        raise UserError(f"no evaluation in {', '.join(map(str, run_dirs))} logged '{metric}' (label-free metrics "
                        f"are logged at each evaluation since this version; mIoU needs a labelled val split)")
    higher = METRICS.get(metric, True)
    return sorted(candidates, key=lambda c: -c.value if higher else c.value)


def is_better(metric: str, a: float, b: float) -> bool:
    """True when `a` beats `b` by `metric` (mIoU and the label-free metrics)."""
    return a > b if METRICS.get(metric, True) else a < b


def check_select_by(metric: str | None, val_set: object, label_free: bool) -> None:
    """`train.select_by` must name a metric this run will log (checked before any training)."""
    if metric is None:
        return
    if metric not in SELECTABLE:
        raise UserError(f"train.select_by={metric} is not one of {', '.join(SELECTABLE)}")
    if val_set is None:
        raise UserError(f"train.select_by={metric} needs evaluations: set train.eval_interval >= 0")
    if metric == "mIoU" and not getattr(val_set, "has_labels", False):
        raise UserError("train.select_by=mIoU needs a labelled data.val; without target labels select by a "
                        "label-free metric (docs/label_free.md)")
    if metric != "mIoU" and not label_free:
        raise UserError(f"train.select_by={metric} is a label-free metric: it needs eval.label_free=true")


def ranking_table(ranked: Sequence[Candidate], metric: str, top: int = 10) -> str:
    direction = "higher" if METRICS.get(metric, True) else "lower"
    lines = [f"rank by {metric} ({direction} is better):",
             f"{'#':>3}  {metric:>12}  {'true mIoU':>9}  {'iter':>7}  checkpoint"]
    for i, c in enumerate(ranked[:top], 1):
        miou = "—" if c.miou is None else f"{c.miou:.2f}"
        where = str(c.checkpoint) if c.checkpoint else f"{c.run} (weights of this iteration not kept)"
        lines.append(f"{i:>3}  {c.value:>12.4f}  {miou:>9}  {c.iteration:>7}  {where}")
    return "\n".join(lines)


__all__ = ["CHECKPOINT_DIR", "SELECTABLE", "Candidate", "check_select_by", "is_better", "kept_checkpoint",
           "metric_value", "rank_candidates", "ranking_table"]
