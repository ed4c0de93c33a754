"""Label-free metrics (issue 19) on toy predictions whose right answer is known."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mfmseg.engine.evaluation.label_free import (METRICS, class_kl, label_free_metrics, snd,
                                                 source_class_distribution, vanished_classes)
from mfmseg.engine.evaluation.select import is_better

C = 4


class Toy(torch.nn.Module):
    """Logits from the image itself: the class of a pixel is its (rounded) first channel."""
    num_classes = C

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = x[:, 0].round().long().clamp(0, C - 1)
        if self.kind == "positional":  # ignores the image: class = column quarter (not mirror-symmetric)
            cols = torch.arange(x.shape[-1]) * C // x.shape[-1]
            cls = cols.expand_as(cls)
        if self.kind in ("collapsed", "collapsed_unsure"):
            cls = torch.zeros_like(cls)
        logits = F.one_hot(cls, C).permute(0, 3, 1, 2).float()
        if self.kind == "uniform":
            return torch.zeros_like(logits)
        return logits * (1.5 if self.kind == "collapsed_unsure" else 20.0)


def _images(n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, C, (1, 3, 16, 16), generator=g).float() for _ in range(n)]


def _metrics(kind: str, teacher: str = "good") -> dict:
    return label_free_metrics(Toy(kind), _images(), teacher=Toy(teacher), source_distribution=[0.25] * C,
                              threshold=0.9)


KINDS = ("good", "uniform", "collapsed", "collapsed_unsure")


def test_a_confident_diverse_prediction_scores_best_on_every_metric_but_snd():
    scores = {kind: _metrics(kind) for kind in KINDS}
    good = scores["good"]
    # the toy images' classes are about (not exactly) equally frequent: IM near 1, KL to uniform near 0
    assert good["entropy"] == pytest.approx(0, abs=1e-6) and good["im"] == pytest.approx(1, abs=1e-3)
    assert good["confident"] == 1 and good["agreement"] == 1 and good["class_kl"] == pytest.approx(0, abs=1e-3)
    assert good["vanished"] == []
    for metric in ("entropy", "im", "confident", "agreement", "class_kl"):
        for kind in KINDS[1:]:
            assert not is_better(metric, scores[kind][metric], good[metric]), (metric, kind)


def test_collapse_is_worst_for_the_distribution_metrics_and_invisible_to_entropy():
    scores = {kind: _metrics(kind) for kind in KINDS}
    for kind in ("collapsed", "collapsed_unsure"):
        assert scores[kind]["im"] == pytest.approx(0, abs=1e-6)  # the worst IM of any prediction
        assert scores[kind]["class_kl"] > 5 and scores[kind]["vanished"] == [1, 2, 3]
    # a confidently collapsed model is as "good" as the right one by entropy and confidence: why they are not
    # enough alone (docs/label_free.md)
    assert scores["collapsed"]["entropy"] == pytest.approx(0, abs=1e-6) and scores["collapsed"]["confident"] == 1
    assert scores["uniform"]["entropy"] == pytest.approx(1) and scores["uniform"]["confident"] == 0


def test_snd_rewards_dense_predictions_and_so_cannot_see_a_collapse():
    """Saito et al.'s SND is the entropy of each sample's neighbourhood distribution: one point for everything
    is the densest possible set, so a collapse scores log(N-1), above any clustered prediction."""
    assert _metrics("collapsed")["snd"] > _metrics("good")["snd"]
    same = torch.ones(10, 3) / 3
    assert snd(same) == pytest.approx(math.log(9))
    two = torch.cat([F.one_hot(torch.zeros(5, dtype=torch.long), 3), F.one_hot(torch.ones(5, dtype=torch.long), 3)])
    assert snd(two.float()) == pytest.approx(math.log(4), rel=1e-3)  # 4 same-class neighbours each


def test_flip_consistency_sees_a_model_that_ignores_the_image():
    assert _metrics("good")["flip_consistency"] == 1.0
    assert _metrics("positional")["flip_consistency"] == 0.0  # every column quarter lands on its mirror's class


def test_agreement_is_the_share_of_pixels_where_teacher_and_student_agree():
    got = _metrics("good", teacher="collapsed")["agreement"]
    want = sum(float((img[:, 0] == 0).float().mean()) for img in _images()) / len(_images())
    assert got == pytest.approx(want)


def test_class_kl_and_vanished_classes():
    assert class_kl([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0, abs=1e-9)
    assert class_kl([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(5), rel=1e-4)
    assert vanished_classes([0.6, 0.398, 0.002], [0.999, 0.001, 0.0]) == [1]  # class 2 was too rare to count


def test_source_distribution_from_the_rcs_statistics_file_format():
    stats = [{"0": 30, "2": 10, "file": "a.png"}, {"0": 10, "19": 5, "file": "b.png"}]
    assert source_class_distribution(stats, 3) == [0.8, 0.0, 0.2]
    assert source_class_distribution([], 3) is None


def test_every_metric_has_a_direction_and_modes_are_restored():
    assert set(METRICS) == {"entropy", "im", "confident", "flip_consistency", "agreement", "snd", "class_kl"}
    model, teacher = Toy("good").train(), Toy("good").eval()
    label_free_metrics(model, _images(1), teacher=teacher)
    assert model.training and not teacher.training
