"""FLOPs and activations saved for backward of one forward/backward of a zoo network (batch 1), with and without
activation checkpointing: what a ViT-L costs next to MiT-B5, one pass at a time (`mfmseg cost PRESET` plans the
whole UDA step). A DACS/DAFormer step runs two such passes per image (source, mixed) plus the teacher's forward, MFM
one more, MIC one more; multiply by the batch. Runs on fake tensors (`mfmseg.engine.tools.cost`): nothing is computed or
allocated at full size, so ViT-L at 1024² takes seconds; FLOPs and saved bytes equal a real run's (tests/test_cost.py).

    python benchmarks/encoder_cost.py --models daformer_mitb5 daformer_dinov2_l daformer_dinov3_l --size 512
    python benchmarks/encoder_cost.py --models daformer_dinov3_l --size 1024 --hrda   # HRDA: context + detail
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from mfmseg.config import HRDAConfig, ModelConfig
from mfmseg.engine.tools.cost import SavedActivationMeter, ShapeOnlyMode, flop_counter, give_fake_tensors
from mfmseg.models.zoo import build_model


def measure(name: str, size: int, hrda: bool, checkpointing: bool, mode: ShapeOnlyMode) -> dict:
    """One network's pass in `mode` (one fake mode for the whole process: tensors of two modes never mix)."""
    with torch.device("meta"):
        model = build_model(ModelConfig(name=name, hrda=HRDAConfig(enabled=hrda, hr_crop=[size // 2] * 2))).train()
    give_fake_tensors(model, mode)
    model.set_grad_checkpointing(checkpointing)
    t = time.perf_counter()
    weights = [*model.parameters(), *model.buffers()]
    with mode, flop_counter() as flops, SavedActivationMeter(exclude=weights) as saved:
        x = torch.zeros(1, 3, size, size)
        label = torch.zeros(1, size, size, dtype=torch.long)
        out = model.decode(model.encode(x))
        logits = getattr(out, "fused", out)  # HRDA: the fused logits; its detail logits join the loss
        loss = F.cross_entropy(F.interpolate(logits, size=(size, size), mode="bilinear"), label)
        (loss + getattr(out, "detail", logits).float().mean()).backward()
    return {"model": name, "size": size, "hrda": hrda, "checkpointing": checkpointing,
            "gflop": flops.get_total_flops() / 1e9, "saved_mib": saved.peak / 2**20,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "sec": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["daformer_mitb5", "daformer_dinov2_l", "daformer_dinov3_l"])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--hrda", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    mode = ShapeOnlyMode()
    rows = [measure(m, args.size, args.hrda, ckpt, mode) for m in args.models for ckpt in (False, True)]
    for r in rows:
        print(f"{r['model']:22s} {r['size']}{' hrda' if r['hrda'] else ''} ckpt={r['checkpointing']!s:5s} "
              f"{r['params_m']:7.1f} M {r['gflop']:9.1f} GFLOP  {r['saved_mib']:8.1f} MiB saved  "
              f"({r['sec']:.0f} s to count)", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
