"""End-to-end training on the tiny synthetic benchmark: outputs, determinism, resume, errors."""

import json
from pathlib import Path

import pytest
import torch
from conftest import built_once

from mfmseg.config import load_config
from mfmseg.engine.runtime.checkpoint import load_train_checkpoint
from mfmseg.engine.training.trainer import Trainer, pins_memory, train
from mfmseg.errors import UserError

METHODS = {
    "source_only": ["uda.method=source_only", "uda.fd.enabled=false"],
    "dacs": [],
    "dacs_mfm": ["uda.mfm.enabled=true"],
}


def _run(preset, overrides, stop_after=None):
    return train(load_config(preset, overrides), stop_after=stop_after)


@pytest.fixture(scope="session")
def mfm_run(tmp_path_factory, tiny_overrides):
    """(work dir, summary) of one DACS+MFM run of 4 iterations (evaluations, checkpoints and panels every 2), trained
    once per session (`built_once`): the dacs_mfm case of the outputs test, the uninterrupted run that a resumed one
    must equal, and the finished run whose work dir a new run must refuse. The summary `train` returned is kept
    beside the run, so that the outputs test still compares it with summary.json."""
    def build(folder: Path) -> None:
        summary = _run("synthetic_dacs", tiny_overrides(folder / "dacs_mfm", *METHODS["dacs_mfm"]))
        (folder / "returned_summary.json").write_text(json.dumps(summary))
    folder = built_once(tmp_path_factory, "engine_train_mfm_run", build)
    return folder / "dacs_mfm", json.loads((folder / "returned_summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_train_writes_summary_metrics_panels_and_checkpoint(method, tmp_path, tiny_overrides, request):
    if method == "dacs_mfm":
        wd, summary = request.getfixturevalue("mfm_run")
    else:
        wd = tmp_path / method
        summary = _run("synthetic_dacs", tiny_overrides(wd, *METHODS[method]))
    on_disk = json.loads((wd / "summary.json").read_text())
    assert on_disk["iters"] == 4 and 0.0 <= on_disk["mIoU"] <= 100.0
    assert on_disk["mIoU"] == summary["mIoU"] and len(on_disk["per_class_iou"]) == 19
    assert on_disk["version"] and on_disk["git_commit"]
    rows = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if r["kind"] == "val"] == [2, 4]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert len(train_rows) == 4 and all(r["loss_src"] > 0 for r in train_rows)
    if method == "dacs_mfm":
        assert all("loss_mfm" in r for r in train_rows)
    assert load_config(str(wd / "config.yaml")) == load_config("synthetic_dacs", tiny_overrides(wd, *METHODS[method]))
    assert sorted(p.name for p in (wd / "panels").glob("*.png")) == ["iter_000002.png", "iter_000004.png"]
    assert (wd / "loss_curves.png").stat().st_size > 0 and (wd / "iou_per_class.png").stat().st_size > 0
    assert any((wd / "tb").iterdir())
    ckpt = load_train_checkpoint(wd / "latest.pth")
    assert ckpt["iteration"] == 4 and (ckpt["rebuilder"] is not None) == (method == "dacs_mfm")
    assert (ckpt["teacher"] is None) == (method == "source_only")


@pytest.mark.slow
def test_same_seed_same_metrics_and_resume_equals_uninterrupted(mfm_run, tmp_path, tiny_overrides):
    """A second run of the same seed, stopped after 2 iterations as a killed run would be and resumed, ends with the
    uninterrupted run's metrics and every one of its weights: the same seed gives the same run, and a resume
    continues it exactly."""
    wd_a, a = mfm_run
    extra = METHODS["dacs_mfm"]
    assert _run("synthetic_dacs", tiny_overrides(tmp_path / "c", *extra), stop_after=2) == {}
    assert load_train_checkpoint(tmp_path / "c" / "latest.pth")["iteration"] == 2
    c = _run("synthetic_dacs", tiny_overrides(tmp_path / "c", *extra, "train.resume=true"))
    assert c["mIoU"] == a["mIoU"] and c["per_class_iou"] == a["per_class_iou"]
    sa = load_train_checkpoint(wd_a / "latest.pth")
    sc = load_train_checkpoint(tmp_path / "c" / "latest.pth")
    for part in ("student", "teacher", "rebuilder"):
        for k, v in sa[part].items():
            assert torch.equal(v, sc[part][k]), f"{part}.{k} differs after resume"


@pytest.mark.slow
def test_work_dir_guard(mfm_run, tmp_path, tiny_overrides):
    """A finished run's work dir is refused before anything is written; a resume needs a run to resume. (A NaN
    loss: test_bad_inputs.py's diverged-before-checkpoint and nan cases, through the CLI.)"""
    wd, _ = mfm_run
    before = {p: p.stat().st_mtime_ns for p in wd.rglob("*")}
    with pytest.raises(UserError, match="already holds a run.*train.resume=true"):
        _run("synthetic_dacs", tiny_overrides(wd, "train.max_iters=1"))
    assert {p: p.stat().st_mtime_ns for p in wd.rglob("*")} == before
    with pytest.raises(UserError, match="resume=true but"):
        _run("synthetic_dacs", tiny_overrides(tmp_path / "none", "train.resume=true"))


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, tiny_overrides, monkeypatch):
    """`train.compile=true` learns what eager mode learns, and its checkpoint keeps the plain model's parameter
    names so that export and evaluation read it. The modules are compiled exactly as the trainer does; only the
    backend is `aot_eager` (dynamo graph capture + AOT autograd, no C++ code generation), because inductor's
    compile of every graph takes ~10 min on 2 CPU cores; the network is DeepLab-V2 on ResNet-18, whose graphs
    capture in half the time of MiT-b0's (the compile path is the same for every network)."""
    plain_compile = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: plain_compile(self, backend="aot_eager", **kw))
    extra = ["model.name=deeplabv2_r18", "model.decoder_channels=null", "uda.mfm.enabled=true", "train.max_iters=2",
             "train.panel_interval=0", "train.eval_interval=2"]
    eager = _run("synthetic_dacs", tiny_overrides(tmp_path / "eager", *extra))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = _run("synthetic_dacs", tiny_overrides(tmp_path / "compiled", *extra, "train.compile=true"))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the modules really were compiled
    rows = {name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                   if json.loads(x)["kind"] == "train"] for name in ("eager", "compiled")}
    for a, b in zip(rows["eager"], rows["compiled"]):
        for key in ("loss_src", "loss_mix", "loss_mfm"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-4), key
    assert compiled["mIoU"] == pytest.approx(eager["mIoU"], abs=0.5)
    ckpt_eager = load_train_checkpoint(tmp_path / "eager" / "latest.pth")
    ckpt_compiled = load_train_checkpoint(tmp_path / "compiled" / "latest.pth")
    assert list(ckpt_compiled["student"]) == list(ckpt_eager["student"])


