"""Where a running ``mole up`` stack lives, written to its data directory.

``mole up`` records its URL, ports, data directory, key files and the pid of each process
in ``<data dir>/stack.json`` (mode 0600) while it runs, so ``mole classify``, ``mole
status``, ``mole logs`` and ``mole down`` find the stack without flags. A record whose
``mole up`` process is gone (killed with SIGKILL, machine rebooted) counts as no stack.
"""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "stack.json"


def default_data_dir() -> Path:
    """``MOLE_DATA_DIR``, else ``~/.cache/mole``: where ``mole up`` keeps its state."""
    return Path(os.environ.get("MOLE_DATA_DIR") or Path.home() / ".cache" / "mole")


@dataclass
class StackState:
    """What ``mole up`` tells the other commands about the stack it runs."""

    pid: int
    url: str
    http_port: int
    host: str
    data_dir: str
    log_dir: str
    started_at: float
    monolithic: bool = False
    broker_url: str | None = None
    broker_port: int | None = None
    keys_dir: str | None = None
    processes: dict[str, int] = field(default_factory=dict)

    def operator_env(self) -> dict[str, str]:
        """The environment a command needs to reach this stack's broker."""
        env: dict[str, str] = {}
        if self.broker_url:
            env["MOLE_BROKER_URL"] = self.broker_url
        if self.keys_dir:
            keys = Path(self.keys_dir)
            env["MOLE_CURVE_SERVER_KEY"] = str(keys / "broker.key")
            env["MOLE_CURVE_SECRET_KEY"] = str(keys / "operator.key_secret")
        return env


def state_path(data_dir: Path) -> Path:
    return data_dir / STATE_FILE


def write_state(state: StackState) -> None:
    """Write atomically (readers never see half a file), readable by this user only."""
    path = state_path(Path(state.data_dir))
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(state), out, indent=2)
    os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    """Is ``pid`` a running process? A zombie (exited, not yet reaped) is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    try:  # Linux: the state letter follows the parenthesised command name
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_state(data_dir: Path | None = None) -> StackState | None:
    """The running stack of ``data_dir`` (default data dir if None), or None."""
    path = state_path(data_dir or default_data_dir())
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
        state = StackState(**raw)
    except (OSError, ValueError, TypeError):
        return None
    return state if pid_alive(state.pid) else None


def remove_state(data_dir: Path, pid: int) -> None:
    """Remove the record if it is still ``pid``'s (a newer stack may have replaced it)."""
    path = state_path(data_dir)
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


def apply_stack_defaults(environ: MutableMapping[str, str]) -> StackState | None:
    """Point a command at the running stack unless the environment already names a broker.

    Sets ``MOLE_BROKER_URL`` and the operator's CURVE key variables from the stack's record
    when none of them is set; returns the stack used, or None.
    """
    if any(environ.get(v) for v in ("MOLE_BROKER_URL", "MOLE_CURVE_SERVER_KEY")):
        return None
    data_dir = environ.get("MOLE_DATA_DIR")
    state = read_state(Path(data_dir) if data_dir else None)
    if state is None or state.monolithic:
        return None
    environ.update(state.operator_env())
    return state
