"""What the label-free metrics add to an evaluation (docs/label_free.md, issue 19), in one run.

Times, on the same val images and the same network, the mIoU evaluation (`engine.evaluation.evaluate`) and the
label-free metrics (`engine.evaluation.label_free.label_free_metrics`: the image, its mirror and the teacher),
alternating rounds so that machine noise hits both alike. By construction the label-free pass runs three forwards
per image against the mIoU evaluation's one (plus its upsampling to full resolution), so the ratio should be about
3×, less the shared costs.

    python benchmarks/label_free_cost.py --preset synthetic_effl0_dacs --images 20 --rounds 3 --out bench_lf.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mfmseg.config import load_config
from mfmseg.data.prepare import prepare_dataset
from mfmseg.data.synthetic import write_benchmark
from mfmseg.engine.evaluation.evaluate import evaluate
from mfmseg.engine.evaluation.label_free import label_free_metrics, source_distribution_of
from mfmseg.engine.training.trainer import val_dataset
from mfmseg.models.zoo import build_model


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="synthetic_effl0_dacs")
    ap.add_argument("--images", type=int, default=20, help="val images (the synthetic benchmark's size, 256x512)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="bench_label_free.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_benchmark(Path(tmp) / "data", num_source=4, num_target=4, num_val=args.images, nproc=1)
        prepare_dataset("gta", root / "gta", nproc=1)
        prepare_dataset("cityscapes", root / "cityscapes", nproc=1)
        cfg = load_config(args.preset, [f"data.source.root={root / 'gta'}", f"data.target.root={root / 'cityscapes'}",
                                        f"data.val.root={root / 'cityscapes'}", "model.pretrained=null"])
        model = build_model(cfg.model).eval()
        teacher = copy.deepcopy(model)
        val = val_dataset(cfg)
        source = source_distribution_of(cfg.data.source.root, cfg.model.num_classes)
        images = [val[i]["img"][None] for i in range(len(val))]
        variants = {
            "mIoU evaluation": lambda: evaluate(model, val, cfg.eval, progress=False),
            "label-free (all)": lambda: label_free_metrics(model, images, teacher=teacher, source_distribution=source,
                                                           threshold=cfg.uda.pseudo_threshold),
            "label-free, no mirror": lambda: label_free_metrics(model, images, teacher=teacher, flip=False,
                                                                source_distribution=source),
            "label-free, no teacher": lambda: label_free_metrics(model, images, source_distribution=source),
        }
        with torch.no_grad():
            for fn in variants.values():
                fn()  # warm-up
            times = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, fn in variants.items():
                    times[name].append(timed(fn))
    n = len(images)
    base = statistics.median(times["mIoU evaluation"])
    rows = {name: {"median_s": statistics.median(t), "ms_per_image": 1e3 * statistics.median(t) / n,
                   "vs_mIoU_eval": statistics.median(t) / base} for name, t in times.items()}
    print(f"{args.preset}, {n} val images {tuple(images[0].shape[-2:])}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} rounds")
    print(f"{'variant':<24} {'ms/image':>9} {'vs mIoU eval':>13}")
    for name, r in rows.items():
        print(f"{name:<24} {r['ms_per_image']:>9.1f} {r['vs_mIoU_eval']:>12.2f}x")
    Path(args.out).write_text(json.dumps({"preset": args.preset, "images": n, "threads": torch.get_num_threads(),
                                          "rounds": args.rounds, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
