"""The zoo: parameter counts vs the references, output strides, the encode/decode split, gradients, errors."""

import json
import subprocess
import sys

import pytest
import torch

from mfmseg.cli import main
from mfmseg.config import HRDAConfig, ModelConfig
from mfmseg.errors import UserError
from mfmseg.models.zoo import MODELS, build_model, describe_models

SMALL = ["deeplabv2_r18", "daformer_mitb0", "segformer_mitb0", "daformer_efflite0", "deeplabv2_efflite0",
         "daformer_vit_tiny"]


@pytest.fixture(scope="module")
def counts():
    return {r["name"]: r for r in describe_models(19)}


def test_param_counts_match_the_references(counts):
    b5 = counts["daformer_mitb5"]
    assert b5["params"] == pytest.approx(85.2e6, rel=0.005)
    assert b5["encoder_params"] == pytest.approx(81.4e6, rel=0.005)
    assert b5["head_params"] == pytest.approx(3.7e6, rel=0.005)
    assert counts["segformer_mitb5"]["params"] == pytest.approx(84.7e6, rel=0.005)  # SegFormer paper, B5
    assert counts["deeplabv2_r101_aspp"]["head_params"] == 4 * (2048 * 9 + 1) * 19
    r101 = counts["deeplabv2_r101"]
    assert r101["params"] == pytest.approx(43.2e6, rel=0.005)
    assert r101["head_params"] == pytest.approx(0.70e6, rel=0.005)
    assert set(counts) == set(MODELS)


def test_meta_count_equals_a_real_build(counts):
    model = build_model(ModelConfig(name="daformer_mitb0"))
    assert sum(p.numel() for p in model.parameters()) == counts["daformer_mitb0"]["params"]
    hrda = build_model(ModelConfig(name="daformer_mitb0", hrda=HRDAConfig(enabled=True)))
    assert sum(p.numel() for p in hrda.parameters()) == counts["daformer_mitb0"]["hrda_params"]
    assert counts["deeplabv2_r101"]["hrda_params"] is None  # HRDA needs a DAFormer head


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("size", [(64, 96)])
def test_small_models_shapes_and_gradients(name, size):
    model = build_model(ModelConfig(name=name, num_classes=7))
    x = torch.randn(2, 3, *size)
    feats = model.encode(x)
    assert [f.shape[1] for f in feats] == model.feature_channels
    assert [x.shape[-1] // f.shape[-1] for f in feats] == model.feature_strides
    logits = model.decode(feats)
    assert logits.shape == (2, 7, size[0] // model.output_stride, size[1] // model.output_stride)
    assert model.predict(x).shape == (2, 7, *size)
    modified = [f * 0.5 for f in feats]  # the decoder takes any feature list of the right shapes (MFM)
    out, feature = model.decode(modified, return_feature=True)
    out.sum().backward()
    assert all(p.grad is not None for p in model.decode_head.parameters())
    model.zero_grad()
    model(x).logsumexp(1).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_cpu_demo_width_override():
    model = build_model(ModelConfig(name="daformer_mitb0", decoder_channels=64))
    assert model.decode_head.conv_seg.in_channels == 64
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 19, 16, 16)


@pytest.mark.slow
def test_output_strides_at_paper_and_non_square_sizes():
    for name, stride in [("deeplabv2_r18", 8), ("daformer_mitb0", 4)]:
        model = build_model(ModelConfig(name=name)).eval()
        with torch.no_grad():
            for h, w in [(512, 512), (320, 640)]:
                assert model(torch.randn(1, 3, h, w)).shape[-2:] == (h // stride, w // stride)


@pytest.mark.parametrize("name", ["daformer_mitb5", "deeplabv2_r101", "deeplabv3plus_r101"])
def test_large_models_build_and_run(name):
    model = build_model(ModelConfig(name=name)).eval()
    with torch.no_grad():
        assert model.predict(torch.randn(1, 3, 64, 64)).shape == (1, 19, 64, 64)


def test_deeplabv3plus_reads_layer1_and_layer4_and_trains():
    """Two levels (stride 4 and 8): the decoder takes a modified list and gradients reach both stages."""
    model = build_model(ModelConfig(name="deeplabv3plus_r101", num_classes=5))
    assert model.feature_channels == [256, 2048] and model.feature_strides == [4, 8] and model.output_stride == 4
    feats = model.encode(torch.randn(2, 3, 32, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 256, 8, 16), (2, 2048, 4, 8)]
    logits, feature = model.decode([f + 1 for f in feats], return_feature=True)
    assert logits.shape == (2, 5, 8, 16) and feature.shape == (2, 512, 8, 16)
    logits.logsumexp(1).mean().backward()
    assert model.encoder.layer1[0].conv1.weight.grad.abs().sum() > 0
    assert model.encoder.layer4[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.decode_head.parameters())


def test_rebuilder_fits_every_level_layout():
    """MFM derives its projectors from the feature shapes: check one model of each level layout."""
    from mfmseg.config import MFMConfig
    from mfmseg.uda.rebuilder import Rebuilder

    for name in ["deeplabv3plus_r101", "segformer_mitb0"]:
        model = build_model(ModelConfig(name=name)).eval()
        rb = Rebuilder.for_segmentor(model, (64, 64), MFMConfig(enabled=True, embed_dim=32, num_heads=2, grid=2))
        with torch.no_grad():
            feats = model.encode(torch.randn(1, 3, 64, 64))
            rebuilt, _ = rb(feats, generator=torch.Generator().manual_seed(0))
            assert [r.shape for r in rebuilt] == [f.shape for f in feats]
            assert model.decode(rebuilt).shape == model(torch.randn(1, 3, 64, 64)).shape


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="deeplabv2_r18", num_classes=5))
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for a, p in zip(ref, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-5)


