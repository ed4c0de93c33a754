"""The `mfmseg` command line: parse, call one function of the engine/data layers, print, exit.

Every user error is a `UserError` turned into one line on stderr and exit code 2; bugs keep their traceback.
Each sub-command is one `_cmd_<name>(args) -> int` function registered in `build_parser`.
"""

from __future__ import annotations

import argparse
import sys

from mfmseg import __version__
from mfmseg.errors import UserError


def _cmd_models(args: argparse.Namespace) -> int:
    import json

    from mfmseg.models.zoo import describe_models

    rows = describe_models(num_classes=19)
    if args.json:
        print(json.dumps([{"name": r["name"], "params": r["params"]} for r in rows]))
        return 0
    print(f"{'model':<20} {'encoder':<14} {'head':<12} {'params (M)':>10}")
    for r in rows:
        print(f"{r['name']:<20} {r['encoder']:<14} {r['head']:<12} {r['params'] / 1e6:>10.2f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mfmseg",
        description="Domain-adaptive semantic segmentation with Masked Feature Modeling.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mfmseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the model zoo with parameter counts",
                       epilog="example: mfmseg models --json")
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, params}")
    p.set_defaults(func=_cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
