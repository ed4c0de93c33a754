"""CPU inference time of onnxruntime vs PyTorch on the same network and input, one thread and all threads.

Each model (random weights: they do not change the time) is exported through the same path as
`mfmseg export --format onnx` (dynamic sizes, parity gate), then PyTorch (`model.predict`, eval, no_grad) and the
onnxruntime session are timed alternately on one 512×1024 image, so that machine noise hits both alike; the table
reports medians and the onnxruntime / PyTorch ratio (< 1: onnxruntime is faster).

    python benchmarks/onnx_runtime.py --size 512x1024 --rounds 5 --out bench_onnx.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from mfmseg.config import load_config
from mfmseg.engine.evaluation.onnx_export import export_network, metadata
from mfmseg.engine.evaluation.onnx_runtime import OnnxSegmentor
from mfmseg.models.zoo import build_model


def export(name: str, folder: Path) -> tuple[torch.nn.Module, Path]:
    cfg = load_config("synthetic_dacs", [f"model.name={name}", "model.decoder_channels=null",
                                         "model.pretrained=null"])
    model = build_model(cfg.model).eval()
    path = folder / f"{name}.onnx"
    export_network(model, metadata(model, cfg, "0" * 64, None, "logits"), path)
    return model, path


def median_times(model: torch.nn.Module, runtime: OnnxSegmentor, x: torch.Tensor, rounds: int) -> tuple[float, float]:
    """Median seconds per forward (PyTorch, onnxruntime), alternating, after one warm-up each."""
    arr = x.numpy()
    with torch.no_grad():
        model.predict(x), runtime.run(arr)
        t_torch, t_ort = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            model.predict(x)
            t_torch.append(time.perf_counter() - t)
            t = time.perf_counter()
            runtime.run(arr)
            t_ort.append(time.perf_counter() - t)
    return sorted(t_torch)[rounds // 2], sorted(t_ort)[rounds // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["daformer_efflite0", "daformer_mitb0"])
    ap.add_argument("--size", default="512x1024", help="HxW of the timed input")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--out", default="bench_onnx.json")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    x = torch.randn(1, 3, h, w)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model, path = export(name, Path(tmp))
            for threads in sorted(set(args.threads)):
                torch.set_num_threads(threads)
                runtime = OnnxSegmentor(path, "cpu", threads=threads)
                t_torch, t_ort = median_times(model, runtime, x, args.rounds)
                rows.append({"model": name, "threads": threads, "torch_s": t_torch, "onnxruntime_s": t_ort,
                             "ratio": t_ort / t_torch})
    print(f"{'model':<20} {'threads':>7} {'PyTorch s':>10} {'onnxruntime s':>14} {'ort/torch':>10}")
    for r in rows:
        print(f"{r['model']:<20} {r['threads']:>7} {r['torch_s']:>10.3f} {r['onnxruntime_s']:>14.3f} "
              f"{r['ratio']:>10.2f}")
    Path(args.out).write_text(json.dumps({"size": [h, w], "rounds": args.rounds, "torch": torch.__version__,
                                          "results": rows}, indent=2))


if __name__ == "__main__":
    main()
