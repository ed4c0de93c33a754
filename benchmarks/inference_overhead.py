"""Inference time of an exported MFM model vs an exported baseline of the same network, in one run.

MFM's Rebuilder is a training-only module: export keeps the student alone, so both exported files must hold the
same network and run at the same speed (ratio ≈ 1.00). Both training checkpoints are built here (same architecture,
the MFM one also carrying a real Rebuilder and a teacher), exported with `export_model`, reloaded with
`load_inference_model`, and timed alternately so that clock or thermal drift hits both equally.

    python benchmarks/inference_overhead.py --repeats 5
    python benchmarks/inference_overhead.py --model daformer_mitb5 --size 512 1024 --device cuda --repeats 50 \
        --out inference_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mfmseg.config import Config, MFMConfig, to_dict
from mfmseg.engine.checkpoint import TRAIN_FORMAT
from mfmseg.engine.export import export_model, load_inference_model
from mfmseg.engine.inference import whole_inference
from mfmseg.models.zoo import build_model, count_params
from mfmseg.uda.mfm import Rebuilder


def write_train_checkpoint(path: Path, cfg: Config, student: torch.nn.Module, mfm: bool, crop: list[int]) -> None:
    """A training checkpoint as the trainer writes it; the MFM one carries the Rebuilder export must drop."""
    rebuilder = Rebuilder.for_segmentor(student, crop, MFMConfig(enabled=True)).state_dict() if mfm else None
    torch.save({"format": TRAIN_FORMAT, "config": to_dict(cfg), "iteration": 0, "student": student.state_dict(),
                "teacher": student.state_dict() if mfm else None, "rebuilder": rebuilder, "optimizer": {},
                "scheduler": {}, "rng": {}, "version": "benchmark", "git_commit": "benchmark"}, path)


def time_model(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    whole_inference(model, x, tuple(x.shape[-2:]))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run(model_name: str, decoder_channels: int | None, size: list[int], repeats: int, device: torch.device) -> dict:
    cfg = Config()
    cfg.model.name, cfg.model.decoder_channels = model_name, decoder_channels
    torch.manual_seed(0)
    models, files = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant, mfm in (("baseline", False), ("mfm", True)):
            ckpt = Path(tmp) / f"{variant}_train.pth"
            write_train_checkpoint(ckpt, cfg, build_model(cfg.model), mfm, size)
            exported = export_model(ckpt, Path(tmp) / f"{variant}_model.pth")
            files[variant] = {"train_mib": ckpt.stat().st_size / 2**20, "export_mib": exported.stat().st_size / 2**20}
            models[variant], _ = load_inference_model(exported, device)
    x = torch.randn(1, 3, *size, device=device)
    times: dict[str, list[float]] = {name: [] for name in models}
    for name in models:  # warm-up (cudnn autotuning, allocator)
        time_model(models[name], x, device)
    for _ in range(repeats):
        for name in models:
            times[name].append(time_model(models[name], x, device))
    rows = {name: {"params": count_params(models[name]), "median_s": statistics.median(t), "mean_s": statistics.mean(t),
                   **files[name]} for name, t in times.items()}
    return {"model": model_name, "size_hw": size, "device": str(device), "repeats": repeats, **rows,
            "ratio_mfm_over_baseline": rows["mfm"]["median_s"] / rows["baseline"]["median_s"]}


def print_table(result: dict) -> None:
    print(f"{result['model']} at {result['size_hw'][0]}x{result['size_hw'][1]} on {result['device']}, "
          f"{result['repeats']} repeats")
    print(f"{'export':<10} {'params':>12} {'train MiB':>10} {'export MiB':>11} {'median s':>10} {'mean s':>10}")
    for name in ("baseline", "mfm"):
        r = result[name]
        print(f"{name:<10} {r['params']:>12,} {r['train_mib']:>10.2f} {r['export_mib']:>11.2f} "
              f"{r['median_s']:>10.4f} {r['mean_s']:>10.4f}")
    print(f"ratio mfm / baseline (median): {result['ratio_mfm_over_baseline']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="daformer_mitb0", help="a zoo name (`mfmseg models`)")
    parser.add_argument("--decoder-channels", type=int, default=None, help="head width; default the paper's")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 512], metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="also write the result as JSON")
    args = parser.parse_args()
    result = run(args.model, args.decoder_channels, args.size, args.repeats, torch.device(args.device))
    print_table(result)
    if args.out:
        tmp = f"{args.out}.tmp"
        Path(tmp).write_text(json.dumps(result, indent=2))
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