@pytest.mark.slow  # trains end to end: seconds
def test_compile_covers_the_student_the_teacher_and_the_imagenet_copy(tmp_path, tiny_overrides):
    """`train.compile=true` compiles every part of the three networks a DAFormer step runs (nothing is run: a
    compiled call is set, the graphs are built on first use), and parameter names stay the plain model's."""
    plain = load_config("synthetic_dacs", tiny_overrides(tmp_path / "plain", "uda.fd.enabled=true"))
    trainer = Trainer(load_config("synthetic_dacs", tiny_overrides(tmp_path / "compiled", "uda.fd.enabled=true",
                                                                   "train.compile=true")))
    try:
        nets = trainer.step.networks()
        assert len({id(n) for n in nets}) == 3 and nets[1] is trainer.step.teacher
        assert nets[2] is trainer.step.terms["fd"].imnet
        parts = [part for net in nets for part in net.children()]
        assert len(parts) == 6 and all(part._compiled_call_impl is not None for part in parts)
        names = list(trainer.step.state_dict()["student"])
    finally:
        trainer.close()
    eager = Trainer(plain)
    try:
        assert all(part._compiled_call_impl is None for net in eager.step.networks() for part in net.children())
        assert names == list(eager.step.state_dict()["student"])
    finally:
        eager.close()


def test_loader_batches_are_pinned_only_for_a_cuda_device():
    """The trainer's `non_blocking` copies are asynchronous only from page-locked memory; on CPU pinning is waste."""
    assert pins_memory(torch.device("cuda")) and pins_memory(torch.device("cuda", 1))
    assert not pins_memory(torch.device("cpu")) and not pins_memory(torch.device("mps"))


def test_panel_legend_names_the_classes_shown():
    """Training panels say which colour is which class: a legend of exactly the classes the label maps show."""
    import matplotlib.pyplot as plt

    from mfmseg.data.labels import CITYSCAPES_PALETTE
    from mfmseg.engine.evaluation.evaluate import class_names
    from mfmseg.engine.evaluation.report import panel_figure

    label = torch.full((1, 8, 8), 255)
    label[0, :4], label[0, 4:, :2] = 0, 11
    visuals = {"image": torch.rand(1, 3, 8, 8) * 2 - 1, "label": label, "pred": torch.full((1, 8, 8), 13),
               "mask": torch.zeros(1, 8, 8, dtype=torch.bool), "weight": torch.full((1, 8, 8), 0.5)}
    fig = panel_figure(visuals, class_names(19))
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["road", "person", "car"]
    colours = [tuple(int(round(c * 255)) for c in h.get_facecolor()[:3]) for h in legend.legend_handles]
    assert colours == [tuple(CITYSCAPES_PALETTE[i]) for i in (0, 11, 13)]
    plt.close(fig)
    fig = panel_figure({"label": torch.full((1, 8, 8), 255)}, class_names(19))
    assert not fig.legends  # nothing but ignore: no legend
    plt.close(fig)
