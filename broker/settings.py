"""The broker's settings: defaults, then ``MOLE_*`` environment variables, then flags.

One small function reads the environment (:func:`settings_from_env`); everything else
takes a :class:`BrokerSettings`, so tests build one directly with short heartbeats.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

DEFAULT_BIND = "tcp://127.0.0.1:5555"  # loopback: a wider bind needs CURVE (bind_policy)


class SettingsError(ValueError):
    """A setting (flag or environment variable) has a value the broker cannot use."""


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Everything that tunes the broker. Times are seconds, sizes bytes.

    Attributes:
        bind: ZeroMQ endpoint of the one ROUTER socket (clients and workers share it).
        heartbeat_interval: how often the broker heartbeats each worker, and how often it
            expects to hear from each worker.
        liveness: heartbeats a worker may miss before it is purged; a worker is dead after
            ``heartbeat_interval * liveness`` of silence.
        queue_limit: requests that may wait per service; one more is ``overloaded`` at once.
        total_queue_limit: requests that may wait over all services together (a bound
            against clients inventing service names).
        default_deadline: deadline of a request that carries no ``ttl`` (opaque RFC 18
            bodies, or our header without one).
        max_deadline: longest deadline the broker honours; longer ``ttl`` values are cut.
        max_attempts: dispatches a request may get (the first one included) before a lost
            worker turns it into ``worker_lost``.
        max_message_bytes: largest message (all frames together) the broker accepts; also
            set as ``ZMQ_MAXMSGSIZE`` so a bigger single frame drops that peer's connection.
        max_slots: most concurrent requests one worker may ask for in its READY metadata.
        hwm: ZeroMQ send/receive high-water mark per peer, in messages.
        release_grace: how long after a request's deadline the broker still keeps its slot
            on the worker reserved, waiting for the (late) reply, before freeing it.
        curve_secret: the broker's ``.key_secret`` file (``mole keys generate broker``);
            when set, every connection must use CURVE with the broker's public key.
        curve_allow: directory of allow-listed public ``.key`` files; only peers holding one
            of these keys may connect. Without it (but with ``curve_secret``) any key is
            accepted: encryption without authentication. Re-read every heartbeat interval:
            removing a file cuts that peer off.
        curve_acl: optional JSON file mapping keys (file stem or z85) to the services they
            may register as workers (``broker.acl``); needs ``curve_allow``.
        attempt_timeout: seconds a worker may hold a request before the broker also gives
            it to another free worker of the service (the first final answer wins); 0
            derives it from each request's deadline: deadline / max_attempts, at least
            ``MIN_DERIVED_ATTEMPT_TIMEOUT``.
        service_attempt_timeouts: per-service attempt timeouts, ``"name=seconds,..."``; a
            name ending in ``*`` is a prefix. Overrides ``attempt_timeout``.
        suspect_after: attempt timeouts in a row after which a worker is suspect: it gets
            no new requests until it answers again or is purged.
        drain_timeout: on SIGTERM the broker stops taking new requests and serves the ones
            queued or in flight for at most this long before it shuts down (0: at once).
        insecure: accept binding a non-loopback address without CURVE and an allow-list
            (``broker.bind_policy`` refuses it otherwise); a warning is logged on every start.
    """

    bind: str = DEFAULT_BIND
    heartbeat_interval: float = 2.5
    liveness: int = 3
    queue_limit: int = 1000
    total_queue_limit: int = 100_000
    default_deadline: float = 30.0
    max_deadline: float = 3600.0
    max_attempts: int = 3
    max_message_bytes: int = 16 * 1024 * 1024
    max_slots: int = 1024
    hwm: int = 100_000
    release_grace: float = 10.0
    curve_secret: str | None = None
    curve_allow: str | None = None
    curve_acl: str | None = None
    drain_timeout: float = 10.0
    attempt_timeout: float = 0.0
    service_attempt_timeouts: str = ""
    suspect_after: int = 2
    insecure: bool = False

    @property
    def expiry(self) -> float:
        """Seconds of silence after which a worker is purged."""
        return self.heartbeat_interval * self.liveness

    def validated(self) -> BrokerSettings:
        """Return self after checking every value; raise :class:`SettingsError` otherwise."""
        if not self.bind:
            raise SettingsError("bind endpoint is empty; give e.g. --bind tcp://*:5555")
        positive = ("heartbeat_interval", "default_deadline", "max_deadline")
        for name in positive:
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be > 0 (got {getattr(self, name)!r})")
        at_least_one = (
            "liveness",
            "queue_limit",
            "total_queue_limit",
            "max_attempts",
            "max_message_bytes",
            "max_slots",
            "hwm",
            "suspect_after",
        )
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1 (got {getattr(self, name)!r})")
        if self.attempt_timeout < 0:
            raise SettingsError(f"attempt_timeout must be >= 0 (got {self.attempt_timeout!r})")
        parse_service_timeouts(self.service_attempt_timeouts)
        if self.drain_timeout < 0:
            raise SettingsError(f"drain_timeout must be >= 0 (got {self.drain_timeout!r})")
        if self.release_grace < 0:
            raise SettingsError(f"release_grace must be >= 0 (got {self.release_grace!r})")
        if self.curve_allow and not self.curve_secret:
            raise SettingsError(
                "an allow-list of CURVE keys needs the broker's secret key too "
                "(--curve-secret / MOLE_BROKER_CURVE_SECRET)"
            )
        if self.curve_acl and not self.curve_allow:
            raise SettingsError(
                "a CURVE ACL needs an allow-list of keys too "
                "(--curve-allow / MOLE_BROKER_CURVE_ALLOW)"
            )
        return self


