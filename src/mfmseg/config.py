"""Typed run configuration: dataclasses, YAML presets and `key=value` overrides.

Defaults are the paper's DAFormer setting (docs/method.md §3); a preset YAML states only what differs from them,
flat, with no inheritance between presets, so that one file tells the whole story of a run. Unknown keys and
wrong types are errors that name the key and the nearest valid one: a misspelt `mfm.mask_raito=0.6` must never
silently train the default.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from mfmseg.data.layouts import DATASET_KINDS  # a leaf of data/: imports nothing that imports config
from mfmseg.data.labels import CLASS_SETS  # a leaf of data/ too
from mfmseg.errors import UserError, first_line, yaml_error_line

PRESET_DIR = Path(__file__).parent / "configs"

CITYSCAPES_THING_CLASSES = [6, 7, 11, 12, 13, 14, 15, 16, 17, 18]

# Each field's rule sits beside it, as dataclass field metadata that `validate` reads by walking the fields: a
# numeric field states its valid range (lists: of each element), so that an out-of-range value fails at load time,
# naming its key, instead of as a ZeroDivisionError deep in the first iteration; a string field with a closed set of
# values states them. Ranges: ">0", ">=N", or an interval "[a,b]" / "[a,b)" / "(a,b]".
_RANGE = re.compile(r"(?P<op>>=|>)(?P<bound>-?[\d.]+)|(?P<lo>[\[(])(?P<a>-?[\d.]+),(?P<b>-?[\d.]+)(?P<hi>[\])])")


def in_range(value: float, spec: str) -> bool:
    """`value` satisfies a range spec (">0", ">=1", "[0,1)")."""
    m = _RANGE.fullmatch(spec)
    if m is None:
        raise ValueError(f"bad range spec {spec!r}")
    if m["op"]:
        return value >= float(m["bound"]) if m["op"] == ">=" else value > float(m["bound"])
    a, b = float(m["a"]), float(m["b"])
    above = value >= a if m["lo"] == "[" else value > a
    below = value <= b if m["hi"] == "]" else value < b
    return above and below


def _spec_words(spec: str) -> str:
    """">=1" -> ">= 1", "[0,1)" -> "in [0, 1)"."""
    if spec[0] in "[(":
        return f"in {spec.replace(',', ', ')}"
    op = ">=" if spec.startswith(">=") else ">"
    return f"{op} {spec[len(op):]}"


def _spec(spec: str) -> str:
    """A range spec, checked where the field is declared: a malformed one fails at import, not at a user's load."""
    if _RANGE.fullmatch(spec) is None:
        raise ValueError(f"bad range spec {spec!r}")
    return spec


def ranged(default: Any, spec: str) -> Any:
    """A number (or None, unchecked) within the range `spec`."""
    return field(default=default, metadata={"range": _spec(spec)})


def each(default_factory: Callable[[], list], spec: str) -> Any:
    """A list whose every element is within the range `spec`."""
    return field(default_factory=default_factory, metadata={"range": _spec(spec)})


def pair(default_factory: Callable[[], list], spec: str) -> Any:
    """A list of exactly two numbers, each within the range `spec`."""
    return field(default_factory=default_factory, metadata={"range": _spec(spec), "pair": True})


def choice(default: str, allowed: Sequence[str]) -> Any:
    """A string that is one of `allowed`."""
    return field(default=default, metadata={"choices": tuple(allowed)})


@dataclass
class HRDAConfig:
    """HRDA multi-resolution training (docs/method.md §3): the data crop is the full-scale training input; the encoder
    sees it at 0.5 (context) and a random `hr_crop` window of it at full scale (detail)."""
    enabled: bool = False
    hr_crop: List[int] = field(default_factory=lambda: [512, 512])  # [H, W] of the detail window
    attention_embed_dim: int = 256  # width of the scale-attention head
    hr_loss_weight: float = 0.1  # loss = (1 - w)·CE(fused) + w·CE(detail on its window)
    detail_stride: List[int] = field(default_factory=lambda: [256, 256])  # [H, W] of the inference detail windows
    crop_divisible: int = 8  # detail-window corners are multiples of this (2 × output stride 4: exact fusion)


