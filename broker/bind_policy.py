"""Secure by default: a broker reachable from other machines must authenticate its peers.

Any process that reaches an unauthenticated broker can register as a worker of any
service, read the users' texts and forge their answers. So the broker refuses to bind a
non-loopback address unless CURVE is on with an allow-list of peer keys; ``--insecure``
(``MOLE_BROKER_INSECURE=1``) accepts the risk explicitly, and the broker then logs a warning
on every start so the choice stays visible.

Loopback (``127.0.0.0/8``, ``::1``, ``localhost``) and the host-local transports ``ipc://``
and ``inproc://`` are reachable only from this machine: they need no keys.
"""

from __future__ import annotations

import ipaddress

from mole.broker.settings import BrokerSettings, SettingsError

#: What the refusal tells the operator to do; kept in one place for the README and tests.
HOW_TO_SECURE = (
    "make keys with `mole keys generate broker --dir keys` (and one pair per worker and "
    "client, their public .key files copied into an allow-list directory), then start the "
    "broker with --curve-secret keys/broker.key_secret --curve-allow DIR; or bind "
    "tcp://127.0.0.1:PORT for this machine only; or pass --insecure "
    "(MOLE_BROKER_INSECURE=1) to accept that anyone who reaches the port can pose as a "
    "worker or a client"
)


class InsecureBindRefused(SettingsError):
    """The broker would listen beyond this machine without authenticating its peers."""


def endpoint_host(endpoint: str) -> str | None:
    """The host part of a ``tcp://HOST:PORT`` endpoint; None for host-local transports."""
    transport, sep, rest = endpoint.partition("://")
    if not sep:
        raise SettingsError(f"bind endpoint {endpoint!r} has no transport (e.g. tcp://)")
    if transport in ("ipc", "inproc"):
        return None
    if rest.startswith("["):  # tcp://[::1]:5555
        return rest[1:].partition("]")[0]
    host = rest.rpartition(":")[0] if ":" in rest else rest
    # tcp://eth0;127.0.0.1:5555 binds the interface before ';' (libzmq source syntax)
    return host.partition(";")[0] if ";" in host else host


def is_loopback(endpoint: str) -> bool:
    """True when only processes of this machine can reach ``endpoint``."""
    host = endpoint_host(endpoint)
    if host is None:
        return True
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*', an interface name or a host name: other machines may reach it
        return False


def check_bind(settings: BrokerSettings) -> str | None:
    """Refuse an exposed, unauthenticated bind; return a warning to log, or None.

    Raises:
        InsecureBindRefused: ``settings.bind`` is not loopback, CURVE with an allow-list is
            not configured, and ``settings.insecure`` is off.
    """
    if is_loopback(settings.bind):
        return None
    if settings.curve_secret and settings.curve_allow:
        return None
    if settings.curve_secret:
        problem = (
            f"the broker would listen on {settings.bind} with CURVE but no allow-list "
            "(--curve-allow): traffic is encrypted, yet any key may register as a worker"
        )
    else:
        problem = (
            f"the broker would listen on {settings.bind}, reachable from other machines, "
            "without CURVE: anyone who reaches the port can pose as a worker and read and "
            "forge the users' requests"
        )
    if not settings.insecure:
        raise InsecureBindRefused(f"refusing to start: {problem}. To fix it, {HOW_TO_SECURE}")
    return f"INSECURE (--insecure): {problem}"
