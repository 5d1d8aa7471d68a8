"""Worker tests share the session ``tiny_models`` fixture of tests/conftest.py."""