def test_mit_levels_and_checkpointing_recomputes_blocks():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="daformer_mitb0", decoder_channels=32)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = model.encode(x)
        ref = model.encoder.model(pixel_values=x, output_hidden_states=True).hidden_states
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b)
    calls = []
    # a pre-hook: recomputation stops early, right after the last saved tensor, before any forward hook
    model.encoder.model.stages[0].blocks[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    model.train()
    for m in model.modules():  # drop-path and dropout off: both runs must give the same gradients
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
    model.decode_head.dropout.p = 0.0
    model(x).sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    assert len(calls) == 1 + 2  # plain run once; checkpointed run forward + recompute in backward
    for a, p in zip(ref_grads, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-5)


def test_errors_are_one_line():
    with pytest.raises(UserError, match="did you mean 'daformer_mitb5'"):
        build_model(ModelConfig(name="daformer_mitb55"))
    model = build_model(ModelConfig(name="deeplabv2_r18"))
    with pytest.raises(UserError, match="B×3×H×W"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(UserError, match="float"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(UserError, match="not divisible by 8"):
        model(torch.randn(1, 3, 60, 64))
    with pytest.raises(UserError, match="decoder_channels"):
        build_model(ModelConfig(name="deeplabv2_r18", decoder_channels=64))


@pytest.mark.slow  # builds every zoo model on the meta device
def test_models_cli_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(MODELS) and all(isinstance(r["params"], int) for r in rows)


# Recorded on the code before the encoder contract (FeatureInfo, ModelSpec builders) replaced name parsing: the
# same seed must give the same parameters (same init order), the same state-dict keys (old checkpoints load) and the
# same logits. Columns: logits sum, logits |sum|, sha256[:16] of [(key, shape)], parameter sum (all float64).
BEFORE_REFACTOR = {
    "daformer_mitb0": (35.5209136903286, 201.79355385899544, "e1c816a5c2789905", 3928.7948935825902),
    "deeplabv2_r18": (0.36677566324942745, 1.18503478137427, "0c58a95fb1696490", 4882.166869881351),
    "daformer_efflite0": (59.70940684899688, 74.01878377050161, "2a1d4f3d04cb28df", 21300.9542313696),
    "deeplabv2_efflite0": (2.028471756676531e-07, 8.805138274337043e-07, "549dab88a40c85c1", 21015.903474377228),
    "deeplabv3plus_r101": (-118.58546349406242, 231.5192973613739, "5de7164b6779cc5b", 59311.83073126274),
    "daformer_mitb0+hrda": (38.086773596704006, 199.95619099587202, "a5c356a6a12b37d0", 3934.211860394024),
}
TINY_HRDA = HRDAConfig(enabled=True, hr_crop=[32, 32], attention_embed_dim=8, detail_stride=[16, 16])


@pytest.mark.parametrize("key", list(BEFORE_REFACTOR))
def test_same_seed_same_model_as_before_the_encoder_contract(key):
    import hashlib

    name, _, hrda = key.partition("+")
    small = {} if name.startswith("deeplabv2_") else {"decoder_channels": 16}
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, num_classes=5, hrda=TINY_HRDA if hrda else HRDAConfig(), **small))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model.eval()(x).double()
    layout = repr([(k, tuple(v.shape)) for k, v in model.state_dict().items()])
    total, magnitude, keys, params = BEFORE_REFACTOR[key]
    assert hashlib.sha256(layout.encode()).hexdigest()[:16] == keys
    assert sum(p.double().sum().item() for p in model.parameters()) == pytest.approx(params, rel=1e-12)
    assert logits.sum().item() == pytest.approx(total, rel=1e-5, abs=1e-9)
    assert logits.abs().sum().item() == pytest.approx(magnitude, rel=1e-5)


def test_every_zoo_encoder_keeps_the_encoder_contract():
    """Heads, the Segmentor, HRDA and the Rebuilder read channels and strides from `feature_info` only."""
    from mfmseg.models.encoder import Encoder, FeatureInfo
    from mfmseg.models.mit import MiT
    from mfmseg.models.resnet import ResNetV1c

    for name, spec in MODELS.items():
        with torch.device("meta"):
            encoder = spec.encoder()
        assert isinstance(encoder, Encoder), name
        assert all(isinstance(f, FeatureInfo) for f in encoder.feature_info), name
    with torch.device("meta"):
        r50, b0 = ResNetV1c(50, out_indices=(0, 1, 2, 3)), MiT("b0")
    assert [(f.channels, f.stride) for f in r50.feature_info] == [(256, 4), (512, 8), (1024, 8), (2048, 8)]
    assert [(f.channels, f.stride) for f in b0.feature_info] == [(32, 4), (64, 8), (160, 16), (256, 32)]
    assert (r50.size_multiple, b0.size_multiple) == (8, 32)


def test_no_hidden_imports_in_models_and_weights_is_a_leaf():
    """The zoo <-> weights cycle was hidden inside functions: no function in models/ imports mfmseg, and the file
    primitives (`models.weights`) import no model."""
    import ast
    from pathlib import Path

    import mfmseg.models

    root = Path(mfmseg.models.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mfmseg"):
                    raise AssertionError(f"{path.name}: {fn.name} imports {node.module} inside a function")
    weights = ast.parse((root / "weights.py").read_text())
    assert not [n.module for n in ast.walk(weights) if isinstance(n, ast.ImportFrom)
                and (n.module or "").startswith("mfmseg.models")]


@pytest.mark.slow
def test_start_up_imports_only_what_the_run_needs():
    """Each of these takes seconds to import: transformers (half of `mfmseg train`'s start-up) only for MiT and ViT
    encoders, torch._inductor (which torch.use_deterministic_algorithms imports) only for a deterministic run."""
    code = ("import sys, torch, mfmseg.cli, mfmseg.engine.training.trainer\n"
            "from mfmseg.config import ModelConfig\nfrom mfmseg.models.zoo import build_model\n"
            "from mfmseg.engine.runtime.numerics import set_numerics\n"
            "set_numerics(torch.device('cpu'), False)\n"
            "build_model(ModelConfig(name='deeplabv2_efflite0', num_classes=5))\n"
            "assert 'transformers' not in sys.modules and 'torch._inductor' not in sys.modules, 'imported early'\n"
            "build_model(ModelConfig(name='daformer_mitb0', num_classes=5))\n"
            "assert 'transformers' in sys.modules\n"
            "set_numerics(torch.device('cpu'), True)\n"
            "assert torch.are_deterministic_algorithms_enabled()\n"
            "set_numerics(torch.device('cpu'), False)\n"
            "assert not torch.are_deterministic_algorithms_enabled()\n"
            "import torch._inductor.config as c; assert c.deterministic is False\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
