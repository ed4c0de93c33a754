"""The iteration-based training loop: build, step, log, evaluate, checkpoint, resume, summarise.

The loop owns everything around the UDA step (optimiser, schedule, AMP scaler, gradient averaging across ranks,
logging, checkpoints) and nothing inside it: the losses and their backward passes live in `uda.step.UDAStep`, the
method, which also says what else to optimise (`param_parts`) and what a checkpoint holds (`state_dict`).

Reproducibility: every iteration re-seeds the global RNGs from (seed, rank, iteration) and the data loader draws
batch i as a function of (seed, rank, i), so a run resumed from a checkpoint continues exactly as the
uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from mfmseg.config import Config, to_dict, to_yaml
from mfmseg.data.datasets import SegmentationDataset, build_dataset
from mfmseg.data.sampling import build_uda_loader
from mfmseg.engine.evaluation import report
from mfmseg.engine.evaluation.evaluate import class_names, class_palette, evaluate
from mfmseg.engine.evaluation.export import save_inference_model
from mfmseg.engine.evaluation.label_free import METRICS, label_free_metrics, source_distribution_of
from mfmseg.engine.evaluation.select import check_select_by, is_better, kept_checkpoint, metric_value
from mfmseg.engine.runtime.checkpoint import (TRAIN_FORMAT, TRAIN_SECTIONS, atomic_torch_save, keep_previous,
                                              load_train_checkpoint, rng_state, run_info, set_rng_state,
                                              state_health)
from mfmseg.engine.runtime.distributed import (DistContext, all_ranks_agree, allreduce_gradients, broadcast_state,
                                               init_distributed, shutdown_distributed)
from mfmseg.engine.runtime.numerics import AMP_DTYPES, eval_autocast_dtype, set_numerics
from mfmseg.engine.training.assembly import build_training_assembly
from mfmseg.engine.training.optim import apply_lr
from mfmseg.engine.training.resume import apply_group_settings, check_resume_config, fresh_group_settings
from mfmseg.errors import UserError
from mfmseg.files import atomic_write_text, check_output_dir, exclusive_lock, read_jsonl


def resolve_device(name: str, ctx: DistContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"train.device={name} but no CUDA device is visible; use train.device=cpu")
        if ctx.enabled:
            return torch.device("cuda", ctx.local_rank)
    return torch.device(name)


def pins_memory(device: torch.device) -> bool:
    """Page-locked loader batches only for a CUDA device: there they make the host-to-GPU copies asynchronous; on
    CPU pinning buys nothing (and warns without an accelerator)."""
    return device.type == "cuda"


def seed_iteration(seed: int, rank: int, iteration: int) -> None:
    """Global RNGs as a pure function of (seed, rank, iteration): dropout, drop-path, masks, mixing."""
    s = (seed * 1_000_003 + rank * 10_007 + iteration) % (2**31)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def json_safe(obj: Any) -> Any:
    """NaN (a class absent from both prediction and ground truth) becomes null: strict JSON for every reader."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


def _append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(json_safe(row)) + "\n")
        f.flush()


def trim_metrics(path: Path, last_iter: int) -> None:
    """A resumed run repeats the iterations after its checkpoint: their rows (and a line cut short by a kill) go,
    so that metrics.jsonl holds each iteration once and the next row starts on a line of its own."""
    if path.is_file():
        rows = [r for r in read_jsonl(path) if r.get("iter", 0) <= last_iter]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2))


def val_dataset(cfg: Config) -> SegmentationDataset:
    """`data.val` (labelled or not); without a `data.val.root`, the target's training images for the label-free
    metrics alone (they read no labels, so the images the model adapts on are a fair place to watch it)."""
    if cfg.data.val.root:
        return build_dataset(cfg.data.val, "val", num_classes=cfg.model.num_classes, classes=cfg.data.classes)
    return build_dataset(cfg.data.target, "images", num_classes=cfg.model.num_classes, classes=cfg.data.classes)


def previous_best(work_dir: Path, metric: str | None) -> float | None:
    """The value best.pth was kept for, so that a resumed run does not replace it with a worse one."""
    path = work_dir / "best.json"
    try:
        saved = json.loads(path.read_text()) if metric is not None and path.is_file() else {}
    except (OSError, ValueError):
        return None
    value = saved.get(metric) if saved.get("select_by") == metric else None
    return float(value) if isinstance(value, (int, float)) else None


