"""Make ``worker``/``protocol`` resolve to the packages, not to directories under tests/.

See tests/protocol/conftest.py: the editable install's import hook runs after the path
search, so ``tests/worker`` would otherwise be imported as an empty namespace package.
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
for _name in ("protocol", "worker", "broker"):
    _module = sys.modules.get(_name)
    if _module is not None and getattr(_module, "__file__", None) is None:
        del sys.modules[_name]
