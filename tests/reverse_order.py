"""A pytest plugin that runs the collected tests in reverse order, across and within files.

A test that passes only because another ran before it (a cache, a global torch setting, a file or an environment
variable left behind) fails when the order is turned round. `test_suite_order.py` uses it on a fixed set of fast
files in every CI run; the whole suite, by hand: `PYTHONPATH=tests .venv/bin/python -m pytest -p reverse_order`.
"""

from __future__ import annotations


def pytest_collection_modifyitems(items: list) -> None:
    items.reverse()
