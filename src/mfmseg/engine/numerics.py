"""Process-wide numerics of a run: strict determinism (`train.deterministic`) or TF32 matmuls on CUDA.

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

CUBLAS_WORKSPACE = ":4096:8"


def set_numerics(device: torch.device, deterministic: bool) -> None:
    """Call before the model is built: strict determinism when asked, else TF32 matmuls and convolutions on CUDA
    (on Ampere and later ~8x the fp32 matmul rate, at a 10-bit mantissa inside the product)."""
    if deterministic and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(deterministic)  # the config decides, also for a second run in a process
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic

