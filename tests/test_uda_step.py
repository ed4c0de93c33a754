"""The whole training step on a tiny MiT-B0 DAFormer: every method combination, determinism, NaN detection."""

from __future__ import annotations

import pytest
import torch

from mfmseg.config import FDConfig, MFMConfig, MICConfig, UDAConfig
from mfmseg.errors import UserError
from mfmseg.models.segmentor import Segmentor
from mfmseg.uda.step import UDAStep
from test_uda_helpers import make_batch, tiny_student

SMALL_MFM = dict(enabled=True, embed_dim=32, num_heads=4, grid=4)


def _cfg(method: str) -> UDAConfig:
    fd_on = method == "dacs+fd"
    cfg = UDAConfig(method="source_only" if method.startswith("source_only") else "dacs",
                    fd=FDConfig(enabled=fd_on), pseudo_threshold=0.05, pseudo_margins=[4, 8, 0, 0])
    if method == "dacs+mic":
        cfg.mic = MICConfig(enabled=True, block_size=16)
    if "mfm" in method:
        cfg.mfm = MFMConfig(domain=method.rsplit("_", 1)[-1], **SMALL_MFM)
    return cfg


COMBOS = {
    "source_only": {"loss_src"},
    "source_only+mfm_source": {"loss_src", "loss_mfm_src"},
    "dacs": {"loss_src", "loss_mix", "pseudo_q"},
    "dacs+fd": {"loss_src", "loss_fd", "loss_mix", "pseudo_q"},
    "dacs+mic": {"loss_src", "loss_mix", "loss_mic", "pseudo_q"},
    "dacs+mfm_target": {"loss_src", "loss_mix", "loss_mfm", "pseudo_q"},
    "dacs+mfm_source": {"loss_src", "loss_mix", "loss_mfm_src", "pseudo_q"},
    "dacs+mfm_both": {"loss_src", "loss_mix", "loss_mfm", "loss_mfm_src", "pseudo_q"},
    "dacs+mfm_mixed": {"loss_src", "loss_mix", "loss_mfm", "pseudo_q"},
}


def _run(method: str, seed: int = 0, iteration: int = 0, **kw):
    student = tiny_student(seed=seed)
    step = UDAStep(student, _cfg(method), crop_hw=(64, 64), device="cpu")
    out = step.train_step(make_batch(seed), iteration, generator=torch.Generator().manual_seed(seed), **kw)
    return step, out


def _grads(module):
    return [p.grad for p in module.parameters()]


@pytest.mark.parametrize("method", list(COMBOS))
def test_every_combination_gives_finite_losses_and_the_right_gradients(method):
    step, (losses, visuals) = _run(method)
    assert set(losses) == COMBOS[method] and visuals is None
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    for part in (step.student.encoder, step.student.decode_head):
        assert all(g is not None for g in _grads(part)) and any(g.abs().sum() > 0 for g in _grads(part))
    rebuilder = step.terms["mfm"].rebuilder if "mfm" in step.terms else None
    if rebuilder is not None:
        assert all(g is not None and g.abs().sum() > 0 for g in _grads(rebuilder))
        assert not any(k.startswith("rebuilder") for k in step.student.state_dict())
    imnet = step.terms["fd"].imnet if "fd" in step.terms else None
    for frozen in (step.teacher, imnet):
        if frozen is not None:
            assert all(g is None and not p.requires_grad for p, g in zip(frozen.parameters(), _grads(frozen)))
    assert (step.teacher is None) == method.startswith("source_only")
    assert (imnet is not None) == (method == "dacs+fd")
    assert step.param_parts() == ([] if rebuilder is None else [("rebuilder", rebuilder, 2e-4)])
    trained = {id(p) for p in step.parameters() if p.requires_grad}
    assert trained == {id(p) for p in step.student.parameters()} | {id(p) for _, m, _ in step.param_parts()
                                                                   for p in m.parameters()}


def test_deterministic_under_a_seed():
    a_step, (a, _) = _run("dacs+mfm_both", seed=3)
    b_step, (b, _) = _run("dacs+mfm_both", seed=3)
    assert a == b
    for ga, gb in zip(_grads(a_step.student), _grads(b_step.student)):
        assert torch.equal(ga, gb)
    _, (c, _) = _run("dacs+mfm_both", seed=4)
    assert c != a


def test_ema_runs_first_with_the_reference_coefficient():
    student = tiny_student()
    step = UDAStep(student, _cfg("dacs"), crop_hw=(64, 64), device="cpu")
    before = [p.detach().clone() for p in step.teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)  # as if the optimiser had stepped
    step.train_step(make_batch(), 3, generator=torch.Generator().manual_seed(0))  # a = 0.75
    for t, old, s in zip(step.teacher.parameters(), before, student.parameters()):
        assert torch.allclose(t, 0.75 * old + 0.25 * s)


def test_nan_loss_raises_before_backward():
    step = UDAStep(tiny_student(), _cfg("dacs"), crop_hw=(64, 64), device="cpu")
    batch = make_batch()
    batch["src_img"][0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="loss loss_src is NaN/inf at iteration 7"):
        step.train_step(batch, 7)
    assert all(g is None for g in _grads(step.student))


