"""`engine/`'s sub-packages import one way: runtime ← evaluation ← training ← tools (docs/architecture.md); no
engine module imports `mfmseg.cli`, and `engine/` holds nothing beside its four sub-packages."""
import ast
from pathlib import Path

import mfmseg

LAYERS = ("runtime", "evaluation", "training", "tools")
SRC = Path(mfmseg.__file__).parent


def _mfmseg_imports(path: Path) -> list[str]:
    """Every mfmseg module `path` imports, at the top or inside a function (`from a.b import c` gives `a.b.c`)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mfmseg"):
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names if alias.name.startswith("mfmseg")]
    return names


def test_engine_sub_packages_import_one_way():
    wrong = []
    for layer, package in enumerate(LAYERS):
        for path in (SRC / "engine" / package).rglob("*.py"):
            for name in _mfmseg_imports(path):
                parts = name.split(".")
                if name.startswith("mfmseg.cli") or (parts[1:2] == ["engine"] and len(parts) > 2 and (
                        parts[2] not in LAYERS or LAYERS.index(parts[2]) > layer)):
                    wrong.append(f"{path.relative_to(SRC)} imports {name}")
    assert not wrong, wrong


def test_engine_holds_only_its_sub_packages():
    assert sorted(p.name for p in (SRC / "engine").iterdir() if p.name != "__pycache__") == sorted(
        ["__init__.py", *LAYERS])
