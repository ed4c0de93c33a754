"""The studies' tests (a package, so that this conftest never takes the name `conftest` from tests/conftest.py)."""
