"""Worker tests share the session ``tiny_models`` fixture of tests/conftest.py, which also
puts the repository root first on sys.path."""