def eval_line(result: dict) -> str:
    """One line per evaluation: mIoU when there are labels, the label-free metrics always, vanished classes."""
    parts = [f"target val mIoU {result['mIoU']:.2f}"] if "mIoU" in result else []
    free = result.get("label_free") or {}
    parts += [f"{k} {free[k]:.3f}" for k in METRICS if k in free]
    if free.get("vanished"):
        parts.append(f"WARNING vanished classes (frequent in the source, no longer predicted): {free['vanished']}")
    return ", ".join(parts) or "evaluated"


def largest_weight(model: torch.nn.Module) -> float:
    """max |w| over the parameters: how far a checkpoint is from divergence, as far as one number can say."""
    return max((float(p.detach().abs().max()) for p in model.parameters() if p.numel()), default=0.0)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class Trainer:
    """One training run in one work dir. `run()` returns the summary dict that it also writes."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.ctx = init_distributed("cuda" if cfg.train.device.startswith("cuda") or (
            cfg.train.device == "auto" and torch.cuda.is_available()) else "cpu", cfg.train.dist_timeout_s)
        self.device = resolve_device(cfg.train.device, self.ctx)
        self.work_dir = Path(cfg.work_dir)
        self.amp_dtype = AMP_DTYPES[cfg.train.amp]
        if self.amp_dtype == torch.float16 and self.device.type != "cuda":
            raise UserError("train.amp=fp16 needs a CUDA device; use train.amp=bf16 on CPU")
        self.eval_dtype = eval_autocast_dtype(cfg, self.device)
        set_numerics(self.device, cfg.train.deterministic)
        self.val_set = val_dataset(cfg) if cfg.train.eval_interval >= 0 else None  # every rank: its share
        check_select_by(cfg.train.select_by, self.val_set, cfg.eval.label_free)  # before the work dir exists
        resume_from = self._prepare_work_dir()
        seed_iteration(cfg.seed, 0, -1)  # identical initial weights on every rank
        assembly = build_training_assembly(cfg, self.device, self.ctx)
        self.student, self.step, self.optimizer = assembly.student, assembly.step, assembly.optimizer
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.start_iter = self._resume(resume_from) if resume_from is not None else 0
        self.saved_at: dict[str, int] = {"latest.pth": self.start_iter} if resume_from is not None else {}
        self.saved_weight = {name: largest_weight(self.student) for name in self.saved_at}  # for _diverged
        if self.ctx.enabled:
            broadcast_state(self.step.sections().values())
        self.source_distribution = source_distribution_of(cfg.data.source.root, cfg.model.num_classes)
        self.best = previous_best(self.work_dir, cfg.train.select_by) if resume_from is not None else None
        self._write_run_files()
        if resume_from is not None and self.ctx.is_main:
            trim_metrics(self.work_dir / "metrics.jsonl", self.start_iter)
        self.writer = self._tensorboard() if self.ctx.is_main else None
        self.last_eval: dict | None = None

    # ---- setup -------------------------------------------------------------------------------------------
    def _prepare_work_dir(self) -> dict | None:
        """Check the work dir and, on resume, the checkpoint against the config: before anything is written, so
        that a refused resume leaves the run's own config.yaml untouched. Returns the checkpoint to resume from."""
        latest = self.work_dir / "latest.pth"
        if self.ctx.is_main:
            check_output_dir(self.work_dir, "work_dir")
            if latest.exists() and not self.cfg.train.resume:
                raise UserError(f"{self.work_dir} already holds a run (latest.pth): pass train.resume=true to "
                                f"continue it, or choose another work_dir=")
        if not self.cfg.train.resume:
            return None
        if not latest.exists():
            raise UserError(f"train.resume=true but {latest} does not exist")
        ckpt = load_train_checkpoint(latest)
        check_resume_config(ckpt["config"], self.cfg, latest)
        return ckpt

    def _write_run_files(self) -> None:
        """config.yaml (what this run really trains, resume overrides included) and run_info.json, which also lists
        the logs this run of the work dir appends to (`LOGS_KEY`: a resume keeps the earlier runs' list), before it
        writes them."""
        if self.ctx.is_main:
            atomic_write_text(self.work_dir / "config.yaml", to_yaml(self.cfg))
            logs = written_logs(self.work_dir) if self.cfg.train.resume else []
            self.logs = sorted({*logs, "metrics.jsonl"})
            self._write_run_info()

    def _write_run_info(self) -> None:
        _write_json(self.work_dir / "run_info.json",
                    {**run_info(), "world_size": self.ctx.world_size, LOGS_KEY: self.logs})

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency, but never let logging kill a run
            return None
        tb = self.work_dir / "tb"
        before = set(tb.rglob("*")) if tb.is_dir() else set()
        writer = SummaryWriter(str(tb))
        new = sorted(p.relative_to(self.work_dir).as_posix() for p in set(tb.rglob("*")) - before if p.is_file())
        self.logs = sorted({*self.logs, *new})  # its event file: a later fresh run may remove it
        self._write_run_info()
        return writer

    def _resume(self, ckpt: dict) -> int:
        """Restore the run; the config's allowed changes (lr, weight decay, schedule) take effect."""
        where = f"checkpoint {self.work_dir / 'latest.pth'}"
        fresh = fresh_group_settings(self.optimizer)
        try:
            self.step.load_state_dict(ckpt, where=where)
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"{where} does not fit this run: {str(e).splitlines()[0][:200]}") from None
        apply_group_settings(self.optimizer, fresh)
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ctx.is_main:
            set_rng_state(ckpt["rng"])
        return int(ckpt["iteration"])

    # ---- the loop ------------------------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> dict:
        """Train to `train.max_iters` (or stop after iteration `stop_after`, as a killed run would)."""
        cfg, tc = self.cfg, self.cfg.train
        loader: Iterator[dict] = build_uda_loader(cfg.data, seed=cfg.seed, rank=self.ctx.rank,
                                                  world_size=self.ctx.world_size, start_iter=self.start_iter,
                                                  num_classes=cfg.model.num_classes, classes=cfg.data.classes,
                                                  pin_memory=pins_memory(self.device))
        params = [p for p in self.step.parameters() if p.requires_grad]
        bar = tqdm(total=tc.max_iters, initial=self.start_iter, disable=not self.ctx.is_main,
                   desc=Path(cfg.work_dir).name, dynamic_ncols=True)
        t0, window = time.time(), []
        try:
            for it in range(self.start_iter, tc.max_iters):
                losses = self._one_iteration(it, next(loader), params)
                window.append(losses)
                done = it + 1
                bar.update(1)
                if done % tc.log_interval == 0 or done == tc.max_iters:
                    self._log_train(done, window, t0, bar)
                    window = []
                if self._due(done, tc.checkpoint_interval):  # first: a failing evaluation loses no iteration
                    self._save(done)
                if self._due(done, tc.eval_interval):
                    self._evaluate(done)
                if stop_after is not None and done >= stop_after:
                    self._save(done)
                    return {}
        finally:
            bar.close()
        summary = self._finish(tc.max_iters, time.time() - t0)
        return summary

    def _due(self, done: int, interval: int) -> bool:
        return done == self.cfg.train.max_iters or (interval > 0 and done % interval == 0)

    def _one_iteration(self, it: int, batch: dict, params: list) -> dict[str, float]:
        seed_iteration(self.cfg.seed, self.ctx.rank, it)
        apply_lr(self.optimizer, it, self.cfg.train.max_iters, self.cfg.optim)
        self.optimizer.zero_grad(set_to_none=True)
        want_panel = (self.ctx.is_main and self.cfg.train.panel_interval > 0
                      and (it + 1) % self.cfg.train.panel_interval == 0)
        error = None
        try:
            losses, visuals = self.step.train_step(_to_device(batch, self.device), it, autocast_dtype=self.amp_dtype,
                                                   scaler=self.scaler, return_visuals=want_panel,
                                                   panel_dtype=self.eval_dtype)
        except FloatingPointError as e:
            error, losses, visuals = e, {}, None
        if not all_ranks_agree(error is None):
            raise self._diverged(it + 1, str(error or "a non-finite loss on another rank"))
        if self.ctx.enabled:
            allreduce_gradients(params, self.ctx.world_size)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ctx.enabled:
            broadcast_state([self.student, self.step.teacher], params=False)
        if visuals:
            report.write_panel(visuals, self.work_dir / "panels" / f"iter_{it + 1:06d}.png",
                               class_names(self.cfg.model.num_classes, self.cfg.data.classes),
                               title=f"iteration {it + 1}",
                               palette=class_palette(self.cfg.model.num_classes, self.cfg.data.classes))
        return losses

    # ---- logging, evaluation, checkpoints -------------------------------------------------------------------
    def _log_train(self, done: int, window: list[dict], t0: float, bar: tqdm) -> None:
        if not self.ctx.is_main or not window:
            return
        keys = sorted({k for w in window for k in w})
        mean = {k: float(np.mean([w[k] for w in window if k in w])) for k in keys}
        elapsed = time.time() - t0
        row = {"kind": "train", "iter": done, "lr": self.optimizer.param_groups[0]["lr"],
               "it_per_s": (done - self.start_iter) / max(elapsed, 1e-9), **mean}
        _append_jsonl(self.work_dir / "metrics.jsonl", row)
        if self.writer is not None:
            for k, v in row.items():
                if k not in ("kind", "iter"):
                    self.writer.add_scalar(f"train/{k}", v, done)
        bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in mean.items()}, refresh=False)

    def _evaluate(self, done: int) -> None:
        """On every rank (each evaluates its share of the images); rank 0 logs the result."""
        if self.val_set is None:
            return
        self.student.eval()
        with torch.no_grad():
            result = evaluate(self.student, self.val_set, self.cfg.eval, device=self.device, progress=False,
                              ctx=self.ctx, autocast_dtype=self.eval_dtype, classes=self.cfg.data.classes
                              ) if self.val_set.has_labels else {}
        self.student.train()
        if self.cfg.eval.label_free:
            result["label_free"] = self._label_free()
        self.last_eval = {"iter": done, **result}
        self._keep_checkpoints(done, result)
        if not self.ctx.is_main:
            return
        _append_jsonl(self.work_dir / "metrics.jsonl", {"kind": "val", **self.last_eval})
        if self.writer is not None:
            if "mIoU" in result:
                self.writer.add_scalar("val/mIoU", result["mIoU"], done)
            for name, v in result.get("per_class_iou", {}).items():
                if not math.isnan(v):
                    self.writer.add_scalar(f"val_iou/{name}", v, done)
            for name, v in result.get("label_free", {}).items():
                if isinstance(v, float):
                    self.writer.add_scalar(f"label_free/{name}", v, done)
        tqdm.write(f"[iter {done}] " + eval_line(result))

    def _label_free(self) -> dict:
        """Label-free metrics of the val images (each rank its share, counts summed): docs/label_free.md."""
        images = (self.val_set[i]["img"][None] for i in range(self.ctx.rank, len(self.val_set), self.ctx.world_size))
        return label_free_metrics(self.student, images, teacher=self.step.teacher,
                                  threshold=self.cfg.uda.pseudo_threshold,
                                  source_distribution=self.source_distribution, device=self.device,
                                  reduce=self.ctx.enabled, autocast_dtype=self.eval_dtype)

    def _keep_checkpoints(self, done: int, result: dict) -> None:
        """`train.keep_checkpoints`: this iteration's inference weights in checkpoints/; `train.select_by`:
        best.pth when the metric improved (rank 0 writes; every rank holds the same weights)."""
        if not self.ctx.is_main:
            return
        if self.cfg.train.keep_checkpoints:
            save_inference_model(self.student, self.cfg, kept_checkpoint(self.work_dir, done))
        metric = self.cfg.train.select_by
        value = None if metric is None else metric_value(result, metric)
        if value is not None and (self.best is None or is_better(metric, value, self.best)):
            self.best = value
            save_inference_model(self.student, self.cfg, self.work_dir / "best.pth")
            _write_json(self.work_dir / "best.json", {"iter": done, "select_by": metric, metric: value})

    def _diverged(self, iteration: int, reason: str) -> UserError:
        """The divergence error, truthful about the checkpoints it offers: they were checked finite and below
        MAX_SANE_WEIGHT when saved (`_save`), which does not prove them healthy (a loss already growing resumes
        into the same divergence, whatever the lr), so the message gives each one's largest weight and says to
        start over with a lower lr if the resume diverges again."""
        if "latest.pth" not in self.saved_at:
            return UserError(f"training diverged: {reason}; no checkpoint was saved before it: lower optim.lr and "
                             f"start again (or check the data; train.amp=bf16 is more robust than fp16)")
        held = "; ".join(f"{self.work_dir / name} is iteration {self.saved_at[name]} (largest |w| "
                         f"{self.saved_weight[name]:.1e})" for name in ("latest.pth", "previous.pth")
                         if name in self.saved_at)
        resume = (f"mfmseg train {self.work_dir / 'config.yaml'} train.resume=true "
                  f"optim.lr={self.cfg.optim.lr / 10:g}")
        earlier = " (copy previous.pth over latest.pth to go back one more)" if "previous.pth" in self.saved_at else ""
        return UserError(f"training diverged: {reason}; {held}: finite when saved, but not known to be healthy "
                         f"(the divergence may have begun earlier). Resume{earlier} at a lower rate: {resume}; if it "
                         f"diverges again, start a new work_dir= with a lower optim.lr (or check the data; "
                         f"train.amp=bf16 is more robust than fp16)")

    def _save(self, done: int) -> None:
        """Save latest.pth after checking the state is finite and sane, keeping the one before as previous.pth."""
        if self.saved_at.get("latest.pth") == done:
            return
        problem = state_health(self.step.sections(), self.optimizer)  # on every rank: they hold the same weights, all raise
        if problem is not None:
            raise self._diverged(done, f"{problem} after iteration {done}")
        if self.saved_at.get("latest.pth") is not None:
            self.saved_at["previous.pth"] = self.saved_at["latest.pth"]
            self.saved_weight["previous.pth"] = self.saved_weight["latest.pth"]
        self.saved_at["latest.pth"] = done
        self.saved_weight["latest.pth"] = largest_weight(self.student)
        if not self.ctx.is_main:
            return
        keep_previous(self.work_dir / "latest.pth", self.work_dir / "previous.pth")
        atomic_torch_save({
            "format": TRAIN_FORMAT, "config": to_dict(self.cfg), "iteration": done,
            **dict.fromkeys(TRAIN_SECTIONS), **self.step.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(), **run_info(),
        }, self.work_dir / "latest.pth")

    def _finish(self, iters: int, seconds: float) -> dict:
        summary: dict = {}
        if self.last_eval is None or self.last_eval["iter"] != iters:
            self._evaluate(iters)
        if self.ctx.is_main:
            result = self.last_eval or {}
            summary = {"mIoU": result.get("mIoU"), "mIoU16": result.get("mIoU16"), "mIoU13": result.get("mIoU13"),
                       "per_class_iou": result.get("per_class_iou", {}), "label_free": result.get("label_free"),
                       "iters": iters,
                       "train_seconds": round(seconds, 1), "config": to_dict(self.cfg), **run_info()}
            summary = json_safe(summary)
            _write_json(self.work_dir / "summary.json", summary)
            report.plot_losses(self.work_dir / "metrics.jsonl", self.work_dir / "loss_curves.png")
            if summary["per_class_iou"]:
                report.plot_iou_bars({Path(self.cfg.work_dir).name: summary["per_class_iou"]},
                                     self.work_dir / "iou_per_class.png")
            if self.writer is not None:
                self.writer.close()
        return summary

    def close(self, failed: bool = False) -> None:
        """Release the run; `failed`: this rank is ending on an error, so leave the process group without meeting
        the other ranks (see `shutdown_distributed`)."""
        if self.writer is not None:
            self.writer.close()
        del self.step, self.student, self.optimizer
        if self.ctx.enabled:
            shutdown_distributed(failed=failed)


