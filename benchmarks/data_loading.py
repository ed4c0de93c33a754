"""Data-loading throughput of the UDA stream (source + target crops with RCS) vs the training step's demand.

Writes a synthetic benchmark at the requested image size, then times `build_uda_loader` with 0 and N workers at
the given resize + crop (the paper: GTA 1280×720 bound, Cityscapes 1024×512, 512² crops). Compare the images/s
with the step's images/s from benchmarks/train_step.py: loading must be faster, or it starves training.

    python benchmarks/data_loading.py --size 1052x1914 --crop 512 --batches 20 --workers 0 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mfmseg.config import DataConfig, DatasetConfig, RCSConfig
from mfmseg.data.prepare import prepare_dataset
from mfmseg.data.sampling import build_uda_loader
from mfmseg.data.synthetic import write_benchmark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="512x1024", help="HxW of the written images")
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--out", default="bench_data_loading.json")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = write_benchmark(Path(tmp), num_source=args.images, num_target=args.images, num_val=0, size=(h, w))
        prepare_dataset("gta", root / "gta", nproc=2)
        prepare_dataset("cityscapes", root / "cityscapes", nproc=2)
        for workers in args.workers:
            crop = [args.crop, args.crop]
            cfg = DataConfig(source=DatasetConfig(kind="gta", root=str(root / "gta"), resize=[1280, 720], crop=crop),
                             target=DatasetConfig(kind="cityscapes", root=str(root / "cityscapes"),
                                                  resize=[1024, 512], crop=crop),
                             batch_size=2, num_workers=workers, rcs=RCSConfig(min_pixels=300))
            it = build_uda_loader(cfg, seed=0)
            next(it)  # start-up (worker spawn) is not throughput
            t = time.perf_counter()
            for _ in range(args.batches):
                next(it)
            sec = time.perf_counter() - t
            results[workers] = {"batches_per_s": args.batches / sec, "images_per_s": 4 * args.batches / sec}
    print(f"{'workers':>7} {'batches/s':>10} {'images/s':>9}   (a batch = 2 source + 2 target crops)")
    for workers, r in results.items():
        print(f"{workers:>7} {r['batches_per_s']:>10.2f} {r['images_per_s']:>9.2f}")
    Path(args.out).write_text(json.dumps({"size": [h, w], "crop": args.crop, "results": results}, indent=2))


if __name__ == "__main__":
    main()
