"""Run an exported `.onnx` segmentor in onnxruntime behind the same small contract as a PyTorch Segmentor.

`engine.evaluation.inference` (whole image, sliding windows, banded argmax) and therefore `predict` and `evaluate`
only ask a model for `predict(x) -> logits at x's size`, `size_multiple` and `num_classes` (`inference.Predictor`).
`OnnxSegmentor` provides exactly that around an onnxruntime session, so the ONNX path reuses every line of that
machinery instead of keeping a second copy that could drift. What it adds is what a graph cannot say by itself:
its metadata (classes, normalisation, size multiple, the training config) and one clear error for a bad size,
where onnxruntime would fail deep inside a Reshape with a message no user can act on.

Only `onnxruntime` (and numpy) is needed here: a deployment box installs the runtime, not the exporter.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mfmseg.config import Config, config_from_dict
from mfmseg.errors import UserError
from mfmseg.models.sliding import sliding_window_mean

ONNX_FORMAT = "mfmseg-onnx-v1"
EXTRA_HINT = "install the extra: pip install 'mfmseg[onnx]'"


def require_modules(names: tuple[str, ...], purpose: str) -> None:
    """Import the optional packages `purpose` needs, or one line naming the extra that brings them."""
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if missing:
        raise UserError(f"{purpose} needs {', '.join(missing)}: {EXTRA_HINT}")


def read_metadata(path: str | Path) -> dict[str, str]:
    """The file's `metadata_props` as onnxruntime reads them (no `onnx` package needed)."""
    return dict(_session(path, "cpu").get_modelmeta().custom_metadata_map)


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError(f"--device {device}: this onnxruntime has no CUDA provider (pip install "
                            f"onnxruntime-gpu), or use --device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(path: str | Path, device: str, threads: int | None = None):
    """An onnxruntime session; `threads` defaults to torch's intra-op count, so one knob (OMP_NUM_THREADS,
    torch.set_num_threads) sizes both runtimes."""
    require_modules(("onnxruntime",), "running an .onnx model")
    import onnxruntime as ort

    if not Path(path).is_file():
        raise UserError(f"ONNX model not found: {path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only: its warnings are about graph fusions, not the user's input
    try:
        return ort.InferenceSession(str(path), options, providers=_providers(device))
    except UserError:
        raise
    except Exception as e:  # onnxruntime raises its own exception types for unreadable files
        raise UserError(f"cannot read ONNX model {path}: {str(e).splitlines()[0][:200]}") from None


def parse_size(text: str) -> tuple[int, int] | None:
    """'512x1024' -> (512, 1024); '' -> None (a graph with dynamic height and width)."""
    return tuple(int(v) for v in text.split("x")) if text else None  # type: ignore[return-value]


class OnnxSegmentor:
    """An exported graph behind `inference.Predictor`: `predict(x)` = logits at x's size.

    A labels graph (`--labels`: uint8 ids out) gives one-hot scores, so sliding windows vote and the banded
    bilinear argmax returns its labels; `fixed_size` graphs (HRDA) see padded or windowed inputs of that size."""

    training = False  # evaluate() toggles train/eval: a graph has no training mode

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = _session(path, device, threads)
        self.meta = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.meta.get("mfmseg_format") != ONNX_FORMAT:
            raise UserError(f"{path} is not an mfmseg ONNX export (no '{ONNX_FORMAT}' metadata): export it with "
                            f"mfmseg export CKPT --format onnx")
        self.classes: list[str] = json.loads(self.meta["classes"])
        self.num_classes = len(self.classes)
        self.size_multiple = int(self.meta["size_multiple"])
        self.fixed_size = parse_size(self.meta.get("fixed_size", ""))
        self.output = self.meta["output"]
        self.input_name = self.session.get_inputs()[0].name

    def eval(self) -> "OnnxSegmentor":
        return self

    def train(self, mode: bool = True) -> "OnnxSegmentor":
        return self

    def config(self) -> Config:
        """The training run's resolved config (resize, windows, classes), as the .pth export carries it."""
        return config_from_dict(json.loads(self.meta["config"]), str(self.path))

    def check_size(self, h: int, w: int) -> None:
        if self.fixed_size is not None and (h, w) != self.fixed_size:
            raise UserError(f"{self.path} was exported for {self.fixed_size[0]}×{self.fixed_size[1]} inputs only, "
                            f"got {h}×{w}")
        if h % self.size_multiple or w % self.size_multiple:
            raise UserError(f"input size {h}×{w} is not divisible by {self.size_multiple} (the model's "
                            f"size_multiple): pad or resize it")

    def run(self, x: np.ndarray) -> np.ndarray:
        """The raw graph: N×3×H×W float32 (normalised) -> its output (logits or uint8 labels)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise UserError(f"expected an N×3×H×W image batch, got shape {tuple(x.shape)}")
        self.check_size(*x.shape[-2:])
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def _scores(self, x: Tensor) -> Tensor:
        out = torch.from_numpy(self.run(x.detach().float().cpu().numpy()))
        if self.output == "labels":  # one-hot: windows vote, the bilinear argmax keeps the labels
            out = torch.nn.functional.one_hot(out.long(), self.num_classes).permute(0, 3, 1, 2).float()
        return out.to(x.device)

    def predict(self, x: Tensor) -> Tensor:
        """Float scores at x's size (N×C×H×W); a fixed-size graph sees x padded up to, or windowed at, its size."""
        if self.fixed_size is None:
            return self._scores(x)
        fh, fw = self.fixed_size
        h, w = x.shape[-2:]
        padded = torch.nn.functional.pad(x, (0, max(0, fw - w), 0, max(0, fh - h)))
        if padded.shape[-2:] == (fh, fw):
            return self._scores(padded)[..., :h, :w]
        return sliding_window_mean(self._scores, padded, (fh, fw), (fh // 2, fw // 2), batch_size=1)[..., :h, :w]


def load_onnx_model(path: str | Path, device: str = "cpu", which: str = "student") -> tuple[OnnxSegmentor, Config]:
    """(OnnxSegmentor, the config it was trained with) for `predict` and `evaluate`."""
    if which != "student":
        raise UserError(f"{path} is an ONNX export: it holds the student only, --which {which} does not apply")
    model = OnnxSegmentor(path, device)
    return model, model.config()
