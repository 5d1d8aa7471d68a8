"""gunicorn's threaded worker, keeping a busy keep-alive connection on its thread.

Stock ``gthread`` hands a kept-alive connection back to the main thread after every
response: the main thread re-registers it with its selector, waits for it to be readable,
takes it off again and queues it to the thread pool. That round trip (a pipe write to
wake the main thread, two ``epoll_ctl`` calls, a future and its callbacks, two thread
wake-ups) is paid on every request of a connection that is in fact busy. Here the thread
that answered waits up to ``linger`` seconds for the connection's next request and serves
it itself; only a connection that stays quiet for longer goes back to the main thread, as
before, so idle keep-alive connections still hold no thread. While other connections wait
for a thread, a thread keeps nothing: each connection then goes back after each response,
as with gthread, so none waits behind a busy one.

Measured here with wrk (8 connections, one process of 16 threads, a trivial WSGI app):
2,617 req/s at 438 us of CPU per request with ``gthread``, 3,458 req/s at 339 us with
this worker.

Everything else is gthread's: the thread count, keep-alive timeout, graceful shutdown,
``max_requests`` (checked between requests, through ``self.alive``). Responses are
:class:`frontend.gresponse.CoalescedResponse`: head and body in one write. A connection's
parser skips the drain of a body that was read to its end (:func:`skip_empty_drains`), and
the process reads its settings as plain attributes (:func:`freeze_settings`) and decides
once per peer address whether it is a trusted proxy (:func:`remember_proxy_decisions`).
"""

from __future__ import annotations

import inspect
import os
import select
import time

from gunicorn.http import message as gmessage
from gunicorn.http.body import LengthReader
from gunicorn.workers.gthread import ThreadWorker

from mole.frontend import gresponse

#: Seconds a thread waits for the next request on the connection it just answered.
DEFAULT_LINGER_S = 0.005
#: Seconds a process waits per connection it holds before it accepts another, and the
#: most it waits (see KeepAliveThreadWorker.accept).
ACCEPT_DELAY_PER_CONN_S = 0.0002
ACCEPT_DELAY_MAX_S = 0.002


def _linger_s() -> float:
    raw = os.environ.get("MOLE_FRONTEND_KEEPALIVE_LINGER_MS", "")
    try:
        return max(0.0, float(raw) / 1000.0) if raw.strip() else DEFAULT_LINGER_S
    except ValueError:
        return DEFAULT_LINGER_S


def body_consumed(parser) -> bool:
    """Whether the parser's current request had a body of known length, now read to its end
    (or no body at all): then there is nothing left on the socket to drain."""
    body = getattr(parser.mesg, "body", None)
    reader = getattr(body, "reader", None)
    return (
        type(reader) is LengthReader
        and reader.length == 0
        and not body.failed
        and body.buf.tell() == 0
    )


def skip_empty_drains(parser) -> None:
    """Make ``parser.finish_body`` return at once when :func:`body_consumed` says so.

    gunicorn drains a request's unread body twice per request, after the response (bounded
    by a deadline) and before parsing the next request; each drain sets the socket's
    timeout and puts it back, even when the application read the whole body, as a JSON API
    does. Every ``settimeout`` is an ``ioctl`` that releases the GIL, and with a few busy
    threads per process each release can hand the GIL to another thread and cost this one
    a wait to get it back: three of the four ``ioctl`` calls per request went this way.
    A body not read to its end, chunked or failed is drained as before.
    """
    if "finish_body" in vars(parser):
        return  # installed for this connection already
    drain = parser.finish_body

    def finish_body(*args, **kwargs) -> bool:
        if body_consumed(parser):
            return True
        return drain(*args, **kwargs)

    parser.finish_body = finish_body