@dataclass
class ModelConfig:
    name: str = "daformer_mitb5"  # a zoo name: `mfmseg models` lists them
    num_classes: int = ranged(19, "[1,255)")  # train ids 0..254: 255 is the ignore label
    pretrained: Optional[str] = None  # ImageNet init: a .pth/.safetensors file, a HF folder or hub id; None = random
    decoder_channels: Optional[int] = ranged(None, ">=1")  # the head width (small CPU presets); None = the paper's
    # the encoder's BatchNorms stay in eval mode in every training pass (running statistics frozen at the pretrained
    # values, affine weights still train): a BatchNorm encoder whose statistics cannot drift, like a LayerNorm one
    norm_eval: bool = False
    hrda: HRDAConfig = field(default_factory=HRDAConfig)


@dataclass
class DatasetConfig:
    kind: str = choice("cityscapes", DATASET_KINDS)
    root: str = ""
    split: str = "train"
    resize: List[int] = pair(lambda: [1024, 512], ">0")  # [W, H]; a bound when keep_ratio
    keep_ratio: bool = True
    crop: List[int] = pair(lambda: [512, 512], ">0")  # [H, W]
    class_map: Optional[str] = None  # folder datasets: the YAML class map


@dataclass
class RCSConfig:
    enabled: bool = True
    temperature: float = ranged(0.01, ">0")
    min_pixels: int = ranged(3000, ">=0")
    min_crop_ratio: float = ranged(0.5, ">=0")


@dataclass
class DataConfig:
    source: DatasetConfig = field(default_factory=lambda: DatasetConfig(kind="gta", resize=[1280, 720]))
    target: DatasetConfig = field(default_factory=DatasetConfig)
    val: DatasetConfig = field(default_factory=lambda: DatasetConfig(split="val"))
    batch_size: int = ranged(2, ">=1")  # per process, for source and for target
    num_workers: int = ranged(4, ">=0")
    cat_max_ratio: float = ranged(0.75, "(0,1]")  # source crops are re-drawn until no class covers more than this
    rcs: RCSConfig = field(default_factory=RCSConfig)
    # the label space trained and scored: cityscapes (19) | idd_level1 (IDD's 7 level-1 classes); datasets labelled
    # in Cityscapes' classes are mapped down to a coarser set (docs/data.md)
    classes: str = choice("cityscapes", CLASS_SETS)


@dataclass
class FDConfig:
    enabled: bool = True
    weight: float = ranged(0.005, ">=0")
    cell_ratio: float = ranged(0.75, "[0,1]")
    thing_classes: List[int] = each(lambda: list(CITYSCAPES_THING_CLASSES), ">=0")


@dataclass
class MixConfig:
    color_jitter_strength: float = ranged(0.2, ">=0")
    color_jitter_p: float = ranged(0.8, "[0,1]")
    blur: bool = True
    batch_wide_classes: bool = False  # reproduce the reference's ClassMix quirk (classes drawn batch-wide)


@dataclass
class MICConfig:
    enabled: bool = False
    block_size: int = ranged(32, ">=1")
    mask_ratio: float = ranged(0.7, "[0,1)")
    weight: float = ranged(1.0, ">=0")


@dataclass
class MFMConfig:
    enabled: bool = False
    embed_dim: int = ranged(512, ">=4")
    depth: int = ranged(2, ">=0")
    num_heads: int = ranged(16, ">=1")
    mlp_ratio: float = ranged(4.0, ">0")
    grid: int = ranged(16, ">=1")
    mask_ratio: float = ranged(0.4, "[0,1)")
    weight: float = ranged(1.0, ">=0")  # lambda
    # target | source | both: the paper's ablation; mixed: ours, not in the paper (MFM on the ClassMix image,
    # sharing the mixed-loss encoder pass: no extra encoder pass, labels = the mixed labels and weights)
    domain: str = choice("target", ("target", "source", "both", "mixed"))
    lr: float = ranged(2e-4, ">0")
    # switches beyond the paper's method, off by default: what each does, when to use it and what the MFM study
    # measured are in docs/training.md ("Switches beyond the paper's method")
    rebuild: bool = True  # false = "masking without a Rebuilder" (paper ablation): masked positions are zeroed
    freeze_decoder_bn: bool = False  # the MFM decode leaves the decoder's BatchNorm running statistics unchanged
    freeze_encoder_bn: bool = False  # the MFM pass's encoder forward leaves the BatchNorm running statistics unchanged
    # the MFM pass's encoder runs its BatchNorms in eval mode: normalised with the running (source + target)
    # statistics, so MFM's gradient never sees an all-target batch's statistics, and nothing moves them (so it
    # implies freeze_encoder_bn)
    encoder_bn_eval: bool = False
    # which tokens to mask: random (the paper: each token with probability mask_ratio), uncertain / confident
    # (exactly round(mask_ratio·tokens) tokens drawn with probability growing / shrinking with the teacher's
    # pseudo-label entropy pooled to the token grid; the paper's future work)
    mask_strategy: str = choice("random", ("random", "uncertain", "confident"))


