"""Cost of the Rebuilder alone (forward + backward) at the paper's sizes, on random encoder features.

Isolates MFM's own module from the extra decoder pass that L_mfm also needs (benchmarks/train_step.py measures
the whole step with and without MFM). Prints JSON: parameters, mean seconds per forward+backward, peak memory.

    python benchmarks/mfm_overhead.py --steps 5
    python benchmarks/mfm_overhead.py --device cuda --steps 20 --crop 512 1024
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import torch

from mfmseg.config import MFMConfig
from mfmseg.uda.rebuilder import Rebuilder

NETWORKS = {
    "mit (DAFormer)": SimpleNamespace(feature_channels=[64, 128, 320, 512], feature_strides=[4, 8, 16, 32]),
    "resnet layer4 (DeepLab-V2)": SimpleNamespace(feature_channels=[2048], feature_strides=[8]),
}


def measure(net: SimpleNamespace, crop: tuple[int, int], batch: int, steps: int, device: torch.device) -> dict:
    rebuilder = Rebuilder.for_segmentor(net, crop, MFMConfig(enabled=True)).to(device)
    feats = [torch.randn(batch, c, crop[0] // s, crop[1] // s, device=device, requires_grad=True)
             for c, s in zip(net.feature_channels, net.feature_strides)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(steps + 1):  # the first step warms up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        rebuilt, _ = rebuilder(feats)
        sum(r.float().square().mean() for r in rebuilt).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - t)
    out = {"params": sum(p.numel() for p in rebuilder.parameters()), "level_scales": rebuilder.level_scales,
           "sec_per_fwd_bwd": sum(times) / len(times)}
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    result = {name: measure(net, tuple(args.crop), args.batch, args.steps, device) for name, net in NETWORKS.items()}
    print(json.dumps({"crop": args.crop, "batch": args.batch, "device": str(device), **result}, indent=2))


if __name__ == "__main__":
    main()
