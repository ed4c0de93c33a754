"""Every `<preset>_mfm` is its base preset plus MFM and nothing else: a paired comparison of the two measures MFM,
not a second, unnoticed difference (issue 30)."""

from __future__ import annotations

import pytest

from mfmseg.config import list_presets, load_config, to_dict


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


PAIRS = [(p[: -len("_mfm")], p) for p in list_presets() if p.endswith("_mfm") and p[: -len("_mfm")] in list_presets()]


def test_most_mfm_presets_have_a_base():
    lone = [p for p in list_presets() if p.endswith("_mfm") and (p[: -len("_mfm")], p) not in PAIRS]
    assert len(PAIRS) >= 25 and lone == ["synthetic_daformer_mfm"]  # the demo network's MFM-only preset


@pytest.mark.parametrize("base,mfm", PAIRS, ids=[m for _, m in PAIRS])
def test_an_mfm_preset_is_its_base_with_mfm_switched_on(base, mfm):
    a, b = _flat(to_dict(load_config(base))), _flat(to_dict(load_config(mfm)))
    differ = {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert differ == {"work_dir": (f"work_dirs/{base}", f"work_dirs/{mfm}"), "uda.mfm.enabled": (False, True)}
