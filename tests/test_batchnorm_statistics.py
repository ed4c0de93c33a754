"""Who moves BatchNorm running statistics: activation checkpointing (once, not twice), `model.norm_eval` (never in
the encoder), `uda.target_bn_pass` (only the statistics) and MFM's token-mask strategies (issue 16)."""

from __future__ import annotations

import copy

import pytest
import torch

from mfmseg.config import Config, FDConfig, MFMConfig, ModelConfig, UDAConfig, validate
from mfmseg.errors import UserError
from mfmseg.models.batchnorm import batchnorms, bn_eval_mode, set_bn_eval
from mfmseg.models.zoo import build_model
from mfmseg.uda.mfm import mask_weights
from mfmseg.uda.pseudo import normalised_entropy
from mfmseg.uda.rebuilder import Rebuilder
from mfmseg.uda.step import UDAStep
from test_uda_helpers import make_batch

BN_NETS = {"deeplabv2_r18": {}, "daformer_efflite0": dict(decoder_channels=16)}  # every BatchNorm encoder family


def _net(name: str, norm_eval: bool = False):
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, norm_eval=norm_eval, **BN_NETS[name]))


def _stats(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _uda_step(net, **uda) -> UDAStep:
    cfg = UDAConfig(fd=FDConfig(enabled=False), pseudo_threshold=0.05, pseudo_margins=[0, 0, 0, 0], **uda)
    return UDAStep(net, cfg, crop_hw=(64, 64), device="cpu")


def _step(net, *, steps: int = 1, **uda) -> UDAStep:
    step = _uda_step(net, **uda)
    gen = torch.Generator().manual_seed(0)
    for i in range(steps):
        step.train_step(make_batch(i), i, generator=gen)
    return step


def _mfm(**kw) -> MFMConfig:
    return MFMConfig(**{"enabled": True, "embed_dim": 32, "num_heads": 4, "grid": 4, **kw})


# ---- activation checkpointing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BN_NETS))
def test_checkpointing_moves_the_statistics_once_and_keeps_the_gradients(name):
    plain, ckpt = _net(name).train(), _net(name).train()
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 64)
    for model in (plain, ckpt):
        torch.manual_seed(1)  # the same drop-connect draws (EfficientNet-Lite) in both
        model.predict(x).square().mean().backward()
    assert _equal(_stats(plain.encoder), _stats(ckpt.encoder))
    assert not _equal(_stats(plain.encoder), _stats(_net(name).encoder))  # the forward did move them
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), n


@pytest.mark.parametrize("name", list(BN_NETS))
def test_checkpointing_does_not_undo_the_frozen_encoder_statistics_of_the_mfm_pass(name):
    """The study's `freeze_encoder_bn` control with checkpointing on: the encoder statistics after a step are
    those of DACS without MFM, and MFM's (unfrozen) step gives the same statistics with checkpointing on and off."""
    def run(mfm: MFMConfig | None, checkpointing: bool) -> dict:
        net = _net(name)
        net.set_grad_checkpointing(checkpointing)
        return _stats(_step(net, mfm=mfm or MFMConfig(enabled=False)).student.encoder)

    assert _equal(run(_mfm(freeze_encoder_bn=True), True), run(None, True))
    assert _equal(run(_mfm(), True), run(_mfm(), False))


# ---- uda.mfm.encoder_bn_eval: the study's mechanism test --------------------------------------------------------
@pytest.mark.parametrize("name", list(BN_NETS))
def test_bn_eval_mode_normalises_with_the_running_statistics_for_one_pass(name):
    net, reference = _net(name).train(), _net(name).train()
    set_bn_eval(reference)  # eval-mode BatchNorm, everything else (drop-connect) as in training
    x = torch.randn(2, 3, 64, 64)
    before = _stats(net)
    with bn_eval_mode(net):
        torch.manual_seed(1)
        out = net.predict(x)
    torch.manual_seed(1)
    assert torch.equal(out, reference.predict(x))
    assert _equal(_stats(net), before)
    assert all(m.training for m in batchnorms(net))  # back in train mode: the next pass moves them again


def _mfm_step(**mfm) -> tuple[dict, dict]:
    """The encoder statistics and the logged losses after one DACS + MFM step on the BatchNorm encoder."""
    step = _uda_step(_net("daformer_efflite0"), mfm=_mfm(**mfm))
    losses, _ = step.train_step(make_batch(0), 0, generator=torch.Generator().manual_seed(0))
    return _stats(step.student.encoder), losses


def test_encoder_bn_eval_moves_no_statistics_and_changes_what_the_mfm_loss_sees():
    """Both controls leave the encoder statistics where DACS's own passes put them; only `encoder_bn_eval` also
    changes the MFM pass's normalisation (running instead of batch statistics), so its loss differs."""
    frozen_stats, frozen_losses = _mfm_step(freeze_encoder_bn=True)
    eval_stats, eval_losses = _mfm_step(encoder_bn_eval=True)
    assert _equal(eval_stats, frozen_stats)
    assert eval_losses["loss_src"] == frozen_losses["loss_src"]  # the same step up to the MFM pass
    assert eval_losses["loss_mfm"] != frozen_losses["loss_mfm"]


def test_encoder_bn_eval_refuses_activation_checkpointing():
    cfg = Config()
    cfg.uda.mfm.enabled = cfg.uda.mfm.encoder_bn_eval = cfg.train.grad_checkpointing = True
    with pytest.raises(UserError, match="encoder_bn_eval cannot run with train.grad_checkpointing"):
        validate(cfg)


