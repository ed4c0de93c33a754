"""A sweep's plan: `LABEL=CONFIG [key=value ...]` specs × seeds → runs (work dirs, overrides, and whether
each is done, resumes or starts)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import yaml

from mfmseg.config import load_config, to_dict
from mfmseg.errors import UserError


RESERVED_KEYS = ("work_dir", "seed", "train.resume")  # the sweep sets these per run
LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
IGNORED_CONFIG_KEYS = ("work_dir", "train.resume")  # may differ between a saved run and the same run resumed


@dataclass(frozen=True)
class RunSpec:
    """One positional argument of `mfmseg sweep`: `[LABEL=]PRESET_OR_YAML [key=value ...]`."""
    label: str
    config: str
    overrides: tuple[str, ...] = ()
    text: str = ""


@dataclass
class SweepRun:
    """One (spec, seed) training: its work dir, full override list and what to do with it."""
    spec: RunSpec
    seed: int
    work_dir: Path
    overrides: list[str]
    state: str = "fresh"  # done (summary.json) | resume (latest.pth) | fresh
    status: str = "pending"  # pending | done | failed
    summary: dict | None = None
    error: str = ""
    max_iters: int = 0  # for the live progress line

    @property
    def log(self) -> Path:
        return self.work_dir.with_name(self.work_dir.name + ".log")


def parse_spec(text: str) -> RunSpec:
    """`"mfm=synthetic_dacs_mfm uda.mfm.weight=0.5"` -> RunSpec(label="mfm", config=..., overrides=(...))."""
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise UserError(f"sweep spec {text!r}: {e}") from None
    if not words:
        raise UserError("an empty sweep spec: give a preset or YAML, e.g. 'synthetic_dacs'")
    head, overrides = words[0], tuple(words[1:])
    label, config = head.split("=", 1) if "=" in head else (Path(head).stem, head)
    if not LABEL_RE.fullmatch(label) or not config:
        raise UserError(f"sweep spec {text!r}: label {label!r} must be letters, digits, '_', '.', '+' or '-', "
                        f"followed by '=' and a preset or YAML (e.g. 'mfm=synthetic_dacs_mfm')")
    _check_reserved(overrides, f"sweep spec {text!r}")
    return RunSpec(label=label, config=config, overrides=overrides, text=text)


def _check_reserved(overrides: Sequence[str], where: str) -> None:
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in RESERVED_KEYS:
            raise UserError(f"{where}: {key}= is set by the sweep (work dirs OUT/runs/<label>/seed<S>, --seeds, "
                            f"resuming); remove it")


def check_args(specs: Sequence[RunSpec], seeds: Sequence[int], baseline: str | None, jobs: int) -> None:
    labels = [s.label for s in specs]
    for label in labels:
        if labels.count(label) > 1:
            raise UserError(f"two sweep specs have the label {label!r}: name them, e.g. '{label}_b=<config> ...'")
    if baseline is not None and baseline not in labels:
        raise UserError(f"--baseline {baseline!r} is not a label of this sweep ({', '.join(labels)})")
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds must list distinct seeds (got {' '.join(map(str, seeds)) or 'none'})")
    if jobs < 1:
        raise UserError(f"--jobs {jobs} must be at least 1")


def run_state(work_dir: Path) -> str:
    """done: a finished run (summary.json); resume: a checkpoint to continue from; fresh: anything else."""
    if (work_dir / "summary.json").is_file():
        return "done"
    return "resume" if (work_dir / "latest.pth").is_file() else "fresh"


def _flatten(d: Mapping, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def config_difference(saved: Mapping, wanted: Mapping) -> str | None:
    """The first key whose value differs, as 'key: saved -> wanted'; None if the same run.

    Only keys both configs have count: a key added (or removed) by a newer mfmseg must not orphan finished runs.
    """
    a, b = _flatten(saved), _flatten(wanted)
    for key in a.keys() & b.keys():
        if key not in IGNORED_CONFIG_KEYS and a[key] != b[key]:
            return f"{key}: {a[key]!r} there, {b[key]!r} now"
    return None


def _saved_config(work_dir: Path, state: str) -> dict | None:
    try:
        if state == "done":
            return json.loads((work_dir / "summary.json").read_text()).get("config")
        if (work_dir / "config.yaml").is_file():
            return yaml.safe_load((work_dir / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None  # unreadable: a partial write of a killed run; the trainer decides
    return None


def _load_spec(spec: RunSpec, common: Sequence[str]) -> dict:
    """The spec's resolved config; the runs of its seeds differ from it in `seed` and `work_dir` alone, so one
    load (and one validation) per spec, not per run."""
    try:
        return to_dict(load_config(spec.config, [*common, *spec.overrides]))
    except UserError as e:
        raise UserError(f"sweep spec {spec.text or spec.label!r}: {e}") from None


def _plan_run(spec: RunSpec, config: dict, seed: int, out: Path, common: Sequence[str]) -> SweepRun:
    work_dir = out / "runs" / spec.label / f"seed{seed}"
    overrides = [*common, *spec.overrides, f"work_dir={work_dir}", f"seed={seed}"]
    run = SweepRun(spec=spec, seed=seed, work_dir=work_dir, overrides=overrides, state=run_state(work_dir),
              max_iters=int(config["train"]["max_iters"]))
    saved = _saved_config(work_dir, run.state) if run.state != "fresh" else None
    diff = config_difference(saved, {**config, "seed": seed}) if saved else None
    if diff:
        raise UserError(f"{work_dir} holds a run with other settings ({diff}): delete it to retrain, or use "
                        f"another --out")
    return run


def plan_sweep(specs: Sequence[RunSpec], seeds: Sequence[int], out: Path, common: Sequence[str]) -> list[SweepRun]:
    """Every (seed, spec) run, seed-major, each config loaded and checked before anything trains."""
    _check_reserved(common, "--set")
    configs = {spec.label: _load_spec(spec, common) for spec in specs}
    return [_plan_run(spec, configs[spec.label], seed, out, common) for seed in seeds for spec in specs]
