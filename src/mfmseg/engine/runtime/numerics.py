"""Process-wide numerics of a run: strict determinism (`train.deterministic`) or TF32 matmuls on CUDA, and the
autocast dtypes of training (`train.amp`) and evaluation (`eval.amp`).

Determinism is all or nothing: `warn_only=True` would let a kernel without a deterministic implementation
(bilinear-upsample backward, adaptive-pool backward, SDPA backward on CUDA) run with a warning, and a resumed run
would then not continue exactly. cuBLAS needs `CUBLAS_WORKSPACE_CONFIG` for deterministic matmuls; it is read
when a cuBLAS handle is created (at the first CUDA matmul), so the trainer sets it before building the model.
Strict mode is slower (deterministic kernels, no TF32). An op with no deterministic kernel becomes one error
naming it (`errors.user_message`).
"""

from __future__ import annotations

import os

import torch

from mfmseg.config import Config
from mfmseg.errors import UserError

CUBLAS_WORKSPACE = ":4096:8"
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def set_numerics(device: torch.device, deterministic: bool) -> None:
    """Call before the model is built: strict determinism when asked, else TF32 matmuls and convolutions on CUDA
    (on Ampere and later ~8x the fp32 matmul rate, at a 10-bit mantissa inside the product)."""
    if deterministic and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    # the config decides, also for a second run in a process. The call imports torch._inductor (~3 s at every
    # start) to set its flag too; that flag's default is False, so off -> off is skipped.
    if deterministic or torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(deterministic)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic


def eval_autocast_dtype(cfg: Config, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of evaluation, predict and training panels. `eval.amp=train` is the training dtype on
    CUDA (a bf16-trained model evaluates in bf16 at its training speed instead of fp32) and fp32 elsewhere: CPU
    autocast is emulated on most CPUs (slower, not faster) and CPU results stay what they were. An explicit
    `none|bf16|fp16` is taken as given; fp16 needs CUDA, as for training."""
    device = torch.device(device)
    if cfg.eval.amp == "train":
        return AMP_DTYPES[cfg.train.amp] if device.type == "cuda" else None
    if cfg.eval.amp == "fp16" and device.type != "cuda":
        raise UserError("eval.amp=fp16 needs a CUDA device; use eval.amp=bf16 (or none) on CPU")
    return AMP_DTYPES[cfg.eval.amp]


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to `dtype` on the device's type; a context that changes nothing when `dtype` is None."""
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)
