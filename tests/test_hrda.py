"""HRDA: multi-resolution features, the scale-attention fusion, its loss, sliding detail inference, the UDA step,
training / export / released checkpoints and config validation. Tiny: MiT-B0, 128² crops, 64² detail windows."""

import json
import re

import pytest
import torch
import torch.nn.functional as F

from mfmseg.cli import main
from mfmseg.config import Config, HRDAConfig, ModelConfig, UDAConfig, load_config
from mfmseg.engine.evaluation.export import load_inference_model
from mfmseg.engine.training.optim import param_groups
from mfmseg.errors import UserError
from mfmseg.models.hrda import HRDALogits, HRDASegmentor, MultiResFeatures, draw_box
from mfmseg.models.released import load_released_checkpoint
from mfmseg.models.segmentor import weighted_ce
from mfmseg.models.sliding import window_starts
from mfmseg.models.zoo import build_model
from mfmseg.uda.step import UDAStep
from test_uda_helpers import make_batch
from test_weights import _daformer_head_to_mmseg, _to_mmseg_mit

HR = [64, 64]
TINY_HRDA = HRDAConfig(enabled=True, hr_crop=HR, attention_embed_dim=16, detail_stride=[32, 32])


def tiny_hrda(seed: int = 0, hrda: HRDAConfig = TINY_HRDA) -> HRDASegmentor:
    torch.manual_seed(seed)
    return build_model(ModelConfig(name="daformer_mitb0", decoder_channels=16, hrda=hrda))


def up2(t):
    return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)


# ---- features, boxes, fusion -----------------------------------------------------------------------------------
def test_training_features_and_logits_have_the_two_scales_and_an_aligned_box():
    model = tiny_hrda().eval()  # no drop-path: the detail features can be compared with the window's
    torch.manual_seed(1)
    x = torch.randn(2, 3, 128, 128)
    feats = model.encode(x)
    assert isinstance(feats, MultiResFeatures)
    assert [f.shape[-1] for f in feats.context] == [16, 8, 4, 2]  # the crop at 0.5 = 64²
    assert [f.shape[-1] for f in feats.detail] == [16, 8, 4, 2]  # a 64² full-scale window
    y1, y2, x1, x2 = feats.box
    assert y2 - y1 == 64 and x2 - x1 == 64 and y1 % 8 == 0 and x1 % 8 == 0
    torch.testing.assert_close(feats.detail[0], model.encoder(x[:, :, y1:y2, x1:x2])[0])
    out = model.decode(feats)
    assert isinstance(out, HRDALogits) and out.box == feats.box and out.detail_weight == 0.1
    assert out.fused.shape == (2, 19, 32, 32) and out.detail.shape == (2, 19, 16, 16)
    boxes = {draw_box(128, 128, HR, 8) for _ in range(400)}
    corners = {b[0] for b in boxes} | {b[2] for b in boxes}
    assert corners == set(range(0, 65, 8))  # every aligned position, the last one (flush with the end) included
    assert all(0 <= b[0] and b[1] <= 128 and 0 <= b[2] and b[3] <= 128 for b in boxes)


def _decode_parts(model, feats):
    lr = model.decode_head(feats.context)
    return lr, model.decode(feats)


