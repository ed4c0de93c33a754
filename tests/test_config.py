"""Config loading: presets, overrides, unknown keys, wrong types, round-trip through YAML."""

import subprocess
import sys

import pytest
import yaml

from mfmseg.config import config_from_dict, list_presets, load_config, to_yaml
from mfmseg.errors import UserError


def test_defaults_are_the_paper_daformer_setting():
    cfg = load_config()
    assert cfg.optim.lr == 6e-5 and cfg.optim.head_lr_mult == 10.0 and cfg.optim.warmup_iters == 1500
    assert cfg.uda.alpha == 0.999 and cfg.uda.pseudo_threshold == 0.968
    assert cfg.uda.mfm.mask_ratio == 0.4 and cfg.uda.mfm.lr == 2e-4 and cfg.uda.mfm.grid == 16
    assert cfg.train.max_iters == 40000 and cfg.data.batch_size == 2


def test_overrides_are_typed():
    cfg = load_config(None, ["train.max_iters=7", "seed=3", "work_dir=/tmp/x", "uda.mfm.enabled=true",
                             "data.target.crop=[128,256]"])
    assert cfg.train.max_iters == 7 and cfg.seed == 3 and cfg.work_dir == "/tmp/x"
    assert cfg.uda.mfm.enabled is True and cfg.data.target.crop == [128, 256]


@pytest.mark.parametrize("override, message", [
    ("train.max_iter=5", "did you mean 'train.max_iters'"),
    ("uda.mfm.mask_raito=0.3", "did you mean 'uda.mfm.mask_ratio'"),
    ("modle.name=x", "did you mean 'model"),
    ("train.max_iters=abc", "train.max_iters"),
    ("uda.method=fixmatch", "uda.method"),
    ("uda.mfm.mask_ratio=1.5", "mask_ratio"),
    ("noequals", "key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("'", "'")):
        load_config(None, [override])


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_iters: 3\n  evel_interval: 2\n")
    with pytest.raises(UserError, match="train.evel_interval.*c.yaml.*train.eval_interval"):
        load_config(str(path))


def test_missing_preset_suggests_nearest():
    with pytest.raises(UserError, match="no config file or preset"):
        load_config("gta2cs_daformer_mitb55")


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_loads_takes_the_common_overrides_and_round_trips(preset, tmp_path):
    cfg = load_config(preset, [f"work_dir={tmp_path}", "seed=5", "train.max_iters=3"])
    assert cfg.work_dir == str(tmp_path) and cfg.seed == 5 and cfg.train.max_iters == 3
    again = config_from_dict(yaml.safe_load(to_yaml(cfg)))
    assert again == cfg


def test_cli_error_is_one_line_without_traceback():
    out = subprocess.run([sys.executable, "-m", "mfmseg", "models", "--bogus"], capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" not in out.stderr
