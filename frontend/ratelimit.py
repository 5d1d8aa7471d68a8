"""Rate limits per user and per client address, shared by every gunicorn worker process.

Why SQLite: gunicorn runs several worker processes, and a limit kept in one process's
memory would let a client through N times faster than configured (and a brute-force
attacker N times more guesses). The counters live in one small table in the data
directory, in WAL mode with ``synchronous=OFF`` (a crash may forget a few milliseconds of
counts; that is harmless for a limiter), and each check is one short ``BEGIN IMMEDIATE``
transaction that reads and writes every key of the check at once, taken under a
``flock`` (``frontend.sqlite_db.WriterLock``) so processes queue for it without SQLite's
millisecond retry sleeps. Measured cost is about
a few tens of microseconds per check on this machine (``tests/benchmarks/bench_soak.py
--limiter-only``).

The algorithm is GCRA (the generic cell rate algorithm, a token bucket written as one
number per key): each key stores its "theoretical arrival time" ``tat``. A rate of
``N`` per ``P`` seconds spends ``P/N`` seconds of ``tat`` per unit of cost, and a request
is allowed while ``tat`` stays within ``P`` of now, so a client may burst ``N`` and then
goes on at ``N/P``. A refused request costs nothing. A row whose ``tat`` is in the past
is the same as no row, so old rows are pruned now and then.

Leases: a check that finds a client spending fast takes more than it needs from the
shared buckets, up to 1/LEASE_SHARE of the burst (at most LEASE_MAX units), and the process
answers that client's next checks from this local allowance without SQLite. Units are
taken from every bucket first, so the processes together never admit more than the rate;
the cost is that a process may hold a few units another process could have used. The size
doubles while leases are used up within LEASE_TTL_S and halves when one is not; units
left when a lease expires go back to the buckets with the next check of those keys (units a
process holds when it stops, or drops from its LEASES_KEPT table, stay spent).
Rates whose burst is below LEASE_SHARE never lease, so small limits (logins, the tests'
limits) are checked in SQLite on every request, exactly. Measured under load on this
machine: a check in SQLite costs about 95 us of CPU; one answered from a lease, a few.

If the database cannot be used (a disk error, a lock held past the busy timeout) the
check lets the request through and logs a warning: a broken limiter must not take the
service down.
"""

from __future__ import annotations

import logging
import math
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mole.frontend.sqlite_db import ProcessLocalConnection, WriterLock

log = logging.getLogger("mole.frontend.ratelimit")

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")
_OFF = ("", "0", "off", "none", "false", "no", "disabled", "unlimited")


