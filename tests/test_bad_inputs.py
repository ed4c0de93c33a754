"""Bad inputs and faults, as a user meets them: one table of cases driven by one parametrised test.

Each case is a command line, the exit status it must end with, a word its message must contain, and optionally a
setup (the bad file) and a check (what must, or must not, be left on disk). Every case also asserts that no
traceback reaches the user and that no temporary file is left behind. Cases run in-process through
`mfmseg.cli.main` (fast); those that need a real process of their own (a tmpfs mount) run as a subprocess.
Cases that train are marked slow. Faults that need signals (kill -9 during training, an interrupted `prepare`)
are the two tests at the end.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from mfmseg.cli import main
from mfmseg.config import load_config, to_dict
from mfmseg.engine.evaluation.export import MODEL_FORMAT
from mfmseg.engine.runtime.checkpoint import TRAIN_FORMAT, load_train_checkpoint
from mfmseg.models.zoo import build_model

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}


@dataclass
class Ctx:
    """What a case's argv, setup and check see: its own tmp folder, a private copy of the tiny benchmark, a model."""
    tmp: Path
    bench: Path
    model: Path

    def train(self, wd: str, *extra: str) -> list[str]:
        return ["train", "synthetic_dacs", *tiny(self.bench, self.tmp / wd, *extra)]


def tiny(bench: Path, wd: Path, *extra: str) -> list[str]:
    return [f"work_dir={wd}", f"data.source.root={bench / 'gta'}", f"data.target.root={bench / 'cityscapes'}",
            f"data.val.root={bench / 'cityscapes'}", "data.source.resize=[128,64]", "data.target.resize=[128,64]",
            "data.val.resize=[128,64]", "data.source.crop=[64,64]", "data.target.crop=[64,64]",
            "data.num_workers=0", "data.rcs.min_pixels=10", "train.max_iters=2", "train.eval_interval=2",
            "train.checkpoint_interval=2", "train.log_interval=1", "train.panel_interval=0", *extra]


@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]
    code: int
    word: str
    setup: Callable[[Ctx], None] | None = None
    check: Callable[[Ctx], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    traceback: bool = False  # MFMSEG_DEBUG=1 asks for it
    subprocess: bool = False
    slow: bool = False


# ---- setups and checks --------------------------------------------------------------------------------------------
def _write(name: str, data: bytes) -> Callable[[Ctx], None]:
    return lambda c: (c.tmp / name).write_bytes(data)


def _pickled_code(c: Ctx) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))
    torch.save({"x": Evil()}, c.tmp / "evil.pth")


def _onnx_file(name: str) -> Callable[[Ctx], None]:
    """A tiny, real ONNX model that mfmseg did not write (`name` ending in .pth: one renamed)."""
    def setup(c: Ctx) -> None:
        helper = pytest.importorskip("onnx.helper")
        from onnx import TensorProto

        io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in "xy"]
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", io[:1], io[1:])
        (c.tmp / name).write_bytes(helper.make_model(graph, producer_name="pytorch").SerializeToString())
    return setup


def _three_class_model(onnx: bool) -> Callable[[Ctx], None]:
    """m3.pth: a 3-class model (and, with `onnx`, its export m3.onnx, written twice: a previous export may be
    replaced); small.yaml: a 19-class config whose val resize keeps a wrong evaluation short."""
    def setup(c: Ctx) -> None:
        cfg = load_config("synthetic_dacs", ["model.pretrained=null", "model.num_classes=3",
                                             "model.name=deeplabv2_r18", "model.decoder_channels=null",
                                             "uda.fd.thing_classes=[1,2]", "data.val.resize=[64,32]"])
        torch.save({"format": MODEL_FORMAT, "config": to_dict(cfg),
                    "state_dict": build_model(cfg.model).state_dict()}, c.tmp / "m3.pth")
        (c.tmp / "small.yaml").write_text("data:\n  val:\n    resize: [64, 32]\n")
        for _ in range(2 if onnx else 0):
            assert main(["export", str(c.tmp / "m3.pth"), "--out", str(c.tmp / "m3.onnx")]) == 0
    return setup


def _no_dir(name: str) -> Callable[[Ctx], None]:
    def check(c: Ctx) -> None:
        assert not (c.tmp / name).exists(), f"{name} was created"
    return check


def _first_label(c: Ctx, kind: str = "gta") -> Path:
    return sorted((c.bench / kind).rglob("*_labelTrainIds.png"))[0]


def _shrink_target_label(c: Ctx) -> None:
    path = _first_label(c, "cityscapes")
    Image.open(path).resize((32, 16), Image.NEAREST).save(path)
    for p in (c.bench / "cityscapes").rglob("*_labelTrainIds.png"):  # every draw hits a mismatching label
        if p != path:
            shutil.copyfile(path, p)


def _train_id_100(c: Ctx) -> None:
    for path in (c.bench / "gta").rglob("*_labelTrainIds.png"):
        arr = np.asarray(Image.open(path)).copy()
        arr[:4, :4] = 100
        Image.fromarray(arr).save(path)


def _no_train_id_100(c: Ctx) -> None:
    assert all(100 not in np.asarray(Image.open(p)) for p in (c.bench / "gta").rglob("*_labelTrainIds.png"))


def _leftover_tmp(c: Ctx) -> None:
    """What a prepare killed mid-write leaves: a 0-byte x_labelTrainIds.tmp.png, its train-id file not written."""
    path = _first_label(c)
    path.unlink()
    path.with_name(path.stem + ".tmp.png").write_bytes(b"")


def _rgb_label(c: Ctx) -> None:
    path = sorted((c.bench / "gta" / "labels").glob("*.png"))[0]
    Image.open(path).convert("RGB").save(path)
    for p in (c.bench / "gta").rglob("*_labelTrainIds.png"):
        p.unlink()


def _grey16(c: Ctx) -> None:
    Image.fromarray(np.full((40, 60), 4000, np.uint16)).save(c.tmp / "grey16.png")


def _same_stem(c: Ctx) -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8))
    img.save(c.tmp / "x.png")
    img.save(c.tmp / "x.jpg")


def _thin(c: Ctx) -> None:
    Image.fromarray(np.zeros((1, 300, 3), np.uint8)).save(c.tmp / "thin.png")


