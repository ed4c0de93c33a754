"""train.deterministic: strict determinism (no warn_only) with the cuBLAS setting, and one error line naming a
kernel that has no deterministic implementation (torch's own alert, as its CUDA kernels raise it)."""

import os

import pytest
import torch
from torch._prims_common import alert_not_deterministic

from mfmseg import cli
from mfmseg.engine.numerics import set_numerics
from mfmseg.errors import user_message
from mfmseg.uda.step import UDAStep


def test_set_numerics_is_strict_and_the_refused_kernel_is_named(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        set_numerics(torch.device("cpu"), deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        with pytest.raises(RuntimeError) as refused:
            alert_not_deterministic("adaptive_avg_pool2d_backward_cuda")
        set_numerics(torch.device("cpu"), deterministic=False)  # the next run's config decides
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    assert user_message(refused.value).startswith(
        "train.deterministic=true, but adaptive_avg_pool2d_backward_cuda has no deterministic implementation")


@pytest.mark.slow
def test_deterministic_training_is_strict_and_names_a_kernel_without_a_deterministic_implementation(
        tmp_path, tiny_overrides, monkeypatch, capsys):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = {}

    def step_with_a_cuda_only_kernel(self, batch, iteration, **kwargs):
        seen["strict"] = (torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled())
        seen["cublas"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        alert_not_deterministic("upsample_bilinear2d_backward_out_cuda")  # warn_only would only warn here
        raise AssertionError("strict determinism let a non-deterministic kernel run")

    monkeypatch.setattr(UDAStep, "train_step", step_with_a_cuda_only_kernel)
    try:
        code = cli.main(["train", "synthetic_dacs", *tiny_overrides(tmp_path / "run", "train.deterministic=true",
                                                                    "train.device=cpu")])
    finally:
        torch.use_deterministic_algorithms(False)
    assert seen == {"strict": (True, False), "cublas": ":4096:8"}
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: train.deterministic=true, but upsample_bilinear2d_backward_out_cuda has no deterministic "
        "implementation on this device: set train.deterministic=false (a resumed run then continues only "
        "approximately)")
