"""The broker's management services: take one worker out of service and back.

``mmi.drain`` and ``mmi.resume`` (docs/interfaces.md, "Broker services") let an operator
drain one worker for maintenance from anywhere on the bus, which RFC 18 has no command
for. This module holds what is not bookkeeping: the request format and its parsing, the
error type with its code, the record of a drained worker and the reply document. The
broker core (``broker.engine``) owns the workers and applies the commands.

Request payload (after our request header): a worker id as a msgpack string, or a map
``{"worker": ID, "disconnect": bool}``. A plain RFC 8-style client without our header
sends the worker id as UTF-8 in its one body frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from mole.protocol import mdp
from mole.protocol.errors import ErrorCode

#: Longest worker id a management request may name (ids are host-pid or hex identities).
MAX_WORKER_ID_LENGTH = 255
REQUEST_FORMAT = (
    'a worker id as a msgpack string, or a map {"worker": ID, "disconnect": false}; '
    "without our request header, the worker id as UTF-8"
)

#: Reply ``state`` values (see :func:`drain_state`).
ACTIVE, DRAINING, DRAINED, OFFLINE, RELEASED = (
    "active",
    "draining",
    "drained",
    "offline",
    "released",
)


class ManagementError(Exception):
    """A management request that cannot be carried out; answered with ``code``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ManageCommand:
    """One parsed management request."""

    service: str  # mdp.MMI_DRAIN or mdp.MMI_RESUME
    worker_id: str
    disconnect: bool = False


@dataclass
class DrainRecord:
    """A worker id the operator drained. The broker keeps it until ``mmi.resume``, so a
    worker that reconnects and sends READY again (what RFC 18 workers do after a
    DISCONNECT or a broker restart of theirs) stays out of service."""

    worker_id: str
    service: str
    since: float
    disconnect: bool


def parse_command(service: str, frame: bytes, *, enveloped: bool) -> ManageCommand:
    """Read a management request's payload frame; raises :class:`ManagementError`.

    ``enveloped``: the request carried our header, so ``frame`` is a msgpack payload;
    otherwise it is the worker id in UTF-8.
    """
    disconnect: Any = False
    if enveloped:
        try:
            payload = msgpack.unpackb(frame, raw=False, strict_map_key=False)
        except Exception as err:
            raise _bad(service, f"the payload is not msgpack ({err})") from err
        if isinstance(payload, dict):
            worker = payload.get("worker")
            disconnect = payload.get("disconnect", False)
            unknown = sorted(str(k) for k in payload if k not in ("worker", "disconnect"))
            if unknown:
                raise _bad(service, f"unknown field(s) {', '.join(unknown)}")
        else:
            worker = payload
    else:
        try:
            worker = frame.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _bad(service, "the worker id is not UTF-8") from err
    if not isinstance(worker, str) or not worker.strip():
        raise _bad(service, "no worker id given")
    if len(worker) > MAX_WORKER_ID_LENGTH or not worker.isprintable():
        raise _bad(
            service, f"the worker id must be printable, at most {MAX_WORKER_ID_LENGTH} characters"
        )
    if type(disconnect) is not bool:
        raise _bad(service, "'disconnect' must be true or false")
    if disconnect and service != mdp.MMI_DRAIN:
        raise _bad(service, "'disconnect' applies to mmi.drain only")
    return ManageCommand(service, worker, disconnect)


def _bad(service: str, problem: str) -> ManagementError:
    return ManagementError(ErrorCode.BAD_REQUEST, f"{service}: {problem}; send {REQUEST_FORMAT}")


def drain_state(record: DrainRecord | None, registered: int, in_flight: int) -> str:
    """Where a worker id stands, as a reply and ``mmi.status`` name it.

    ``active``: registered and serving; ``released``: not drained and not registered
    (resumed while away: it serves once it registers); ``draining``: drained, still
    finishing requests; ``drained``: drained and idle, still registered; ``offline``:
    drained and not registered (told DISCONNECT, or gone).
    """
    if record is None:
        return ACTIVE if registered else RELEASED
    if not registered:
        return OFFLINE
    return DRAINING if in_flight else DRAINED


def report(
    worker_id: str,
    service: str,
    record: DrainRecord | None,
    registered: int,
    in_flight: int,
    serving_workers: int,
    now: float,
) -> dict[str, Any]:
    """The reply to ``mmi.drain``/``mmi.resume`` (and a row of ``mmi.status``'s ``drained``).

    ``serving_workers``: the service's other workers that take new requests; with none,
    the service's requests wait in its queue (until their deadline) for one to come back.
    """
    doc: dict[str, Any] = {
        "worker": worker_id,
        "service": service,
        "state": drain_state(record, registered, in_flight),
        "in_flight": in_flight,
        "registered": registered,
        "serving_workers": serving_workers,
        "disconnect": bool(record and record.disconnect),
    }
    if record is not None:
        doc["since_s"] = round(max(0.0, now - record.since), 3)
        if not serving_workers:
            doc["note"] = (
                f"no other worker serves {service!r}: its requests wait in the queue (until "
                f"their deadline) for a worker to register or for `mole drain --resume "
                f"{worker_id}`"
            )
    return doc
