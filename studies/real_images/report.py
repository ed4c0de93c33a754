"""Tables of the real-image study from its sweep folders: every run, paired deltas, q and pseudo-label accuracy,
per-class deltas, and whether the label-free metrics pick the better run and checkpoint.

    python studies/real_images/report.py STUDY_OUT [--out studies/real_images/results.md]

Reads `STUDY_OUT/{pilot_*,main,normeval}/runs/<label>/seed<S>/metrics.jsonl` (what `mfmseg sweep` writes); a run
counts when its last evaluation is at its `train.max_iters` (a run still going is listed as such, never averaged).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import yaml

COMPARISONS = [  # (label, baseline): the paired differences the study reports
    ("dacs_mfm", "dacs"), ("dacs", "source_only"), ("dacs_mfm", "source_only"), ("dacs_bnpass", "dacs"),
    ("dacs_mfm", "dacs_bnpass"), ("dacs_mfm_ne", "dacs_ne"), ("dacs_ne", "dacs"), ("dacs_mfm_ne", "dacs_mfm"),
]
SELECTORS = {"im": True, "agreement": True, "entropy": False, "confident": True}


def read_run(folder: Path) -> dict | None:
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]
    max_iters = yaml.safe_load((folder / "config.yaml").read_text())["train"]["max_iters"]
    evals = [r for r in rows if r.get("kind") == "val" and "mIoU" in r]
    train = [r for r in rows if r.get("kind") == "train"]
    if not evals:
        return None
    return {"evals": evals, "train": train, "done": evals[-1]["iter"] >= max_iters, "max_iters": max_iters}


def collect(out: Path) -> dict[str, dict[int, dict]]:
    runs: dict[str, dict[int, dict]] = {}
    for metrics in sorted(out.glob("*/runs/*/seed*/metrics.jsonl")):
        label, seed = metrics.parent.parent.name, int(metrics.parent.name[4:])
        label = {"src_k2i": "source_only", "src_i2k": "source_only_idd2kitti"}.get(label, label)
        run = read_run(metrics.parent)
        if run is not None:
            runs.setdefault(label, {})[seed] = run
    return runs


def window_mean(train: list[dict], key: str, start: float) -> float:
    vals = [r[key] for r in train if key in r and r["iter"] > start]
    return statistics.fmean(vals) if vals else math.nan


def fmt(v: float, signed: bool = False) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:+.2f}" if signed else f"{v:.2f}")


def mean_std(vals: list[float], signed: bool = False) -> str:
    if not vals:
        return "–"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{fmt(statistics.fmean(vals), signed)} ± {sd:.2f}"


def report(runs: dict[str, dict[int, dict]]) -> str:
    lines = ["## Every run (final mIoU, 7 classes; q, pseudo-label accuracy over the last third of training)", "",
             "| config | seed | mIoU | q | pseudo acc | acc of confident | status |", "|---|---|---|---|---|---|---|"]
    final: dict[str, dict[int, float]] = {}
    for label, seeds in sorted(runs.items()):
        for seed, run in sorted(seeds.items()):
            last = run["evals"][-1]
            start = run["max_iters"] * 2 / 3
            status = "done" if run["done"] else f"running (at {last['iter']})"
            lines.append(f"| {label} | {seed} | {fmt(last['mIoU'])} | {fmt(window_mean(run['train'], 'pseudo_q', start))}"
                         f" | {fmt(window_mean(run['train'], 'pseudo_acc', start))}"
                         f" | {fmt(window_mean(run['train'], 'pseudo_acc_conf', start))} | {status} |")
            if run["done"]:
                final.setdefault(label, {})[seed] = last["mIoU"]
    lines += ["", "## Means over finished seeds", "", "| config | seeds | mIoU |", "|---|---|---|"]
    for label, by_seed in sorted(final.items()):
        lines.append(f"| {label} | {len(by_seed)} | {mean_std(list(by_seed.values()))} |")
    lines += ["", "## Paired differences (same seed)", "", "| comparison | seeds | Δ mIoU | positive |",
              "|---|---|---|---|"]
    for a, b in COMPARISONS:
        seeds = sorted(set(final.get(a, {})) & set(final.get(b, {})))
        if not seeds:
            continue
        d = [final[a][s] - final[b][s] for s in seeds]
        lines.append(f"| {a} − {b} | {len(seeds)} | {mean_std(d, True)} | {sum(x > 0 for x in d)}/{len(d)} |")
    lines += per_class(runs, final) + label_free(runs, final)
    return "\n".join(lines) + "\n"


def per_class(runs: dict, final: dict) -> list[str]:
    a, b = "dacs_mfm", "dacs"
    seeds = sorted(set(final.get(a, {})) & set(final.get(b, {})))
    if not seeds:
        return []
    names = list(runs[a][seeds[0]]["evals"][-1]["per_class_iou"])
    out = ["", f"## Per-class IoU, {a} − {b} (mean over {len(seeds)} paired seeds)", "",
           "| class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    deltas = []
    for n in names:
        d = [runs[a][s]["evals"][-1]["per_class_iou"][n] - runs[b][s]["evals"][-1]["per_class_iou"][n] for s in seeds]
        deltas.append(fmt(statistics.fmean(d), True))
    return out + ["| Δ IoU | " + " | ".join(deltas) + " |"]


def label_free(runs: dict, final: dict) -> list[str]:
    """Checkpoint choice: does the metric's best evaluation of a run have its best mIoU? Run choice: within each
    paired seed of DACS vs DACS + MFM, does the metric at the last evaluation rank the two as mIoU does?"""
    out = ["", "## Label-free metrics: do they pick the better checkpoint and run?", "",
           "| metric | best checkpoint found | mIoU lost vs the best checkpoint | DACS vs MFM ranked right |",
           "|---|---|---|---|"]
    done = [(label, s, r) for label, seeds in runs.items() for s, r in seeds.items() if r["done"]]
    for metric, higher in SELECTORS.items():
        hits, lost = 0, []
        usable = [(lab, s, r) for lab, s, r in done if all(metric in e.get("label_free", {}) for e in r["evals"])]
        for _, _, r in usable:
            pick = (max if higher else min)(r["evals"], key=lambda e: e["label_free"][metric])
            best = max(e["mIoU"] for e in r["evals"])
            hits += pick["mIoU"] == best
            lost.append(best - pick["mIoU"])
        right, pairs = 0, 0
        for s in sorted(set(final.get("dacs", {})) & set(final.get("dacs_mfm", {}))):
            ea, eb = runs["dacs_mfm"][s]["evals"][-1], runs["dacs"][s]["evals"][-1]
            if metric not in ea.get("label_free", {}) or metric not in eb.get("label_free", {}):
                continue
            by_metric = (ea["label_free"][metric] > eb["label_free"][metric]) == higher
            pairs += 1
            right += by_metric == (ea["mIoU"] > eb["mIoU"])
        if usable:
            out.append(f"| {metric} | {hits}/{len(usable)} | {mean_std(lost)} | {right}/{pairs} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("study_out", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = report(collect(args.study_out))
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