def test_fused_is_the_context_prediction_outside_the_window_and_follows_attention_inside():
    model = tiny_hrda().eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.manual_seed(3)
        feats = model.encode(x)
        y1, y2, x1, x2 = (v // 4 for v in feats.box)  # in fused (stride 4) coordinates
        outside = torch.ones(32, 32, dtype=torch.bool)
        outside[max(y1 - 1, 0):y2 + 1, max(x1 - 1, 0):x2 + 1] = False  # one bilinear ring touches the window
        lr, out = _decode_parts(model, feats)
        assert outside.any()
        torch.testing.assert_close(out.fused[..., outside], up2(lr)[..., outside])
        interior = (slice(y1 + 1, y2 - 1), slice(x1 + 1, x2 - 1))
        assert not torch.allclose(out.fused[(..., *interior)], up2(lr)[(..., *interior)])

        model.scale_attention.conv_seg.bias.fill_(40.0)  # attention 1: the detail prediction inside the window
        lr, out = _decode_parts(model, feats)
        torch.testing.assert_close(out.fused[(..., *interior)], out.detail[..., 1:-1, 1:-1])
        torch.testing.assert_close(out.fused[..., outside], up2(lr)[..., outside])

        model.scale_attention.conv_seg.bias.fill_(-40.0)  # attention 0: the context prediction everywhere
        lr, out = _decode_parts(model, feats)
        torch.testing.assert_close(out.fused, up2(lr))


def test_hrda_loss_is_09_fused_plus_01_detail_on_the_cropped_label_by_hand():
    g = torch.Generator().manual_seed(0)
    fused, detail = torch.randn(2, 5, 16, 16, generator=g), torch.randn(2, 5, 8, 8, generator=g)
    labels = torch.randint(0, 5, (2, 64, 64), generator=g)
    labels[:, :5] = 255
    weight = torch.rand(2, 64, 64, generator=g)
    box = (16, 48, 8, 40)
    out = HRDALogits(fused, detail, box, 0.1)

    def ce(logits, lab, w):
        logits = F.interpolate(logits, size=lab.shape[-2:], mode="bilinear", align_corners=False)
        logp = torch.log_softmax(logits, 1)
        valid = lab != 255
        nll = -logp.gather(1, lab.clamp(max=4)[:, None])[:, 0] * valid
        return (nll * w).sum() / lab.numel()

    expected = 0.9 * ce(fused, labels, weight) + 0.1 * ce(detail, labels[:, 16:48, 8:40], weight[:, 16:48, 8:40])
    model = tiny_hrda()
    torch.testing.assert_close(model.loss(out, labels, weight), expected)
    no_weight = 0.9 * ce(fused, labels, torch.ones_like(weight)) + 0.1 * ce(detail, labels[:, 16:48, 8:40],
                                                                           torch.ones(2, 32, 32))
    torch.testing.assert_close(model.loss(out, labels), no_weight)
    plain = weighted_ce(fused, labels, weight)
    torch.testing.assert_close(plain, ce(fused, labels, weight))


# ---- inference -------------------------------------------------------------------------------------------------
def test_window_starts_cover_and_end_flush():
    assert window_starts(128, 64, 32) == [0, 32, 64]
    assert window_starts(1024, 512, 256) == [0, 256, 512]
    assert window_starts(2048, 1024, 512) == [0, 512, 1024]
    assert window_starts(100, 64, 32) == [0, 32, 36]
    assert window_starts(48, 64, 32) == [0]


def test_detail_windows_cover_the_input_and_overlaps_are_averaged():
    model = tiny_hrda().eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        detail = model.slide_detail(x)  # 3×3 windows of 64², stride 32
        assert detail.shape == (1, 19, 32, 32)
        win = {(y, xx): model.decode_head(model.encoder(x[:, :, y:y + 64, xx:xx + 64]))
               for y in (0, 32, 64) for xx in (0, 32, 64)}
        atol = dict(atol=1e-4, rtol=1e-4)  # one batched encoder pass vs one per window
        torch.testing.assert_close(detail[..., :8, :8], win[0, 0][..., :8, :8], **atol)  # one window only
        torch.testing.assert_close(detail[..., :8, 8:16], (win[0, 0][..., :8, 8:] + win[0, 32][..., :8, :8]) / 2,
                                   **atol)
        centre = sum(w[..., 8 - y // 4:16 - y // 4, 8 - xx // 4:16 - xx // 4] for (y, xx), w in win.items()
                     if y <= 32 and xx <= 32) / 4  # rows/cols 32–63: windows starting at 0 and 32
        torch.testing.assert_close(detail[..., 8:16, 8:16], centre, **atol)
        torch.testing.assert_close(detail[..., 24:, 24:], win[64, 64][..., 8:, 8:], **atol)


def test_inference_on_a_detail_sized_input_equals_the_training_fusion_with_a_full_box():
    model = tiny_hrda().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = MultiResFeatures(model.encode_context(x), list(model.encoder(x)), (0, 64, 0, 64))
        torch.testing.assert_close(model(x), model.decode(feats).fused)
        assert model.predict(x).shape == (2, 19, 64, 64)
    with pytest.raises(UserError, match="divisible by 64"):
        model(torch.randn(1, 3, 96, 96))


# ---- the UDA step ----------------------------------------------------------------------------------------------
COMBOS = {  # every ingredient at once (each adds a loss term checked below), plain DACS, MFM's mixed variant
    "dacs": {},
    "dacs_fd_mic_mfm": {"fd": {"enabled": True}, "mic": {"enabled": True, "block_size": 16},
                        "mfm": {"enabled": True}},
    "dacs_mfm_mixed": {"mfm": {"enabled": True, "domain": "mixed"}},
}
STEP_HRDA = HRDAConfig(enabled=True, hr_crop=[32, 32], attention_embed_dim=16, detail_stride=[16, 16])  # 64² crops


def _uda_cfg(extra: dict) -> UDAConfig:
    cfg = UDAConfig(alpha=0.9, pseudo_margins=[2, 4, 2, 2], pseudo_threshold=0.1)
    cfg.fd.enabled = False
    for part, values in extra.items():
        for k, v in values.items():
            setattr(getattr(cfg, part), k, v)
    cfg.mfm.embed_dim, cfg.mfm.num_heads, cfg.mfm.grid = 32, 4, 4
    return cfg


def _run_step(extra: dict, seed: int = 0):
    student = tiny_hrda(seed, STEP_HRDA)
    step = UDAStep(student, _uda_cfg(extra), crop_hw=(64, 64), device="cpu")
    batch = make_batch(seed, b=2, h=64, w=64)
    batch["src_label"][:, 4:, :] = 13  # a thing class on the one FD cell (64² px at the context's stride 32)
    torch.manual_seed(seed)
    losses, _ = step.train_step(batch, 3)
    return student, step, losses


@pytest.mark.parametrize("combo", list(COMBOS))
def test_uda_step_with_an_hrda_student_trains_every_part(combo):
    extra = COMBOS[combo]
    student, step, losses = _run_step(extra)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    expected = {"loss_src", "loss_mix"} | ({"loss_fd"} if "fd" in extra else set()) \
        | ({"loss_mic"} if "mic" in extra else set()) | ({"loss_mfm"} if "mfm" in extra else set())
    assert expected <= set(losses)
    if "fd" in extra:
        assert losses["loss_fd"] > 0
    parts = {"encoder": student.encoder, "decode_head": student.decode_head,
             "scale_attention": student.scale_attention}
    if "mfm" in extra:
        parts["rebuilder"] = step.terms["mfm"].rebuilder
    for name, module in parts.items():
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and any(bool(g.abs().sum() > 0) for g in grads), name
        assert all(bool(torch.isfinite(g).all()) for g in grads), name
    assert not any(n.startswith("rebuilder") for n, _ in student.named_parameters())


@pytest.mark.slow
def test_uda_step_with_hrda_is_deterministic_under_a_seed():
    extra = COMBOS["dacs_fd_mic_mfm"]
    (a, _, la), (b, _, lb) = _run_step(extra), _run_step(extra)
    assert la == lb and {"loss_fd", "loss_mic", "loss_mfm"} <= set(la)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert (pa.grad is None and pb.grad is None) or torch.equal(pa.grad, pb.grad), n


def test_rebuilder_is_sized_for_the_encoder_input_and_scale_attention_gets_the_head_lr():
    student = tiny_hrda()
    cfg = _uda_cfg({"mfm": {"enabled": True}})
    step = UDAStep(student, cfg, crop_hw=(128, 128), device="cpu")
    assert step.terms["mfm"].rebuilder.level_scales == [4, 2, 1, 1]  # levels of a 64² input on a 4×4 grid
    groups = param_groups(student, Config().optim, step.param_parts())
    head = {id(p) for g in groups if g["name"].startswith("decode_head") for p in g["params"]}
    assert all(id(p) in head for p in student.scale_attention.parameters())
    assert all(g["lr"] == pytest.approx(6e-4) for g in groups if g["name"].startswith("decode_head"))


# ---- checkpoints: released HRDA/MIC, training, export -----------------------------------------------------------
def _attention_to_mmseg(sd):
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^embed_layers\.(\d)\.", r"embed_layers.\1.proj.", k)
        k = k.replace("fuse_layer.0.", "fuse_layer.conv.").replace("fuse_layer.1.", "fuse_layer.bn.")
        out[k] = v
    return out


def _fake_released_hrda(path, src):
    sd = {}
    for which, scale in (("model", 1.0), ("ema_model", 0.0)):
        backbone = _to_mmseg_mit(src.encoder.model.state_dict())
        sd.update({f"{which}.backbone.{k}": v * scale for k, v in backbone.items()})
        sd.update({f"{which}.decode_head.head.{k}": v for k, v in
                   _daformer_head_to_mmseg(src.decode_head.state_dict()).items()})
        sd.update({f"{which}.decode_head.scale_attention.{k}": v for k, v in
                   _attention_to_mmseg(src.scale_attention.state_dict()).items()})
    assert "model.decode_head.scale_attention.fuse_layer.conv.weight" in sd
    assert "model.decode_head.scale_attention.embed_layers.0.proj.weight" in sd
    torch.save({"state_dict": sd, "meta": {"iter": 40000}}, path)


def test_released_hrda_checkpoint_loads_strictly_with_its_scale_attention(tmp_path):
    src = tiny_hrda(seed=1)
    with torch.no_grad():  # non-trivial BN statistics and attention, so that a skipped key would show
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
        src.scale_attention.conv_seg.bias.uniform_(-2, 2)
    _fake_released_hrda(tmp_path / "hrda.pth", src)
    dst = load_released_checkpoint(tmp_path / "hrda.pth", tiny_hrda(seed=2))
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    cfg = Config()
    cfg.model = ModelConfig(name="daformer_mitb0", decoder_channels=16, hrda=TINY_HRDA)
    model, _ = load_inference_model(tmp_path / "hrda.pth", config=cfg)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(model.predict(x), src.eval().predict(x))
    daformer = {k: v for k, v in torch.load(tmp_path / "hrda.pth")["state_dict"].items()
                if "scale_attention" not in k}
    torch.save({"state_dict": daformer}, tmp_path / "no_att.pth")
    with pytest.raises(UserError, match="scale_attention"):
        load_released_checkpoint(tmp_path / "no_att.pth", tiny_hrda())


HRDA_TRAIN = ["model.hrda.enabled=true", "model.hrda.hr_crop=[64,64]", "model.hrda.detail_stride=[32,32]",
              "model.hrda.attention_embed_dim=16", "model.decoder_channels=16",
              "data.source.resize=[256,128]", "data.target.resize=[256,128]", "data.val.resize=[256,128]",
              "data.source.crop=[128,128]", "data.target.crop=[128,128]", "uda.mfm.enabled=true",
              "uda.mfm.embed_dim=32", "uda.mfm.num_heads=4", "uda.mfm.grid=4", "uda.mic.enabled=true",
              "uda.mic.block_size=16", "uda.fd.enabled=true", "uda.pseudo_margins=[2,8,2,2]", "train.max_iters=2",
              "train.eval_interval=2", "train.panel_interval=2", "eval.mode=slide", "eval.window=[128,128]",
              "eval.stride=[64,64]"]


@pytest.mark.slow
def test_hrda_trains_end_to_end_then_evaluates_and_exports(tmp_path, tiny_overrides):
    from mfmseg.engine.training.trainer import train

    wd = tmp_path / "hrda"
    summary = train(load_config("synthetic_dacs", tiny_overrides(wd, *HRDA_TRAIN)))
    on_disk = json.loads((wd / "summary.json").read_text())
    assert on_disk["iters"] == 2 and on_disk["mIoU"] == summary["mIoU"]
    rows = [json.loads(r) for r in (wd / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert all({"loss_src", "loss_mix", "loss_mic", "loss_mfm", "loss_fd"} <= set(r) for r in train_rows)
    assert (wd / "panels" / "iter_000002.png").stat().st_size > 0

    assert main(["export", str(wd / "latest.pth"), "--out", str(tmp_path / "m.pth")]) == 0
    exported, cfg = load_inference_model(tmp_path / "m.pth")
    student, _ = load_inference_model(wd / "latest.pth")
    assert isinstance(exported, HRDASegmentor) and cfg.model.hrda.enabled
    keys = set(exported.state_dict())
    assert any(k.startswith("scale_attention.") for k in keys) and not any("rebuilder" in k for k in keys)
    x = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        torch.testing.assert_close(exported.predict(x), student.predict(x))
    assert main(["evaluate", str(tmp_path / "m.pth"), "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["mIoU"] == pytest.approx(summary["mIoU"])


# ---- config --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,match", [
    (["data.target.crop=[256,256]", "model.hrda.hr_crop=[512,512]"], "at least model.hrda.hr_crop"),
    (["model.hrda.crop_divisible=4"], "multiple of 8"),
    (["model.hrda.hr_crop=[500,500]"], "multiples of model.hrda.crop_divisible"),
    (["model.hrda.detail_stride=[1024,1024]"], "detail_stride"),
    (["model.hrda.hr_loss_weight=1.0"], "hr_loss_weight"),
    (["model.hrda.hr_crop=[512]"], r"\[H, W\] pairs"),
])
def test_impossible_hrda_settings_are_config_errors(overrides, match):
    with pytest.raises(UserError, match=match):
        load_config("gta2cs_hrda_mitb5", overrides)


def test_hrda_presets_follow_the_paper_and_build_errors_are_clear():
    for name in ("gta2cs_hrda_mitb5", "gta2cs_hrda_mitb5_mfm", "gta2cs_mic_hrda_mitb5", "gta2cs_mic_hrda_mitb5_mfm",
                 "syn2cs_hrda_mitb5", "syn2cs_hrda_mitb5_mfm", "syn2cs_mic_hrda_mitb5", "syn2cs_mic_hrda_mitb5_mfm"):
        cfg = load_config(name)
        assert cfg.model.hrda.enabled and cfg.model.hrda.hr_crop == [512, 512]
        assert cfg.data.source.crop == cfg.data.target.crop == [1024, 1024]
        assert cfg.data.target.resize == cfg.data.val.resize == [2048, 1024] and cfg.data.rcs.min_crop_ratio == 2.0
        assert cfg.uda.pseudo_margins == [30, 240, 30, 30] and cfg.uda.fd.enabled and cfg.uda.alpha == 0.999
        assert (cfg.eval.mode, cfg.eval.window, cfg.eval.stride) == ("slide", [1024, 1024], [512, 512])
        assert cfg.uda.mic.enabled == ("_mic_" in name) and cfg.uda.mfm.enabled == name.endswith("_mfm")
        if cfg.uda.mic.enabled:
            assert cfg.uda.mic.block_size == 64
    with pytest.raises(UserError, match="multiple of 16"):
        build_model(ModelConfig(name="deeplabv2_r18", hrda=HRDAConfig(enabled=True)))
