"""The studies' own tests: they load a study script by its path (the scripts are not a package) and import mfmseg
as any user of the installed package does."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

STUDIES = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def study_script() -> Callable[[str], ModuleType]:
    """`study_script("mfm/study_mfm_long.py")`: that script of studies/, imported as a module."""

    def load(relative: str) -> ModuleType:  # the standard library's recipe for importing a file by its path
        spec = importlib.util.spec_from_file_location(Path(relative).stem, STUDIES / relative)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
