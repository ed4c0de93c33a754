"""The first-GPU check: one command that runs every paper preset's real training step on one GPU and says whether
the toolkit is ready for it (speed, memory, bf16 numerics, compile, evaluation, the process group).

For each preset, at its real crop and batch size on random data (random weights: nothing is downloaded), through
the trainer's own parts (`train_step.build_bench`: model zoo, UDA step, optimiser groups):
- s/step and images/s (source + target images per second) over `--steps` iterations in `--amp`, after warm-up;
- peak memory: `torch.cuda.max_memory_allocated` of the preset alone (reset before it; None on CPU);
- bf16 vs fp32: every loss of one step after the timed ones, from the same weights, batch and random draws, once
  in fp32 (TF32 off) and once under bf16 autocast; the relative difference |bf16 - fp32| / |fp32| per loss and its
  maximum;
- one evaluation pass over `--eval-images` random images at the preset's val size, eval mode and `eval.amp`
  (labels at Cityscapes' 2048×1024), timed per image and projected to Cityscapes val (500 images) on one GPU;
- a one-rank process group (nccl on CUDA, gloo on CPU) through the trainer's gradient averaging, buffer broadcast
  and agreement (`engine.runtime.distributed`): its time, and that averaging over one rank leaves every gradient
  as it was.
Then `train.compile` on `--compile-preset` (`build_training_assembly`: student, teacher, FD copy): the first
iteration (graph capture + code generation) and s/step compiled against eager. Skipped, and said so, when less than
COMPILE_RESERVE_S of `--budget-s` is left. The JSON is rewritten after each preset, so a crash keeps what ran.

    python benchmarks/gpu_check.py --device cuda:0 --out gpu_check        # sized for < 8 min on an H100 (unmeasured)
    python benchmarks/gpu_check.py --tiny --device cpu --out /tmp/gc      # the same code in seconds (tests)

`--tiny` swaps in small networks and crops through the presets' own overrides (`TINY_MODELS`, `tiny_overrides`),
1 step, 1 evaluation image, and the `eager` compile backend (graph capture without code generation).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import StepBench, build_bench, synchronize, time_steps  # noqa: E402

from mfmseg.config import check_device, load_config  # noqa: E402
from mfmseg.engine.evaluation.evaluate import evaluate  # noqa: E402
from mfmseg.engine.runtime.distributed import (_buckets, all_ranks_agree, allreduce_gradients,  # noqa: E402
                                               broadcast_state)
from mfmseg.engine.runtime.numerics import AMP_DTYPES, eval_autocast_dtype, set_numerics  # noqa: E402
from mfmseg.engine.training.trainer import seed_iteration  # noqa: E402
from mfmseg.errors import UserError, first_line  # noqa: E402
from mfmseg.files import check_output_dir  # noqa: E402

PRESETS = ("gta2cs_dacs_dlv2", "gta2cs_dacs_dlv2_mfm", "gta2cs_daformer_mitb5", "gta2cs_daformer_mitb5_mfm",
           "gta2cs_hrda_mitb5_mfm", "gta2cs_mic_hrda_dinov2l_mfm")
CITYSCAPES_LABEL_HW = (1024, 2048)  # val labels are full resolution: predictions are upsampled to them
CITYSCAPES_VAL_IMAGES = 500
COMPILE_RESERVE_S = 180.0  # compile is skipped when less than this is left of --budget-s
# --tiny: the paper networks' small relatives (same code paths: ResNet/BatchNorm, MiT, ViT + simple pyramid)
TINY_MODELS = {"deeplabv2_r101": "deeplabv2_r18", "daformer_mitb5": "daformer_mitb0",
               "daformer_dinov2_l": "daformer_vit_tiny"}


def tiny_overrides(preset: str) -> list[str]:
    """Overrides that shrink a paper preset to a CPU-second step: a small network of the same family, 32² crops
    (HRDA: 64² crops with 32² detail windows), a small Rebuilder, small val images."""
    cfg = load_config(preset)
    if cfg.model.name not in TINY_MODELS:
        raise UserError(f"--tiny has no small network for {preset}'s model.name={cfg.model.name} "
                        f"(known: {', '.join(TINY_MODELS)})")
    out = [f"model.name={TINY_MODELS[cfg.model.name]}", "uda.mfm.embed_dim=32", "uda.mfm.num_heads=4",
           "uda.mfm.grid=4", "uda.pseudo_margins=[0,0,0,0]"]  # HRDA's 240-row margin would cover a tiny crop
    if cfg.model.name.startswith("daformer"):
        out.append("model.decoder_channels=32")
    crop = 64 if cfg.model.hrda.enabled else 32
    out += [f"data.source.crop=[{crop},{crop}]", f"data.target.crop=[{crop},{crop}]",
            f"data.val.resize=[{2 * crop},{crop}]", f"eval.window=[{crop},{crop}]",
            f"eval.stride=[{crop // 2},{crop // 2}]"]
    if cfg.model.hrda.enabled:
        out += ["model.hrda.hr_crop=[32,32]", "model.hrda.detail_stride=[16,16]",
                "model.hrda.attention_embed_dim=16"]
    return out


class RandomVal(torch.utils.data.Dataset):
    """Random normalised images at the val size with random labels at `label_hw`: evaluation's cost, not its
    score."""
    has_labels = True
    root = "random"

    def __init__(self, n: int, image_wh: tuple[int, int], label_hw: tuple[int, int], num_classes: int) -> None:
        self.n, self.image_wh, self.label_hw, self.num_classes = n, image_wh, label_hw, num_classes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        w, h = self.image_wh
        return {"img": torch.randn(3, h, w, generator=g),
                "label": torch.randint(0, self.num_classes, self.label_hw, generator=g)}


@contextlib.contextmanager
def full_fp32():
    """True fp32 matmuls and convolutions (no TF32) for the reference of the bf16 comparison."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def loss_agreement(bench: StepBench, iteration: int) -> dict:
    """Every loss of one iteration in fp32 and in bf16 from the same state, batch and seed; the state is restored
    after each (the step moves the teacher, BatchNorm statistics and gradients)."""
    state = copy.deepcopy(bench.step.state_dict())
    losses = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        bench.step.load_state_dict(state)
        seed_iteration(0, 0, iteration)
        with full_fp32() if dtype is None else contextlib.nullcontext():
            losses[name], _ = bench.step.train_step(bench.batch, iteration, autocast_dtype=dtype)
        bench.opt.zero_grad(set_to_none=True)
    bench.step.load_state_dict(state)
    keys = [k for k in losses["fp32"] if k.startswith("loss_")]
    rel = {k: abs(losses["bf16"][k] - losses["fp32"][k]) / max(abs(losses["fp32"][k]), 1e-12) for k in keys}
    return {"fp32": {k: losses["fp32"][k] for k in keys}, "bf16": {k: losses["bf16"][k] for k in keys},
            "rel_diff": rel, "max_rel_diff": max(rel.values())}


