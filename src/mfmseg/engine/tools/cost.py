"""What one UDA training step costs per GPU: weights, optimiser state, gradients, activations, FLOPs (`mfmseg cost`).

Users ask one question before renting a GPU: will this preset fit my card? Parameters, gradients and optimiser
state follow from the parameter count; the activations saved for backward do not, and they dominate at paper
crops. We measure them by running the preset's real training step (`uda.step.UDAStep.train_step`: source pass,
teacher, ClassMix pass, MIC and MFM passes, with their backward) on *fake tensors*: torch's FakeTensorMode gives
every tensor its shape, dtype, strides and storage sharing but no data, so a DINOv2-L HRDA step at 1024² crops runs
on a laptop CPU in about a minute without allocating or computing anything at full size. A saved_tensors_hooks
meter counts the bytes autograd keeps alive, one storage once, and the same meter on real tensors gives the same
bytes (tests/test_cost.py); the FLOP counter counts the same step.

A step is data-independent except for a few questions about values (is this loss finite, which classes does this
label hold, which cells are things). `ShapeOnlyMode` answers them the way that keeps every graph at its largest
(losses finite, every FD cell a thing, photometric augmentation applied); the graphs' shapes never depend on the
answers otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from mfmseg.config import Config
from mfmseg.engine.training.assembly import build_training_assembly
from mfmseg.errors import UserError
from mfmseg.uda.step import UDAStep

GiB = 2**30
CARDS_GIB = (11, 16, 24, 40, 80)  # 1080 Ti / 2080 Ti, V100-16, 3090 / 4090 / A5000, A100-40, A100 / H100-80
CONTEXT_GIB = 1.5  # CUDA context, cuDNN/cuBLAS workspaces, NCCL buffers
FRAGMENTATION = 0.10  # allocator fragmentation and transient tensors that are not saved for backward
AMP_VARIANTS = {"fp32": None, "bf16": torch.bfloat16}
aten = torch.ops.aten


# ---- counting ---------------------------------------------------------------------------------------------------
class SavedActivationMeter:
    """Bytes of the tensors autograd saves for backward, per graph and at the peak.

    A saved_tensors_hooks pack hook wraps each saved tensor in a holder that lives as long as the graph keeps it,
    so the live total rises in forward and falls when backward frees the graph. Storages are counted once however
    many views of them are saved (keyed by the storage itself, which works for fake tensors too). `exclude`:
    tensors whose storages are not activations (parameters and buffers, which layers save for their input
    gradient, are counted once as weights). The UDA step keeps one graph alive at a time, so each time the live
    total returns to zero a graph ended: `graph_peaks` holds each graph's peak in order. Recomputation inside
    checkpointed regions is transient and not counted: one segment at a time, during that segment's backward (a
    block for MiT/ViT/EfficientNet-Lite, a whole stage for ResNet, which this meter therefore understates).
    `traces` holds, per graph, the live total after each storage it saves (what `scaled_cost` extrapolates)."""

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        self.exclude = {t.untyped_storage()._cdata for t in exclude}
        self.live: dict[int, list[int]] = {}  # storage -> [references, bytes]
        self.total = self.peak = self._graph_peak = 0
        self.graph_peaks: list[int] = []
        self.traces: list[list[int]] = []
        self._trace: list[int] = []

    def __enter__(self) -> "SavedActivationMeter":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda held: held.tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, tensor: Tensor) -> "_Held":
        return _Held(self, tensor)

    def add(self, key: int, nbytes: int) -> None:
        entry = self.live.setdefault(key, [0, nbytes])
        if entry[0] == 0:
            self.total += nbytes
            self.peak = max(self.peak, self.total)
            self._graph_peak = max(self._graph_peak, self.total)
            self._trace.append(self.total)
        entry[0] += 1

    def remove(self, key: int) -> None:
        entry = self.live[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.total -= entry[1]
            del self.live[key]
            if self.total == 0:
                self.graph_peaks.append(self._graph_peak)
                self.traces.append(self._trace)
                self._graph_peak, self._trace = 0, []


class _Held:
    def __init__(self, meter: SavedActivationMeter, tensor: Tensor) -> None:
        # detached: a saved output would otherwise hold its own grad_fn (a reference cycle that only the garbage
        # collector frees, so a graph could outlive its backward and merge with the next one)
        self.meter, self.tensor = meter, tensor.detach()
        storage = tensor.untyped_storage()
        self.key = storage._cdata
        self.counted = self.key not in meter.exclude
        if self.counted:
            meter.add(self.key, storage.nbytes())

    def __del__(self) -> None:
        if self.counted:
            self.meter.remove(self.key)


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode, with convolution backward counted right for grouped and depthwise convolutions.

    torch's backward formula ignores `groups` in the weight gradient (as if every input channel met every output
    channel): a 96-channel depthwise 3x3 backward counts 48x too high, and MiT's Mix-FFN and EfficientNet-Lite
    steps with it. Each gradient of a convolution (input, weight) takes exactly the multiply-adds of its forward
    (every pair of an output position and a weight entry once), so backward = forward x gradients asked for."""

    def conv_backward(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                      _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
        forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)  # w_shape holds C_in / groups
        return forward * (bool(output_mask[0]) + bool(output_mask[1]))

    return FlopCounterMode(display=False, custom_mapping={aten.convolution_backward: conv_backward})


