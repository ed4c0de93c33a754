"""The numbers (pure Python on summary dicts): mean ± std per label and seed-paired differences to a baseline."""

from __future__ import annotations

import statistics
from typing import Mapping, Sequence

from mfmseg.engine.tools.sweep.plan import SweepRun




METRICS = ("mIoU", "mIoU16", "mIoU13")


def mean_std(values: Sequence[float]) -> dict:
    """n, mean and the sample standard deviation (ddof=1; None below two values)."""
    vals = [float(v) for v in values]
    return {"n": len(vals), "mean": statistics.fmean(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) > 1 else None}


def paired_difference(values: Mapping[str, float], baseline: Mapping[str, float]) -> dict | None:
    """`values - baseline` over the seeds both have: mean ± std of the differences, how many are > 0."""
    diffs = {s: values[s] - baseline[s] for s in values if s in baseline}
    if not diffs:
        return None
    return {**mean_std(list(diffs.values())), "positive": sum(d > 0 for d in diffs.values()), "per_seed": diffs}


def per_class_means(per_class: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Mean IoU per class over runs; a class absent (None) in a run is left out, None if absent in all."""
    classes = list(dict.fromkeys(c for pc in per_class for c in pc))
    means = {}
    for c in classes:
        vals = [pc[c] for pc in per_class if pc.get(c) is not None]
        means[c] = statistics.fmean(vals) if vals else None
    return means


def run_record(run: SweepRun) -> dict:
    """What the JSON keeps of a run: its numbers, status and where it lives."""
    s = run.summary or {}
    return {"label": run.spec.label, "seed": run.seed, "status": run.status, "work_dir": str(run.work_dir),
            "log": str(run.log), "error": run.error or None, **{m: s.get(m) for m in METRICS},
            "per_class_iou": s.get("per_class_iou") or {}, "iters": s.get("iters"),
            "train_seconds": s.get("train_seconds")}


def aggregate(records: Sequence[Mapping], labels: Sequence[str], seeds: Sequence[int],
              baseline: str | None = None) -> dict:
    """Per label: each metric's mean ± std and per-seed values, per-class means, and the paired difference of
    mIoU to `baseline`. `records` are `run_record` dicts (or hand-made ones with the same keys)."""
    by_label: dict[str, dict] = {}
    for label in labels:
        done = [r for r in records if r["label"] == label and r["status"] == "done"]
        entry: dict = {}
        for m in METRICS:
            per_seed = {str(r["seed"]): r[m] for r in done if r.get(m) is not None}
            entry[m] = {**mean_std(list(per_seed.values())), "per_seed": per_seed}
        entry["per_class_iou"] = per_class_means([r.get("per_class_iou") or {} for r in done])
        by_label[label] = entry
    for label, entry in by_label.items():
        entry["vs_baseline"] = None if baseline in (None, label) else paired_difference(
            entry["mIoU"]["per_seed"], by_label[baseline]["mIoU"]["per_seed"])
    return {"seeds": list(seeds), "baseline": baseline, "labels": by_label, "runs": [dict(r) for r in records]}
