"""Who may do what on the bus: the one policy the broker core asks at its decision points.

The core (``broker.engine``) never looks at CURVE keys itself. At the few places where a
peer's identity matters it asks its :class:`Admission`:

* a client message arrives: :meth:`Admission.client_message` (is its key still allowed?
  it also remembers which key holds the routing id);
* a reply is about to go to a client: :meth:`Admission.may_deliver` (is the routing id
  still held by the key that asked, and is that key still allowed?);
* a worker message arrives: :meth:`Admission.worker_allowed`, and for a registered worker
  :meth:`Admission.same_worker` (a routing id taken over by another key is refused);
* a READY: :meth:`Admission.may_register` (the ACL);
* a management request (``mmi.drain``, ``mmi.resume``): :meth:`Admission.may_manage`;
* every check interval: :meth:`Admission.refresh`, after which the core asks
  :meth:`Admission.revoked_worker` / :meth:`Admission.allows` about the peers it holds.

:class:`OpenAdmission` (no CURVE allow-list) admits everyone and costs nothing on the hot
path: the core skips the key questions when ``checks_keys`` is False. :class:`KeyAdmission`
answers them from a :class:`broker.curve.KeyRing` (allow-listed keys, optional ACL).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Protocol

from mole.broker.curve import KeyRing

#: Client routing ids whose CURVE key is remembered (least recently heard forgotten first;
#: a forgotten client's pending replies are dropped, so keep it generous).
CLIENT_KEYS_LIMIT = 100_000


class Admission(Protocol):
    """The questions the broker core asks about peers' keys (see the module docstring)."""

    #: False when no key is ever checked: the shell then does not read peer keys at all.
    checks_keys: bool

    def client_message(self, client: bytes, key: str | None) -> bool: ...

    def may_deliver(self, client: bytes, key: str | None) -> bool: ...

    def worker_allowed(self, key: str | None) -> bool: ...

    def same_worker(self, registered_key: str | None, key: str | None) -> bool: ...

    def may_register(self, key: str | None, service: str) -> bool: ...

    def may_manage(self, key: str | None) -> bool: ...

    def allows(self, key: str | None) -> bool: ...

    def revoked_worker(self, key: str | None, service: str) -> str | None: ...

    def forget_revoked_clients(self) -> None: ...

    def next_check(self) -> float: ...

    def refresh(self, now: float) -> bool: ...

    def name(self, key: str | None) -> str: ...

    def describe_acl(self) -> str: ...


class OpenAdmission:
    """No allow-list: every peer may do everything (plain TCP, or CURVE for encryption only)."""

    checks_keys = False

    def client_message(self, client: bytes, key: str | None) -> bool:
        return True

    def may_deliver(self, client: bytes, key: str | None) -> bool:
        return True

    def worker_allowed(self, key: str | None) -> bool:
        return True

    def same_worker(self, registered_key: str | None, key: str | None) -> bool:
        return True

    def may_register(self, key: str | None, service: str) -> bool:
        return True

    def may_manage(self, key: str | None) -> bool:
        """Without an allow-list anyone on the bus may manage, as anyone may register."""
        return True

    def allows(self, key: str | None) -> bool:
        return True

    def revoked_worker(self, key: str | None, service: str) -> str | None:
        return None

    def forget_revoked_clients(self) -> None:
        return None

    def next_check(self) -> float:
        return math.inf

    def refresh(self, now: float) -> bool:
        return False

    def name(self, key: str | None) -> str:
        return "<no key>" if key is None else f"public key {key[:8]}..."

    def describe_acl(self) -> str:
        return "no ACL"


class KeyAdmission:
    """CURVE allow-list (and optional ACL) admission, re-read every ``check_interval``.

    Args:
        keyring: the allowed keys and ACL (already loaded).
        check_interval: seconds between re-reads of the allow-list directory and ACL.
        now: the current time, to schedule the first re-read.
    """

    checks_keys = True

    def __init__(self, keyring: KeyRing, check_interval: float, now: float) -> None:
        self.keyring = keyring
        self.check_interval = check_interval
        self._next_check = now + check_interval
        #: client routing id -> CURVE key its connection last used (insertion order = least
        #: recently heard first, bounded); a reply goes out only under the asking key
        self._client_keys: OrderedDict[bytes, str | None] = OrderedDict()

    def client_message(self, client: bytes, key: str | None) -> bool:
        """May this client's message be served? Remembers which key holds the routing id."""
        if not self.keyring.allows(key):
            return False
        keys = self._client_keys
        if client in keys and keys[client] == key:
            keys.move_to_end(client)
        else:
            keys.pop(client, None)
            keys[client] = key
            if len(keys) > CLIENT_KEYS_LIMIT:
                keys.popitem(last=False)
        return True

    def may_deliver(self, client: bytes, key: str | None) -> bool:
        """Is ``client``'s routing id still held by ``key``, and ``key`` still allowed?"""
        return self._client_keys.get(client) == key and self.keyring.allows(key)

    def worker_allowed(self, key: str | None) -> bool:
        return self.keyring.allows(key)

    def same_worker(self, registered_key: str | None, key: str | None) -> bool:
        """Does a message for a registered worker come under the key it registered with?"""
        return registered_key == key

    def may_register(self, key: str | None, service: str) -> bool:
        return self.keyring.may_register(key, service)

    def may_manage(self, key: str | None) -> bool:
        return self.keyring.may_manage(key)

    def allows(self, key: str | None) -> bool:
        return self.keyring.allows(key)

    def revoked_worker(self, key: str | None, service: str) -> str | None:
        """Why a registered worker must be cut off after a refresh, or None to keep it."""
        ring = self.keyring
        if not ring.allows(key):
            return f"its CURVE key ({ring.name(key)}) was removed from the allow-list"
        if not ring.may_register(key, service):
            return f"its CURVE key ({ring.name(key)}) may no longer register {service!r} (ACL)"
        return None

    def forget_revoked_clients(self) -> None:
        for client, key in list(self._client_keys.items()):
            if not self.keyring.allows(key):
                del self._client_keys[client]

    def next_check(self) -> float:
        return self._next_check

    def refresh(self, now: float) -> bool:
        """Re-read the allow-list and ACL when due; True when they changed."""
        if now < self._next_check:
            return False
        self._next_check = now + self.check_interval
        return self.keyring.refresh()

    def name(self, key: str | None) -> str:
        return self.keyring.name(key)

    def describe_acl(self) -> str:
        return str(self.keyring.acl_file)