# ---- fake tensors -----------------------------------------------------------------------------------------------
def _all_true(mask: Tensor) -> list[Tensor]:
    """The index tensors of a boolean mask that is True everywhere (what `mask.nonzero().unbind(1)` gives)."""
    return [torch.zeros(mask.numel(), dtype=torch.long, device=mask.device) for _ in range(mask.dim())]


class ShapeOnlyMode(FakeTensorMode):
    """FakeTensorMode that answers the step's few questions about values instead of refusing them.

    A scalar read (`.item()`, `bool()`, `float()`) is computed when the fake mode knows the value (constants) and
    otherwise answered True / 0: every loss is finite, every FD cell a thing class (`keep.any()`), every random
    draw 0 (colour jitter and blur applied, HRDA's detail window at the corner). A boolean mask selects every
    element, `unique` finds one value (ClassMix then pastes one class). All of these change values only, except
    FD's thing cells, whose selection is then as large as it can be."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default:
            try:
                return super().__torch_dispatch__(func, types, args, kwargs)
            except DataDependentOutputException:
                t = args[0]
                return True if t.dtype == torch.bool else 0.0 if t.is_floating_point() else 0
        if func is aten.nonzero.default:
            with self:
                return torch.stack(_all_true(args[0]), 1)
        if func is aten._unique2.default:
            x = args[0]
            with self:
                return x.new_empty(1), x.new_empty(x.shape, dtype=torch.long), x.new_empty(1, dtype=torch.long)
        if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                    aten._index_put_impl_.default) and any(i is not None and i.dtype == torch.bool for i in args[1]):
            with self:
                indices = [part for i in args[1]
                           for part in (_all_true(i) if i is not None and i.dtype == torch.bool else [i])]
            args = (args[0], indices, *args[2:])
        return super().__torch_dispatch__(func, types, args, kwargs)


def give_fake_tensors(module: nn.Module, mode: FakeTensorMode) -> None:
    """Replace every parameter and buffer (built on the meta device) by a fake CPU tensor of the same layout."""
    with mode:
        for m in module.modules():
            for name, p in m._parameters.items():
                if p is not None:
                    m._parameters[name] = nn.Parameter(torch.empty_strided(p.shape, p.stride(), dtype=p.dtype),
                                                       requires_grad=p.requires_grad)
            for name, b in m._buffers.items():
                if b is not None:
                    m._buffers[name] = torch.empty_strided(b.shape, b.stride(), dtype=b.dtype)


def fake_step(cfg: Config, mode: FakeTensorMode | None = None) -> tuple[UDAStep, FakeTensorMode]:
    """The preset's UDA method (student, teacher, FD copy, Rebuilder) with fake weights: built on the meta device
    (no memory, no initialisation, no download: `model.pretrained` is ignored), then given fake CPU tensors so that
    CPU autocast and the step's device logic run as on a real CPU. (FakeTensorMode cannot `.to()` a module itself,
    hence the detour.) Pass one `mode` for every model a process fakes: tensors of two fake modes never mix, and
    a library may cache a tensor across models."""
    mode = mode or ShapeOnlyMode()
    networks_only = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=None))
    with torch.device("meta"):
        step = build_training_assembly(networks_only, "meta", optimizer=False, runnable=False).step
    give_fake_tensors(step, mode)
    step.device = torch.device("cpu")
    return step, mode


def fake_batch(cfg: Config, mode: FakeTensorMode, batch: int | None = None) -> dict[str, Tensor]:
    """A source + target batch at the preset's per-GPU batch size (or `batch`) and crops (the thing class 13
    everywhere)."""
    b = batch or cfg.data.batch_size
    (hs, ws), (ht, wt) = cfg.data.source.crop, cfg.data.target.crop
    with mode:
        return {"src_img": torch.zeros(b, 3, hs, ws), "src_label": torch.full((b, hs, ws), 13),
                "tgt_img": torch.zeros(b, 3, ht, wt)}


# ---- one step -------------------------------------------------------------------------------------------------
@dataclass
class StepCost:
    """Activation bytes of each graph of one step, in order, named by the losses it backpropagates, and FLOPs;
    `traces`: the meter's live totals per graph (`SavedActivationMeter.traces`)."""
    graphs: list[tuple[str, int]]
    flops: int | None = None
    traces: list[list[int]] = field(default_factory=list, repr=False)

    @property
    def peak(self) -> int:
        """The step frees each graph in its own backward, so the largest graph is the activation peak."""
        return max((n for _, n in self.graphs), default=0)