LOCK = "train.lock"  # held by rank 0 for the whole run (files.exclusive_lock)
LOGS_KEY = "logs"  # run_info.json: the files the runs of this work dir append to (metrics.jsonl, tb/ event files)


def written_logs(work_dir: Path) -> list[str]:
    """The logs that runs of `work_dir` recorded writing (run_info.json), relative paths inside it; [] without a
    readable record. Only these are ever removed: a file the user (or another tool) put there is never ours."""
    try:
        logs = json.loads((work_dir / "run_info.json").read_text()).get(LOGS_KEY, [])
    except (OSError, ValueError, AttributeError):
        return []
    return [p for p in logs if isinstance(p, str) and p and not Path(p).is_absolute() and ".." not in Path(p).parts]


def _remove_logs(work_dir: Path, logs: list[str]) -> None:
    """Remove the recorded logs, then the folders (tb/) that removing them left empty."""
    for rel in logs:
        path = work_dir / rel
        if path.is_file() or path.is_symlink():
            path.unlink()
    for folder in sorted({(work_dir / rel).parent for rel in logs}, key=lambda p: -len(p.parts)):
        if folder != work_dir and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _start_fresh_logs(work_dir: Path) -> None:
    """A fresh run (not `train.resume`, no latest.pth) must not continue the rows of a run that failed or was
    killed here: remove the logs an earlier run of this work dir recorded writing, and nothing else (another
    experiment's tb/ folder, the user's own files stay). A metrics.jsonl no run recorded is someone else's: the run
    refuses to start rather than append to it or delete it."""
    logs = written_logs(work_dir)
    if (work_dir / "metrics.jsonl").exists() and "metrics.jsonl" not in logs:
        raise UserError(f"{work_dir / 'metrics.jsonl'} was not written by an mfmseg run in this work dir (no "
                        f"{LOGS_KEY} record in run_info.json): move it away, or choose another work_dir=")
    _remove_logs(work_dir, logs)


