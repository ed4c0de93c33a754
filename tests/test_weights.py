"""Loading ImageNet and released checkpoints from files with the real foreign key layouts."""

import re

import pytest
import torch
from safetensors.torch import save_file

from mfmseg.config import ModelConfig
from mfmseg.errors import UserError
from mfmseg.models.released import load_released_checkpoint
from mfmseg.models.zoo import build_model


def _to_mmseg_mit(hf_sd):
    """Our (transformers) MiT keys -> SegFormer's mmseg layout, k/v fused into kv: the inverse mapping, by hand."""
    out = {}
    for k, v in hf_sd.items():
        m = re.fullmatch(r"stages\.(\d)\.(.+)", k)
        i, rest = int(m[1]) + 1, m[2]
        if rest.startswith("patch_embeddings.proj."):
            out[f"patch_embed{i}.proj.{rest.split('.')[-1]}"] = v
        elif rest.startswith("patch_embeddings.layer_norm."):
            out[f"patch_embed{i}.norm.{rest.split('.')[-1]}"] = v
        elif rest.startswith("layer_norm."):
            out[f"norm{i}.{rest.split('.')[-1]}"] = v
        else:
            b = re.fullmatch(r"blocks\.(\d+)\.(.+)", rest)
            j, r = b[1], b[2]
            table = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.q_proj": "attn.q",
                     "attention.o_proj": "attn.proj", "attention.sequence_reduction.sequence_reduction": "attn.sr",
                     "attention.sequence_reduction.layer_norm": "attn.norm", "mlp.fc1": "mlp.fc1",
                     "mlp.fc2": "mlp.fc2", "mlp.dwconv.dwconv": "mlp.dwconv.dwconv"}
            module, leaf = r.rsplit(".", 1)
            if module == "attention.k_proj":
                out[f"block{i}.{j}.attn.kv.{leaf}"] = torch.cat([v, hf_sd[k.replace("k_proj", "v_proj")]])
            elif module != "attention.v_proj":
                out[f"block{i}.{j}.{table[module]}.{leaf}"] = v
    return out


def _daformer_head_to_mmseg(sd):
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^embed_layers\.(\d)\.", r"embed_layers.\1.proj.", k)
        k = k.replace("fuse_layer.branches.0.0.", "fuse_layer.aspp_modules.0.conv.")
        k = k.replace("fuse_layer.branches.0.1.", "fuse_layer.aspp_modules.0.bn.")
        k = re.sub(r"fuse_layer\.branches\.(\d)\.0\.0\.", r"fuse_layer.aspp_modules.\1.depthwise_conv.conv.", k)
        k = re.sub(r"fuse_layer\.branches\.(\d)\.0\.1\.", r"fuse_layer.aspp_modules.\1.depthwise_conv.bn.", k)
        k = re.sub(r"fuse_layer\.branches\.(\d)\.1\.0\.", r"fuse_layer.aspp_modules.\1.pointwise_conv.conv.", k)
        k = re.sub(r"fuse_layer\.branches\.(\d)\.1\.1\.", r"fuse_layer.aspp_modules.\1.pointwise_conv.bn.", k)
        k = k.replace("fuse_layer.bottleneck.0.", "fuse_layer.bottleneck.conv.")
        k = k.replace("fuse_layer.bottleneck.1.", "fuse_layer.bottleneck.bn.")
        out[k] = v
    return out