def graph_names(loss_names: list[str], graphs: int) -> list[str]:
    """Name each backward pass by its losses. `train_step` logs the source pass's losses, then `pseudo_q`, then the
    ClassMix pass's, then one loss per target pass (MIC, MFM): so the last `graphs - 2` losses are the target
    passes and the ones between `pseudo_q` and them the mixed pass. Unnamed passes are numbered."""
    names = [n.removeprefix("loss_") for n in loss_names]
    if "pseudo_q" not in names:
        groups = [names] if graphs == 1 else []
    else:
        cut = names.index("pseudo_q")
        rest, targets = names[cut + 1:], max(graphs - 2, 0)
        split = len(rest) - targets
        groups = [names[:cut], rest[:split], *([t] for t in rest[split:])] if split >= 1 else []
    if len(groups) != graphs:
        return [f"pass {i + 1}" for i in range(graphs)]
    return ["+".join(g) for g in groups]


def step_cost(step: UDAStep, batch: dict[str, Tensor], amp: torch.dtype | None, count_flops: bool = True,
              mode: Any = None) -> StepCost:
    """Run one `train_step` (real or fake tensors; `mode`: the fake mode to run it in) under the saved-tensor
    meter and, with `count_flops`, the FLOP counter. Weights are not activations: the meter leaves them out."""
    weights = [*step.parameters(), *step.buffers()]
    counter = flop_counter() if count_flops else contextlib.nullcontext()
    with mode or contextlib.nullcontext(), counter, SavedActivationMeter(exclude=weights) as meter:
        losses, _ = step.train_step(batch, 0, autocast_dtype=amp)
    names = graph_names([k for k in losses if k.startswith("loss_") or k == "pseudo_q"], len(meter.graph_peaks))
    return StepCost(list(zip(names, meter.graph_peaks)), counter.get_total_flops() if count_flops else None,
                    meter.traces)


# ---- large batches: measured small, scaled exactly ----------------------------------------------------------------
DIRECT_MAX = 64  # batches measured as they are (a few seconds more than batch 2); a larger one is scaled
PROBES = (2, 3, 4)  # consecutive: the second differences of a trace are then its exact test of being affine


def _affine_at(values: list[int], batch: int) -> int | None:
    """The value at `batch` of a quantity measured at PROBES, when its two differences are equal (affine in the
    batch), else None. Python integers: no overflow at any batch."""
    d1, d2 = values[1] - values[0], values[2] - values[1]
    return values[0] + d1 * (batch - PROBES[0]) if d1 == d2 else None


