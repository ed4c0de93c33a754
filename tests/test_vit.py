"""Foundation-model encoders (models.vit): reference parameter counts, the token-grid rule and the neck's levels,
checkpointing and bf16, layer-wise lr decay groups, local weights, and MFM / HRDA training on the tiny ViT."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import DINOv3ViTModel, Dinov2Config, Dinov2Model

from mfmseg.config import MFMConfig, ModelConfig, OptimConfig, load_config
from mfmseg.engine.training.optim import param_groups
from mfmseg.errors import UserError
from mfmseg.models.vit import ViTEncoder, default_taps, vit_config
from mfmseg.models.zoo import MODELS, build_model, count_params
from mfmseg.uda.mfm import mfm_loss
from mfmseg.uda.rebuilder import Rebuilder

TINY = dict(size="tiny")


def _tiny_model(**kw) -> torch.nn.Module:
    return build_model(ModelConfig(name="daformer_vit_tiny", num_classes=5, decoder_channels=16, **kw))


# ---- parameter counts (meta device: no memory) ---------------------------------------------------------------
@pytest.mark.parametrize("family,size,reference", [
    ("dinov2", "s", 22_056_576), ("dinov2", "b", 86_580_480), ("dinov2", "l", 304_368_640),
    ("dinov3", "l", 303.1e6),
])
def test_bare_vit_parameter_counts_match_the_references(family, size, reference):
    with torch.device("meta"):
        encoder = ViTEncoder(family, size)
    assert count_params(encoder.vit) == pytest.approx(reference, rel=0.005)
    if family == "dinov2":  # transformers' DINOv2 is exactly the released network
        assert count_params(encoder.vit) == reference


def test_registers_add_four_tokens_and_zoo_names():
    with torch.device("meta"):
        plain, reg = ViTEncoder("dinov2", "l"), ViTEncoder("dinov2reg", "l")
    assert count_params(reg.vit) - count_params(plain.vit) == 4 * 1024
    assert {"daformer_dinov2_s", "daformer_dinov2_b", "daformer_dinov2_l", "daformer_dinov2reg_l",
            "daformer_dinov3_l", "daformer_vit_tiny"} <= set(MODELS)
    assert (plain.name, reg.name, plain.taps) == ("dinov2_vitl14", "dinov2reg_vitl14", (6, 12, 18, 24))
    assert default_taps(4) == (1, 2, 3, 4) and default_taps(12) == (3, 6, 9, 12)


# ---- the token-grid rule and the neck ------------------------------------------------------------------------
@pytest.mark.parametrize("family,patch", [("dinov2", None), ("dinov2", 16), ("dinov2reg", None), ("dinov3", None)])
@pytest.mark.parametrize("hw", [(64, 96), (100, 150), (33, 17)])
def test_levels_follow_feature_info_at_any_size(family, patch, hw):
    torch.manual_seed(0)
    encoder = ViTEncoder(family, patch_size=patch, **TINY)
    x = torch.randn(2, 3, *hw)
    feats = encoder(x)
    grid = [-(-s // 16) for s in hw]  # ceil(side / 16) tokens, whatever the patch
    assert [f.shape[1] for f in feats] == [i.channels for i in encoder.feature_info] == [16, 32, 64, 64]
    for f, info in zip(feats, encoder.feature_info):
        expected = [-(-g * 16 // info.stride) for g in grid]
        assert list(f.shape[-2:]) == expected, (info, f.shape)
        if hw[0] % encoder.size_multiple == 0 and hw[1] % encoder.size_multiple == 0:
            assert list(f.shape[-2:]) == [s // info.stride for s in hw]  # feature_info's strides, exactly
    sum(f.mean() for f in feats).backward()
    assert next(encoder.vit.embeddings.patch_embeddings.parameters()).grad is not None


def test_segmentor_refuses_sizes_off_the_multiple_in_one_line():
    model = _tiny_model()
    assert model.size_multiple == 32 and model.feature_strides == [4, 8, 16, 32]
    with pytest.raises(UserError, match="not divisible by 32"):
        model(torch.randn(1, 3, 64, 80))


def test_bf16_autocast_forward_backward():
    model = _tiny_model().train()
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", torch.bfloat16):
        logits = model(x)
        loss = logits.float().logsumexp(1).mean()
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.encoder.vit.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_checkpointing_recomputes_every_block_and_keeps_gradients():
    torch.manual_seed(0)
    model = _tiny_model().train()
    model.decode_head.dropout.p = 0.0
    for m in model.modules():  # drop-path off: both runs must give the same gradients
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
    calls = []
    for layer in model.encoder.vit.encoder.layer:
        layer.mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    x = torch.randn(1, 3, 64, 64)
    model(x).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    assert len(calls) == 4 + 2 * 4  # plain: once per block; checkpointed: forward + recompute in backward
    for n, p in model.named_parameters():
        if n in ref:
            torch.testing.assert_close(p.grad, ref[n], rtol=1e-4, atol=1e-5)


# ---- optimiser: layer-wise lr decay ---------------------------------------------------------------------------
def test_layerwise_lr_decay_groups():
    model = _tiny_model()
    cfg = OptimConfig(layer_decay=0.5, encoder_lr_mult=0.1)
    groups = param_groups(model, cfg)
    where = {id(p): (g["name"], g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    enc = 6e-5 * 0.1

    def got(name):
        return where[id(names[name])]

    assert got("encoder.vit.embeddings.position_embeddings") == ("encoder.layer0.no_decay",
                                                                 pytest.approx(enc * 0.5 ** 5), 0.0)
    assert got("encoder.vit.embeddings.cls_token")[0] == "encoder.layer0.no_decay"
    assert got("encoder.vit.embeddings.patch_embeddings.projection.weight") == ("encoder.layer0",
                                                                                pytest.approx(enc * 0.5 ** 5), 0.01)
    assert got("encoder.vit.encoder.layer.0.attention.q_proj.weight") == ("encoder.layer1",
                                                                          pytest.approx(enc * 0.5 ** 4), 0.01)
    assert got("encoder.vit.encoder.layer.3.attention.q_proj.bias")[0] == "encoder.layer4.no_decay"
    assert got("encoder.vit.encoder.layer.2.layer_scale1.lambda1")[0] == "encoder.layer3.no_decay"
    assert got("encoder.vit.encoder.layer.2.norm1.weight")[0] == "encoder.layer3.no_decay"
    assert got("encoder.vit.layernorm.weight") == ("encoder.layer5.no_decay", pytest.approx(enc), 0.0)
    assert got("encoder.neck.branches.0.0.weight") == ("encoder.layer5", pytest.approx(enc), 0.01)
    assert got("encoder.neck.norms.0.weight")[0] == "encoder.layer5.no_decay"
    assert got("decode_head.conv_seg.weight") == ("decode_head", pytest.approx(6e-4), 0.01)
    assert groups[0]["name"] == "encoder.layer5"  # the logged lr (param_groups[0]) is the encoder's own
    assert id(names["encoder.vit.embeddings.mask_token"]) not in where  # frozen: segmentation never masks inputs
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(trainable) == len(where)


def test_default_optim_keeps_every_encoder_at_the_base_lr():
    groups = param_groups(_tiny_model(), OptimConfig())
    assert {g["lr"] for g in groups if g["name"].startswith("encoder")} == {6e-5}
    mit = build_model(ModelConfig(name="daformer_mitb0", decoder_channels=16))
    assert [g["name"] for g in param_groups(mit, OptimConfig())] == [
        "encoder", "encoder.no_decay", "decode_head"]  # the names of before: the DAFormer head has no LayerNorm


@pytest.mark.parametrize("override,match", [("optim.layer_decay=0", "layer_decay"),
                                            ("optim.layer_decay=1.5", "layer_decay"),
                                            ("optim.encoder_lr_mult=0", "encoder_lr_mult")])
def test_bad_optim_values_are_config_errors(override, match):
    with pytest.raises(UserError, match=match):
        load_config("synthetic_vit_tiny_dacs", [override])


# ---- weights -------------------------------------------------------------------------------------------------
def test_local_save_pretrained_folder_and_file_load(tmp_path):
    torch.manual_seed(3)
    src = Dinov2Model(vit_config("dinov2", "tiny", patch_size=16))
    src.save_pretrained(tmp_path / "vit")
    model = _tiny_model(pretrained=str(tmp_path / "vit"))
    ours = model.encoder.vit.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in src.state_dict().items())
    assert not model.encoder.vit.embeddings.mask_token.requires_grad
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "vit.safetensors")
    again = _tiny_model(pretrained=str(tmp_path / "vit.safetensors"))
    assert all(torch.equal(again.encoder.vit.state_dict()[k], v) for k, v in src.state_dict().items())


def test_dinov3_folder_loads_with_the_rope_augmentation_off(tmp_path):
    src = DINOv3ViTModel(vit_config("dinov3", "tiny").__class__(**{**vit_config("dinov3", "tiny").to_dict(),
                                                                  "pos_embed_rescale": 2.0}))
    src.save_pretrained(tmp_path / "v3")
    encoder = ViTEncoder("dinov3", **TINY)
    encoder.load_imagenet(str(tmp_path / "v3"))
    assert all(torch.equal(encoder.vit.state_dict()[k], v) for k, v in src.state_dict().items())
    assert encoder.vit.config.pos_embed_rescale is None
    encoder.train()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(encoder(x)[-1], encoder(x)[-1])  # no random RoPE rescaling in train mode


def test_wrong_or_missing_weights_are_one_line_errors(tmp_path):
    Dinov2Model(Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=16,
                             image_size=518)).save_pretrained(tmp_path / "shallow")
    encoder = ViTEncoder("dinov2", patch_size=16, **TINY)
    with pytest.raises(UserError, match=r"does not fit.*encoder\.layer\.2"):
        encoder.load_imagenet(str(tmp_path / "shallow"))
    with pytest.raises(UserError, match="no such folder"):
        encoder.load_imagenet(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="EfficientNet-Lite"):
        encoder.load_imagenet("imagenet")


# ---- MFM on a ViT ---------------------------------------------------------------------------------------------
def test_rebuilder_works_on_the_neck_levels_and_reaches_the_vit():
    """Masking happens after the neck: the Rebuilder's grid comes from the stride-32 level (crop/32 per side)."""
    model = _tiny_model().train()
    rebuilder = Rebuilder.for_segmentor(model, (128, 128), MFMConfig(enabled=True, embed_dim=32, num_heads=4,
                                                                     grid=4))
    assert rebuilder.level_scales == [8, 4, 2, 1]  # 32/16/8/4 cells per side of a 128 crop over a 4x4 grid
    feats = model.encode(torch.randn(2, 3, 128, 128))
    labels = torch.randint(0, 5, (2, 128, 128))
    out = mfm_loss(model, rebuilder, feats, labels, torch.ones(2, 128, 128),
                   generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert out.token_mask.shape == (2, 4, 4)
    assert model.encoder.vit.encoder.layer[0].attention.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_dacs_mfm_trains_on_the_tiny_vit_and_exports_the_baseline_network(tmp_path, tiny_overrides):
    from mfmseg.engine.evaluation.export import export_model, load_inference_model
    from mfmseg.engine.training.trainer import train

    wd = tmp_path / "run"
    # pseudo_threshold 0: a random network is never 96.8 % confident, and MFM's loss is weighted by that fraction
    cfg = load_config("synthetic_vit_tiny_dacs_mfm", tiny_overrides(wd, "train.max_iters=3", "uda.mfm.grid=2",
                                                                    "train.panel_interval=0", "optim.layer_decay=0.9",
                                                                    "uda.pseudo_threshold=0"))
    summary = train(cfg)
    rows = [json.loads(r) for r in (wd / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss_mfm"] for r in rows if r["kind"] == "train"]
    assert len(losses) == 3 and all(0 < v < 100 for v in losses) and summary["iters"] == 3
    out = export_model(wd / "latest.pth", tmp_path / "model.pth")
    exported, _ = load_inference_model(out)
    baseline = build_model(load_config("synthetic_vit_tiny_dacs").model)  # the same network without MFM
    assert count_params(exported) == count_params(baseline)
    assert not any("rebuild" in k for k in torch.load(out, weights_only=True)["state_dict"])


HRDA_TINY = ["model.hrda.enabled=true", "model.hrda.hr_crop=[64,64]", "model.hrda.detail_stride=[32,32]",
             "model.hrda.attention_embed_dim=16", "model.decoder_channels=16",
             "data.source.resize=[256,128]", "data.target.resize=[256,128]", "data.val.resize=[256,128]",
             "data.source.crop=[128,128]", "data.target.crop=[128,128]", "uda.mfm.embed_dim=32",
             "uda.mfm.num_heads=4", "uda.mfm.grid=2", "train.max_iters=2", "train.eval_interval=2",
             "train.panel_interval=0", "eval.mode=slide", "eval.window=[128,128]", "eval.stride=[64,64]"]


@pytest.mark.slow
def test_hrda_mfm_trains_on_the_tiny_vit_with_checkpointing(tmp_path, tiny_overrides):
    from mfmseg.engine.training.trainer import train

    wd = tmp_path / "hrda"
    overrides = tiny_overrides(wd, *HRDA_TINY, "train.grad_checkpointing=true", "uda.pseudo_threshold=0")
    summary = train(load_config("synthetic_vit_tiny_dacs_mfm", overrides))
    rows = [json.loads(r) for r in (wd / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss_mfm"] > 0 for r in rows if r["kind"] == "train")
    assert summary["iters"] == 2 and 0 <= summary["mIoU"] <= 100