def _outputs_equal(a, b):
    a.eval(), b.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_mmcv_resnet_v1c_checkpoint(tmp_path):
    src = build_model(ModelConfig(name="deeplabv2_r18"))
    sd = {**src.encoder.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    assert "stem.0.weight" in sd and "layer1.0.conv1.weight" in sd
    torch.save({"state_dict": sd, "meta": {"epoch": 100}}, tmp_path / "resnet18_v1c.pth")
    dst = build_model(ModelConfig(name="deeplabv2_r18", pretrained=str(tmp_path / "resnet18_v1c.pth")))
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(v, dst.encoder.state_dict()[k])


def test_segformer_mmseg_mit_checkpoint(tmp_path):
    src = build_model(ModelConfig(name="daformer_mitb0"))
    sd = _to_mmseg_mit(src.encoder.model.state_dict())
    assert "block1.0.attn.kv.weight" in sd and "patch_embed1.proj.weight" in sd
    sd["head.weight"] = torch.zeros(1000, 256)
    torch.save(sd, tmp_path / "mit_b0.pth")
    dst = build_model(ModelConfig(name="daformer_mitb0", pretrained=str(tmp_path / "mit_b0.pth")))
    dst.decode_head.load_state_dict(src.decode_head.state_dict())
    _outputs_equal(src, dst)


def test_released_daformer_checkpoint_and_mismatch(tmp_path):
    src = build_model(ModelConfig(name="daformer_mitb0"))
    backbone = _to_mmseg_mit(src.encoder.model.state_dict())
    head = _daformer_head_to_mmseg(src.decode_head.state_dict())
    sd = {**{f"model.backbone.{k}": v for k, v in backbone.items()},
          **{f"model.decode_head.{k}": v for k, v in head.items()},
          **{f"ema_model.backbone.{k}": v * 0 for k, v in backbone.items()},
          **{f"ema_model.decode_head.{k}": v for k, v in head.items()},
          **{f"imnet_model.backbone.{k}": v for k, v in backbone.items()}}
    torch.save({"state_dict": sd, "meta": {"iter": 40000}}, tmp_path / "daformer.pth")
    dst = build_model(ModelConfig(name="daformer_mitb0"))
    assert load_released_checkpoint(tmp_path / "daformer.pth", dst, which="model") is dst
    _outputs_equal(src, dst)
    by_name = load_released_checkpoint(tmp_path / "daformer.pth", "daformer_mitb0")
    assert by_name.num_classes == 19
    _outputs_equal(src, by_name)
    ema = load_released_checkpoint(tmp_path / "daformer.pth", "daformer_mitb0", which="ema_model")
    assert all(not p.detach().any() for p in ema.encoder.parameters())
    wrong = build_model(ModelConfig(name="daformer_mitb0", num_classes=16))
    with pytest.raises(UserError, match="conv_seg.*shape mismatch|shape mismatch.*conv_seg"):
        load_released_checkpoint(tmp_path / "daformer.pth", wrong)
    with pytest.raises(UserError, match="does not fit"):
        load_released_checkpoint(tmp_path / "daformer.pth", "daformer_mitb1")
    with pytest.raises(UserError, match="no 'ema_model"):
        torch.save({"state_dict": {k: v for k, v in sd.items() if k.startswith("model.")}}, tmp_path / "m.pth")
        load_released_checkpoint(tmp_path / "m.pth", "daformer_mitb0", which="ema_model")


def test_released_hrda_checkpoint_keeps_the_segmentation_head(tmp_path):
    """HRDA/MIC nest the DAFormer head under `decode_head.head.` beside a `scale_attention` head."""
    src = build_model(ModelConfig(name="daformer_mitb0", num_classes=16))
    head = _daformer_head_to_mmseg(src.decode_head.state_dict())
    sd = {**{f"model.backbone.{k}": v for k, v in _to_mmseg_mit(src.encoder.model.state_dict()).items()},
          **{f"model.decode_head.head.{k}": v for k, v in head.items()},
          **{f"model.decode_head.scale_attention.{k}": v.clone() for k, v in head.items()}}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "hrda.safetensors"))
    dst = load_released_checkpoint(tmp_path / "hrda.safetensors", "daformer_mitb0")
    assert dst.num_classes == 16
    _outputs_equal(src, dst)


def test_released_dacs_deeplabv2_checkpoint(tmp_path):
    """DAFormer's DLV2Head: `decode_head.aspp_modules.<i>.conv.{weight,bias}`; the ResNet keys are mmcv's."""
    src = build_model(ModelConfig(name="deeplabv2_r18", num_classes=19))
    head = {k.replace("aspp.", "aspp_modules.", 1).replace(".weight", ".conv.weight").replace(".bias", ".conv.bias"): v
            for k, v in src.decode_head.state_dict().items()}
    assert "aspp_modules.1.conv.weight" in head
    sd = {**{f"model.backbone.{k}": v for k, v in src.encoder.state_dict().items()},
          **{f"model.decode_head.{k}": v for k, v in head.items()}}
    torch.save({"state_dict": sd}, tmp_path / "dacs.pth")
    dst = load_released_checkpoint(tmp_path / "dacs.pth", "deeplabv2_r18")
    _outputs_equal(src, dst)
    with pytest.raises(UserError, match="backbone.*does not fit"):
        load_released_checkpoint(tmp_path / "dacs.pth", "deeplabv2_r50")