@dataclass
class UDAConfig:
    method: str = choice("dacs", ("source_only", "dacs"))  # DAFormer = dacs + fd + rcs; MIC = dacs + mic
    alpha: float = ranged(0.999, "[0,1]")
    pseudo_threshold: float = ranged(0.968, "[0,1]")
    pseudo_margins: List[int] = each(lambda: [15, 120, 0, 0], ">=0")  # top, bottom, left, right px
    fd: FDConfig = field(default_factory=FDConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    mic: MICConfig = field(default_factory=MICConfig)
    mfm: MFMConfig = field(default_factory=MFMConfig)
    # one no-grad, train-mode student forward of the clean target crop per iteration: it only moves BatchNorm
    # running statistics toward the target domain (AdaBN-style; docs/training.md)
    target_bn_pass: bool = False


@dataclass
class OptimConfig:
    name: str = choice("adamw", ("adamw", "sgd"))
    lr: float = ranged(6e-5, ">0")
    betas: List[float] = pair(lambda: [0.9, 0.999], "[0,1)")
    momentum: float = ranged(0.9, "[0,1]")
    weight_decay: float = ranged(0.01, ">=0")
    head_lr_mult: float = ranged(10.0, ">0")
    # the encoder at lr × encoder_lr_mult (the VFM-UDA recipe fine-tunes a foundation model at ×0.1); encoders that
    # number their layers (ViT: `layer_id`) also get layer-wise decay: layer i of L at layer_decay^(L-i); 1 = off
    encoder_lr_mult: float = ranged(1.0, ">0")
    layer_decay: float = ranged(1.0, "(0,1]")
    norm_no_decay: bool = True
    warmup_iters: int = ranged(1500, ">=0")
    warmup_ratio: float = ranged(1e-6, "[0,1]")
    power: float = ranged(1.0, ">=0")
    min_lr: float = ranged(0.0, ">=0")


@dataclass
class TrainConfig:
    max_iters: int = ranged(40000, ">=0")
    eval_interval: int = ranged(4000, ">=-1")  # -1: never evaluate (no validation set needed)
    checkpoint_interval: int = ranged(4000, ">=0")
    log_interval: int = ranged(50, ">=1")
    panel_interval: int = ranged(4000, ">=0")  # 0 = no image panels
    device: str = "auto"  # auto | cpu | cuda | cuda:N (check_device)
    amp: str = choice("none", ("none", "bf16", "fp16"))
    resume: bool = False
    grad_checkpointing: bool = False
    compile: bool = False
    sync_bn: bool = False
    deterministic: bool = False  # strict: slower; an op without a deterministic kernel is an error
    dist_timeout_s: int = ranged(1800, ">=1")  # multi-GPU: how long a rank waits in a collective for the others
    # keep best.pth by this metric at each evaluation: a label-free one (engine/evaluation/label_free.py: entropy,
    # im, ...; no target labels needed) or mIoU (needs a labelled val split); None = keep only latest.pth
    select_by: Optional[str] = None
    keep_checkpoints: bool = False  # the inference weights of every evaluated iteration in checkpoints/ (mfmseg select)


@dataclass
class EvalConfig:
    mode: str = choice("whole", ("whole", "slide"))
    window: List[int] = pair(lambda: [512, 512], ">0")  # [H, W]
    stride: List[int] = pair(lambda: [341, 341], ">0")
    batch_size: int = ranged(1, ">=1")
    # autocast dtype of evaluation, predict and panels: "train" = train.amp on CUDA, fp32 elsewhere (CPU autocast is
    # emulated on most CPUs: slower, and CPU results stay as they were); none | bf16 | fp16 force one
    amp: str = choice("train", ("train", "none", "bf16", "fp16"))
    label_free: bool = True  # log the label-free metrics of the val images at each evaluation (docs/label_free.md)


@dataclass
class Config:
    work_dir: str = "work_dirs/run"
    seed: int = ranged(0, ">=0")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    uda: UDAConfig = field(default_factory=UDAConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, (dict, DictConfig)):
            keys.extend(_all_keys(v, full + "."))
    return keys


def _nearest(key: str, valid: Sequence[str]) -> str:
    """A hint for an unknown key: the close name at the level where it goes wrong (`trian` -> `train`,
    `train.max_iter` -> `train.max_iters`), else the same name in another section, else the keys at that level. A key
    with no near neighbour (`foo`) gets the list, never an unrelated guess."""
    parts = key.split(".")
    depth = next(i for i in range(len(parts)) if ".".join(parts[: i + 1]) not in valid)
    prefix = ".".join(parts[:depth] + [""]) if depth else ""
    level = [k[len(prefix):] for k in valid if k.startswith(prefix) and "." not in k[len(prefix):]]
    close = difflib.get_close_matches(parts[depth], level, n=1, cutoff=0.7)
    if close:
        fixed = ".".join(parts[:depth] + close + parts[depth + 1:])
        return f" (did you mean '{fixed if fixed in valid else prefix + close[0]}'?)"
    elsewhere = [k for k in valid if k.rsplit(".", 1)[-1] == parts[depth]]  # `mfm` -> `uda.mfm`
    if elsewhere:
        return f" (did you mean {' or '.join(repr(k) for k in elsewhere[:3])}?)"
    if not level:
        return f" ('{prefix.rstrip('.')}' is a value, not a section)"
    return f" ({'keys of ' + prefix.rstrip('.') if prefix else 'top-level keys'}: {', '.join(level)})"


def _check_sections(data: dict, schema: dict, where: str, prefix: str = "") -> None:
    """A plain value where a section belongs (`uda.mfm=true`, `rcs: 5` under `data:`) is named here: OmegaConf
    would refuse it with an error that carries no message."""
    for key, value in data.items():
        section = schema.get(key)
        if not isinstance(section, dict):
            continue
        if not isinstance(value, dict):
            raise UserError(f"config key '{prefix}{key}' in {where} is a section, not a value (got {value!r}): set "
                            f"its keys instead, e.g. {prefix}{key}.{next(iter(section))}= (keys: "
                            f"{', '.join(section)})")
        _check_sections(value, section, where, f"{prefix}{key}.")


@functools.lru_cache(maxsize=1)
def _defaults() -> DictConfig:
    """The defaults as a typed OmegaConf node, built once per process (~0.2 s each time); merges copy it, never
    change it."""
    return OmegaConf.structured(Config)


@functools.lru_cache(maxsize=1)
def _schema() -> tuple[dict, tuple[str, ...]]:
    """The defaults as a plain dict and every valid dotted key, built once per process (the dict is read, never
    changed)."""
    schema = OmegaConf.to_container(_defaults())
    return schema, tuple(_all_keys(schema))  # type: ignore[arg-type]


def _check_keys(data: dict, where: str) -> None:
    schema, valid = _schema()
    for key in _all_keys(data):
        if key not in valid:
            raise UserError(f"unknown config key '{key}' in {where}{_nearest(key, valid)}")
    _check_sections(data, schema, where)


def _merge(base: DictConfig, data: dict, where: str) -> DictConfig:
    _check_keys(data, where)
    try:
        return OmegaConf.merge(base, data)
    except ValidationError as e:
        raise UserError(f"bad value for '{e.full_key}' in {where}: {first_line(e)}") from None
    except OmegaConfBaseException as e:
        raise UserError(f"config error in {where}: {first_line(e)}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping, at any depth: PyYAML keeps the last one
    silently, so a second `train:` block would drop the first and train defaults the user did not choose."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden: that is its purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: the base constructor names it
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first given at line {first.line + 1}): keep one",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str):
    return yaml.load(text, Loader=_UniqueKeyLoader)


def _parse_overrides(overrides: list[str]) -> dict:
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not key=value (e.g. train.max_iters=100)")
        key, raw = item.split("=", 1)
        try:
            value = _load_yaml(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise UserError(f"override '{item}': the value is not valid YAML ({yaml_error_line(e)})") from None
        node = nested
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{item}' conflicts with an earlier override of '{p}'")
        node[parts[-1]] = value
    return nested


def resolve_preset(name_or_path: str) -> Path:
    """A YAML path, or the name of a built-in preset (`gta2cs_daformer_mitb5_mfm`)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    close = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f"; presets: {', '.join(names)}"
    raise UserError(f"no config file or preset named '{name_or_path}'{hint}")


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML preset <- `key=value` overrides, validated; returns a typed `Config`."""
    cfg = _defaults()
    if name_or_path is not None:
        path = resolve_preset(name_or_path)
        try:
            data = _load_yaml(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"cannot parse {path}: {yaml_error_line(e)}") from None
        if not isinstance(data, dict):
            raise UserError(f"{path} must hold a mapping of config keys")
        cfg = _merge(cfg, data, str(path))
    if overrides:
        cfg = _merge(cfg, _parse_overrides(overrides), "command-line overrides")
    config: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    validate(config)
    return config


def config_from_dict(data: dict, where: str = "checkpoint") -> Config:
    """Rebuild a Config from its saved dict form (checkpoints, work-dir `config.yaml`)."""
    config: Config = OmegaConf.to_object(_merge(_defaults(), data, where))  # type: ignore
    validate(config)
    return config


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_dict(config: Config) -> dict:
    """Plain dicts and lists (YAML- and JSON-safe), in field order; from the dataclasses directly, as an OmegaConf
    round trip costs ~0.2 s per call."""
    return _plain(dataclasses.asdict(config))


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(name: str, key: str = "train.device") -> str:
    """Reject `--device bogus` with the valid forms, before torch rejects it with a traceback."""
    if not DEVICE_PATTERN.fullmatch(str(name)):
        raise UserError(f"{key}={name!r} is not a device: use auto, cpu, cuda or cuda:N")
    return str(name)


def _rules(node: Any, prefix: str = "") -> Iterator[tuple[str, Any, dict]]:
    """(dotted key, value, metadata) of every field below `node` that states a rule, in field order."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            yield from _rules(value, f"{prefix}{f.name}.")
        elif f.metadata:
            yield f"{prefix}{f.name}", value, f.metadata


def _check_choices(config: Config) -> None:
    for key, value, rule in _rules(config):
        if "choices" in rule and value not in rule["choices"]:
            raise UserError(f"{key}={value!r} is not one of {', '.join(rule['choices'])}")


def _check_ranges(config: Config) -> None:
    rules = list(_rules(config))
    for key, value, rule in rules:
        spec = rule.get("range")
        if spec is None:
            continue
        many = isinstance(value, (list, tuple))
        values = value if many else [value]
        bad = [v for v in values if v is not None and not in_range(v, spec)]
        if bad:
            shown = list(value) if many else value
            where = "every element of " if many else ""
            raise UserError(f"{key}={shown} is out of range: {where}{key} must be {_spec_words(spec)}")
    for key, value, rule in rules:
        if rule.get("pair") and len(value) != 2:
            raise UserError(f"{key}={list(value)} must be a pair of two numbers")


def _check_mfm(m: MFMConfig) -> None:
    """The Rebuilder's attention splits embed_dim across heads; its 2-D sin-cos position embedding needs dim % 4."""
    if m.embed_dim % m.num_heads:
        raise UserError(f"uda.mfm.embed_dim={m.embed_dim} must be divisible by uda.mfm.num_heads={m.num_heads}")
    if m.embed_dim % 4:
        raise UserError(f"uda.mfm.embed_dim={m.embed_dim} must be a multiple of 4 (the 2-D sin-cos position "
                        f"embedding splits it into 4 parts)")


def validate(config: Config) -> None:
    """Value checks that types alone cannot express: choices, ranges, and the few constraints between keys."""
    _check_choices(config)
    check_device(config.train.device)
    _check_ranges(config)
    m = config.uda.mfm
    _check_mfm(m)
    if config.optim.min_lr > config.optim.lr:
        raise UserError(f"optim.min_lr={config.optim.min_lr} must not exceed optim.lr={config.optim.lr}")
    classes = CLASS_SETS[config.data.classes]
    if config.data.classes != "cityscapes" and config.model.num_classes != len(classes):
        raise UserError(f"data.classes={config.data.classes} has {len(classes)} classes but model.num_classes="
                        f"{config.model.num_classes}: set model.num_classes={len(classes)}")
    if any(c >= config.model.num_classes for c in config.uda.fd.thing_classes):
        raise UserError(f"uda.fd.thing_classes={list(config.uda.fd.thing_classes)} must be train ids below "
                        f"model.num_classes={config.model.num_classes}")
    if config.uda.method == "source_only" and (m.enabled and m.domain != "source" or config.uda.mic.enabled):
        raise UserError("uda.method=source_only has no pseudo-labels: use uda.mfm.domain=source or method=dacs")
    if len(config.uda.pseudo_margins) != 4:
        raise UserError("uda.pseudo_margins must list 4 pixel counts: top, bottom, left, right")
    if m.enabled and m.mask_strategy != "random" and (m.domain != "target" or config.model.hrda.enabled):
        raise UserError(f"uda.mfm.mask_strategy={m.mask_strategy} reads the teacher's entropy of the target crop: "
                        f"it needs uda.mfm.domain=target and a single-scale model (not model.hrda.enabled)")
    if m.enabled and m.encoder_bn_eval and config.train.grad_checkpointing:
        raise UserError("uda.mfm.encoder_bn_eval cannot run with train.grad_checkpointing: the recomputation in "
                        "backward would run the encoder's BatchNorms in train mode, unlike the forward")
    if config.uda.target_bn_pass and config.uda.method == "source_only":
        raise UserError("uda.target_bn_pass runs in the self-training target stage, which uda.method=source_only "
                        "does not have: use uda.method=dacs")
    if config.model.hrda.enabled:
        _validate_hrda(config)


def _validate_hrda(config: Config) -> None:
    """The detail window must fit the crop and align with the context output grid (checked before any training)."""
    h = config.model.hrda
    if len(h.hr_crop) != 2 or len(h.detail_stride) != 2:
        raise UserError("model.hrda.hr_crop and model.hrda.detail_stride must be [H, W] pairs")
    if h.crop_divisible < 8 or h.crop_divisible % 8:
        raise UserError(f"model.hrda.crop_divisible={h.crop_divisible} must be a multiple of 8 (2 × the head's "
                        f"output stride 4), or the detail window does not align with the context prediction")
    if min(h.hr_crop) < 1 or any(c % h.crop_divisible for c in h.hr_crop):
        raise UserError(f"model.hrda.hr_crop={list(h.hr_crop)} must be positive multiples of "
                        f"model.hrda.crop_divisible={h.crop_divisible}")
    if any(s < 1 or s > c or s % h.crop_divisible for s, c in zip(h.detail_stride, h.hr_crop)):
        raise UserError(f"model.hrda.detail_stride={list(h.detail_stride)} must be multiples of "
                        f"{h.crop_divisible} in [1, hr_crop={list(h.hr_crop)}] (windows must overlap or touch)")
    if not 0.0 <= h.hr_loss_weight < 1.0:
        raise UserError(f"model.hrda.hr_loss_weight={h.hr_loss_weight} must be in [0, 1)")
    if h.attention_embed_dim < 1:
        raise UserError(f"model.hrda.attention_embed_dim={h.attention_embed_dim} must be positive")
    for name in ("source", "target"):
        crop = getattr(config.data, name).crop
        if any(c < hc for c, hc in zip(crop, h.hr_crop)) or any(c % 2 for c in crop):
            raise UserError(f"data.{name}.crop={list(crop)} must be even and at least model.hrda.hr_crop="
                            f"{list(h.hr_crop)}: HRDA crops its detail window out of the training crop")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))