def _remove_unfinished(work_dir: Path, before: set[str] | None) -> None:
    """Without a checkpoint, what a failed run wrote (config.yaml, metrics.jsonl, run_info.json, tb/) looks like
    a run but is none: remove the work dir when this run created it (`before` None), else what it added: its
    recorded logs (also inside a tb/ that was there before) and the names that were not in the folder."""
    if not work_dir.is_dir() or (work_dir / "latest.pth").exists():
        return
    if before is None:
        shutil.rmtree(work_dir, ignore_errors=True)
        return
    _remove_logs(work_dir, written_logs(work_dir))
    for name in set(os.listdir(work_dir)) - before - {LOCK}:
        path = work_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def check_data_roots(cfg: Config) -> None:
    """Every dataset root the run reads exists, named by its key: a root the user did not set is the preset's
    default (data/cityscapes), and "does not exist" alone would not say which key to set."""
    used = [("source", cfg.data.source), ("target", cfg.data.target)]
    if cfg.train.eval_interval >= 0 and cfg.data.val.root:
        used.append(("val", cfg.data.val))
    for name, data in used:
        if data.root and not os.path.lexists(data.root):
            hint = (" (or data.val.root= empty: label-free metrics on the target's images)" if name == "val" else "")
            raise UserError(f"data.{name}.root={data.root} does not exist (the preset's default unless you set "
                            f"it): set data.{name}.root= to the folder of the {data.kind} dataset{hint}")