def scaled_cost(costs: list[StepCost], batch: int) -> StepCost | None:
    """The step at `batch` from the same step measured at PROBES, or None where that is not exact.

    Every tensor a step saves has the batch as its first dimension or does not depend on it, so after each save the
    live total of a graph is affine in the batch; the peak is not (which save holds it can move as the batch
    grows), so the whole trace is scaled, save by save, and its maximum taken. The probes must agree on the graphs
    and the number of saves, and every save must be affine across the three: otherwise (a tensor quadratic in the
    batch, a loop over the images that saves tensors) None, and the batch is measured as it is."""
    first = costs[0]
    if any([n for n, _ in c.graphs] != [n for n, _ in first.graphs] or len(c.traces) != len(first.traces)
           for c in costs):
        return None
    graphs = []
    for (name, _), *traces in zip(first.graphs, *(c.traces for c in costs)):
        if len({len(t) for t in traces}) != 1:
            return None
        scaled = [_affine_at(list(values), batch) for values in zip(*traces)]
        if None in scaled:
            return None
        graphs.append((name, max(scaled, default=0)))
    flops = None
    if first.flops is not None:
        flops = _affine_at([c.flops for c in costs], batch)
        if flops is None:
            return None
    return StepCost(graphs, flops)


# ---- the plan ---------------------------------------------------------------------------------------------------
def smallest_card(total_bytes: int, cards: Iterable[int] = CARDS_GIB) -> int | None:
    """The smallest card (GiB) that holds `total_bytes` plus the margin: ×(1 + FRAGMENTATION) + CONTEXT_GIB."""
    need = total_bytes * (1 + FRAGMENTATION) + CONTEXT_GIB * GiB
    return next((c for c in sorted(cards) if need <= c * GiB), None)


def optimizer_states(cfg: Config) -> int:
    """fp32 tensors the optimiser keeps per trained parameter: AdamW two moments, SGD a momentum buffer."""
    if cfg.optim.name == "adamw":
        return 2
    return 1 if cfg.optim.momentum > 0 else 0


@dataclass
class MemoryPlan:
    """Per-GPU memory of a config's training step; `steps[(amp, checkpointing)]` its activations and FLOPs."""
    name: str
    cfg: Config
    weight_bytes: dict[str, int]  # student, teacher, fd (frozen ImageNet copy), mfm (Rebuilder), ...
    trained_params: int
    grad_bytes: int
    optimizer_bytes: int
    steps: dict[tuple[str, bool], StepCost] = field(default_factory=dict)
    scaled_from: tuple[int, ...] | None = None  # the batches the steps were measured at, when scaled (memory_plan)

    @property
    def static_bytes(self) -> int:
        """Weights of every copy + gradients + optimiser state: what stays allocated across the step."""
        return sum(self.weight_bytes.values()) + self.grad_bytes + self.optimizer_bytes

    def total(self, amp: str, checkpointing: bool) -> int:
        return self.static_bytes + self.steps[(amp, checkpointing)].peak

    @property
    def preset_variant(self) -> tuple[str, bool]:
        return ("bf16" if self.cfg.train.amp != "none" else "fp32", bool(self.cfg.train.grad_checkpointing))


def _weight_bytes(step: UDAStep) -> dict[str, int]:
    """Bytes of parameters and buffers by owner: student, teacher, and each auxiliary term (FD's frozen copy,
    MFM's Rebuilder)."""
    owners = {"student": step.student, "teacher": step.teacher, **dict(step.terms.items())}
    return {name: sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])
            for name, m in owners.items() if m is not None and any(True for _ in m.parameters())}