def averaging(bench: StepBench) -> dict:
    """The trainer's per-iteration collectives on a one-rank group, over the gradients of the last step."""
    params = [p for p in bench.step.parameters() if p.requires_grad]
    before = [None if p.grad is None else p.grad.clone() for p in params]
    synchronize(bench.device)
    t = time.perf_counter()
    allreduce_gradients(params, dist.get_world_size())
    broadcast_state([bench.student, bench.step.teacher], params=False)
    agreed = all_ranks_agree(True)
    synchronize(bench.device)
    seconds = time.perf_counter() - t
    same = all((b is None and p.grad is None) or (b is not None and torch.equal(b, p.grad))
               for b, p in zip(before, params))
    return {"backend": dist.get_backend(), "seconds": seconds, "buckets": len(_buckets(params)),
            "gradients_unchanged": same and agreed}


def eval_pass(bench: StepBench, images: int, tiny: bool) -> dict:
    """`evaluate` (the trainer's) over random val images in the preset's eval mode and `eval.amp`, timed."""
    cfg = bench.cfg
    w, h = cfg.data.val.resize
    data = RandomVal(images, (w, h), (h, w) if tiny else CITYSCAPES_LABEL_HW, cfg.model.num_classes)
    dtype = eval_autocast_dtype(cfg, bench.device)
    synchronize(bench.device)
    t = time.perf_counter()
    evaluate(bench.student, data, cfg.eval, device=bench.device, progress=False, autocast_dtype=dtype)
    synchronize(bench.device)
    per_image = (time.perf_counter() - t) / images
    return {"images": images, "mode": cfg.eval.mode, "amp": str(dtype).replace("torch.", "") if dtype else "none",
            "sec_per_image": per_image, "cityscapes_val_minutes": per_image * CITYSCAPES_VAL_IMAGES / 60}


