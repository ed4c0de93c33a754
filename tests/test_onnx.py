"""ONNX deployment: export + parity gate, metadata, MFM's zero test-time cost on the graph, predict through
onnxruntime, bad inputs, and every encoder family of the zoo through the gate (small sizes, random weights)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import built_once
from PIL import Image

from mfmseg.cli import main
from mfmseg.config import HRDAConfig, ModelConfig, load_config
from mfmseg.data.synthetic import make_sample
from mfmseg.engine.evaluation import onnx_export
from mfmseg.engine.evaluation.export import load_inference_model
from mfmseg.engine.evaluation.onnx_export import (OPSET, export_network, export_onnx, metadata, sha256_file)
from mfmseg.engine.evaluation.onnx_runtime import OnnxSegmentor
from mfmseg.engine.evaluation.predict import predict_images
from mfmseg.errors import UserError
from mfmseg.models.heads.daformer import DAFormerHead
from mfmseg.models.heads.deeplabv3plus import DeepLabV3PlusHead
from mfmseg.models.resnet import ResNetV1c
from mfmseg.models.segmentor import Segmentor
from mfmseg.models.vit import ViTEncoder
from mfmseg.models.zoo import build_model

# Every test here exports through the dynamo exporter (tens of seconds each on a CPU): end-to-end, run in CI.
pytestmark = pytest.mark.slow

NET = ["model.name=deeplabv2_r18", "model.decoder_channels=null", "model.pretrained=null"]


RUNS = {"dacs": [], "mfm": ["uda.mfm.enabled=true"]}


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_overrides) -> dict[str, tuple[Path, Path]]:
    """{"dacs", "mfm"}: (training checkpoint, its ONNX export) of the same network, trained for 2 iterations;
    built once per session (`built_once`)."""
    from mfmseg.engine.training.trainer import train

    def build(wd: Path) -> None:
        for name, extra in RUNS.items():
            train(load_config("synthetic_dacs", tiny_overrides(wd / name, *NET, *extra, "train.max_iters=2",
                                                                "train.panel_interval=0", "train.eval_interval=-1")))
            export_onnx(wd / name / "latest.pth", wd / f"{name}.onnx")
    wd = built_once(tmp_path_factory, "onnx_exported", build)
    return {name: (wd / name / "latest.pth", wd / f"{name}.onnx") for name in RUNS}


def _op_counts(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _initializers(path: Path) -> list[tuple[str, int, tuple[int, ...], int]]:
    """(name, dtype, shape, bytes) per initializer, in graph order."""
    return [(t.name, t.data_type, tuple(t.dims), len(onnx.numpy_helper.to_array(t).tobytes()))
            for t in onnx.load(str(path)).graph.initializer]


def test_mfm_adds_nothing_to_the_exported_graph(exported):
    """DACS and DACS+MFM students: the same nodes per op type and the same initializers, byte for byte in size;
    the MFM checkpoint does hold a Rebuilder, which the graph never sees."""
    (dacs_ckpt, dacs), (mfm_ckpt, mfm) = exported["dacs"], exported["mfm"]
    rebuilder = torch.load(mfm_ckpt, weights_only=True)["rebuilder"]
    rebuilder_bytes = 4 * sum(v.numel() for v in rebuilder.values())
    assert rebuilder_bytes > 1e6 and torch.load(dacs_ckpt, weights_only=True).get("rebuilder") is None
    assert _op_counts(dacs) == _op_counts(mfm) and sum(_op_counts(mfm).values()) > 50
    assert _initializers(dacs) == _initializers(mfm)
    total = sum(b for *_, b in _initializers(mfm))  # float32 weights, BatchNorms folded into the convolutions
    params = sum(p.numel() for p in build_model(ModelConfig(name="deeplabv2_r18")).parameters())
    assert abs(total - 4 * params) < rebuilder_bytes / 10  # the student's weights and nothing of the Rebuilder


def test_metadata_opset_and_dynamic_axes(exported):
    ckpt, path = exported["mfm"]
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["mfmseg_format"] == "mfmseg-onnx-v1" and meta["model"] == "deeplabv2_r18"
    assert len(json.loads(meta["classes"])) == 19 and json.loads(meta["classes"])[0] == "road"
    assert json.loads(meta["mean"]) == [123.675, 116.28, 103.53] and json.loads(meta["std"])[0] == 58.395
    assert meta["size_multiple"] == "8" and meta["output"] == "logits" and "NCHW" in meta["input_layout"]
    assert meta["source_sha256"] == sha256_file(ckpt) and meta["mfmseg_version"]
    assert json.loads(meta["config"])["model"]["name"] == "deeplabv2_r18"
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= OPSET >= 18
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True] and dims[1].dim_value == 3


def test_runtime_matches_torch_at_another_size_and_refuses_a_bad_one(exported):
    ckpt, path = exported["mfm"]
    torch_model, _ = load_inference_model(ckpt)
    runtime, cfg = load_inference_model(path)
    assert isinstance(runtime, OnnxSegmentor) and cfg.model.name == "deeplabv2_r18"
    x = torch.randn(3, 3, 40, 72)
    with torch.no_grad():
        torch.testing.assert_close(runtime.predict(x), torch_model.predict(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(UserError, match="not divisible by 8"):
        runtime.run(np.zeros((1, 3, 36, 40), np.float32))


def _scenes(folder: Path, sizes) -> Path:
    folder.mkdir()
    for i, size in enumerate(sizes):
        Image.fromarray(make_sample(1, "target", i, size)[0]).save(folder / f"scene{i}.png")
    return folder


def _agreement(a: Path, b: Path) -> float:
    same = total = 0
    for f in sorted(a.rglob("*.png")):
        x, y = np.asarray(Image.open(f)), np.asarray(Image.open(b / f.relative_to(a)))
        same, total = same + int((x == y).sum()), total + x.size
    assert total > 0
    return same / total


def test_predict_with_onnx_agrees_with_the_pth_path(exported, tmp_path, capsys):
    """The CLI on both files (whole image), then sliding windows through the API: ≥ 99.9 % of pixels agree."""
    ckpt, path = exported["mfm"]
    images = _scenes(tmp_path / "in", [(64, 128), (100, 150)])
    for model, out in [(ckpt, "pth"), (path, "onnx")]:
        assert main(["predict", str(model), str(images), "--out", str(tmp_path / out), "--format", "trainid",
                     "--device", "cpu"]) == 0
    assert _agreement(tmp_path / "pth", tmp_path / "onnx") >= 0.999
    assert main(["predict", str(path), str(images), "--out", str(tmp_path / "ov"), "--format", "overlay"]) == 0
    assert np.asarray(Image.open(tmp_path / "ov" / "scene1.png")).shape == (100, 150, 3)
    for model, out in [(ckpt, "pth_slide"), (path, "onnx_slide")]:
        net, cfg = load_inference_model(model)
        cfg.eval.mode, cfg.eval.window, cfg.eval.stride = "slide", [48, 48], [32, 32]
        predict_images(net, cfg, [str(images)], tmp_path / out, "trainid")
    assert _agreement(tmp_path / "pth_slide", tmp_path / "onnx_slide") >= 0.999


def test_evaluate_runs_the_onnx_graph(exported, tmp_path):
    """`mfmseg evaluate model.onnx`: the config comes from the metadata; the mIoU equals the .pth path's."""
    ckpt, path = exported["mfm"]
    for model, out in [(ckpt, "pth.json"), (path, "onnx.json")]:
        assert main(["evaluate", str(model), "--device", "cpu", "--json", str(tmp_path / out)]) == 0
    pth, onnx_result = (json.loads((tmp_path / f).read_text()) for f in ("pth.json", "onnx.json"))
    assert onnx_result["mIoU"] == pytest.approx(pth["mIoU"], abs=0.05) and len(onnx_result["per_class_iou"]) == 19


