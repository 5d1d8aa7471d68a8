"""Make ``protocol`` resolve to the package, not to this tests directory.

The project is installed in editable mode through an import hook that runs after the
normal path search, and ``tests/`` (put on ``sys.path`` by pytest) holds a ``protocol``
directory without ``__init__.py``, which Python would otherwise import as an empty
namespace package. Putting the repository root on the path lets the real package win.
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
for _name in ("protocol", "worker", "broker"):
    _module = sys.modules.get(_name)
    if _module is not None and getattr(_module, "__file__", None) is None:
        del sys.modules[_name]  # an empty namespace package made of tests/<name>
