"""The suite's health: its tests do not depend on the order they run in.

Once per CI run (the slow suite), a fixed set of fast files that set or read process-wide state (torch's
determinism switch, the global random generators their tests seed, environment variables they patch) runs in a
pytest subprocess in reverse order (`reverse_order.py`): every test after the ones that ran before it
in the normal order, and before those that ran after it. A test that passes only because another ran first fails
here, named in the output.

Why reversed, not random (pytest-randomly, pytest-random-order): a reversal needs no new dependency, is the same
in every run (a failure here reproduces with the same command, no seed to carry), and still puts every test after
the ones it never followed. The fixed set keeps it cheap (~20 s); the same plugin reverses the whole suite by
hand (see `reverse_order.py`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# fast (a few seconds each), and most of them set or read process-wide state
FILES = ["test_config.py", "test_numerics.py", "test_weights.py", "test_efficientnet_lite.py", "test_data.py",
         "test_uda_mfm.py", "test_uda_ingredients.py", "test_uda_helpers.py", "test_engine_optim.py",
         "test_pseudo_label_accuracy.py", "test_label_free.py", "test_flops.py"]
MIN_TESTS = 100  # what still makes this a check if files are merged or renamed (167 when written)


def pytest_in_reverse(args: list[str], cwd: Path, basetemp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "reverse_order", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "--timeout=300", f"--basetemp={basetemp}", *args],
        check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_fast_files_pass_in_reverse_order(tmp_path):
    files = [str(TESTS / f) for f in FILES if (TESTS / f).exists()]
    proc = pytest_in_reverse(["-m", "not slow", *files], TESTS.parent, tmp_path / "basetemp")
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    assert proc.returncode == 0, f"in reverse order:\n{tail}"
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= MIN_TESTS, f"too few tests ran in reverse order:\n{tail}"


@pytest.mark.slow
def test_the_reversal_catches_a_test_that_needs_another_first(tmp_path):
    """Two tests where the second passes only after the first: reversed, the second fails."""
    (tmp_path / "test_pair.py").write_text(
        "import os\n\n"
        "def test_sets():\n    os.environ['ORDER_PROBE'] = '1'\n\n"
        "def test_needs_it():\n    assert os.environ.get('ORDER_PROBE') == '1'\n")
    proc = pytest_in_reverse(["test_pair.py"], tmp_path, tmp_path / "basetemp")
    assert proc.returncode == 1 and "1 failed, 1 passed" in proc.stdout, proc.stdout[-2000:]