def _two_outputs(c: Ctx) -> None:
    assert sorted(p.name for p in (c.tmp / "preds").iterdir()) == ["x_jpg.png", "x_png.png"]


def _rgb(path: Path, hw: tuple[int, int] = (40, 60)) -> Image.Image:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (*hw, 3), np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return img


def _folder_with_bad(c: Ctx) -> None:
    """Two readable images, a text file named .png and a truncated JPEG, in one folder."""
    _rgb(c.tmp / "in" / "a.png")
    _rgb(c.tmp / "in" / "b.jpg")
    (c.tmp / "in" / "bad.png").write_text("not an image")
    (c.tmp / "in" / "cut.jpg").write_bytes((c.tmp / "in" / "b.jpg").read_bytes()[:200])


def _photos(c: Ctx) -> None:
    """in/a.png and in/b.png, PNG photos (copies kept in before/)."""
    for name in ("a.png", "b.png"):
        _rgb(c.tmp / "in" / name)
    shutil.copytree(c.tmp / "in", c.tmp / "before")


def _photos_and_foreign(c: Ctx) -> None:
    """The photos, and o/a.png: a file of the user's where a prediction would go (copy in before_o/)."""
    _photos(c)
    _rgb(c.tmp / "o" / "a.png", (10, 10))
    shutil.copytree(c.tmp / "o", c.tmp / "before_o")


def _same_files(a: str, b: str) -> Callable[[Ctx], None]:
    def check(c: Ctx) -> None:
        files = {p.relative_to(c.tmp / a): p.read_bytes() for p in (c.tmp / a).rglob("*")}
        assert files == {p.relative_to(c.tmp / b): p.read_bytes() for p in (c.tmp / b).rglob("*")}, f"{a} changed"
    return check


def _predicted_before(c: Ctx) -> None:
    _photos(c)
    assert main(["predict", str(c.model), str(c.tmp / "in"), "--out", str(c.tmp / "o"), "--device", "cpu"]) == 0


def _symlink_loop(c: Ctx) -> None:
    _rgb(c.tmp / "in" / "a.png")
    (c.tmp / "in" / "loop.png").symlink_to("loop.png")


def _readable_written(c: Ctx) -> None:
    """Every readable input (a.*, b.*) has its prediction."""
    readable = sorted(f"{p.stem}.png" for p in (c.tmp / "in").iterdir() if p.stem in ("a", "b"))
    assert sorted(p.name for p in (c.tmp / "o").iterdir()) == readable


LONG = ["a" * 250 + ".jpg", "é" * 125 + ".png"]  # 254 characters; 254 bytes in UTF-8


def _long_names(c: Ctx) -> None:
    for name in LONG:
        _rgb(c.tmp / "in" / name)


def _long_outputs(c: Ctx) -> None:
    assert sorted(p.name for p in (c.tmp / "o").iterdir()) == sorted(Path(n).stem + ".png" for n in LONG)


def _long_unreadable(c: Ctx) -> None:
    (c.tmp / "in").mkdir()
    (c.tmp / "in" / LONG[0]).write_text("not an image")


def _hf_folder(weights: str | None, family: str = "mit") -> Callable[[Ctx], None]:
    """A save_pretrained folder `hf/`: config.json and `weights` ("code": a pytorch_model.bin holding pickled
    code; None: no weight file at all)."""
    def setup(c: Ctx) -> None:
        from mfmseg.models.mit import mit_config
        from mfmseg.models.vit import vit_config

        (mit_config("b0") if family == "mit" else vit_config("dinov2", "tiny", patch_size=16)).save_pretrained(
            c.tmp / "hf")
        if weights == "code":
            class Evil:
                def __reduce__(self):
                    return (os.system, ("touch " + str(c.tmp / "pwned"),))
            torch.save({"x": Evil()}, c.tmp / "hf" / "pytorch_model.bin")
    return setup


def _not_pwned(c: Ctx) -> None:
    assert not (c.tmp / "pwned").exists(), "the pickled code ran"
    _no_dir("wd")(c)


def _pretrained(model: str) -> Callable[[Ctx], list[str]]:
    return lambda c: ["train", "synthetic_dacs", *tiny(c.bench, c.tmp / "wd", f"model.name={model}",
                                                       f"model.pretrained={c.tmp / 'hf'}")]


_HELD: dict[Path, int] = {}  # lock file descriptors a setup holds until its check


