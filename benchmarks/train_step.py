"""Training-step cost of a preset with and without MFM (and with activation checkpointing), measured in one run.

Each variant runs in its own subprocess so that peak memory (RSS on CPU, CUDA max-allocated on GPU) is its own.
RSS on CPU mixes parameters, optimiser state and allocator caching, so every variant also reports the peak of the
activations held for backward (bytes of the tensors autograd saved, counted by storage while they are alive, weights
excluded: `mfmseg.engine.tools.cost.SavedActivationMeter`): the memory that activation checkpointing trades for compute,
on any device. `mfmseg cost PRESET` gives the same bytes per pass on fake tensors, without running the step.
Synthetic random batches of the preset's crop size stand in for data: this measures the step, not the loader
(see benchmarks/data_loading.py). The MFM/baseline time ratio is the number the issue asks for (goal ≤ 1.30×).

    python benchmarks/train_step.py --preset synthetic_dacs --steps 10 --out bench_train_step.json
    python benchmarks/train_step.py --preset gta2cs_daformer_mitb5 --device cuda --amp bf16 --steps 20
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, NamedTuple

from mfmseg.engine.tools.cost import SavedActivationMeter, flop_counter

VARIANTS = {
    "baseline": ["uda.mfm.enabled=false"],
    "baseline+ckpt": ["uda.mfm.enabled=false", "train.grad_checkpointing=true"],
    "baseline+bnpass": ["uda.mfm.enabled=false", "uda.target_bn_pass=true"],
    "mfm": ["uda.mfm.enabled=true"],
    "mfm+ckpt": ["uda.mfm.enabled=true", "train.grad_checkpointing=true"],
    "mfm-mixed": ["uda.mfm.enabled=true", "uda.mfm.domain=mixed"],
}


class StepBench(NamedTuple):
    """A preset's UDA step on one random batch of its crop size, as the trainer builds it (random weights). A
    NamedTuple, not a dataclass: tests load this file without registering it as a module, which dataclasses need."""
    cfg: Any
    device: Any
    student: Any
    step: Any
    opt: Any
    batch: dict

    def run(self, iteration: int, autocast_dtype=None) -> dict[str, float]:
        """One training iteration (zero_grad, the step's passes and backwards, optimizer step); its losses."""
        self.opt.zero_grad(set_to_none=True)
        losses, _ = self.step.train_step(self.batch, iteration, autocast_dtype=autocast_dtype)
        self.opt.step()
        return losses


def build_bench(preset: str, overrides: list[str], compile_options: dict | None = None) -> StepBench:
    """Student, UDA step, optimiser (the trainer's `build_training_assembly`: checkpointing, SyncBatchNorm and
    `train.compile` with `compile_options` as in training) and a random batch (source images + labels, target
    images) of the preset's crop and batch size, on `train.device`; the weights are random
    (`model.pretrained=null`: no download)."""
    import torch

    from mfmseg.config import load_config
    from mfmseg.engine.runtime.distributed import DistContext
    from mfmseg.engine.training.assembly import build_training_assembly
    from mfmseg.engine.training.trainer import resolve_device, seed_iteration

    cfg = load_config(preset, ["model.pretrained=null", *overrides])
    device = resolve_device(cfg.train.device, DistContext())
    seed_iteration(0, 0, 0)
    assembly = build_training_assembly(cfg, device, compile_options=compile_options)
    student, step, opt = assembly.student, assembly.step, assembly.optimizer
    b, (h, w) = cfg.data.batch_size, cfg.data.target.crop
    label = torch.randint(0, cfg.model.num_classes, (b, h, w), device=device)
    label[:, : h // 4] = 10  # a large class (sky), as in street scenes
    label[:, h // 4: h // 2] = 13  # and a band of a thing class (car): FD's loss has feature cells to compare
    batch = {"src_img": torch.randn(b, 3, h, w, device=device), "src_label": label,
             "tgt_img": torch.randn(b, 3, h, w, device=device)}
    return StepBench(cfg, device, student, step, opt, batch)


def synchronize(device) -> None:
    """Wait for the device's queued kernels (CUDA runs asynchronously): a timer must not stop before they end."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(bench: StepBench, steps: int, warmup: int, autocast_dtype=None) -> list[float]:
    """Seconds of each of `steps` iterations after `warmup` untimed ones (allocator, cuDNN autotuning, compile)."""
    times = []
    for i in range(warmup + steps):
        synchronize(bench.device)
        t = time.perf_counter()
        bench.run(i, autocast_dtype)
        synchronize(bench.device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def measure(preset: str, overrides: list[str], steps: int, warmup: int) -> dict:
    """One variant, in this process: mean seconds per step after `warmup` steps, and peak memory."""
    import torch

    from mfmseg.engine.runtime.numerics import AMP_DTYPES

    bench = build_bench(preset, overrides)
    peak_flops = matmul_peak_flops(str(bench.device), bench.cfg.train.amp)  # beside the variant: the machine is shared
    dtype = AMP_DTYPES[bench.cfg.train.amp]
    times = time_steps(bench, steps, warmup, dtype)
    weights = [*bench.step.parameters(), *bench.step.buffers()]  # counted as weights, not activations
    with flop_counter() as counter, SavedActivationMeter(exclude=weights) as saved:  # one more step, counted
        bench.opt.zero_grad(set_to_none=True)
        bench.step.train_step(bench.batch, warmup + steps, autocast_dtype=dtype)
    device = bench.device
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    sec = sum(times) / len(times)
    b = bench.cfg.data.batch_size
    return {"sec_per_step": sec, "images_per_s": 2 * b / sec, "flops_per_step": counter.get_total_flops(),
            "peak_mem_mib": peak,
            "saved_activations_mib": saved.peak / 2**20, "matmul_peak_flops": peak_flops, "device": str(device),
            "params": sum(p.numel() for p in bench.student.parameters())}


def matmul_peak_flops(device: str, dtype_name: str, n: int = 2048, reps: int = 20) -> float:
    """The machine's achievable dense matmul FLOP/s (square n×n), the roofline a training step is judged against."""
    import torch

    dtype = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    if device == "cpu" and dtype == torch.float16:
        dtype = torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


WIDTHS = (10, 8, 15, 10, 12, 11, 22, 14)  # columns after the variant name


def run_variant(args: argparse.Namespace, name: str) -> dict:
    cmd = [sys.executable, __file__, "--preset", args.preset, "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--device", args.device, "--amp", args.amp, "--one", name]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def interleaved(args: argparse.Namespace) -> dict[str, dict]:
    """Every variant once per round, the order rotated each round (A B C, B C A, C A B, ...), so that no variant
    always gets the quieter machine: run back to back on a 2-core machine, the MFM/DACS ratio read 1.24× to
    2.06× depending on which variant ran first. Time ratios are taken within a round (variant / baseline of the
    same round) and reported as median with min–max; memory and FLOPs come from the first round (they do not
    depend on the machine's load)."""
    names = list(args.variants)
    rounds: list[dict[str, dict]] = []
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        rounds.append({name: run_variant(args, name) for name in order})
    results = {}
    for name in names:
        result = dict(rounds[0][name])
        secs = [rd[name]["sec_per_step"] for rd in rounds]
        result["sec_per_step"] = statistics.median(secs)
        result["sec_per_step_rounds"] = secs
        result["images_per_s"] = rounds[0][name]["images_per_s"] * secs[0] / result["sec_per_step"]
        if "baseline" in names:
            ratios = [rd[name]["sec_per_step"] / rd["baseline"]["sec_per_step"] for rd in rounds]
            result["time_ratio_rounds"] = ratios
            result["time_vs_baseline_median"] = statistics.median(ratios)
        results[name] = result
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="synthetic_dacs")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="none")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (A B C, B C A, ...); median reported")
    ap.add_argument("--out", default="bench_train_step.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant and print its JSON
    args = ap.parse_args()
    common = [f"train.device={args.device}", f"train.amp={args.amp}"]
    if args.one:
        print(json.dumps(measure(args.preset, common + VARIANTS[args.one], args.steps, args.warmup)))
        return
    results = interleaved(args)
    base = results.get("baseline", {})
    print(f"\npreset {args.preset} on {args.device} (amp {args.amp}), batch 2 source + 2 target; "
          "act. = peak activations saved for backward; % of peak = achieved FLOP/s / matmul peak measured "
          "beside each variant")
    header = ("variant", "s/step", "img/s", "RSS/alloc MiB", "act. MiB", "GFLOP/step", "% of peak", "time vs base",
              "act. vs base")
    print(f"{header[0]:<14}" + "".join(f"{h:>{w}}" for h, w in zip(header[1:], WIDTHS)))
    for name, r in results.items():
        r["fraction_of_peak"] = r["flops_per_step"] / r["sec_per_step"] / r["matmul_peak_flops"]
        r["time_vs_baseline"] = r.get("time_vs_baseline_median")
        r["activations_vs_baseline"] = (r["saved_activations_mib"] / base["saved_activations_mib"]
                                        if base else None)
        cells = (name, f"{r['sec_per_step']:.3f}", f"{r['images_per_s']:.2f}", f"{r['peak_mem_mib']:.0f}",
                 f"{r['saved_activations_mib']:.0f}", f"{r['flops_per_step'] / 1e9:.1f}",
                 f"{100 * r['fraction_of_peak']:.1f}%",
                 _ratio_cell(r) if base else "-",
                 f"{r['activations_vs_baseline']:.2f}x" if base else "-")
        print(f"{cells[0]:<14}" + "".join(f"{c:>{w}}" for c, w in zip(cells[1:], WIDTHS)))
    print(f"time vs base: median of {args.rounds} interleaved rounds [min-max]")
    with open(args.out, "w") as f:
        json.dump({"preset": args.preset, "device": args.device, "amp": args.amp, "rounds": args.rounds,
                   "results": results}, f, indent=2)


def _ratio_cell(r: dict) -> str:
    ratios = r["time_ratio_rounds"]
    return f"{r['time_vs_baseline']:.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"


if __name__ == "__main__":
    main()