def memory_plan(cfg: Config, name: str = "config", mode: FakeTensorMode | None = None) -> MemoryPlan:
    """Measure every (fp32 | bf16) × (checkpointing off | on) step of `cfg` on fake tensors. FLOPs do not depend
    on the autocast dtype: they are counted in the fp32 steps only.

    A fake step costs per operation, and a few operations run per image (the strong augmentation), so a batch above
    DIRECT_MAX is not run: its step is measured at PROBES and scaled exactly (`scaled_cost`), in the time of three
    small batches whatever the batch. A step that does not scale exactly is refused, with about the memory it would
    need."""
    step, mode = fake_step(cfg, mode)
    trained = [p for p in step.parameters() if p.requires_grad]
    grad_bytes = sum(p.numel() * p.element_size() for p in trained)
    plan = MemoryPlan(name, cfg, _weight_bytes(step), sum(p.numel() for p in trained), grad_bytes,
                      optimizer_states(cfg) * grad_bytes)
    batch = cfg.data.batch_size
    if batch > DIRECT_MAX:
        probes = _measure_steps(plan.cfg, step, mode, PROBES)
        scaled = {variant: scaled_cost(costs, batch) for variant, costs in probes.items()}
        if any(cost is None for cost in scaled.values()):
            raise _unscalable(plan, probes[plan.preset_variant][-1], batch)
        plan.steps = {variant: cost for variant, cost in scaled.items() if cost is not None}
        plan.scaled_from = PROBES
        return plan
    plan.steps = {variant: costs[0] for variant, costs in _measure_steps(cfg, step, mode, (batch,)).items()}
    return plan


def _measure_steps(cfg: Config, step: UDAStep, mode: FakeTensorMode, batches: tuple[int, ...]
                   ) -> dict[tuple[str, bool], list[StepCost]]:
    """Each (amp, checkpointing) variant of the step, run at each of `batches`."""
    inputs = [fake_batch(cfg, mode, b) for b in batches]
    costs = {}
    for checkpointing in (False, True):
        step.student.set_grad_checkpointing(checkpointing)
        for amp, dtype in AMP_VARIANTS.items():
            costs[(amp, checkpointing)] = [step_cost(step, x, dtype, count_flops=dtype is None, mode=mode)
                                           for x in inputs]
    return costs


def _unscalable(plan: MemoryPlan, largest_probe: StepCost, batch: int) -> UserError:
    """A batch above DIRECT_MAX of a step that does not scale exactly: refused with about what it would need (the
    config's variant at the largest probe, per image, times the batch)."""
    need = plan.static_bytes + largest_probe.peak * batch // PROBES[-1]
    return UserError(f"data.batch_size={batch}: this step's activations do not grow in proportion to the batch "
                     f"(measured at {', '.join(map(str, PROBES))}), so they cannot be scaled up exactly, and a fake "
                     f"step of {batch} images would take too long; at {PROBES[-1]} images per GPU it needs "
                     f"{(plan.static_bytes + largest_probe.peak) / GiB:.2f} GiB, so about {need / GiB:,.0f} GiB at "
                     f"{batch}: plan a batch of at most {DIRECT_MAX}")


def _plan_key(cfg: Config) -> str:
    """What a plan depends on: the network, the method, batch and crops, the optimiser (not data roots or
    schedules), so presets that differ only in their source dataset (gta2cs_* / syn2cs_*) share one measurement."""
    d = cfg.data
    return repr((cfg.model, cfg.uda, d.batch_size, d.source.crop, d.target.crop, cfg.optim.name, cfg.optim.momentum,
                 cfg.train.amp, cfg.train.grad_checkpointing))


def memory_plans(configs: Iterable[tuple[str, Config]]) -> Iterator[MemoryPlan]:
    """`memory_plan` of each (name, config), measuring each distinct `_plan_key` once."""
    seen: dict[str, MemoryPlan] = {}
    mode = ShapeOnlyMode()
    for name, cfg in configs:
        key = _plan_key(cfg)
        if key not in seen:
            seen[key] = memory_plan(cfg, name, mode)
        yield dataclasses.replace(seen[key], name=name, cfg=cfg)

# ---- printing -------------------------------------------------------------------------------------------------
def _gib(n: int) -> str:
    return f"{n / GiB:.2f}"


def _card(total: int) -> str:
    card = smallest_card(total)
    return f"{card} GB" if card else "> 80 GB"


def _gflop(flops: int | None) -> str:
    return f"{flops / 1e9:,.1f}" if flops is not None else "-"


