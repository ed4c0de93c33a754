"""The pseudo-label accuracy diagnostic reads the target's labels for the log only: never for a loss."""

from __future__ import annotations

import torch

from mfmseg.config import MFMConfig, UDAConfig
from mfmseg.uda.pseudo import pseudo_label_accuracy
from mfmseg.uda.step import UDAStep
from test_uda_helpers import make_batch, tiny_student


def test_accuracy_over_all_and_over_confident_pixels():
    logits = torch.zeros(1, 3, 1, 4)
    logits[0, 0, 0, 0] = logits[0, 1, 0, 1] = 10.0  # pixels 0, 1 confident (class 0, class 1); 2, 3 uniform
    labels = logits.argmax(1)  # [0, 1, 0, 0]
    truth = torch.tensor([[[0, 2, 0, 255]]])  # right, wrong, right, unlabelled
    got = pseudo_label_accuracy(logits, labels, truth, threshold=0.9)
    assert got == {"pseudo_acc": 2 / 3, "pseudo_acc_conf": 1 / 2}
    assert pseudo_label_accuracy(logits, labels, torch.full_like(truth, 255), 0.9) == {}


def _step_with_target_labels(tgt_label: torch.Tensor | None):
    torch.manual_seed(0)
    student = tiny_student(seed=0)
    cfg = UDAConfig(method="dacs", pseudo_threshold=0.05,
                    mfm=MFMConfig(enabled=True, embed_dim=32, num_heads=4, grid=4))
    cfg.fd.enabled = False
    step = UDAStep(student, cfg, crop_hw=(64, 64), device="cpu")
    batch = make_batch(0)
    if tgt_label is not None:
        batch["tgt_label"] = tgt_label
    losses, _ = step.train_step(batch, 0, generator=torch.Generator().manual_seed(0))
    grads = [p.grad.clone() if p.grad is not None else None for p in step.parameters()]
    return losses, grads


def test_target_labels_change_the_logged_accuracy_and_no_gradient():
    truth = make_batch(1)["src_label"]
    without, g0 = _step_with_target_labels(None)
    right, g1 = _step_with_target_labels(truth)
    wrong, g2 = _step_with_target_labels((truth + 1) % 19)
    assert "pseudo_acc" not in without and 0 <= right["pseudo_acc"] <= 1
    assert right["pseudo_acc"] != wrong["pseudo_acc"]  # the labels are read ...
    for g in (g1, g2):  # ... and reach no loss: every gradient equal bit for bit
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(g0, g))
    assert {k: v for k, v in right.items() if not k.startswith("pseudo_acc")} == without
