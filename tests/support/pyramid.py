"""Which layer of the test pyramid a test belongs to: ``unit`` or ``process``.

The rule (applied by ``tests/conftest.py`` at collection, so nobody has to remember a
marker): a test is ``process`` when the code it runs can start another process; every
other test is ``unit`` and runs inside the pytest process. "The code it runs" is the test
function, the fixtures it requests (their whole closure), and, followed transitively, every
function, class and module of this project (``mole.*``) or of the test tree (``tests.*``)
that they name. "Can start a process" means naming ``subprocess``, ``multiprocessing``,
``concurrent.futures.process``, or one of ``os``'s process creators (``fork``, ``system``,
``popen``, ``posix_spawn``, ``exec*``, ``spawn*``).

It is a static over-approximation on purpose: a test that names a spawner on a branch it
never takes still lands in the ``process`` lane, which only costs speed. The opposite
mistake, a process hidden behind a third-party call, is caught at run time by
:class:`SpawnWatch` (an audit hook): a ``unit`` test that starts a process fails, naming
what it started, so the fast lane never silently grows process tests.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

SPAWNING_MODULES = frozenset({"subprocess", "multiprocessing", "concurrent.futures.process"})
SPAWNING_NAMES = frozenset({"subprocess", "multiprocessing", "ProcessPoolExecutor"})
OS_SPAWNERS = frozenset(
    {
        "fork",
        "forkpty",
        "system",
        "popen",
        "posix_spawn",
        "posix_spawnp",
        "execv",
        "execve",
        "execvp",
        "execvpe",
        "execl",
        "execle",
        "execlp",
        "execlpe",
        "spawnv",
        "spawnve",
        "spawnvp",
        "spawnvpe",
        "spawnl",
        "spawnle",
        "spawnlp",
        "spawnlpe",
    }
)
# Audit events (see the ``sys.audit`` events table) raised when a process is created.
SPAWN_EVENTS = frozenset({"subprocess.Popen", "os.fork", "os.forkpty", "os.system", "os.exec"})
SPAWN_EVENTS_PREFIXES = ("os.posix_spawn", "os.spawn")
OURS = ("mole", "tests")


def _is_ours(obj: object) -> bool:
    module = getattr(obj, "__module__", None) or ""
    if isinstance(obj, types.ModuleType):
        module = obj.__name__
    return module.split(".")[0] in OURS


def _our_module(name: str) -> types.ModuleType | None:
    """The project or test module a dotted name inside a function imports, if any."""
    if name.split(".")[0] not in OURS or name in OURS:
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _code_names(code: types.CodeType) -> set[str]:
    """Every global and attribute name a code object (and the code nested in it) uses."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


class SpawnAnalysis:
    """Memoised answer to "can this object start a process?" for functions and classes."""

    def __init__(self) -> None:
        self._known: dict[int, bool] = {}
        self._keep: list[object] = []  # keeps analysed objects alive, so ids stay unique

    def spawns(self, obj: object) -> bool:
        obj = inspect.unwrap(obj) if callable(obj) else obj
        key = id(obj)
        if key in self._known:
            return self._known[key]
        self._known[key] = False  # a cycle answers "no" while it is being worked out
        self._keep.append(obj)
        answer = self._analyse(obj)
        self._known[key] = answer
        return answer

    def _analyse(self, obj: object) -> bool:
        if isinstance(obj, staticmethod | classmethod):
            return self.spawns(obj.__func__)
        if isinstance(obj, property):
            return any(self.spawns(f) for f in (obj.fget, obj.fset) if f is not None)
        if isinstance(obj, types.MethodType):
            return self.spawns(obj.__func__)
        if isinstance(obj, types.FunctionType):
            return self._function_spawns(obj)
        if isinstance(obj, type) and _is_ours(obj):
            members: Iterable[object] = [
                *vars(obj).values(),
                *(base for base in obj.__bases__ if _is_ours(base)),
            ]
            return any(self.spawns(member) for member in members)
        return False

    def _function_spawns(self, function: types.FunctionType) -> bool:
        names = _code_names(function.__code__)
        # an import inside the function puts the module's name among the code's names
        if names & SPAWNING_NAMES or ("os" in names and names & OS_SPAWNERS):
            return True
        scope = function.__globals__
        return any(
            self._name_spawns(scope[name] if name in scope else _our_module(name), names)
            for name in names
        )

    def _name_spawns(self, value: object, names: set[str]) -> bool:
        if value is None:
            return False
        if isinstance(value, types.ModuleType):
            if value.__name__ in SPAWNING_MODULES:
                return True
            if value.__name__ == "os":
                return bool(names & OS_SPAWNERS)
            if _is_ours(value):
                return any(
                    self.spawns(getattr(value, name)) for name in names if hasattr(value, name)
                )
            return False
        module = getattr(value, "__module__", None) or ""
        if module in SPAWNING_MODULES or module.startswith("multiprocessing."):
            return True
        if _is_ours(value):
            return self.spawns(value)
        return False


def fixture_function(
    name: str, places: Iterable[types.ModuleType | type]
) -> Callable[..., Any] | None:
    """The function behind the fixture ``name``, looked up in ``places`` (modules or a test
    class, nearest first). Fixtures from pytest and its plugins are not found and need no
    analysis."""
    for place in places:
        candidate = getattr(place, name, None)
        if candidate is not None and callable(candidate):
            function: Callable[..., Any] = inspect.unwrap(candidate)
            return function
    return None


class SpawnWatch:
    """Run-time check of the rule: an audit hook notes every process creation while a
    ``unit`` test runs, so the test can be failed with the name of what it started."""

    def __init__(self) -> None:
        self.watching = False
        self.seen: list[str] = []
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.watching:
            return
        if event in SPAWN_EVENTS or event.startswith(SPAWN_EVENTS_PREFIXES):
            shown = args[0] if event in {"subprocess.Popen", "os.exec"} else args
            self.seen.append(f"{event}: {shown!r}"[:200])

    def start(self) -> None:
        self.seen = []
        self.watching = True

    def stop(self) -> list[str]:
        self.watching = False
        return self.seen