# ---- model.norm_eval --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mfm", [False, True], ids=["dacs", "dacs_mfm"])
def test_norm_eval_freezes_the_encoder_statistics_and_trains_the_rest(mfm):
    net = _net("daformer_efflite0", norm_eval=True)
    encoder0, decoder0 = _stats(net.encoder), _stats(net.decode_head)
    step = _step(net, steps=2, mfm=_mfm(enabled=mfm))
    assert _equal(_stats(step.student.encoder), encoder0)
    assert not _equal(_stats(step.student.decode_head), decoder0)
    assert all(not m.training for m in batchnorms(step.student.encoder))
    assert all(not m.training for m in batchnorms(step.teacher.encoder))
    assert any(m.training for m in batchnorms(step.student.decode_head))
    assert all(m.weight.grad is not None for m in batchnorms(step.student.encoder))  # affine weights still train


def test_norm_eval_off_is_the_default_and_moves_the_encoder_statistics():
    net = _net("daformer_efflite0")
    assert not net.norm_eval
    encoder0 = _stats(net.encoder)
    assert not _equal(_stats(_step(net).student.encoder), encoder0)


# ---- uda.target_bn_pass --------------------------------------------------------------------------------------
def test_target_bn_pass_changes_the_statistics_and_nothing_else():
    dacs, with_pass = _step(_net("daformer_efflite0")), _step(_net("daformer_efflite0"), target_bn_pass=True)
    assert not _equal(_stats(with_pass.student), _stats(dacs.student))
    for (n, p), q in zip(dacs.student.named_parameters(), with_pass.student.parameters()):
        assert torch.equal(p, q) and torch.equal(p.grad, q.grad), n  # the same gradient, no extra loss
    assert with_pass.param_parts() == [] and not with_pass.terms["target_bn"].state_dict()  # no optimiser state
    gen = [torch.Generator().manual_seed(0) for _ in range(2)]
    for step, g in zip((dacs, with_pass), gen):
        step.train_step(make_batch(5), 1, generator=g)
    assert torch.equal(gen[0].get_state(), gen[1].get_state())  # it draws nothing from the step's generator


def test_target_bn_pass_gives_the_encoder_statistics_of_mfm_at_lambda_zero():
    with_pass = _step(_net("daformer_efflite0"), target_bn_pass=True)
    lambda0 = _step(_net("daformer_efflite0"), mfm=_mfm(weight=0.0))
    assert _equal(_stats(with_pass.student.encoder), _stats(lambda0.student.encoder))


# ---- uda.mfm.mask_strategy ------------------------------------------------------------------------------------
def _half_uncertain_entropy(b: int = 2, size: int = 32) -> torch.Tensor:
    entropy = torch.full((b, size, size), 0.02)
    entropy[:, :, : size // 2] = 0.9  # the left half of every image is uncertain
    return entropy


@pytest.mark.parametrize("strategy", ["uncertain", "confident"])
def test_weighted_masks_have_exactly_the_ratio_and_follow_the_entropy(strategy):
    rb = Rebuilder([8], [1], embed_dim=32, num_heads=4, grid=8, mask_ratio=0.4)
    weights = mask_weights(_half_uncertain_entropy(), 8, strategy)
    gen = torch.Generator().manual_seed(0)
    masks = torch.stack([rb.draw_mask(2, gen, weights) for _ in range(200)]).float()
    assert (masks.sum(dim=(2, 3)) == round(0.4 * 64)).all()  # exactly the ratio, every image, every draw
    left, right = masks[..., :4].mean().item(), masks[..., 4:].mean().item()
    favoured, other = (left, right) if strategy == "uncertain" else (right, left)
    assert favoured > 0.6 and other < 0.2  # uniform masking would give 0.4 on both halves


def test_random_strategy_is_the_papers_uniform_mask():
    assert mask_weights(_half_uncertain_entropy(), 8, "random") is None
    rb = Rebuilder([8], [1], embed_dim=32, num_heads=4, grid=8, mask_ratio=0.4)
    a = rb.draw_mask(2, torch.Generator().manual_seed(3))
    b = torch.rand((2, 8, 8), generator=torch.Generator().manual_seed(3)) <= 0.4
    assert torch.equal(a, b)


def test_normalised_entropy_is_zero_when_certain_and_one_when_uniform():
    logits = torch.zeros(1, 19, 2, 2)
    logits[0, 3, 0, 0] = 100.0
    h = normalised_entropy(logits)
    assert h[0, 0, 0] < 1e-6 and torch.allclose(h[0, 1:, :].flatten(), torch.ones(2))


def test_uncertain_masking_trains_end_to_end():
    step = _step(_net("daformer_efflite0"), mfm=_mfm(mask_strategy="uncertain"))
    assert step.terms["mfm"].rebuilder.mask_token.grad is not None


@pytest.mark.parametrize("overrides, word", [
    (dict(mfm=dict(enabled=True, mask_strategy="uncertain", domain="source")), "domain=target"),
    (dict(mfm=dict(enabled=True, mask_strategy="sideways")), "mask_strategy"),
    (dict(method="source_only", target_bn_pass=True), "target_bn_pass"),
])
def test_the_new_options_refuse_what_they_cannot_do(overrides, word):
    cfg = Config()
    for key, value in overrides.items():
        if isinstance(value, dict):
            for k, v in value.items():
                setattr(getattr(cfg.uda, key), k, v)
        else:
            setattr(cfg.uda, key, value)
    with pytest.raises(UserError, match=word):
        validate(copy.deepcopy(cfg))