def test_cli_labels_graph_outputs_the_argmax(exported, tmp_path, monkeypatch, capsys):
    """--labels appends ArgMax + Cast to the gated logits graph (traced once by the fixture: reused here)."""
    ckpt, path = exported["mfm"]
    monkeypatch.setattr(onnx_export, "trace_to_onnx", lambda model, fixed: onnx.load(str(path)))
    assert main(["export", str(ckpt), "--out", str(tmp_path / "labels.onnx"), "--labels"]) == 0
    printed = capsys.readouterr().out
    assert "max |Δlogit|" in printed and "labels graph 100.000 %" in printed and "output labels" in printed
    x = torch.randn(2, 3, 48, 64)
    labels = OnnxSegmentor(tmp_path / "labels.onnx").run(x.numpy())
    logits = OnnxSegmentor(path).run(x.numpy())
    assert labels.dtype == np.uint8 and labels.shape == (2, 48, 64)
    np.testing.assert_array_equal(labels, logits.argmax(1))


def test_failed_gate_is_one_line_and_leaves_no_file(exported, tmp_path, monkeypatch, capsys):
    """onnxruntime answers 0.01 off: the gate prints its numbers in one line, exit 2, nothing on disk."""
    ckpt, path = exported["dacs"]
    monkeypatch.setattr(onnx_export, "trace_to_onnx", lambda model, fixed: onnx.load(str(path)))
    run = OnnxSegmentor.run
    monkeypatch.setattr(OnnxSegmentor, "run", lambda self, x: run(self, x) + 0.01)
    assert main(["export", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "parity gate failed" in err and "1.00e-02" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_bad_requests_are_one_line(exported, tmp_path, monkeypatch, capsys):
    ckpt, path = exported["dacs"]
    for missing, argv in [("onnxscript", ["export", str(ckpt), "--out", str(tmp_path / "m.onnx")]),
                          ("onnxruntime", ["predict", str(path), str(tmp_path), "--out", str(tmp_path / "o")])]:
        with monkeypatch.context() as m:
            m.setitem(sys.modules, missing, None)  # what an install without the [onnx] extra looks like
            assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"needs {missing}: install the extra: pip install 'mfmseg[onnx]'" in err and err.count("\n") == 1
    for argv, words in [
        (["export", str(ckpt), "--out", str(tmp_path / "m.pth"), "--labels"], "--format onnx only"),
        (["export", str(ckpt), "--out", str(tmp_path / "m.bin"), "--format", "onnx"], ".onnx file"),
        (["export", str(ckpt), "--out", str(tmp_path / "m.onnx"), "--size", "64x64"], "HRDA"),
        (["predict", str(path), str(tmp_path), "--out", str(tmp_path / "o"), "--which", "teacher"], "student only"),
        (["predict", str(ckpt), str(tmp_path), "--out", str(tmp_path / "o")], "no images"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, (argv, err)
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    assert main(["predict", str(tmp_path / "junk.onnx"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read ONNX model" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.tmp*"))


def _zoo(name: str, **kw) -> torch.nn.Module:
    return build_model(ModelConfig(name=name, num_classes=5, **kw))


def _daformer_on(encoder) -> torch.nn.Module:
    return Segmentor(encoder, DAFormerHead([f.channels for f in encoder.feature_info], 5, channels=16),
                     num_classes=5)


FAMILIES = {  # one export per encoder family of the zoo, between them every head, at test sizes (an export is
    # tens of CPU seconds): MiT + DAFormer head is the HRDA test's network below, EfficientNet-Lite + DAFormer head
    # pairs an encoder and a head exported here already
    "mit_segformer": lambda: _zoo("segformer_mitb0", decoder_channels=16),
    "efflite_deeplabv2": lambda: _zoo("deeplabv2_efflite0"),
    "resnet_deeplabv3plus": lambda: Segmentor(ResNetV1c(depth=18, out_indices=(0, 3)),
                                              DeepLabV3PlusHead([64, 512], 5, channels=32), num_classes=5),
    "dinov2_vit": lambda: _daformer_on(ViTEncoder("dinov2", size="tiny")),  # patch 14: position-embedding resize
    "dinov3_vit": lambda: _daformer_on(ViTEncoder("dinov3", size="tiny")),  # patch 16, RoPE
}  # ResNet + DeepLab-V2 is the network of the `exported` fixture above


def _gate(model: torch.nn.Module, out: Path, fixed_size=None):
    cfg = load_config("synthetic_dacs")
    cfg.model.num_classes = 5
    meta = metadata(model.eval(), cfg, "0" * 64, fixed_size, "logits")
    return export_network(model, meta, out, fixed_size=fixed_size)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_encoder_family_exports_and_passes_the_gate(family, tmp_path):
    torch.manual_seed(0)
    parity = _gate(FAMILIES[family](), tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").is_file() and len(parity) == 2 and all(p.passed() for p in parity)
    print(family, "; ".join(p.describe() for p in parity))


def test_hrda_exports_for_a_fixed_size(tmp_path):
    """HRDA's detail windows are placed by Python arithmetic on the input size: one graph per size (64×128, the
    smallest of two detail windows: the graph of a larger size only repeats them)."""
    torch.manual_seed(0)
    hrda = HRDAConfig(enabled=True, hr_crop=[64, 64], detail_stride=[64, 64], attention_embed_dim=16)
    model = _zoo("daformer_mitb0", decoder_channels=16, hrda=hrda).eval()
    parity = _gate(model, tmp_path / "hrda.onnx", fixed_size=(64, 128))
    assert all(p.passed() for p in parity) and parity[0].size == (64, 128)
    print("hrda", "; ".join(p.describe() for p in parity))
    runtime = OnnxSegmentor(tmp_path / "hrda.onnx")
    assert runtime.fixed_size == (64, 128)
    with pytest.raises(UserError, match="exported for 64×128 inputs only"):
        runtime.run(np.zeros((1, 3, 64, 64), np.float32))
    x = torch.randn(1, 3, 128, 192)  # larger than the graph: windows of its size, as predict feeds it
    with torch.no_grad():
        assert runtime.predict(x).shape == (1, 5, 128, 192)