def test_visuals_are_cpu_tensors_of_image_size():
    _, (_, visuals) = _run("dacs+mfm_target", return_visuals=True)
    want = {"src_img", "src_label", "tgt_img", "pseudo_label", "mixed_img", "mixed_label", "mfm_mask", "mfm_pred",
            "tgt_pred"}
    assert set(visuals) == want
    for name, v in visuals.items():
        assert v.device.type == "cpu" and v.shape[0] == 2 and tuple(v.shape[-2:]) == (64, 64), name
    assert set(visuals["mfm_mask"].unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("domain,passes", [("target", 3), ("mixed", 2)])
def test_mfm_on_the_mixed_image_shares_the_mixed_encoder_pass(domain, passes, monkeypatch):
    """The paper's MFM needs its own student encoder pass on the target; domain=mixed reuses the ClassMix one."""
    calls = []
    original = Segmentor.encode
    monkeypatch.setattr(Segmentor, "encode", lambda self, x: calls.append(self) or original(self, x))
    step, _ = _run(f"dacs+mfm_{domain}")
    assert sum(c is step.student for c in calls) == passes


def test_visuals_do_not_change_training():
    _, (a, _) = _run("dacs+mfm_target", seed=1)
    step, (b, _) = _run("dacs+mfm_target", seed=1, return_visuals=True)
    assert a == b and step.student.training


def _train(method: str, steps: int, autocast_dtype=None) -> tuple[UDAStep, list[dict]]:
    """`steps` optimiser steps from the same initialisation and data, in fp32 or under autocast."""
    step = UDAStep(tiny_student(), _cfg(method), crop_hw=(64, 64), device="cpu")
    opt = torch.optim.AdamW([p for p in step.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for i in range(steps):
        torch.manual_seed(100 + i)  # dropout draws
        opt.zero_grad(set_to_none=True)
        losses, _ = step.train_step(make_batch(i), i, generator=torch.Generator().manual_seed(i),
                                    autocast_dtype=autocast_dtype)
        opt.step()
        history.append(losses)
    return step, history


def _moved(step: UDAStep, init: UDAStep) -> torch.Tensor:
    """How far the student and Rebuilder moved from the initialisation, as one flat vector."""
    params = [*step.student.parameters(), *step.terms["mfm"].parameters()]
    start = [*init.student.parameters(), *init.terms["mfm"].parameters()]
    return torch.cat([(p.detach() - q.detach()).flatten() for p, q in zip(params, start)])


def test_bf16_autocast_follows_fp32_within_tolerance():
    """Mixed precision must not change what is learnt: the same steps in fp32 and bf16 give losses within a few
    percent, and student and Rebuilder move the same way."""
    init, _ = _train("dacs+mfm_target", 0)
    fp32, fp32_losses = _train("dacs+mfm_target", 3)
    bf16, bf16_losses = _train("dacs+mfm_target", 3, autocast_dtype=torch.bfloat16)
    for a, b in zip(fp32_losses, bf16_losses):
        assert set(a) == set(b)
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=0.05, abs=0.02), key
    assert torch.cosine_similarity(_moved(fp32, init), _moved(bf16, init), dim=0) > 0.95


def test_state_dict_round_trip_and_mismatch():
    step, _ = _run("dacs+mfm_target")
    state = step.state_dict()
    assert set(state) == {"student", "teacher", "rebuilder"}  # the checkpoint sections, on-disk names
    other = UDAStep(tiny_student(seed=9), _cfg("dacs+mfm_target"), crop_hw=(64, 64), device="cpu")
    other.load_state_dict(state)
    for part in state:
        for (k, x), y in zip(other.state_dict()[part].items(), state[part].values()):
            assert torch.equal(x, y), f"{part}.{k}"
    with pytest.raises(UserError, match="no rebuilder state"):
        other.load_state_dict({**state, "rebuilder": None})


class CountingScaler:
    """Stands in for torch.amp.GradScaler on CPU: every backward must go through `scale`."""

    def __init__(self, factor: float = 1024.0) -> None:
        self.factor, self.calls = factor, 0

    def scale(self, loss):
        self.calls += 1
        return loss * self.factor


def test_every_backward_goes_through_the_scaler():
    scaler = CountingScaler()
    scaled_step, _ = _run("dacs+mfm_target", scaler=scaler)
    plain_step, _ = _run("dacs+mfm_target")
    assert scaler.calls == 3  # source, mixed, MFM
    for gs, gp in zip(_grads(scaled_step.student), _grads(plain_step.student)):
        assert torch.allclose(gs, gp * 1024.0, rtol=1e-4, atol=1e-6)


def test_pseudo_q_is_logged_even_when_margins_cover_the_crop():
    cfg = _cfg("dacs")
    cfg.pseudo_margins = [15, 120, 0, 0]  # the 512-crop rows on a 64 px crop: every pixel is a margin
    step = UDAStep(tiny_student(), cfg, crop_hw=(64, 64), device="cpu")
    losses, _ = step.train_step(make_batch(), 0, generator=torch.Generator().manual_seed(0))
    assert losses["pseudo_q"] == 1.0  # τ = 0.05: every pixel is confident


def test_global_rng_path_is_deterministic_when_seeded():
    """The trainer passes no generator and seeds torch's global RNG per iteration instead."""
    results = []
    for _ in range(2):
        step = UDAStep(tiny_student(), _cfg("dacs+mic"), crop_hw=(64, 64), device="cpu")
        torch.manual_seed(11)
        results.append(step.train_step(make_batch(), 0)[0])
    assert results[0] == results[1]