def _train(cfg: Config, stop_after: int | None) -> dict:
    trainer = Trainer(cfg)
    try:
        summary = trainer.run(stop_after=stop_after)
    except BaseException:
        trainer.close(failed=True)
        raise
    trainer.close()
    return summary


def train(cfg: Config, stop_after: int | None = None) -> dict:
    """Run (or resume) one training run; returns the summary also written to `work_dir/summary.json`.

    The main process holds the work dir's lock throughout, so a second `mfmseg train` into it is refused before it
    writes anything. A fresh run starts its log anew (a failed run's rows are not continued), and a run that fails
    before its first checkpoint leaves nothing behind."""
    work_dir = Path(cfg.work_dir)
    check_data_roots(cfg)
    if os.environ.get("RANK", "0") != "0":
        return _train(cfg, stop_after)
    check_output_dir(work_dir, "work_dir")
    created = not work_dir.exists()
    with exclusive_lock(work_dir / LOCK, f"work_dir {work_dir}",
                        "another `mfmseg train` is writing it; wait for it to end, or choose another work_dir="):
        if not cfg.train.resume and not (work_dir / "latest.pth").exists():
            _start_fresh_logs(work_dir)
        before = None if created else set(os.listdir(work_dir))
        try:
            return _train(cfg, stop_after)
        except BaseException:
            _remove_unfinished(work_dir, before)
            raise
