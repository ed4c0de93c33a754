"""Export the student to ONNX, with its metadata, behind a parity gate against PyTorch.

Why a gate: an exporter can produce a graph that loads and runs but computes something else (a wrong resize mode,
a shape specialised to the tracing input). mmdeploy only checks mIoU within ±1 of the reference; here the file is
written only if onnxruntime (CPU) matches the PyTorch model on real street scenes (the synthetic benchmark's
target domain) at two sizes, one not square, and one with batch 2: max |Δlogit| ≤ 1e-3 and argmax agreement
≥ 99.9 %. Otherwise the export fails with one line and leaves no file (written under a temporary name, renamed
only after the gate, `files.atomic_path`).

The graph is the deployed network only: `load_inference_model` reads the checkpoint's `student` section, so no
teacher, no MFM Rebuilder and no FD copy can reach it. Inputs: N×3×H×W float32 RGB, ImageNet-normalised (mean/std
on 0–255, in the metadata); H and W are dynamic multiples of the model's `size_multiple` (the dims are declared
as `size_multiple · k`, so the graph holds no shape guard to trip on). Output: logits at the input size, or with
`labels=True` the uint8 argmax (an ArgMax + Cast appended to the gated logits graph, so both formats are
checked against the same logits). HRDA's inference places its detail windows by Python arithmetic on the input
size (`models.sliding.window_starts`): a traced graph bakes one placement in, so HRDA exports for one fixed size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mfmseg import __version__
from mfmseg.config import Config, to_dict
from mfmseg.data.labels import IMAGENET_MEAN, IMAGENET_STD
from mfmseg.data.synthetic import make_sample
from mfmseg.data.transforms import normalize
from mfmseg.engine.evaluation.evaluate import class_names, class_palette
from mfmseg.engine.evaluation.export import load_inference_model
from mfmseg.engine.evaluation.onnx_runtime import ONNX_FORMAT, OnnxSegmentor, require_modules
from mfmseg.errors import UserError
from mfmseg.files import atomic_path
from mfmseg.models.hrda import HRDASegmentor

OPSET = 18
MAX_ABS_DIFF = 1e-3  # logits; optimum uses 1e-5..3e-4 on its models, segmentation_models_pytorch 1e-5 + rtol 1e-3
MIN_AGREEMENT = 0.999  # argmax agreement over all pixels of the check images
MAX_SIDE = 8192  # the largest height / width the dynamic graph declares
MAX_BATCH = 1024
INPUT_LAYOUT = "NCHW float32 RGB, (pixel on 0-255 - mean) / std"


class DeployedSegmentor(nn.Module):
    """What the graph computes: the segmentor's `predict` (logits at the input size)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.predict(x)


@dataclass(frozen=True)
class Parity:
    """One gate check: onnxruntime vs PyTorch on a batch of `batch` images of `size`."""
    size: tuple[int, int]
    batch: int
    max_abs_diff: float
    agreement: float  # fraction of pixels with the same argmax
    labels_agreement: float | None = None  # the uint8 labels graph against PyTorch's argmax

    def passed(self) -> bool:
        labels_ok = self.labels_agreement is None or self.labels_agreement >= MIN_AGREEMENT
        return self.max_abs_diff <= MAX_ABS_DIFF and self.agreement >= MIN_AGREEMENT and labels_ok

    def describe(self) -> str:
        text = (f"{self.batch}×{self.size[0]}×{self.size[1]}: max |Δlogit| {self.max_abs_diff:.2e}, "
                f"argmax agreement {100 * self.agreement:.3f} %")
        if self.labels_agreement is not None:
            text += f", labels graph {100 * self.labels_agreement:.3f} %"
        return text


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    fixed_size: tuple[int, int] | None
    size_multiple: int
    output: str
    parity: list[Parity]

    def summary(self) -> list[str]:
        sizes = (f"fixed size {self.fixed_size[0]}×{self.fixed_size[1]}" if self.fixed_size else
                 f"dynamic batch/height/width (multiples of {self.size_multiple})")
        gate = "; ".join(p.describe() for p in self.parity)
        return [f"parity gate passed (onnxruntime CPU vs PyTorch, ≤ {MAX_ABS_DIFF:g} and ≥ "
                f"{100 * MIN_AGREEMENT:g} %): {gate}",
                f"exported ONNX (opset {OPSET}, {sizes}, output {self.output}) to {self.path}"]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_images(size: tuple[int, int], batch: int) -> Tensor:
    """Real street scenes (the synthetic benchmark's target domain), normalised: inputs with the structure the
    network was trained on, so the argmax check is not decided by near-ties on noise."""
    return torch.stack([normalize(make_sample(0, "target", i, size)[0]) for i in range(batch)])


