"""Protocol tests need no fixtures of their own; the repository root is put first on
sys.path by tests/conftest.py, so ``protocol`` is the package, not this directory."""
