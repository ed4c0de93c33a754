"""The `mfmseg` command line: parse, call one function of the engine/data layers, print, exit.

Every user error is a `UserError` turned into one line on stderr and exit code 2; bugs keep their traceback.
Each sub-command is one `_cmd_<name>(args) -> int` function registered in `build_parser`.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from mfmseg import __version__
from mfmseg.errors import Terminated, UserError, sigterm_raises, user_message


def _cmd_models(args: argparse.Namespace) -> int:
    import json

    from mfmseg.models.zoo import describe_models

    rows = describe_models(num_classes=19)
    if args.json:
        print(json.dumps([{"name": r["name"], "params": r["params"]} for r in rows]))
        return 0
    wn, we, wh = (max(len(h), *(len(r[k]) for r in rows)) for h, k in
                  (("model", "name"), ("encoder", "encoder"), ("head", "head")))  # columns fit the longest name
    print(f"{'model':<{wn}} {'encoder':<{we}} {'head':<{wh}} {'params (M)':>10} {'+HRDA (M)':>10}")
    for r in rows:
        hrda = f"{r['hrda_params'] / 1e6:>10.2f}" if r["hrda_params"] is not None else f"{'-':>10}"
        print(f"{r['name']:<{wn}} {r['encoder']:<{we}} {r['head']:<{wh}} {r['params'] / 1e6:>10.2f} {hrda}")
    print("+HRDA: with model.hrda.enabled=true (multi-resolution training, scale-attention head)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from mfmseg.config import load_config
    from mfmseg.engine.training.trainer import train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg)
    if summary:
        free = summary.get("label_free") or {}
        if summary["mIoU"] is not None:
            result = f"target mIoU {summary['mIoU']:.2f}"
        elif free:  # no target labels: the label-free metrics (docs/label_free.md)
            result = f"target entropy {free['entropy']:.3f}, IM {free['im']:.3f} (no labels)"
        else:
            result = "target not evaluated"  # train.eval_interval=-1
        print(f"done: {result} after {summary['iters']} iterations -> {cfg.work_dir}/summary.json")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mfmseg.engine.tools.demo import run_demo

    run_demo(out=args.out, seeds=tuple(args.seeds), iters=args.iters, fresh=args.fresh, jobs=args.jobs,
             data=args.data)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from mfmseg.engine.tools.sweep.results import summary_table
    from mfmseg.engine.tools.sweep.run import run_sweep

    results = run_sweep(args.specs, args.seeds, args.out, baseline=args.baseline, jobs=args.jobs, common=args.set)
    print("\n" + summary_table(results) + f"\n\nresults: {args.out}/results.md (.json, .png)")
    if results["failed"]:
        print(f"{len(results['failed'])} run(s) failed (logs above); the same command retries them", file=sys.stderr)
        return 1
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    import json

    from mfmseg.engine.evaluation.select import rank_candidates, ranking_table

    ranked = rank_candidates(args.runs, args.by)
    print(ranking_table(ranked, args.by, args.top))
    if args.json:
        from mfmseg.files import atomic_write_text

        atomic_write_text(args.json, json.dumps([{"run": c.run, "iter": c.iteration, args.by: c.value, "mIoU": c.miou,
                                                  "checkpoint": str(c.checkpoint) if c.checkpoint else None}
                                                 for c in ranked], indent=1))
    return 0


def _cmd_cost(args: argparse.Namespace) -> int:
    from mfmseg.config import list_presets, load_config
    from mfmseg.engine.tools.cost import TABLE_HEADER, format_plan, memory_plan, memory_plans, table_row

    if args.all:  # every shipped preset: the markdown table of docs/performance.md
        overrides = ([args.preset] if args.preset else []) + args.overrides
        configs = [(name, load_config(name, overrides)) for name in list_presets()]  # every config checked first
        print(TABLE_HEADER, flush=True)
        for plan in memory_plans(configs):
            print(table_row(plan), flush=True)
        return 0
    if not args.preset:
        raise UserError("give a preset (see configs/) or a YAML file, or --all for every preset")
    print(format_plan(memory_plan(load_config(args.preset, args.overrides), args.preset)))
    return 0


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        return h, w
    except ValueError:
        raise UserError(f"--size {text!r} is not HxW (e.g. 256x512)") from None


def _cmd_synth(args: argparse.Namespace) -> int:
    from mfmseg.data.synthetic import write_benchmark

    out = write_benchmark(args.out, seed=args.seed, num_source=args.num_source, num_target=args.num_target,
                          num_val=args.num_val, size=_parse_size(args.size), nproc=args.nproc)
    print(f"wrote the synthetic benchmark to {out} (source: {out / 'gta'}, target: {out / 'cityscapes'})")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from mfmseg.data.prepare import prepare_dataset

    prepare_dataset(args.kind, args.root, nproc=args.nproc, class_map=args.class_map, overwrite=args.overwrite)
    return 0


def _load_model(args: argparse.Namespace):
    import torch

    from mfmseg.config import check_device, load_config
    from mfmseg.engine.evaluation.export import load_inference_model

    device = check_device(args.device, "--device")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} but no CUDA device is visible; use --device cpu")
    config = load_config(args.config) if args.config else None  # the architecture of released checkpoints
    model, cfg = load_inference_model(args.checkpoint, device, which=getattr(args, "which", "student"),
                                      config=config)
    return model, cfg, device


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from mfmseg.config import load_config
    from mfmseg.data.datasets import build_dataset
    from mfmseg.engine.evaluation.evaluate import evaluate
    from mfmseg.engine.evaluation.metrics import format_table
    from mfmseg.engine.runtime.numerics import eval_autocast_dtype
    from mfmseg.engine.training.trainer import json_safe
    from mfmseg.files import atomic_write_text, check_output_file

    if args.json:  # before the evaluation, not after it
        check_output_file(args.json, "--json")
    model, cfg, device = _load_model(args)
    if args.config:
        cfg = load_config(args.config)
    if args.data:
        cfg.data.val.root = args.data
    if args.mode:
        cfg.eval.mode = args.mode
    dataset = build_dataset(cfg.data.val, "val", num_classes=cfg.model.num_classes, classes=cfg.data.classes)
    result = evaluate(model, dataset, cfg.eval, device=device, autocast_dtype=eval_autocast_dtype(cfg, device),
                      classes=cfg.data.classes)
    print(format_table(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(json_safe(result), indent=2))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from mfmseg.engine.evaluation.predict import predict_images
    from mfmseg.files import check_output_dir

    check_output_dir(args.out, "--out")
    model, cfg, device = _load_model(args)
    written = predict_images(model, cfg, args.inputs, args.out, args.format, device)
    print(f"wrote {len(written)} predictions to {args.out}")
    return 0


def _export_format(args: argparse.Namespace) -> str:
    """--format, else from the suffix of --out (`.onnx` -> onnx); torch stays the default."""
    fmt = args.format or ("onnx" if args.out.lower().endswith(".onnx") else "torch")
    if fmt == "torch" and (args.labels or args.size):
        raise UserError("--labels and --size apply to --format onnx only")
    return fmt


def _cmd_export(args: argparse.Namespace) -> int:
    from mfmseg.config import load_config
    from mfmseg.files import check_output_file

    from mfmseg.engine.evaluation.export import check_export_out

    check_output_file(args.out, "--out")
    check_export_out(args.checkpoint, args.out)
    fmt = _export_format(args)
    config = load_config(args.config) if args.config else None
    if fmt == "onnx":
        from mfmseg.engine.evaluation.onnx_export import export_onnx

        result = export_onnx(args.checkpoint, args.out, which=args.which, config=config, labels=args.labels,
                             fixed_size=_parse_size(args.size) if args.size else None)
        print("\n".join(result.summary()))
        return 0
    from mfmseg.engine.evaluation.export import export_model

    out = export_model(args.checkpoint, args.out, which=args.which, config=config)
    print(f"exported inference weights to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mfmseg.data.layouts import DATASET_KINDS  # the one list of dataset kinds (config reads it too)

    parser = argparse.ArgumentParser(
        prog="mfmseg",
        description="Domain-adaptive semantic segmentation with Masked Feature Modeling.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mfmseg {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of user errors too (same as MFMSEG_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the model zoo with parameter counts",
                       epilog="example: mfmseg models --json")
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, params}")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("synth", help="write the built-in synthetic UDA benchmark in the GTA/Cityscapes layouts",
                       epilog="example: mfmseg synth --out data/synthetic --seed 0 --size 256x512")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-source", type=int, default=400)
    p.add_argument("--num-target", type=int, default=400)
    p.add_argument("--num-val", type=int, default=100)
    p.add_argument("--size", default="256x512", help="HxW")
    p.add_argument("--nproc", type=int, default=2)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("prepare", help="write *_labelTrainIds.png and rare-class-sampling statistics",
                       epilog="example: mfmseg prepare gta data/gta --nproc 8")
    p.add_argument("kind", choices=DATASET_KINDS)
    p.add_argument("root")
    p.add_argument("--nproc", type=int, default=4)
    p.add_argument("--class-map", default=None, help="folder datasets: YAML class map (default ROOT/classes.yaml)")
    p.add_argument("--overwrite", action="store_true",
                   help="convert every label again (default: reuse the train-id files of an earlier run)")
    p.set_defaults(func=_cmd_prepare)

    for name, helptext, example in [
        ("evaluate", "mIoU19/16/13 and per-class IoU of a checkpoint on a labelled split",
         "mfmseg evaluate runs/a/latest.pth --data data/cityscapes --mode slide --json eval.json"),
        ("predict", "segment images, folders or globs (a .pth or an exported .onnx model)",
         "mfmseg predict model.onnx street/*.jpg --out preds --format overlay"),
        ("export", "inference-only weights (torch or ONNX): no Rebuilder, no teacher, no optimizer",
         "mfmseg export runs/a/latest.pth --out model.pth   |   ... --format onnx --out model.onnx"),
    ]:
        p = sub.add_parser(name, help=helptext, epilog=f"example: {example}")
        p.add_argument("checkpoint", help="a training checkpoint (latest.pth), an exported model, or a released "
                                          "DAFormer/HRDA/MIC checkpoint (with --config)")
        p.add_argument("--which", default="student", choices=["student", "teacher"],
                       help="training checkpoints: which network (released ones: model / ema_model)")
        p.add_argument("--config", default=None,
                       help="a preset or YAML: the network of a released checkpoint"
                            + ("; also the data and evaluation settings" if name == "evaluate" else ""))
        if name != "export":
            p.add_argument("--device", default="auto")
        if name == "evaluate":
            p.add_argument("--data", default=None, help="root of the labelled dataset (overrides data.val.root)")
            p.add_argument("--mode", choices=["whole", "slide"], default=None)
            p.add_argument("--json", default=None, help="also write the result as JSON")
            p.set_defaults(func=_cmd_evaluate)
        elif name == "predict":
            p.add_argument("inputs", nargs="+", help="image files, folders or globs")
            p.add_argument("--out", required=True)
            p.add_argument("--format", default="color", choices=["color", "overlay", "trainid", "labelid"])
            p.set_defaults(func=_cmd_predict)
        else:
            p.add_argument("--out", required=True)
            p.add_argument("--format", choices=["torch", "onnx"], default=None,
                           help="torch (default) or onnx (dynamic sizes, metadata, an onnxruntime parity gate; "
                                "needs pip install 'mfmseg[onnx]'); default: onnx when --out ends in .onnx")
            p.add_argument("--labels", action="store_true",
                           help="onnx: output uint8 class ids (argmax in the graph) instead of logits")
            p.add_argument("--size", default=None, metavar="HxW",
                           help="onnx, HRDA models only: the fixed input size (default: data.val.resize)")
            p.set_defaults(func=_cmd_export)

    p = sub.add_parser("train", help="train a preset or YAML config, with key=value overrides",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  mfmseg train gta2cs_daformer_mitb5_mfm data.source.root=/data/gta\n"
                              "  mfmseg train my.yaml train.max_iters=2000 seed=1 work_dir=runs/a\n"
                              "  mfmseg train my.yaml work_dir=runs/a train.resume=true   # continue a killed run")
    p.add_argument("config", help="a preset name (see configs/) or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("cost", help="memory plan per GPU (weights, gradients, optimiser, activations) and FLOPs "
                                    "of one training step; measured on fake tensors, no GPU needed",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  mfmseg cost gta2cs_hrda_mitb5_mfm\n"
                              "  mfmseg cost gta2cs_daformer_mitb5_mfm data.batch_size=4\n"
                              "  mfmseg cost --all > table.md   # every shipped preset, one markdown row each")
    p.add_argument("preset", nargs="?", help="a preset name (see configs/) or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--all", action="store_true", help="every shipped preset: a markdown table")
    p.set_defaults(func=_cmd_cost)

    p = sub.add_parser("demo", help="synthetic benchmark from ImageNet weights: source-only vs DACS vs DACS+MFM "
                                    "on the CPU (~10 min)",
                       epilog="example: mfmseg demo --out demo_out --seeds 0 1 2")
    p.add_argument("--out", default="demo_out", help="output folder (data, runs, report.md)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="seeds to pair (default: 0; `--seeds 0 1 2` for a seed-paired comparison)")
    p.add_argument("--iters", type=int, default=None, help="training iterations per method (default: preset)")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once, each with cores/N threads")
    p.add_argument("--data", default=None, help="an existing prepared benchmark (default: OUT/data, written once)")
    p.add_argument("--fresh", action="store_true", help="retrain runs that already finished in --out")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("sweep", help="configs × seeds, resumable: mean ± std per config, seed-paired differences",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  mfmseg sweep synthetic_dacs \"mfm=synthetic_dacs_mfm uda.mfm.weight=0.5\" "
                              "--seeds 0 1 2 \\\n      --baseline synthetic_dacs --out sweeps/a "
                              "--set train.max_iters=200 --jobs 2\n"
                              "  (the same command again continues a killed sweep; runs: OUT/runs/<label>/seed<S>)")
    p.add_argument("specs", nargs="+", metavar="SPEC",
                   help="'[LABEL=]PRESET_OR_YAML [key=value ...]' as one quoted word; LABEL defaults to its stem")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default: 0 1 2")
    p.add_argument("--baseline", default=None, metavar="LABEL", help="report paired differences to this label")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once, each with cores/N threads")
    p.add_argument("--out", default="sweep_out", help="runs/, results.md, results.json, results.png")
    p.add_argument("--set", action="append", default=[], metavar="key=value",
                   help="an override for every run (data roots, iterations); repeatable")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("select", help="rank the evaluations of runs by a label-free metric (no target labels)",
                       epilog="example: mfmseg select runs/a runs/b --by im   (metrics: docs/label_free.md)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training work dirs")
    p.add_argument("--by", required=True, metavar="METRIC",
                   help="entropy, im, confident, flip_consistency, agreement, snd, class_kl (or mIoU with labels)")
    p.add_argument("--top", type=int, default=10, help="rows to print (default 10)")
    p.add_argument("--json", default=None, help="write the whole ranking as JSON")
    p.set_defaults(func=_cmd_select)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The error boundary: every expected failure, from any process, ends as one `error: ...` line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        with sigterm_raises():
            return int(args.func(args) or 0)
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_message(e)
        if message is None:  # a bug: keep its traceback (exit 1)
            raise
        if args.debug or os.environ.get("MFMSEG_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
            if getattr(e, "remote_traceback", None):
                print(f"in a DataLoader worker: {e.remote_traceback}", file=sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
