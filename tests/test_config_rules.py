"""Config rules sit beside their fields: every numeric field states its range and every string field with a closed set
of values its choices (dataclass field metadata, read by `validate`), and each rule is enforced under its full key."""

import copy
import dataclasses
import re
import types
import typing

import pytest

from mfmseg.config import _RANGE, Config, validate
from mfmseg.errors import UserError

# Numeric fields with no range of their own, and why: a new numeric field must get a range or a line here.
NO_RANGE = {
    # checked together by _validate_hrda, and only when model.hrda.enabled
    "model.hrda.hr_crop", "model.hrda.attention_embed_dim", "model.hrda.hr_loss_weight", "model.hrda.detail_stride",
    "model.hrda.crop_divisible",
}
# String fields whose values are not a closed set, and why: a new string field must get choices or a line here.
OPEN_STRINGS = {
    "work_dir", "model.pretrained",  # a path, a path or hub id
    # a folder, a split name of the dataset's layout, a class-map file
    *(f"data.{d}.{k}" for d in ("source", "target", "val") for k in ("root", "split", "class_map")),
    "model.name",  # the model zoo: checked when the model is built (`mfmseg models` lists them)
    "train.device",  # a pattern (cuda:N), checked by check_device
    "train.select_by",  # mIoU or a label-free metric, checked against the val set by check_select_by
}


def _leaves(node, prefix=""):
    """(dotted key, field, type hint) of every non-section field below `node`, with the full path."""
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hints[f.name]


def _scalar(hint):
    """int for int / Optional[int] / List[int], and so on; the hint itself otherwise."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    wrapped = typing.get_origin(hint) in (typing.Union, types.UnionType, list) and len(args) == 1
    return _scalar(args[0]) if wrapped else hint


LEAVES = list(_leaves(Config()))
RANGED = [(k, f, h) for k, f, h in LEAVES if "range" in f.metadata]
CHOSEN = [(k, f) for k, f, _ in LEAVES if "choices" in f.metadata]


def test_every_numeric_field_has_a_range_and_every_closed_string_its_choices():
    numeric = {k for k, _, h in LEAVES if _scalar(h) in (int, float)}  # bool is not int here: hints are exact
    strings = {k for k, _, h in LEAVES if _scalar(h) is str}
    assert numeric and strings
    assert sorted(k for k in numeric - NO_RANGE if k not in {r[0] for r in RANGED}) == []
    assert sorted(k for k in strings - OPEN_STRINGS if k not in {c[0] for c in CHOSEN}) == []
    # the lists stay exact: a field that gains a rule (or goes away) leaves them
    assert sorted(k for k in NO_RANGE if k not in numeric or k in {r[0] for r in RANGED}) == []
    assert sorted(k for k in OPEN_STRINGS if k not in strings or k in {c[0] for c in CHOSEN}) == []
    # a rule only on a field of its kind
    assert {k for k, _, _ in RANGED} <= numeric and {k for k, _ in CHOSEN} <= strings


def test_defaults_satisfy_their_rules():
    validate(Config())


def _set(config, key, value):
    *path, name = key.split(".")
    node = config
    for p in path:
        node = getattr(node, p)
    setattr(node, name, value)


def _below(spec: str, kind: type):
    """A value outside the range `spec`, below it."""
    m = _RANGE.fullmatch(spec)
    return kind(float(m["bound"] if m["op"] else m["a"]) - 1)


def _inside(spec: str, kind: type):
    """A value inside the range `spec`."""
    m = _RANGE.fullmatch(spec)
    return kind(float(m["bound"]) + 1 if m["op"] else (float(m["a"]) + float(m["b"])) / 2)


@pytest.mark.parametrize("key, f, hint", RANGED, ids=[r[0] for r in RANGED])
def test_each_range_is_enforced_under_its_full_key(key, f, hint):
    config = copy.deepcopy(Config())
    bad = _below(f.metadata["range"], _scalar(hint))
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    many = isinstance(default, list)
    value = [bad] * len(default) if many else bad
    _set(config, key, value)
    words = re.escape(f"{key}={value} is out of range: {'every element of ' if many else ''}{key} must be ")
    with pytest.raises(UserError, match=f"^{words}"):
        validate(config)
    if f.metadata.get("pair"):
        three = [_inside(f.metadata["range"], _scalar(hint))] * 3
        _set(config, key, three)
        with pytest.raises(UserError, match=f"^{re.escape(f'{key}={three} must be a pair of two numbers')}$"):
            validate(config)


@pytest.mark.parametrize("key, f", CHOSEN, ids=[c[0] for c in CHOSEN])
def test_each_choice_is_enforced_under_its_full_key(key, f):
    config = copy.deepcopy(Config())
    _set(config, key, "bogus")
    words = re.escape(f"{key}='bogus' is not one of {', '.join(f.metadata['choices'])}")
    with pytest.raises(UserError, match=f"^{words}$"):
        validate(config)


def test_the_rules_cover_the_full_paths_of_nested_sections():
    keys = {k for k, _, _ in RANGED} | {k for k, _ in CHOSEN}
    assert {"data.source.crop", "data.val.resize", "data.target.kind", "uda.mfm.mask_ratio", "data.classes",
            "data.rcs.temperature", "seed"} <= keys
