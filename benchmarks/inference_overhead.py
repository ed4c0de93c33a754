"""Inference cost of an exported MFM-trained model vs an exported baseline of the same network, in one run.

Both models are trained for a couple of iterations on a tiny synthetic benchmark (weights do not matter for
speed), exported with `mfmseg export`, reloaded, and timed alternately on the same inputs. MFM's Rebuilder is
training-only, so the ratio should be 1.00 up to noise and the parameter counts identical.

    python benchmarks/inference_overhead.py --size 512x1024 --reps 10 --out bench_inference.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from mfmseg.config import load_config
from mfmseg.data.prepare import prepare_dataset
from mfmseg.data.synthetic import write_benchmark
from mfmseg.engine.evaluation.export import export_model, load_inference_model
from mfmseg.engine.training.trainer import train


def trained_export(root: Path, work: Path, mfm: bool) -> Path:
    overrides = [f"work_dir={work}", f"data.source.root={root / 'gta'}", f"data.target.root={root / 'cityscapes'}",
                 f"data.val.root={root / 'cityscapes'}", "train.max_iters=2", "train.panel_interval=0",
                 "data.num_workers=0", "data.rcs.min_pixels=10", f"uda.mfm.enabled={str(mfm).lower()}"]
    train(load_config("synthetic_dacs", overrides))
    return export_model(work / "latest.pth", work.with_suffix(".model.pth"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="256x512", help="HxW of the timed input")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default="bench_inference.json")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = write_benchmark(Path(tmp) / "data", num_source=8, num_target=8, num_val=2, size=(128, 256))
        prepare_dataset("gta", root / "gta", nproc=1)
        prepare_dataset("cityscapes", root / "cityscapes", nproc=1)
        models = {name: load_inference_model(trained_export(root, Path(tmp) / name, name == "mfm"))[0]
                  for name in ("baseline", "mfm")}
        x = torch.randn(1, 3, h, w)
        times = {name: [] for name in models}
        with torch.no_grad():
            for name, m in models.items():
                m(x)  # warm-up
            for _ in range(args.reps):  # alternate so that machine noise hits both alike
                for name, m in models.items():
                    t = time.perf_counter()
                    m(x)
                    times[name].append(time.perf_counter() - t)
    res = {name: {"median_s": sorted(t)[len(t) // 2], "params": sum(p.numel() for p in models[name].parameters())}
           for name, t in times.items()}
    ratio = res["mfm"]["median_s"] / res["baseline"]["median_s"]
    print(f"{'model':<10} {'median s':>9} {'params':>10}")
    for name, r in res.items():
        print(f"{name:<10} {r['median_s']:>9.4f} {r['params']:>10d}")
    print(f"MFM / baseline inference time: {ratio:.3f}x")
    Path(args.out).write_text(json.dumps({"size": [h, w], "results": res, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