def peak_memory_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def release(device: torch.device) -> None:
    """Free the previous preset and restart the peak-memory counter, so that each preset's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def check_preset(preset: str, overrides: list[str], args: argparse.Namespace) -> dict:
    """Timing and peak memory first (nothing else allocated), then the collectives on the last step's gradients,
    the bf16/fp32 comparison on the trained state (the teacher and FD's ImageNet copy then differ from the
    student: at iteration 0 FD's distance is exactly 0 in any dtype), and the evaluation pass."""
    bench = build_bench(preset, overrides)
    b = bench.cfg.data.batch_size
    result = {"model": bench.cfg.model.name, "crop": list(bench.cfg.data.target.crop), "batch": f"{b}+{b}",
              "params_m": sum(p.numel() for p in bench.student.parameters()) / 1e6}
    times = time_steps(bench, args.steps, args.warmup, AMP_DTYPES[args.amp])
    sec = sum(times) / len(times)
    result.update(sec_per_step=sec, images_per_s=2 * b / sec, max_memory_allocated_mib=peak_memory_mib(bench.device))
    if dist.is_initialized():
        result["process_group"] = averaging(bench)
    result["bf16_vs_fp32"] = loss_agreement(bench, args.warmup + args.steps)
    result["eval"] = eval_pass(bench, args.eval_images, args.tiny)
    return result


def check_compile(preset: str, overrides: list[str], args: argparse.Namespace, eager_sec: float | None) -> dict:
    """`train.compile` as the trainer does it; the first iteration holds graph capture and code generation."""
    bench = build_bench(preset, [*overrides, "train.compile=true"], {"backend": args.compile_backend})
    dtype = AMP_DTYPES[args.amp]
    first = time_steps(bench, 1, 0, dtype)[0]
    times = time_steps(bench, args.steps, args.warmup, dtype)
    sec = sum(times) / len(times)
    return {"preset": preset, "backend": args.compile_backend, "first_step_s": first, "sec_per_step": sec,
            "eager_sec_per_step": eager_sec, "speedup": eager_sec / sec if eager_sec else None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process_group(device: torch.device) -> None:
    """One rank, as torchrun would start rank 0 of one (the trainer's collectives work on any world size)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{free_port()}",
                            rank=0, world_size=1, timeout=timedelta(seconds=120))
    all_ranks_agree(True)  # nccl builds its communicator at the first collective: not inside a preset's timing


def resolve(args: argparse.Namespace) -> torch.device:
    """The device and argument checks: one line (exit 2) for anything wrong, before any model is built."""
    name = check_device(args.device, "--device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} but no CUDA device is visible; use --device cpu (with --tiny)")
    unknown = [p for p in [*args.presets, args.compile_preset] if p and p not in PRESETS]
    if unknown:
        raise UserError(f"unknown preset {unknown[0]!r}: choose from {', '.join(PRESETS)}")
    args.amp = args.amp or ("bf16" if name.startswith("cuda") else "none")
    if args.amp not in AMP_DTYPES or (args.amp == "fp16" and not name.startswith("cuda")):
        raise UserError(f"--amp {args.amp} is not one of none, bf16{', fp16' if name.startswith('cuda') else ''}")
    if min(args.steps, args.eval_images) < 1 or args.warmup < 0:
        raise UserError("--steps and --eval-images must be >= 1, --warmup >= 0")
    return torch.device(name)


COLUMNS = (("preset", 28), ("s/step", 8), ("img/s", 7), ("peak MiB", 9), ("bf16 rel", 9), ("eval s/img", 11),
           ("val min", 8), ("avg s", 7))


def table(report: dict) -> str:
    """One row per preset: s/step, images/s, peak memory, bf16/fp32 max relative loss difference, evaluation
    seconds per image and projected Cityscapes val minutes, gradient-averaging seconds; then compile."""
    lines = ["".join(f"{name:<{w}}" if i == 0 else f"{name:>{w}}" for i, (name, w) in enumerate(COLUMNS))]
    for preset, r in report["presets"].items():
        if "error" in r:
            lines.append(f"{preset:<28} ERROR {r['error']}")
            continue
        mem = r["max_memory_allocated_mib"]
        cells = [f"{r['sec_per_step']:.3f}", f"{r['images_per_s']:.1f}", "-" if mem is None else f"{mem:.0f}",
                 f"{r['bf16_vs_fp32']['max_rel_diff']:.1e}", f"{r['eval']['sec_per_image']:.3f}",
                 f"{r['eval']['cityscapes_val_minutes']:.1f}",
                 f"{r['process_group']['seconds']:.3f}" if "process_group" in r else "-"]
        lines.append(f"{preset:<28}" + "".join(f"{c:>{w}}" for c, (_, w) in zip(cells, COLUMNS[1:])))
    c = report.get("compile")
    if c and "skipped" in c:
        lines.append(f"compile: skipped ({c['skipped']})")
    elif c and "error" in c:
        lines.append(f"compile ({c['preset']}): ERROR {c['error']}")
    elif c:
        speedup = f", {c['speedup']:.2f}x eager" if c["speedup"] else ""
        lines.append(f"compile ({c['preset']}, {c['backend']}): first step {c['first_step_s']:.1f} s, "
                     f"then {c['sec_per_step']:.3f} s/step{speedup}")
    return "\n".join(lines)


def write(report: dict, out: Path) -> None:
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out / "gpu_check.json")


def run(args: argparse.Namespace) -> int:
    device = resolve(args)
    out = check_output_dir(args.out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    set_numerics(device, deterministic=False)  # as the trainer: TF32 on CUDA
    start = time.perf_counter()
    common = [f"train.device={device}", f"train.amp={args.amp}", "uda.pseudo_threshold=0.0"]  # random weights are
    # never confident: without the threshold every target loss would weigh 0 and compare nothing
    report: dict = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "torch": torch.__version__, "amp": args.amp, "steps": args.steps, "warmup": args.warmup,
                    "tiny": args.tiny, "presets": {}}
    if not args.no_dist:
        start_process_group(device)
    failed = False
    try:
        for preset in args.presets:
            overrides = common + (tiny_overrides(preset) if args.tiny else [])
            release(device)
            try:
                report["presets"][preset] = check_preset(preset, overrides, args)
            except Exception as e:  # noqa: BLE001 - one preset's failure (an OOM) must not hide the others'
                report["presets"][preset], failed = {"error": f"{type(e).__name__}: {first_line(e)}"}, True
            write(report, out)
            print(f"[{time.perf_counter() - start:.0f} s] {preset} done", file=sys.stderr)
        left = args.budget_s - (time.perf_counter() - start)
        report["compile"] = compile_section(args, common, device, left, report["presets"].get(args.compile_preset))
        failed |= "error" in report["compile"]
    finally:
        if dist.is_initialized():
            gc.collect()  # live references to the group's tensors at its end can abort a gloo process
            dist.destroy_process_group()
    report["total_s"] = time.perf_counter() - start
    write(report, out)
    print(table(report))
    print(f"wrote {out / 'gpu_check.json'} ({report['total_s']:.0f} s)")
    return 1 if failed else 0


def compile_section(args: argparse.Namespace, common: list[str], device: torch.device, budget_left: float,
                    eager: dict | None) -> dict:
    """`check_compile` within the time budget; `eager`: the same preset's eager result, when it ran."""
    preset = args.compile_preset
    if not preset:
        return {"skipped": "--compile-preset ''"}
    if budget_left < COMPILE_RESERVE_S and not args.tiny:
        return {"skipped": f"{budget_left:.0f} s of --budget-s left, < {COMPILE_RESERVE_S:.0f} s"}
    release(device)
    try:
        return check_compile(preset, common + (tiny_overrides(preset) if args.tiny else []), args,
                             (eager or {}).get("sec_per_step"))
    except Exception as e:  # noqa: BLE001 - reported in the JSON and the exit code
        return {"preset": preset, "error": f"{type(e).__name__}: {first_line(e)}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="small networks and crops, 1 step: the check's own test")
    ap.add_argument("--out", default="gpu_check", help="folder for gpu_check.json")
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), metavar="PRESET")
    ap.add_argument("--steps", type=int, help="timed iterations per preset (default 20; --tiny 1)")
    ap.add_argument("--warmup", type=int, help="untimed iterations before them (default 3; --tiny 0)")
    ap.add_argument("--amp", help="autocast dtype of the timed steps: none | bf16 | fp16 (default bf16 on CUDA, none "
                    "on CPU, where bf16 is emulated)")
    ap.add_argument("--eval-images", type=int, help="random val images of the timed evaluation (default 8; --tiny 1)")
    ap.add_argument("--compile-preset", default="gta2cs_dacs_dlv2", help="'' to skip compile")
    ap.add_argument("--compile-backend", help="torch.compile backend (default inductor; --tiny eager)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="compile is skipped past this minus "
                    f"{COMPILE_RESERVE_S:.0f} s")
    ap.add_argument("--no-dist", action="store_true", help="skip the one-rank process group")
    args = ap.parse_args(argv)
    for key, full, tiny in (("steps", 20, 1), ("warmup", 3, 0), ("eval_images", 8, 1),
                            ("compile_backend", "inductor", "eager")):
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.tiny else full)
    try:
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