def _locked_by_another(c: Ctx) -> None:
    """`run/` as another `mfmseg train` (PID 4242) holds it: the lock taken, its config.yaml written."""
    (c.tmp / "run").mkdir()
    (c.tmp / "run" / "config.yaml").write_text("theirs\n")
    fd = os.open(c.tmp / "run" / "train.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"4242\n")
    _HELD[c.tmp] = fd


def _other_run_untouched(c: Ctx) -> None:
    os.close(_HELD.pop(c.tmp))
    assert (c.tmp / "run" / "config.yaml").read_text() == "theirs\n"
    assert sorted(p.name for p in (c.tmp / "run").iterdir()) == ["config.yaml", "train.lock"]


def _stale_lock(c: Ctx) -> None:
    """A run killed with -9 left its lock file (the kernel released the lock itself)."""
    (c.tmp / "run").mkdir()
    (c.tmp / "run" / "train.lock").write_text("999999\n")


def _trained_and_unlocked(c: Ctx) -> None:
    assert load_train_checkpoint(c.tmp / "run" / "latest.pth")["iteration"] == 2
    assert not (c.tmp / "run" / "train.lock").exists()


def _iterations(c: Ctx, wd: str = "run") -> list[int]:
    lines = (c.tmp / wd / "metrics.jsonl").read_text().splitlines()
    return [row["iter"] for row in map(json.loads, lines) if row["kind"] == "train"]  # every line parses


def _log_after_checkpoint(tail: str) -> Callable[[Ctx], None]:
    """A finished 2-iteration run, then `tail` appended to its log as a run killed after that checkpoint leaves
    it: complete rows of later iterations, or a row cut short mid-write."""
    def setup(c: Ctx) -> None:
        _train_then()(c)
        with open(c.tmp / "run" / "metrics.jsonl", "a") as f:
            f.write(tail)
    return setup


def _each_iteration_once(last: int) -> Callable[[Ctx], None]:
    def check(c: Ctx) -> None:
        assert _iterations(c) == list(range(1, last + 1))
        assert (c.tmp / "run" / "loss_curves.png").is_file()
    return check


def _old_log(c: Ctx) -> None:
    """A work dir left by a run killed before its first checkpoint (a finished run less its checkpoints), and in
    its tb/ another experiment's events, which no run of this work dir wrote."""
    assert main(c.train("wd")) == 0
    for name in ("latest.pth", "previous.pth", "best.pth", "summary.json"):
        (c.tmp / "wd" / name).unlink(missing_ok=True)
    (c.tmp / "old_events").write_text("\n".join(p.name for p in (c.tmp / "wd" / "tb").iterdir()))
    (c.tmp / "wd" / "tb" / "other").mkdir()
    (c.tmp / "wd" / "tb" / "other" / "events.out.tfevents.1").write_text("theirs")


def _fresh_log(c: Ctx) -> None:
    assert _iterations(c, "wd") == [1, 2]
    left = {p.name for p in (c.tmp / "wd" / "tb").iterdir()}
    assert not left & set((c.tmp / "old_events").read_text().split()), "the killed run's events were kept"
    assert (c.tmp / "wd" / "tb" / "other" / "events.out.tfevents.1").read_text() == "theirs"


def _project_folder(metrics: bool) -> Callable[[Ctx], None]:
    """A user's project folder: another experiment's TensorBoard events under tb/, notes, and (`metrics`) a
    metrics.jsonl and tb/mine.txt of their own; `emptyval/` makes the run fail once it has started."""
    def setup(c: Ctx) -> None:
        (c.tmp / "proj" / "tb" / "other_experiment").mkdir(parents=True)
        (c.tmp / "proj" / "tb" / "other_experiment" / "events.out.tfevents.1").write_text("theirs")
        (c.tmp / "proj" / "notes.txt").write_text("mine")
        if metrics:
            (c.tmp / "proj" / "metrics.jsonl").write_text('{"mine": 1}\n')
            (c.tmp / "proj" / "tb" / "mine.txt").write_text("mine")
        (c.tmp / "emptyval").mkdir()
    return setup


def _project_untouched(metrics: bool) -> Callable[[Ctx], None]:
    """Every file of `_project_folder(metrics)` as it was, and nothing added."""
    def check(c: Ctx) -> None:
        files = {p.relative_to(c.tmp / "proj").as_posix(): p.read_text() for p in (c.tmp / "proj").rglob("*")
                 if p.is_file()}
        expected = {"tb/other_experiment/events.out.tfevents.1": "theirs", "notes.txt": "mine"}
        if metrics:
            expected |= {"metrics.jsonl": '{"mine": 1}\n', "tb/mine.txt": "mine"}
        assert files == expected
    return check


def _own_dir(c: Ctx) -> None:
    """A work dir the user made, with a file of their own in it."""
    (c.tmp / "keep").mkdir()
    (c.tmp / "keep" / "notes.txt").write_text("mine")


def _own_dir_only(c: Ctx) -> None:
    assert sorted(p.name for p in (c.tmp / "keep").iterdir()) == ["notes.txt"]


def _bad_val_labels(c: Ctx) -> None:
    """A val copy of the target whose labels cannot be read: the first evaluation fails."""
    shutil.copytree(c.bench / "cityscapes", c.tmp / "val")
    for p in (c.tmp / "val" / "gtFine").rglob("*_labelTrainIds.png"):
        p.write_text("not a png")


def _checkpoint_kept(iteration: int, wd: str = "wd") -> Callable[[Ctx], None]:
    def check(c: Ctx) -> None:
        assert load_train_checkpoint(c.tmp / wd / "latest.pth")["iteration"] == iteration
    return check


# EXIF orientation -> how to store a picture so that a viewer, applying the tag, displays the original
STORED_AS = {3: Image.ROTATE_180, 6: Image.ROTATE_90, 8: Image.ROTATE_270}


def _store_turned(src: Path, dst: Path, orientation: int) -> None:
    """Save `src` turned, tagged so that it is displayed as `src` (a phone photo taken sideways)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.open(src).transpose(STORED_AS[orientation]).save(dst, exif=exif)


def _exif_pair(orientation: int) -> Callable[[Ctx], None]:
    """in/up.png upright, in/turned.png the same picture stored turned with an EXIF orientation tag."""
    def setup(c: Ctx) -> None:
        _rgb(c.tmp / "in" / "up.png", (40, 60))
        _store_turned(c.tmp / "in" / "up.png", c.tmp / "in" / "turned.png", orientation)
    return setup


def _same_prediction(c: Ctx) -> None:
    """The turned photo's prediction lines up with what a viewer shows: the upright one's, pixel for pixel."""
    up, turned = (np.asarray(Image.open(c.tmp / "o" / f"{n}.png")) for n in ("up", "turned"))
    assert up.shape == turned.shape == (40, 60) and np.array_equal(up, turned)


def _turn_val_image(orientation: int) -> Callable[[Ctx], None]:
    def setup(c: Ctx) -> None:
        path = sorted((c.bench / "cityscapes" / "leftImg8bit" / "val").rglob("*.png"))[0]
        _store_turned(path, path, orientation)
    return setup


def _turn_source_pair(c: Ctx) -> None:
    """A GTA image and its label both stored turned (orientation 6); its train-id file is written again."""
    label = sorted((c.bench / "gta" / "labels").glob("*.png"))
    label = [p for p in label if not p.name.endswith("_labelTrainIds.png")][0]
    train_ids = label.with_name(label.stem + "_labelTrainIds.png")
    (c.tmp / "ids.before.png").write_bytes(train_ids.read_bytes())
    train_ids.unlink()
    for path in (label, c.bench / "gta" / "images" / label.name):
        _store_turned(path, path, 6)


def _train_ids_upright(c: Ctx) -> None:
    label = sorted((c.bench / "gta" / "labels").glob("*_labelTrainIds.png"))[0]
    assert np.array_equal(np.asarray(Image.open(label)), np.asarray(Image.open(c.tmp / "ids.before.png")))


def _train_then(stop: int = 2) -> Callable[[Ctx], None]:
    """A finished 2-iteration run in `run/` (the resume cases start from it)."""
    def setup(c: Ctx) -> None:
        assert main(c.train("run", f"train.max_iters={stop}")) == 0
        (c.tmp / "config.before").write_text((c.tmp / "run" / "config.yaml").read_text())
    return setup


def _config_untouched(c: Ctx) -> None:
    assert (c.tmp / "run" / "config.yaml").read_text() == (c.tmp / "config.before").read_text()


def _lr_applied(c: Ctx) -> None:
    ckpt = load_train_checkpoint(c.tmp / "run" / "latest.pth")
    assert ckpt["iteration"] == 3 and ckpt["config"]["optim"]["lr"] == 1e-3
    assert ckpt["optimizer"]["param_groups"][0]["initial_lr"] == 1e-3  # the schedule really uses the new rate


def _checkpoints_finite(c: Ctx) -> None:
    for name in ("latest.pth", "previous.pth"):
        if (c.tmp / "nan" / name).exists():
            weights = load_train_checkpoint(c.tmp / "nan" / name)["student"].values()
            assert all(bool(torch.isfinite(w).all()) and float(w.abs().max()) < 1e6 for w in weights
                       if w.is_floating_point() and w.numel())


def _fake_train_checkpoint(c: Ctx) -> None:
    torch.save({"format": TRAIN_FORMAT, "iteration": 1}, c.tmp / "partial.pth")


def _recorded(setup: Callable[[Ctx], None], name: str) -> Callable[[Ctx], None]:
    """`setup`, then a copy of the file `name` it wrote as name.before (for `_unchanged`)."""
    def wrapped(c: Ctx) -> None:
        setup(c)
        shutil.copyfile(c.tmp / name, c.tmp / f"{name}.before")
    return wrapped


def _copy_model(name: str) -> Callable[[Ctx], None]:
    return _recorded(lambda c: shutil.copyfile(c.model, c.tmp / name), name)


def _unchanged(name: str) -> Callable[[Ctx], None]:
    def check(c: Ctx) -> None:
        assert (c.tmp / name).read_bytes() == (c.tmp / f"{name}.before").read_bytes(), f"{name} was replaced"
    return check


def _mount_tiny_tmpfs(c: Ctx) -> list[str]:
    """Export into a 64 KiB tmpfs in a private mount namespace: the write fails with a full disk."""
    full = c.tmp / "full"
    full.mkdir()
    script = (f"mount -t tmpfs -o size=64k tmpfs {full} && {sys.executable} -m mfmseg export {c.model} "
              f"--out {full / 'model.pth'}; rc=$?; ls -A {full} > {c.tmp / 'left.txt'}; exit $rc")
    return ["unshare", "-m", "sh", "-c", script]


def _tmpfs_left_nothing(c: Ctx) -> None:
    assert (c.tmp / "left.txt").read_text().strip() == ""


def _yaml_error(c: Ctx) -> None:
    (c.tmp / "bad.yaml").write_text("train:\n  max_iters: [3\n  log_interval: 1\n")


def _file(name: str) -> Callable[[Ctx], None]:
    return lambda c: (c.tmp / name).write_text("not a folder")


def _folder(name: str) -> Callable[[Ctx], None]:
    return lambda c: (c.tmp / name).mkdir()


# ---- the table ----------------------------------------------------------------------------------------------------
CASES = [
    # 1. the error boundary: one line, exit 2, whatever raised it; MFMSEG_DEBUG=1 shows the traceback
    Case("text-as-checkpoint", lambda c: ["export", str(c.tmp / "t.txt"), "--out", str(c.tmp / "m.pth")], 2,
         "not a PyTorch file", setup=_write("t.txt", b"hello world\n")),
    Case("pickled-code", lambda c: ["evaluate", str(c.tmp / "evil.pth"), "--device", "cpu"], 2,
         "contains pickled code, refusing to load it", setup=_pickled_code),
    # a file that is not a checkpoint is named for what it is, never "pickled code" for its first byte
    Case("notes-as-checkpoint", lambda c: ["evaluate", str(c.tmp / "n.pth"), "--device", "cpu"], 2,
         "a text file, not a PyTorch file", setup=_write("n.pth", b"# my notes\nsee the README\n")),
    Case("yaml-as-checkpoint", lambda c: ["export", str(c.tmp / "c.pth"), "--out", str(c.tmp / "m.pth")], 2,
         "a YAML file (a config?)", setup=_write("c.pth", b"model:\n  name: daformer_mitb0\ntrain: {}\n")),
    Case("onnx-as-checkpoint", lambda c: ["evaluate", str(c.tmp / "m.pth"), "--device", "cpu"], 2,
         "an ONNX model: use the .onnx suffix", setup=_onnx_file("m.pth")),
    Case("empty-checkpoint", lambda c: ["predict", str(c.tmp / "e.pth"), str(c.tmp), "--out", str(c.tmp / "o")],
         2, "truncated", setup=_write("e.pth", b"")),
    Case("missing-checkpoint", lambda c: ["export", str(c.tmp / "nope.pth"), "--out", str(c.tmp / "m.pth")], 2,
         "not found"),
    Case("checkpoint-missing-key", lambda c: ["export", str(c.tmp / "partial.pth"), "--out", str(c.tmp / "m.pth")],
         2, "lacks", setup=_fake_train_checkpoint),
    Case("device-bogus", lambda c: ["evaluate", str(c.model), "--device", "bogus"], 2, "not a device"),
    Case("synth-size-too-small", lambda c: ["synth", "--out", str(c.tmp / "s"), "--size", "8x8"], 2, "32×32"),
    Case("debug-shows-traceback", lambda c: ["export", str(c.tmp / "t.txt"), "--out", str(c.tmp / "m.pth")], 2,
         "not a PyTorch file", setup=_write("t.txt", b"hello"), env={"MFMSEG_DEBUG": "1"}, traceback=True),
    Case("worker-label-size", lambda c: c.train("w", "data.num_workers=1"), 2, "but image",
         setup=_shrink_target_label, check=_no_dir("w"), slow=True),
    # 2. config ranges: named key, before any work dir is written
    *[Case(f"config-{o.split('=')[0]}", lambda c, o=o: c.train("wd", *o.split()), 2, word, check=_no_dir("wd"))
      for o, word in [("optim.lr=-1", "optim.lr"), ("uda.mfm.grid=0", "uda.mfm.grid"),
                      ("uda.mfm.num_heads=0", "uda.mfm.num_heads"),
                      ("uda.mfm.embed_dim=18 uda.mfm.num_heads=1", "multiple of 4"),
                      ("uda.mfm.embed_dim=510", "divisible"), ("seed=-1", "seed"),
                      ("data.rcs.temperature=0", "data.rcs.temperature"), ("data.source.resize=[0,0]", "resize"),
                      ("train.log_interval=0", "train.log_interval"), ("eval.stride=[0,0]", "eval.stride"),
                      ("train.max_iters=[", "not valid YAML"), ("train.device=gpu", "not a device")]],
    Case("config-yaml-line", lambda c: ["train", str(c.tmp / "bad.yaml")], 2, "line 3", setup=_yaml_error),
    # a key given twice is refused with its line, at any depth (YAML would keep the last block silently)
    *[Case(f"config-yaml-duplicate-{i}", lambda c: ["train", str(c.tmp / "d.yaml"), f"work_dir={c.tmp / 'wd'}"], 2,
           word, setup=lambda c, text=text: (c.tmp / "d.yaml").write_text(text), check=_no_dir("wd"))
      for i, (text, word) in enumerate([
          ("train:\n  max_iters: 3\nseed: 1\ntrain:\n  log_interval: 2\n",
           "line 4, column 1: duplicate key 'train' (first given at line 1)"),
          ("uda:\n  mfm:\n    grid: 4\n    mask_ratio: 0.5\n    grid: 8\n",
           "line 5, column 5: duplicate key 'grid' (first given at line 3)")])],
    # a plain value where a section belongs: named, not a crash inside the error handler
    *[Case(f"config-section-value-{o.split('=')[0]}", lambda c, o=o: c.train("wd", o), 2, "is a section",
           check=_no_dir("wd")) for o in ("uda.mfm=true", "data.rcs=5", "train=[1]")],
    *[Case(f"config-section-value-yaml-{i}", lambda c: ["train", str(c.tmp / "s.yaml")], 2, f"'{key}' in",
           setup=lambda c, text=text: (c.tmp / "s.yaml").write_text(text))
      for i, (text, key) in enumerate([("data:\n  rcs: 5\n", "data.rcs"), ("uda:\n  mfm: [1, 2]\n", "uda.mfm")])],
    # an unknown key with no near neighbour gets the keys of its level, never an unrelated guess
    Case("config-unknown-foo", lambda c: c.train("wd", "foo=1"), 2, "top-level keys: work_dir"),
    Case("config-unknown-in-section", lambda c: c.train("wd", "optim.banana=2"), 2, "keys of optim: name"),
    # one class count: a model of 3 classes scored with a 19-class config is refused, not an mIoU over 3 classes
    *[Case(f"evaluate-config-class-count-{suffix}", lambda c, suffix=suffix: [
        "evaluate", str(c.tmp / f"m3.{suffix}"), "--config", str(c.tmp / "small.yaml"), "--data",
        str(c.bench / "cityscapes"), "--device", "cpu"], 2, "the model predicts 3 classes but the labels",
           setup=_three_class_model(suffix == "onnx"), slow=suffix == "onnx") for suffix in ("pth", "onnx")],
    # 3. outputs: checked before the work, one line naming the path, no temporary file left
    Case("evaluate-json-folder", lambda c: ["evaluate", str(c.model), "--json", str(c.tmp / "j")], 2, "folder",
         setup=_folder("j")),
    Case("export-out-folder", lambda c: ["export", str(c.model), "--out", str(c.tmp / "j")], 2, "folder",
         setup=_folder("j")),
    Case("predict-out-file", lambda c: ["predict", str(c.model), str(c.tmp), "--out", str(c.tmp / "f")], 2,
         "not a folder", setup=_file("f")),
    # export never replaces what it did not write: its own input, a training checkpoint, any other file; a previous
    # export it may
    Case("export-onto-itself", lambda c: ["export", str(c.tmp / "m.pth"), "--out", str(c.tmp / "m.pth")], 2,
         "is the input checkpoint itself", setup=_copy_model("m.pth"), check=_unchanged("m.pth")),
    Case("export-onto-train-checkpoint", lambda c: ["export", str(c.model), "--out", str(c.tmp / "partial.pth")],
         2, "exists and is a training checkpoint", setup=_recorded(_fake_train_checkpoint, "partial.pth"),
         check=_unchanged("partial.pth")),
    Case("export-onnx-onto-train-checkpoint", lambda c: ["export", str(c.model), "--out", str(c.tmp / "partial.pth"),
                                                         "--format", "onnx"],
         2, "exists and is a training checkpoint", setup=_recorded(_fake_train_checkpoint, "partial.pth"),
         check=_unchanged("partial.pth")),
    Case("export-onto-text", lambda c: ["export", str(c.model), "--out", str(c.tmp / "notes.pth")], 2,
         "exists and is a text file", setup=_recorded(_write("notes.pth", b"my notes\n"), "notes.pth"),
         check=_unchanged("notes.pth")),
    Case("export-onto-foreign-onnx", lambda c: ["export", str(c.model), "--out", str(c.tmp / "f.onnx")], 2,
         "an ONNX model that mfmseg did not export", setup=_recorded(_onnx_file("f.onnx"), "f.onnx"),
         check=_unchanged("f.onnx")),
    Case("export-replaces-export", lambda c: ["export", str(c.model), "--out", str(c.tmp / "e.pth")], 0,
         "exported", setup=_copy_model("e.pth")),
    # an exported model holds the student only: --which teacher is refused (as for .onnx), not scored as the student
    *[Case(f"{cmd}-export-which-teacher", lambda c, cmd=cmd, extra=extra: [cmd, str(c.model), *extra(c), "--which",
                                                                         "teacher"], 2,
           "holds the student only", check=_no_dir("o"))
      for cmd, extra in (("evaluate", lambda c: ["--device", "cpu"]),
                         ("predict", lambda c: [str(c.tmp), "--out", str(c.tmp / "o"), "--device", "cpu"]),
                         ("export", lambda c: ["--out", str(c.tmp / "t.pth")]))],
    Case("train-work-dir-file", lambda c: c.train("f"), 2, "not a folder", setup=_file("f")),
    Case("disk-full", _mount_tiny_tmpfs, 2, "disk full", check=_tmpfs_left_nothing, subprocess=True,
         slow=True),
    # 4. resume: applies what it may change, refuses the rest without touching config.yaml; no junk work dir
    Case("resume-other-network", lambda c: c.train("run", "train.resume=true", "model.name=daformer_mitb1"), 2,
         "cannot resume", setup=_train_then(), check=_config_untouched, slow=True),
    Case("resume-applies-lr", lambda c: c.train("run", "train.resume=true", "train.max_iters=3", "optim.lr=1e-3"),
         0, "", setup=_train_then(), check=_lr_applied, slow=True),
    # Hugging Face folders given as model.pretrained: pickled code refused in one line, a folder without weights
    # named as such (not "no such folder")
    *[Case(f"pretrained-hf-code-{m}", _pretrained(m), 2, "pickled code", setup=_hf_folder("code", family),
           check=_not_pwned) for m, family in (("daformer_mitb0", "mit"), ("daformer_vit_tiny", "vit"))],
    *[Case(f"pretrained-hf-no-weights-{m}", _pretrained(m), 2, "holds no weights", setup=_hf_folder(None, family),
           check=_no_dir("wd")) for m, family in (("daformer_mitb0", "mit"), ("daformer_vit_tiny", "vit"))],
    Case("failed-train-leaves-nothing", lambda c: c.train("wd", f"data.source.root={c.tmp / 'nope'}"), 2,
         "does not exist", check=_no_dir("wd")),
    *[Case(f"dataset-root-file-{d}", lambda c, d=d: c.train("wd", f"data.{d}.root={c.tmp / 'f'}"), 2,
           "is a file, not a folder", setup=_file("f"), check=_no_dir("wd")) for d in ("source", "val")],
    # a resumed run's log: rows after the checkpoint and a row cut short by a kill are dropped, not continued
    Case("resume-half-written-row", lambda c: c.train("run", "train.resume=true", "train.max_iters=3"), 0, "done",
         setup=_log_after_checkpoint('{"kind": "train", "iter": 3, "lo'), check=_each_iteration_once(3),
         slow=True),
    Case("resume-trims-later-rows", lambda c: c.train("run", "train.resume=true", "train.max_iters=4"), 0, "done",
         setup=_log_after_checkpoint('{"kind": "train", "iter": 3, "loss": 1.0}\n{"kind": "train", "iter": 4, '
                                     '"loss": 1.0}\n{"kind": "val", "iter": 4, "mIoU": 1.0}\n'),
         check=_each_iteration_once(4), slow=True),
    # one run per work dir at a time; a lock left by a killed run does not block
    Case("train-work-dir-in-use", lambda c: c.train("run"), 2, "in use by process 4242", setup=_locked_by_another,
         check=_other_run_untouched),
    Case("train-stale-lock", lambda c: c.train("run"), 0, "done", setup=_stale_lock, check=_trained_and_unlocked,
         slow=True),
    # a run that fails before its first checkpoint leaves nothing; a rerun starts a fresh log; a failing
    # evaluation comes after the checkpoint of its iteration
    Case("diverged-before-checkpoint", lambda c: c.train("wd", "optim.lr=1e30", "optim.warmup_iters=0",
                                                         "train.max_iters=6", "train.checkpoint_interval=5"),
         2, "no checkpoint was saved", check=_no_dir("wd"), slow=True),
    Case("diverged-before-checkpoint-own-dir", lambda c: c.train("keep", "optim.lr=1e30", "optim.warmup_iters=0",
                                                                 "train.max_iters=6", "train.checkpoint_interval=5"),
         2, "no checkpoint was saved", setup=_own_dir, check=_own_dir_only, slow=True),
    Case("rerun-after-killed-run", lambda c: c.train("wd"), 0, "done", setup=_old_log, check=_fresh_log, slow=True),
    # a fresh run removes only the logs a run of its work dir recorded writing: another experiment's tb/ events
    # stay, a metrics.jsonl no run wrote is refused, not deleted; a run that fails leaves the folder as it was
    Case("failed-run-keeps-others-tb", lambda c: c.train("proj", f"data.val.root={c.tmp / 'emptyval'}"), 2,
         "missing folder", setup=_project_folder(False), check=_project_untouched(False)),
    Case("fresh-run-refuses-foreign-metrics", lambda c: c.train("proj", f"data.val.root={c.tmp / 'emptyval'}"), 2,
         "metrics.jsonl was not written", setup=_project_folder(True), check=_project_untouched(True)),
    Case("eval-fails-after-checkpoint", lambda c: c.train("wd", f"data.val.root={c.tmp / 'val'}"), 2,
         "cannot read label", setup=_bad_val_labels, check=_checkpoint_kept(2), slow=True),
    # 5. divergence: the message offers checkpoints that are finite, and does not claim they are healthy
    Case("nan", lambda c: c.train("nan", "optim.lr=1e30", "optim.warmup_iters=0", "train.max_iters=6",
                                  "train.checkpoint_interval=1"), 2, "diverged", check=_checkpoints_finite,
         slow=True),
    *[Case(f"nan-after-checkpoint-lr{lr}", lambda c, lr=lr: c.train("nan", f"optim.lr={lr}", "optim.warmup_iters=0",
                                                                   "train.max_iters=10", "train.eval_interval=0",
                                                                   "train.checkpoint_interval=1"), 2,
           "not known to be healthy", check=_checkpoints_finite, slow=True) for lr in ("1e4", "3e3")],
    # 6. image and label files: depth, mode, size, id range; predict outputs that would collide
    Case("prepare-rgb-label", lambda c: ["prepare", "gta", str(c.bench / "gta"), "--nproc", "1"], 2, "RGB",
         setup=_rgb_label),
    # prepare checks the train-id files it reuses, and says how to convert again; it removes the temporary files
    # of a killed run
    Case("prepare-keeps-bad-train-ids", lambda c: ["prepare", "gta", str(c.bench / "gta"), "--nproc", "1"], 2,
         "--overwrite", setup=_train_id_100),
    Case("prepare-overwrite", lambda c: ["prepare", "gta", str(c.bench / "gta"), "--nproc", "1", "--overwrite"], 0,
         "prepared", setup=_train_id_100, check=_no_train_id_100),
    Case("prepare-removes-leftover-tmp", lambda c: ["prepare", "gta", str(c.bench / "gta"), "--nproc", "1"], 0,
         "removed 1 temporary file", setup=_leftover_tmp, check=lambda c: _first_label(c).is_file()),
    Case("predict-16bit-image", lambda c: ["predict", str(c.model), str(c.tmp / "grey16.png"), "--out",
                                           str(c.tmp / "o"), "--device", "cpu"], 2, "16-bit", setup=_grey16),
    Case("train-ids-beyond-classes", lambda c: c.train("ids"), 2, "train ids [100]", setup=_train_id_100,
         slow=True),
    Case("predict-extreme-aspect", lambda c: ["predict", str(c.model), str(c.tmp / "thin.png"), "--out",
                                              str(c.tmp / "o"), "--device", "cpu"], 2, "aspect ratio", setup=_thin),
    Case("predict-same-stem", lambda c: ["predict", str(c.model), str(c.tmp / "x.png"), str(c.tmp / "x.jpg"),
                                         "--out", str(c.tmp / "preds"), "--device", "cpu"], 0, "wrote 2",
         setup=_same_stem, check=_two_outputs),
    # EXIF orientation: images (and labels) are read as a viewer displays them, in predict, evaluate and prepare
    *[Case(f"predict-exif-{o}", lambda c: ["predict", str(c.model), str(c.tmp / "in"), "--out", str(c.tmp / "o"),
                                           "--device", "cpu", "--format", "trainid"], 0, "wrote 2",
           setup=_exif_pair(o), check=_same_prediction) for o in (3, 6, 8)],
    *[Case(f"evaluate-exif-{o}", lambda c: ["evaluate", str(c.model), "--data", str(c.bench / "cityscapes"),
                                            "--device", "cpu"], 0, "mIoU", setup=_turn_val_image(o))
      for o in (6, 8)],
    Case("prepare-exif-label", lambda c: ["prepare", "gta", str(c.bench / "gta"), "--nproc", "1"], 0, "prepared",
         setup=_turn_source_pair, check=_train_ids_upright),
    # a batch: every readable image is written, the unreadable ones are listed at the end (exit 2)
    Case("predict-folder-unreadable", lambda c: ["predict", str(c.model), str(c.tmp / "in"), "--out",
                                                 str(c.tmp / "o"), "--device", "cpu"], 2, "2 of 4 images",
         setup=_folder_with_bad, check=_readable_written),
    Case("predict-symlink-loop", lambda c: ["predict", str(c.model), str(c.tmp / "in"), "--out", str(c.tmp / "o"),
                                            "--device", "cpu"], 2, "loop.png", setup=_symlink_loop,
         check=_readable_written),
    # predict never overwrites what it did not write: an input (--out = the input folder), a user's file; its own
    # earlier predictions it may replace
    Case("predict-over-inputs", lambda c: ["predict", str(c.model), str(c.tmp / "in"), "--out", str(c.tmp / "in"),
                                           "--device", "cpu"], 2, "over its input", setup=_photos,
         check=_same_files("in", "before")),
    Case("predict-over-foreign-file", lambda c: ["predict", str(c.model), str(c.tmp / "in"), "--out",
                                                 str(c.tmp / "o"), "--device", "cpu"], 2, "predict did not write it",
         setup=_photos_and_foreign, check=_same_files("o", "before_o")),
    Case("predict-again", lambda c: ["predict", str(c.model), str(c.tmp / "in"), "--out", str(c.tmp / "o"),
                                     "--device", "cpu", "--format", "trainid"], 0, "wrote 2",
         setup=_predicted_before, check=_same_files("in", "before")),
    # legal names near the 255-byte limit: the temporary name fits, an error names the real file, no empty --out
    Case("predict-long-names", lambda c: ["predict", str(c.model), str(c.tmp / "in"), "--out", str(c.tmp / "o"),
                                          "--device", "cpu"], 0, "wrote 2", setup=_long_names, check=_long_outputs),
    Case("predict-long-name-unreadable", lambda c: ["predict", str(c.model), str(c.tmp / "in"), "--out",
                                                    str(c.tmp / "o"), "--device", "cpu"], 2, LONG[0],
         setup=_long_unreadable, check=_no_dir("o")),
]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """An exported synthetic_dacs model (random weights: these cases test the plumbing, not the accuracy)."""
    cfg = load_config("synthetic_dacs", ["model.pretrained=null", "data.val.resize=[64,32]"])
    path = tmp_path_factory.mktemp("model") / "model.pth"
    torch.save({"format": MODEL_FORMAT, "config": to_dict(cfg), "state_dict": build_model(cfg.model).state_dict()},
               path)
    return path


def _run(case: Case, ctx: Ctx, capsys, monkeypatch) -> tuple[int, str]:
    if case.subprocess:
        if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
            pytest.skip("no private mount namespace here (needs unshare -m)")
        out = subprocess.run(case.argv(ctx), capture_output=True, text=True, env={**ENV, **case.env}, timeout=300)
        if "mount:" in out.stderr:
            pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
        return out.returncode, out.stdout + out.stderr
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    try:
        code = main(case.argv(ctx))
    except SystemExit as e:  # argparse
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else [])
                                  for c in CASES])
def test_bad_input(case: Case, tmp_path, tiny_benchmark, model_file, capsys, monkeypatch):
    bench = tmp_path / "bench"
    shutil.copytree(tiny_benchmark, bench)
    ctx = Ctx(tmp_path, bench, model_file)
    if case.setup:
        case.setup(ctx)
    capsys.readouterr()
    code, output = _run(case, ctx, capsys, monkeypatch)
    assert code == case.code, output[-2000:]
    assert case.word.lower() in output.lower(), output[-2000:]
    assert ("Traceback" in output) == case.traceback, output[-2000:]
    if case.code == 2:
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, output[-2000:]
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name], "a temporary file was left behind"
    if case.check:
        case.check(ctx)


def test_bug_keeps_its_traceback(monkeypatch):
    """Real bugs are not swallowed: main re-raises (Python prints the traceback, exit 1)."""
    import mfmseg.cli as cli

    monkeypatch.setattr(cli, "_cmd_models", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["models"])


def test_default_val_root_names_its_key(tmp_path, tiny_benchmark, monkeypatch, capsys):
    """Without data.val.root the preset's default path (data/synthetic/cityscapes, relative) is read: the message
    names the key to set, before any work dir exists."""
    monkeypatch.chdir(tmp_path)
    argv = [a for a in tiny(tiny_benchmark, tmp_path / "wd") if not a.startswith("data.val.root=")]
    assert main(["train", "synthetic_dacs", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "data.val.root=data/synthetic/cityscapes does not exist" in err, err
    assert not (tmp_path / "wd").exists()


@pytest.mark.slow  # twelve fake-tensor steps of a real network (4 variants x 3 probes): seconds
def test_cost_of_a_huge_batch_answers_from_small_ones(capsys, monkeypatch):
    """`mfmseg cost PRESET data.batch_size=100000` ran a fake step of 100000 images, image by image (minutes); the
    step is now measured at three small batches and scaled exactly: no step runs at the user's batch."""
    from mfmseg.uda.step import UDAStep

    train_step = UDAStep.train_step

    def small_only(self, batch, *args, **kwargs):
        assert batch["src_img"].shape[0] <= 64, "a fake step ran at the user's batch"
        return train_step(self, batch, *args, **kwargs)

    monkeypatch.setattr(UDAStep, "train_step", small_only)
    assert main(["cost", "synthetic_dacs", "model.name=deeplabv2_r18", "model.decoder_channels=null",
                 "data.source.crop=[64,64]", "data.target.crop=[64,64]", "data.batch_size=100000"]) == 0
    out = capsys.readouterr().out
    assert "scaled exactly to 100000" in out and "> 80 GB" in out, out


def test_out_of_memory_is_a_user_error():
    from mfmseg.errors import user_message

    assert "out of memory" in user_message(MemoryError())
    assert "out of memory" in user_message(RuntimeError("DefaultCPUAllocator: can't allocate memory: 1 TB"))
    assert user_message(RuntimeError("shape mismatch")) is None


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


SLOW_PREPARE = """
import sys, time
import mfmseg.data.prepare as prepare
convert = prepare._convert
def slow(job):
    time.sleep(0.5)
    return convert(job)
prepare._convert = slow
prepare.prepare_dataset("gta", sys.argv[1], nproc=2)
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_prepare_leaves_no_workers(sig, tmp_path):
    from mfmseg.data.synthetic import write_benchmark

    write_benchmark(tmp_path, num_source=40, num_target=0, num_val=0, size=(32, 32), nproc=1)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PREPARE, str(tmp_path / "gta")], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while len(_children(proc.pid)) < 2 and time.time() < deadline:
        time.sleep(0.1)
    workers = _children(proc.pid)
    assert len(workers) >= 2, "the pool never started"
    proc.send_signal(sig)
    proc.wait(timeout=30)
    deadline = time.time() + 10
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "pool workers outlived their parent"
    assert not list(tmp_path.rglob("*.tmp*"))


def _signal_after_checkpoint(argv: list[str], tmp_path: Path, sig: int) -> tuple[subprocess.Popen, list[int]]:
    """Start the training `argv` (log in tmp_path/log.txt), send it `sig` once its second checkpoint is saved (so
    latest.pth is complete) and wait for it; returns the process and the children it had then (its workers)."""
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(argv, env=ENV, stdout=log, stderr=log)
        deadline = time.time() + 240
        while (not (tmp_path / "run" / "previous.pth").exists() and proc.poll() is None
               and time.time() < deadline):
            time.sleep(0.2)
        children = _children(proc.pid)
        proc.send_signal(sig)
        proc.wait()
    return proc, children


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes(sig, tmp_path, tiny_benchmark):
    """A run killed right after a checkpoint resumes and trains on; no temporary file is left. SIGTERM (a
    scheduler's time limit) ends it in one line with the shell's 128 + 15, no traceback. The run is long (40
    iterations) so that the signal always lands mid-run; the resume stops 2 iterations after the checkpoint it
    reads (that a resumed run equals an uninterrupted one: test_engine_train)."""
    argv = [sys.executable, "-m", "mfmseg", "train", "synthetic_dacs",
            *tiny(tiny_benchmark, tmp_path / "run", "train.max_iters=40", "train.checkpoint_interval=1",
                  "train.eval_interval=0")]
    proc, _ = _signal_after_checkpoint(argv, tmp_path, sig)
    text = (tmp_path / "log.txt").read_text()
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and text.strip().splitlines()[-1] == "terminated", text[-2000:]
        assert "Traceback" not in text
    assert (tmp_path / "run" / "latest.pth").exists(), (tmp_path / "log.txt").read_text()[-2000:]
    done = load_train_checkpoint(tmp_path / "run" / "latest.pth")["iteration"]
    out = subprocess.run(argv + ["train.resume=true", f"train.max_iters={done + 2}"], env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert load_train_checkpoint(tmp_path / "run" / "latest.pth")["iteration"] == done + 2
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


@pytest.mark.slow
def test_resume_right_after_kill_with_workers(tmp_path, tiny_benchmark):
    """kill -9 of a run with a DataLoader worker: the orphaned worker lives on for seconds (until it notices its
    parent is gone), and it must not hold the work dir's lock: the lock is free at once and the run resumes."""
    from mfmseg.files import exclusive_lock

    argv = [sys.executable, "-m", "mfmseg", "train", "synthetic_dacs",
            *tiny(tiny_benchmark, tmp_path / "run", "train.max_iters=200", "train.checkpoint_interval=1",
                  "train.eval_interval=0", "data.num_workers=1")]
    _, workers = _signal_after_checkpoint(argv, tmp_path, signal.SIGKILL)
    assert workers, (tmp_path / "log.txt").read_text()[-2000:]
    orphans = [w for w in workers if _alive(w)]
    with exclusive_lock(tmp_path / "run" / "train.lock", "work_dir", "wait"):  # not "in use by <the dead PID>"
        print(f"lock taken with {len(orphans)} orphaned worker(s) alive")
    done = load_train_checkpoint(tmp_path / "run" / "latest.pth")["iteration"]
    out = subprocess.run(argv + ["train.resume=true", f"train.max_iters={done + 1}"], env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert load_train_checkpoint(tmp_path / "run" / "latest.pth")["iteration"] == done + 1