def test_released_deeplabv3plus_checkpoint(tmp_path):
    """mmseg's DepthwiseSeparableASPPHead names, written by hand from ours (a narrow R18 model keeps it fast)."""
    from mfmseg.models.heads.deeplabv3plus import DeepLabV3PlusHead
    from mfmseg.models.resnet import ResNetV1c
    from mfmseg.models.segmentor import Segmentor

    def make():
        enc = ResNetV1c(18, out_indices=(0, 3))
        head = DeepLabV3PlusHead([64, 512], 5, channels=32, c1_channels=8)
        return Segmentor(enc, head, num_classes=5)

    def to_mmseg(key):
        key = re.sub(r"^aspp\.branches\.", "aspp_modules.", key)
        key = re.sub(r"^aspp\.bottleneck\.", "bottleneck.", key)
        key = re.sub(r"\.(\d)\.0\.(\d)\.", lambda m: f".{m[1]}.depthwise_conv.{m[2]}.", key) if re.match(
            r"^(aspp_modules\.[1-9]|sep_bottleneck)", key) else key
        key = re.sub(r"\.(\d)\.1\.(\d)\.", lambda m: f".{m[1]}.pointwise_conv.{m[2]}.", key) if re.match(
            r"^(aspp_modules\.[1-9]|sep_bottleneck)", key) else key
        key = re.sub(r"\.0\.(weight|bias)$", r".conv.\1", key)
        return re.sub(r"\.1\.(weight|bias|running_mean|running_var|num_batches_tracked)$", r".bn.\1", key)

    src = make()
    head = {to_mmseg(k): v for k, v in src.decode_head.state_dict().items()}
    for key in ["image_pool.1.conv.weight", "aspp_modules.0.bn.running_var", "bottleneck.conv.weight",
                "aspp_modules.1.depthwise_conv.conv.weight", "aspp_modules.3.pointwise_conv.bn.bias",
                "c1_bottleneck.conv.weight", "sep_bottleneck.1.depthwise_conv.bn.weight", "conv_seg.bias"]:
        assert key in head, key
    sd = {**{f"model.backbone.{k}": v for k, v in src.encoder.state_dict().items()},
          **{f"model.decode_head.{k}": v for k, v in head.items()}}
    torch.save({"state_dict": sd}, tmp_path / "dlv3p.pth")
    dst = make()
    load_released_checkpoint(tmp_path / "dlv3p.pth", dst)
    _outputs_equal(src, dst)


def test_hf_folder_and_safetensors_imagenet_weights(tmp_path):
    src = build_model(ModelConfig(name="daformer_mitb0"))
    src.encoder.model.save_pretrained(tmp_path / "mit-b0")
    dst = build_model(ModelConfig(name="daformer_mitb0", pretrained=str(tmp_path / "mit-b0")))
    dst.decode_head.load_state_dict(src.decode_head.state_dict())
    _outputs_equal(src, dst)
    r18 = build_model(ModelConfig(name="deeplabv2_r18"))
    save_file({k: v.contiguous() for k, v in r18.encoder.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    loaded = build_model(ModelConfig(name="deeplabv2_r18", pretrained=str(tmp_path / "r18.safetensors")))
    assert all(torch.equal(v, loaded.encoder.state_dict()[k]) for k, v in r18.encoder.state_dict().items())
    with pytest.raises(UserError, match="not found"):
        build_model(ModelConfig(name="deeplabv2_r18", pretrained=str(tmp_path / "missing.pth")))


def test_wrong_architecture_and_unsafe_files(tmp_path):
    r18 = build_model(ModelConfig(name="deeplabv2_r18"))
    torch.save(r18.encoder.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(UserError, match="does not fit"):
        build_model(ModelConfig(name="deeplabv2_r50", pretrained=str(tmp_path / "r18.pth")))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="cannot read weights .*pickled code, refusing"):
        build_model(ModelConfig(name="deeplabv2_r18", pretrained=str(tmp_path / "evil.pth")))