def format_plan(plan: MemoryPlan) -> str:
    """The plan as the CLI prints it: static memory, then one line per (dtype, checkpointing) step."""
    cfg, mark = plan.cfg, plan.preset_variant
    weights = ", ".join(f"{k} {_gib(v)}" for k, v in plan.weight_bytes.items())
    crop = "x".join(map(str, cfg.data.target.crop))
    hrda = " + HRDA" if cfg.model.hrda.enabled else ""
    lines = [f"{plan.name}: {cfg.model.name}{hrda}, {cfg.uda.method}, batch {cfg.data.batch_size} source + "
             f"{cfg.data.batch_size} target per GPU, {crop} crops",
             f"weights      {_gib(sum(plan.weight_bytes.values()))} GiB ({weights})",
             f"gradients    {_gib(plan.grad_bytes)} GiB ({plan.trained_params / 1e6:.1f} M trained parameters, fp32)",
             f"optimiser    {_gib(plan.optimizer_bytes)} GiB ({cfg.optim.name}: {optimizer_states(cfg)} fp32 "
             "state(s) per trained parameter)",
             "activations saved for backward, per pass (one pass's graph is alive at a time), GiB:"]
    if plan.scaled_from:
        lines.insert(1, f"(the step measured at batches {', '.join(map(str, plan.scaled_from))} and scaled exactly to "
                        f"{cfg.data.batch_size}: every tensor it saves grows in proportion to the batch, checked save "
                        "by save)")
    passes = [name for name, _ in plan.steps[("fp32", False)].graphs]
    head = f"  {'amp':<5} {'ckpt':<5}" + "".join(f"{p:>9}" for p in passes)
    lines.append(head + f"{'peak':>9}{'total':>9}  {'fits':<8}{'GFLOP':>10}")
    for (amp, ckpt), cost in plan.steps.items():
        row = f"  {amp:<5} {('on' if ckpt else 'off'):<5}" + "".join(f"{_gib(n):>9}" for _, n in cost.graphs)
        total = plan.total(amp, ckpt)
        flops = plan.steps[("fp32", ckpt)].flops
        lines.append(row + f"{_gib(cost.peak):>9}{_gib(total):>9}  {_card(total):<8}{_gflop(flops):>10}"
                     + ("   <- this config" if (amp, ckpt) == mark else ""))
    lines.append(f"total = weights + gradients + optimiser + the peak pass; fits = the smallest of "
                 f"{'/'.join(map(str, CARDS_GIB))} GB cards holding total x {1 + FRAGMENTATION:.2f} + "
                 f"{CONTEXT_GIB} GiB (CUDA context, fragmentation, unsaved transients); GFLOP = forward + backward of "
                 "the whole step (teacher and FD forwards included), counted on fake tensors. With checkpointing, "
                 "backward also re-creates one checkpointed segment's activations at a time, not counted here: a "
                 "block of MiT/ViT/EfficientNet-Lite (small), a whole stage of ResNet (up to most of the 'ckpt off' "
                 "figure: plan those on 'ckpt off')")
    return "\n".join(lines)


TABLE_HEADER = ("| preset | crop, batch/GPU | weights + grads + AdamW (GiB) | activation peak fp32 / bf16 / bf16 + ckpt "
                "(GiB) | total fp32 → fits | total bf16 + ckpt → fits | GFLOP/step (+ ckpt) |\n"
                "|---|---|---|---|---|---|---|")


def table_row(plan: MemoryPlan) -> str:
    """One markdown row of the per-preset table in docs/performance.md (`mfmseg cost --all`)."""
    cfg = plan.cfg
    peaks = " / ".join(_gib(plan.steps[v].peak) for v in (("fp32", False), ("bf16", False), ("bf16", True)))
    crop = "×".join(map(str, cfg.data.target.crop))
    fp32, small = plan.total("fp32", False), plan.total("bf16", True)
    return (f"| `{plan.name}` | {crop}, {cfg.data.batch_size}+{cfg.data.batch_size} | {_gib(plan.static_bytes)} | "
            f"{peaks} | {_gib(fp32)} → {_card(fp32)} | {_gib(small)} → {_card(small)} | "
            f"{_gflop(plan.steps[('fp32', False)].flops)} ({_gflop(plan.steps[('fp32', True)].flops)}) |")