class RateSpecError(ValueError):
    """A rate limit setting could not be read; the message shows the accepted forms."""


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` units per ``period_s`` seconds (a burst of ``count`` is allowed)."""

    count: int
    period_s: float

    @property
    def interval_s(self) -> float:
        """Seconds of allowance one unit of cost spends."""
        return self.period_s / self.count

    def __str__(self) -> str:
        return f"{self.count}/{self.period_s:g}s"


def parse_rate(text: str | None, name: str = "rate") -> Rate | None:
    """``"10/minute"``, ``"600/min"``, ``"5/30s"``, ``"100/hour"``; None for ``0``/``off``.

    Raises:
        RateSpecError: the text is not one of those forms.
    """
    if text is None or text.strip().lower() in _OFF:
        return None
    match = _RATE_RE.match(text.lower())
    if not match or match.group(3) not in _UNITS:
        raise RateSpecError(
            f"{name}={text!r}: expected COUNT/PERIOD such as '10/minute', "
            "'600/min', '5/30s' or '100/hour', or 0/off to disable"
        )
    count = int(match.group(1))
    if count == 0:
        return None
    period = float(match.group(2) or 1.0) * _UNITS[match.group(3)]
    if period <= 0:
        raise RateSpecError(f"{name}={text!r}: the period must be positive (COUNT/PERIOD)")
    return Rate(count, period)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one check: allowed, or refused with the seconds to wait."""

    allowed: bool
    retry_after_s: float = 0.0
    key: str | None = None  # the key that refused
    rate: Rate | None = None  # and its rate

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, rounded up, at least 1 (RFC 9110 delay-seconds)."""
        return str(max(1, math.ceil(self.retry_after_s - 1e-9)))


_SCHEMA = "CREATE TABLE IF NOT EXISTS buckets (key TEXT PRIMARY KEY, tat REAL NOT NULL)"
_UPSERT = (
    "INSERT INTO buckets(key, tat) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET tat=excluded.tat"
)

#: A lease holds at most 1/LEASE_SHARE of the smallest burst among its keys ...
LEASE_SHARE = 64
#: ... and at most this many units.
LEASE_MAX = 32
#: Seconds a lease's units stay usable; later they go back to the buckets.
LEASE_TTL_S = 1.0
#: Key sets a process keeps leases for (the least recently checked is dropped first).
LEASES_KEPT = 4096


ALLOWED = Decision(True)


class _Lease:
    """One process's local allowance for one set of (key, rate) checks."""

    __slots__ = ("expires", "size", "units")

    def __init__(self) -> None:
        self.units = 0.0  # units taken from the buckets and not spent yet
        self.size = 0  # extra units the next SQLite check asks for
        self.expires = 0.0


@dataclass(frozen=True, slots=True)
class _Outcome:
    decision: Decision
    granted: int = 0  # extra units taken for the lease


class RateLimiter:
    """GCRA buckets in one SQLite file; safe across threads and processes.

    One connection per process, opened on first use (never across ``fork``), shared by
    the process's threads under a lock.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 2.0,
        prune_every: int = 5000,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._prune_every = prune_every
        self._lock = threading.Lock()
        self._connection = ProcessLocalConnection(
            self.path, _SCHEMA, synchronous="OFF", busy_timeout_s=busy_timeout_s
        )
        self._writers = WriterLock(self.path)  # processes queue in the kernel, not in SQLite
        self._since_prune = 0
        self._warned_at = 0.0
        self._leases: OrderedDict[tuple[tuple[str, Rate], ...], _Lease] = OrderedDict()

    def _db(self) -> sqlite3.Connection:
        connection: sqlite3.Connection = self._connection.get()
        return connection

    def hit(self, checks: Sequence[tuple[str, Rate | None]], cost: float = 1.0) -> Decision:
        """Spend ``cost`` on every key if all of them allow it, else spend nothing.

        A cost above a rate's burst is allowed only when that bucket is full (a batch of
        more items than the burst drains it). Rates of None are skipped.
        """
        active = [(key, rate) for key, rate in checks if rate is not None]
        if not active or cost <= 0:
            return Decision(True)
        cap = min(LEASE_MAX, min(rate.count for _, rate in active) // LEASE_SHARE)
        if cap <= 0:
            with self._lock:
                return self._run(active, cost, enforce=True).decision
        return self._hit_leased(tuple(active), cost, cap)

    def hit_from_lease(
        self, checks: tuple[tuple[str, Rate], ...], cost: float = 1.0
    ) -> Decision | None:
        """``hit`` answered from this process's lease alone, without SQLite and without
        waiting for the lock; None when that cannot be done (no lease, too few units,
        expired, another thread busy). An event loop calls this first and ``hit`` in a
        thread only on None. ``checks`` holds no None rates (the caller built it once)."""
        if not checks or cost <= 0:
            return Decision(True)
        if not self._lock.acquire(blocking=False):
            return None
        try:
            lease = self._leases.get(checks)
            if lease is None or lease.units < cost or self._clock() >= lease.expires:
                return None
            lease.units -= cost
            self._leases.move_to_end(checks)
            return ALLOWED
        finally:
            self._lock.release()

    def _hit_leased(self, active: tuple[tuple[str, Rate], ...], cost: float, cap: int) -> Decision:
        """``hit`` for rates large enough to lease (see the module's docstring)."""
        with self._lock:
            now = self._clock()
            lease = self._leases.get(active)
            if lease is None:
                lease = self._leases[active] = _Lease()
                if len(self._leases) > LEASES_KEPT:
                    self._leases.popitem(last=False)  # its units stay spent: never over
            else:
                self._leases.move_to_end(active)
                if lease.units >= cost and now < lease.expires:
                    lease.units -= cost
                    return Decision(True)
            if now < lease.expires:  # used up within its time: this client is fast
                lease.size = min(cap, max(1, lease.size * 2))
            else:
                lease.size //= 2
            # what is left (too little for this cost, or expired) goes back in the same
            # transaction that takes the next lease
            refund, lease.units = lease.units, 0.0
            outcome = self._run(list(active), cost, enforce=True, extra=lease.size, refund=refund)
            if outcome.decision.allowed:
                lease.units = float(outcome.granted)
                lease.expires = now + LEASE_TTL_S
            return outcome.decision

    def charge(self, checks: Sequence[tuple[str, Rate | None]], cost: float) -> None:
        """Spend ``cost`` more on every key, allowed or not (a failed login's penalty)."""
        active = [(key, rate) for key, rate in checks if rate is not None]
        if active and cost > 0:
            with self._lock:
                self._run(active, cost, enforce=False)

    def _run(
        self,
        active: list[tuple[str, Rate]],
        cost: float,
        *,
        enforce: bool,
        extra: int = 0,
        refund: float = 0.0,
    ) -> _Outcome:
        """One SQLite check, by a caller holding ``self._lock`` (the process's threads
        share one connection)."""
        try:
            with self._writers:
                return self._transaction(active, cost, enforce, extra, refund)
        except sqlite3.Error as err:
            now = time.monotonic()
            if now - self._warned_at > 60:  # one warning a minute, not one per request
                self._warned_at = now
                log.warning(
                    "rate limiter database %s failed (%s: %s); requests are let "
                    "through unlimited until it works again",
                    self.path,
                    type(err).__name__,
                    err,
                )
            return _Outcome(Decision(True))

    def _transaction(
        self,
        active: list[tuple[str, Rate]],
        cost: float,
        enforce: bool,
        extra: int = 0,
        refund: float = 0.0,
    ) -> _Outcome:
        """Check and spend ``cost`` (plus up to ``extra`` units that fit, for a lease)
        on every key at once, after giving ``refund`` unspent leased units back."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            # read the clock holding the write lock: every process's "now" then grows in
            # the order the transactions run, so a check that waited for the lock is not
            # judged by a time older than the one before it
            now = self._clock()
            marks = ",".join("?" * len(active))
            stored = dict(
                db.execute(
                    f"SELECT key, tat FROM buckets WHERE key IN ({marks})",
                    [key for key, _ in active],
                ).fetchall()
            )
            tats = {}
            refused: Decision | None = None
            for key, rate in active:
                tat = max(float(stored.get(key, now)) - refund * rate.interval_s, now)
                tats[key] = tat
                if enforce:
                    # the furthest tat this request may reach and still be allowed
                    need = min(cost, rate.count) * rate.interval_s
                    over = tat + need - now - rate.period_s
                    if over > 1e-9:
                        if refused is None or over > refused.retry_after_s:
                            refused = Decision(False, over, key, rate)
                        continue
                    room = (now + rate.period_s - tat) / rate.interval_s - cost
                    extra = min(extra, max(0, math.floor(room + 1e-9)))
            if refused is not None:
                if refund:  # the refusal spends nothing, but the lease's units go back
                    db.executemany(_UPSERT, [(key, tats[key]) for key, _ in active])
                    db.execute("COMMIT")
                else:
                    db.execute("ROLLBACK")
                return _Outcome(refused)
            if not enforce:
                extra = 0
            updates = [(key, tats[key] + (cost + extra) * rate.interval_s) for key, rate in active]
            db.executemany(_UPSERT, updates)
            self._since_prune += 1
            if self._since_prune >= self._prune_every:
                self._since_prune = 0
                db.execute("DELETE FROM buckets WHERE tat < ?", (now,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return _Outcome(Decision(True), extra)

    def reset(self) -> None:
        """Forget every bucket (tests, and an operator unlocking everyone)."""
        with self._lock:
            self._leases.clear()
            self._db().execute("DELETE FROM buckets")

    def close(self) -> None:
        with self._lock:
            self._connection.close()
            self._writers.close()