#: environment variable -> settings field. The heartbeat pair is shared with workers.
ENV_VARS: dict[str, str] = {
    "MOLE_BROKER_BIND": "bind",
    "MOLE_HEARTBEAT_INTERVAL": "heartbeat_interval",
    "MOLE_HEARTBEAT_LIVENESS": "liveness",
    "MOLE_BROKER_QUEUE_LIMIT": "queue_limit",
    "MOLE_BROKER_TOTAL_QUEUE_LIMIT": "total_queue_limit",
    "MOLE_BROKER_DEFAULT_DEADLINE": "default_deadline",
    "MOLE_BROKER_MAX_DEADLINE": "max_deadline",
    "MOLE_BROKER_MAX_ATTEMPTS": "max_attempts",
    "MOLE_BROKER_MAX_MESSAGE_BYTES": "max_message_bytes",
    "MOLE_BROKER_MAX_SLOTS": "max_slots",
    "MOLE_BROKER_CURVE_SECRET": "curve_secret",
    "MOLE_BROKER_CURVE_ALLOW": "curve_allow",
    "MOLE_BROKER_CURVE_ACL": "curve_acl",
    "MOLE_BROKER_DRAIN_TIMEOUT": "drain_timeout",
    "MOLE_BROKER_ATTEMPT_TIMEOUT": "attempt_timeout",
    "MOLE_BROKER_SERVICE_ATTEMPT_TIMEOUTS": "service_attempt_timeouts",
    "MOLE_BROKER_SUSPECT_AFTER": "suspect_after",
    "MOLE_BROKER_INSECURE": "insecure",
}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

_TYPES = {f.name: f.type for f in fields(BrokerSettings)}


def _convert(name: str, raw: str, source: str) -> bool | int | float | str:
    kind = _TYPES[name]
    if kind == "bool":
        if raw.strip().lower() in _TRUE:
            return True
        if raw.strip().lower() in _FALSE:
            return False
        raise SettingsError(f"{source}={raw!r} is not a yes/no value (use 1 or 0)")
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError as err:
        raise SettingsError(f"{source}={raw!r} is not a valid {kind}") from err
    return raw


def settings_from_env(
    env: Mapping[str, str] | None = None, base: BrokerSettings | None = None
) -> BrokerSettings:
    """Defaults overridden by the ``MOLE_*`` variables set in ``env`` (os.environ if None)."""
    env = os.environ if env is None else env
    # Keys are field names chosen at run time, so no static type per key: Any, and
    # _convert has already parsed each value as its field's declared type.
    values: dict[str, Any] = {}
    for var, name in ENV_VARS.items():
        raw = env.get(var)
        if raw is not None and raw != "":
            values[name] = _convert(name, raw, var)
    return replace(base or BrokerSettings(), **values)


def with_overrides(settings: BrokerSettings, **overrides: Any) -> BrokerSettings:
    """``settings`` with every override that is not None applied (flags over env)."""
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def parse_service_timeouts(text: str) -> dict[str, float]:
    """``"svc=5,gpu/*=30"`` -> ``{"svc": 5.0, "gpu/*": 30.0}``; raises SettingsError."""
    timeouts: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.rpartition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not sep or not name.strip() or not seconds > 0:
            raise SettingsError(
                f"service attempt timeout {item!r} must be NAME=SECONDS with SECONDS > 0 "
                "(e.g. 'llama-2-7b-hf=20,gpu/*=40')"
            )
        timeouts[name.strip()] = seconds
    return timeouts