def check_sizes(model: nn.Module, fixed_size: tuple[int, int] | None) -> list[tuple[tuple[int, int], int]]:
    """(size, batch) per gate check: a square batch of 2 and a non-square single image (both multiples of the
    model's `size_multiple`); a fixed-size graph is checked twice at its size."""
    if fixed_size is not None:
        return [(fixed_size, 2), (fixed_size, 1)]
    m = model.size_multiple
    side = m * max(1, 256 // m)
    return [((side, side), 2), ((m * max(1, 192 // m), m * max(2, 320 // m)), 1)]


def default_fixed_size(model: nn.Module, cfg: Config) -> tuple[int, int] | None:
    """None for a dynamic graph; for HRDA the evaluation size (`data.val.resize`, W×H) rounded up to its
    multiple, the size `predict` feeds it."""
    if not isinstance(model, HRDASegmentor):
        return None
    m, (w, h) = model.size_multiple, cfg.data.val.resize
    return -(-int(h) // m) * m, -(-int(w) // m) * m


def _dynamic_shapes(size_multiple: int, fixed_size: tuple[int, int] | None) -> dict:
    """The batch is always dynamic; height and width unless the graph has a fixed size (HRDA)."""
    dim = torch.export.Dim
    batch = dim("batch", min=1, max=MAX_BATCH)
    if fixed_size:
        return {"x": {0: batch}}
    rows = dim("height_blocks", min=1, max=MAX_SIDE // size_multiple)
    cols = dim("width_blocks", min=1, max=MAX_SIDE // size_multiple)
    return {"x": {0: batch, 2: size_multiple * rows, 3: size_multiple * cols}}


def trace_to_onnx(model: nn.Module, fixed_size: tuple[int, int] | None):
    """The logits graph (an `onnx.ModelProto`) from torch's dynamo exporter; an exporter failure is one line."""
    m = model.size_multiple
    example = check_images(fixed_size or (2 * m, 3 * m), 2)
    shapes = _dynamic_shapes(m, fixed_size)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" and similar notes are not the user's business
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(DeployedSegmentor(model).eval(), (example,), dynamo=True,
                                        dynamic_shapes=shapes, opset_version=OPSET, input_names=["input"],
                                        output_names=["logits"], optimize=True, verbose=False)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"torch could not export this model to ONNX ({type(e).__name__}): {first}") from e
    finally:
        quiet.setLevel(level)
    return program.model_proto


def metadata(model: nn.Module, cfg: Config, source_sha256: str, fixed_size: tuple[int, int] | None,
             output: str) -> dict[str, str]:
    """What a deployment needs to feed the graph and read its output, and where it came from."""
    n = cfg.model.num_classes
    return {"mfmseg_format": ONNX_FORMAT, "mfmseg_version": __version__, "model": cfg.model.name,
            "classes": json.dumps(class_names(n, cfg.data.classes)),
            "palette": json.dumps(class_palette(n, cfg.data.classes)),
            "mean": json.dumps(list(IMAGENET_MEAN)), "std": json.dumps(list(IMAGENET_STD)),
            "input_layout": INPUT_LAYOUT, "size_multiple": str(model.size_multiple),
            "fixed_size": f"{fixed_size[0]}x{fixed_size[1]}" if fixed_size else "", "output": output,
            "output_layout": ("N×H×W uint8 class ids at the input size" if output == "labels" else
                              "N×C×H×W float32 logits at the input size"),
            "source_sha256": source_sha256, "config": json.dumps(to_dict(cfg))}


def set_metadata(proto, meta: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def append_argmax(proto) -> None:
    """logits (N×C×H×W) -> labels (N×H×W uint8): ArgMax over classes (first maximum, as torch) + Cast."""
    import onnx
    from onnx import helper

    graph = proto.graph
    logits = graph.output[0]
    graph.node.extend([helper.make_node("ArgMax", [logits.name], ["label_ids"], axis=1, keepdims=0),
                       helper.make_node("Cast", ["label_ids"], ["labels"], to=onnx.TensorProto.UINT8)])
    labels = helper.make_tensor_value_info("labels", onnx.TensorProto.UINT8, None)
    dims = logits.type.tensor_type.shape.dim
    for i in (0, 2, 3):
        labels.type.tensor_type.shape.dim.add().CopyFrom(dims[i])
    del graph.output[:]
    graph.output.append(labels)


def _measure(model: nn.Module, runtime: OnnxSegmentor, size: tuple[int, int], batch: int) -> Parity:
    x = check_images(size, batch)
    with torch.no_grad():
        ref = model.predict(x).float().numpy()
    out = runtime.run(x.numpy())
    return Parity(size, batch, float(np.abs(out - ref).max()), float((out.argmax(1) == ref.argmax(1)).mean()))


def _labels_agreement(model: nn.Module, runtime: OnnxSegmentor, size: tuple[int, int], batch: int) -> float:
    x = check_images(size, batch)
    with torch.no_grad():
        ref = model.predict(x).argmax(1).numpy()
    return float((runtime.run(x.numpy()) == ref).mean())


def _save(proto, path: Path) -> None:
    import onnx

    onnx.save_model(proto, str(path))


def _gate(model: nn.Module, proto, meta: dict[str, str], tmp: Path, sizes, labels: bool) -> list[Parity]:
    """Write the logits graph, measure it; with `labels`, append the argmax, rewrite and measure that too."""
    set_metadata(proto, {**meta, "output": "logits"})
    _save(proto, tmp)
    runtime = OnnxSegmentor(tmp, "cpu")
    parity = [_measure(model, runtime, size, batch) for size, batch in sizes]
    if labels:
        append_argmax(proto)
        set_metadata(proto, meta)
        _save(proto, tmp)
        runtime = OnnxSegmentor(tmp, "cpu")
        parity = [Parity(p.size, p.batch, p.max_abs_diff, p.agreement,
                         _labels_agreement(model, runtime, p.size, p.batch)) for p in parity]
    return parity


def _check_request(out: Path, labels: bool, num_classes: int) -> None:
    if out.suffix.lower() != ".onnx":
        raise UserError(f"--out {out}: an ONNX export is written to a .onnx file")
    if labels and num_classes > 256:
        raise UserError(f"--labels writes uint8 ids: {num_classes} classes do not fit, export logits instead")


def export_network(model: nn.Module, meta: dict[str, str], out: str | Path, labels: bool = False,
                   fixed_size: tuple[int, int] | None = None) -> list[Parity]:
    """Trace, gate, write `out` atomically; a failed gate raises one line with the numbers and leaves no file."""
    proto = trace_to_onnx(model, fixed_size)
    with atomic_path(out) as tmp:
        parity = _gate(model, proto, meta, tmp, check_sizes(model, fixed_size), labels)
        if not all(p.passed() for p in parity):
            raise UserError(f"ONNX parity gate failed (needs max |Δlogit| ≤ {MAX_ABS_DIFF:g} and argmax "
                            f"agreement ≥ {100 * MIN_AGREEMENT:g} %): "
                            f"{'; '.join(p.describe() for p in parity)}; nothing written to {out}")
    return parity


def export_onnx(checkpoint: str | Path, out: str | Path, which: str = "student", config: Config | None = None,
                labels: bool = False, fixed_size: tuple[int, int] | None = None) -> OnnxExport:
    """The student of `checkpoint` as a gated ONNX file with its metadata. `fixed_size` (H, W) is for HRDA
    (default: its evaluation size); every other model exports dynamic sizes."""
    require_modules(("onnx", "onnxscript", "onnxruntime"), "--format onnx")
    out = Path(out)
    model, cfg = load_inference_model(checkpoint, "cpu", which, config)
    _check_request(out, labels, cfg.model.num_classes)
    if fixed_size is not None and not isinstance(model, HRDASegmentor):
        raise UserError("--size is for HRDA models (fixed-size graphs); this model exports dynamic sizes")
    fixed_size = fixed_size or default_fixed_size(model, cfg)
    if fixed_size and (fixed_size[0] % model.size_multiple or fixed_size[1] % model.size_multiple):
        raise UserError(f"--size {fixed_size[0]}x{fixed_size[1]} is not a multiple of {model.size_multiple}")
    output = "labels" if labels else "logits"
    meta = metadata(model, cfg, sha256_file(checkpoint), fixed_size, output)
    parity = export_network(model, meta, out, labels, fixed_size)
    return OnnxExport(out, fixed_size, model.size_multiple, output, parity)
