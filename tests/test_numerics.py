"""train.deterministic: strict determinism (no warn_only) with the cuBLAS setting, and one error line naming a
kernel that has no deterministic implementation (torch's own alert, as its CUDA kernels raise it); eval.amp: the
evaluation dtype and what it changes."""

import os

import pytest
import torch
from torch._prims_common import alert_not_deterministic

from mfmseg import cli
from mfmseg.config import ModelConfig, load_config
from mfmseg.engine.evaluation.evaluate import evaluate
from mfmseg.engine.evaluation.inference import infer_labels
from mfmseg.engine.runtime.numerics import eval_autocast_dtype, set_numerics
from mfmseg.errors import UserError, user_message
from mfmseg.models.zoo import build_model
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


@pytest.mark.parametrize("train_amp,eval_amp,device,expected", [
    ("bf16", "train", "cuda", torch.bfloat16),  # the default: the training dtype on CUDA
    ("fp16", "train", "cuda:1", torch.float16),
    ("none", "train", "cuda", None),
    ("bf16", "train", "cpu", None),  # CPU keeps fp32 unless asked
    ("fp16", "train", "cpu", None),  # an fp16-trained checkpoint still evaluates on a CPU
    ("none", "bf16", "cpu", torch.bfloat16),
    ("bf16", "none", "cuda", None),
])
def test_eval_amp_resolves_to_the_training_dtype_on_cuda(train_amp, eval_amp, device, expected):
    cfg = load_config("synthetic_dacs", [f"train.amp={train_amp}", f"eval.amp={eval_amp}"])
    assert load_config("synthetic_dacs").eval.amp == "train"
    assert eval_autocast_dtype(cfg, torch.device(device)) == expected


def test_eval_amp_fp16_on_cpu_and_a_misspelt_value_are_one_line():
    with pytest.raises(UserError, match="eval.amp=fp16 needs a CUDA device"):
        eval_autocast_dtype(load_config("synthetic_dacs", ["eval.amp=fp16"]), "cpu")
    with pytest.raises(UserError, match="eval.amp"):
        load_config("synthetic_dacs", ["eval.amp=bf32"])


class _Images(torch.utils.data.Dataset):
    has_labels = True

    def __init__(self, imgs, labels):
        self.imgs, self.labels = imgs, labels

    def __len__(self):
        return len(self.imgs)

    def __getitem__(self, i):
        return {"img": self.imgs[i], "label": self.labels[i]}


def test_bf16_evaluation_runs_in_bf16_and_agrees_with_fp32():
    """A tiny random network scored against its own fp32 predictions (fp32 mIoU 100 by construction): under
    eval.amp=bf16 its layers really compute in bf16 and the mIoU stays close; the labels are its argmax on float
    logits, so bf16 rounding moves only pixels near a tie."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="daformer_mitb0", decoder_channels=32)).eval()
    imgs = torch.randn(2, 3, 64, 128)
    labels = [infer_labels(model, img[None], (64, 128))[0].long() for img in imgs]
    data, cfg = _Images(imgs, labels), load_config("synthetic_dacs", ["eval.amp=bf16"]).eval
    seen = []
    hook = model.decode_head.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    fp32 = evaluate(model, data, cfg, progress=False)
    bf16 = evaluate(model, data, cfg, progress=False, autocast_dtype=torch.bfloat16)
    hook.remove()
    assert seen == [torch.float32] * 2 + [torch.bfloat16] * 2
    assert fp32["mIoU"] == pytest.approx(100.0)
    assert 90.0 <= bf16["mIoU"] <= 100.0