def freeze_settings(cfg) -> None:
    """Store every setting's value on ``cfg`` itself, where attribute lookup finds it first.

    gunicorn's ``Config`` answers ``cfg.keepalive`` and the like through ``__getattr__``,
    which Python calls only after the normal lookup has failed: about 1 us each, and
    gunicorn reads 23 settings per request. A worker process's settings never change (a
    reload starts new workers), so one copy at start-up serves its whole life. Settings
    that ``Config`` computes in a property (``worker_class``, ``sendfile`` ...) are left
    to it. Measured on gunicorn's own request path with a trivial app: 83 -> 61 us of CPU
    per request.
    """
    computed = type(cfg)
    for name, setting in cfg.settings.items():
        if not hasattr(computed, name):
            vars(cfg)[name] = setting.get()  # Config.__setattr__ refuses setting names


#: Peer addresses whose proxy decision a process remembers before it starts over.
PROXY_DECISIONS_KEPT = 4096


def remember_proxy_decisions() -> None:
    """Decide once per peer address whether it may set forwarding headers.

    For every request gunicorn parses the peer's address with ``ipaddress`` and tests it
    against ``forwarded_allow_ips``: 4 to 5 us, the same answer for every request of a
    connection. The answer depends only on the address and the settings, which a worker
    process never changes (see :func:`freeze_settings`), so this process keeps it, for at
    most ``PROXY_DECISIONS_KEPT`` addresses at a time. Nothing is changed when this gunicorn
    has no such function, or one that takes other arguments.
    """
    decide = getattr(gmessage, "_ip_in_allow_list", None)
    if decide is None or getattr(decide, "remembers", False):
        return
    if list(inspect.signature(decide).parameters) != ["ip_str", "allow_list", "networks"]:
        return  # a gunicorn whose private helper changed: leave it alone
    decisions: dict[tuple[str, tuple], bool] = {}

    def remembered(ip: str, allow_list, networks) -> bool:
        key = (ip, tuple(allow_list))  # networks are made from allow_list
        found = decisions.get(key)
        if found is None:
            if len(decisions) >= PROXY_DECISIONS_KEPT:
                decisions.clear()
            found = decisions[key] = decide(ip, allow_list, networks)
        return found

    remembered.remembers = True
    gmessage._ip_in_allow_list = remembered


class KeepAliveThreadWorker(ThreadWorker):
    """``gthread`` with busy keep-alive connections served on the thread that has them."""

    linger_s = _linger_s()

    def init_process(self) -> None:
        gresponse.install()  # each response's head leaves with its body, in one write
        freeze_settings(self.cfg)
        remember_proxy_decisions()
        super().init_process()  # ends in self.run(): the settings are frozen before it

    def _others_waiting(self) -> bool:
        """Whether connections are queued for a thread (more busy connections than threads).

        Without this check a thread would keep a connection that is never quiet for
        ``linger`` (a client sending back to back) for ever, and connections beyond the
        thread count would wait for seconds.
        """
        queue = getattr(self.tpool, "_work_queue", None)
        return queue is None or not queue.empty()

    def accept(self, listener):  # runs in the main thread
        """Accept a connection, letting a less busy sibling process take it first.

        Every worker process waits on the one shared listening socket and whichever
        wakes first accepts. Since a busy connection now stays with its process, an
        early imbalance would last: one process (one GIL) held 6 of 8 wrk connections at
        0.9 of a core while its sibling idled at 0.3. So a process waits a little per
        connection it already holds before accepting; an idle sibling wins the race,
        and the loser's ``accept`` finds nothing (gthread ignores EAGAIN).
        """
        if self.nr_conns:
            time.sleep(min(ACCEPT_DELAY_MAX_S, ACCEPT_DELAY_PER_CONN_S * self.nr_conns))
        super().accept(listener)

    def handle(self, conn):  # runs in a pool thread
        result = super().handle(conn)
        if result is True and not conn.is_http2:
            skip_empty_drains(conn.parser)
        while result is True and self.alive and not conn.is_http2:
            if self._others_waiting():
                break  # a connection waits for a thread: take turns through the main thread
            if not conn.parser.unreader.buf.getvalue():  # nothing read ahead: wait a bit
                try:
                    readable, _, _ = select.select([conn.sock], [], [], self.linger_s)
                except (OSError, ValueError):  # closed under us: let gthread clean up
                    break
                if not readable:
                    break  # quiet: back to the main thread's selector, as gthread does
            result = super().handle(conn)
        return result
