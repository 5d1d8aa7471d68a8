"""CURVE encryption and authentication for the broker's socket (optional).

With a secret key the broker's ROUTER becomes a CURVE server. With an allow-list
directory, a ZAP authenticator (``zmq.auth``'s thread authenticator) admits only the
public keys in that directory, through a :class:`KeyRing` the broker re-reads every
heartbeat interval (removing a ``.key`` file revokes that peer; see ``broker.engine`` for how
an already connected peer is cut off). An optional ACL (``broker.acl``) says which keys may
register which services.

Pitfalls handled here (docs/design.md): without an authenticator a CURVE server accepts any key,
so the socket sets a ZAP domain and ``ZAP_ENFORCE_DOMAIN`` to fail closed; and since
``ROUTER_HANDOVER`` lets another allowed key take over a routing id, the broker turns
handover off under CURVE and binds each worker registration to its key (``broker.admission``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from mole.broker.acl import Acl, load_acl
from mole.broker.settings import BrokerSettings, SettingsError

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("mole.broker")

ZAP_DOMAIN = "mole"

#: One ``.key`` file as :meth:`KeyRing.refresh` compares it: (name, mtime_ns, size), or
#: ``("<unreadable>",)`` when the directory cannot be listed.
_KeyFileStamp = tuple[str, int, int] | tuple[str]
#: The ACL file's (mtime_ns, size), ``("<unreadable>",)``, or None without an ACL.
_AclStamp = tuple[int, int] | tuple[str] | None
#: Everything whose change makes the ring re-read its files.
_Signature = tuple[tuple[_KeyFileStamp, ...], _AclStamp]


class KeyRing:
    """The allow-listed public keys (z85 -> file stem) and the optional ACL, re-readable.

    The ZAP thread calls :meth:`callback` for every new connection while the broker's loop
    may swap ``keys`` in :meth:`refresh`; the swap is one attribute assignment of a new
    dict, so the thread always sees a whole list, old or new.
    """

    def __init__(self, allow_dir: str | Path, acl_file: str | Path | None = None) -> None:
        self.allow_dir = Path(allow_dir)
        self.acl_file = Path(acl_file) if acl_file else None
        self.keys: dict[str, str] = {}
        self._stems: dict[str, str] = {}  # every key ever loaded -> stem, to name revoked ones
        self.acl: Acl | None = None
        self._signature: _Signature | None = None

    # -- ZAP -------------------------------------------------------------------------
    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP credentials check (``configure_curve_callback``): is ``key`` allow-listed?"""
        try:
            return key.decode("ascii") in self.keys
        except (UnicodeDecodeError, AttributeError):
            return False

    # -- questions ---------------------------------------------------------------------
    def allows(self, key: str | None) -> bool:
        return key is not None and key in self.keys

    def name(self, key: str | None) -> str:
        """How logs name a key: its file stem, else a short prefix of the public key."""
        if key is None:
            return "<no key>"
        stem = self.keys.get(key) or self._stems.get(key)
        return f"{stem}.key" if stem else f"public key {key[:8]}..."

    def may_register(self, key: str | None, service: str) -> bool:
        """May this key register ``service``? Always when no ACL is given."""
        if self.acl is None:
            return True
        return key is not None and self.acl.allows(key, self.keys.get(key), service)

    def may_manage(self, key: str | None) -> bool:
        """May this key use the broker's management services (``mmi.drain``)?

        Any allow-listed key when no ACL is given; else only keys the ACL grants
        ``@manage`` (see ``broker.acl``).
        """
        if not self.allows(key):
            return False
        if self.acl is None:
            return True
        return key is not None and self.acl.may_manage(key, self.keys.get(key))

    # -- loading -----------------------------------------------------------------------
    def _current_signature(self) -> _Signature:
        listing: list[_KeyFileStamp]
        try:
            listing = sorted(
                (e.name, e.stat().st_mtime_ns, e.stat().st_size)
                for e in os.scandir(self.allow_dir)
                if e.name.endswith(".key")
            )
        except OSError:
            listing = [("<unreadable>",)]
        acl: _AclStamp = None
        if self.acl_file is not None:
            try:
                st = self.acl_file.stat()
                acl = (st.st_mtime_ns, st.st_size)
            except OSError:
                acl = ("<unreadable>",)
        return (tuple(listing), acl)

    def load(self) -> None:
        """First load, strict: a bad key file or ACL raises :class:`SettingsError`."""
        if not self.allow_dir.is_dir():
            raise SettingsError(
                f"CURVE allow-list {self.allow_dir} is not a directory of .key files"
            )
        self._signature = self._current_signature()
        self.keys = self._read_keys(strict=True)
        if self.acl_file is not None:
            self.acl = load_acl(self.acl_file)
            unknown = [
                n for n in self.acl.rules if n not in self.keys.values() and n not in self.keys
            ]
            if unknown:
                log.warning(
                    "CURVE ACL %s names keys that are not allow-listed (yet): %s",
                    self.acl_file,
                    ", ".join(sorted(unknown)),
                )

    def refresh(self) -> bool:
        """Re-read the directory and ACL if they changed; True when something changed.

        Lenient, since the broker is serving: an unreadable key file is left out (that
        peer is refused) and a broken ACL keeps the last good one, both logged as errors.
        """
        signature = self._current_signature()
        if signature == self._signature:
            return False
        self._signature = signature
        self.keys = self._read_keys(strict=False)
        if self.acl_file is not None:
            try:
                self.acl = load_acl(self.acl_file)
            except SettingsError as err:
                log.error("%s; keeping the previous ACL until the file is fixed", err)
        return True

    def _read_keys(self, *, strict: bool) -> dict[str, str]:
        import zmq.auth

        keys: dict[str, str] = {}
        try:
            paths = sorted(self.allow_dir.glob("*.key"))
        except OSError as err:
            if strict:
                raise SettingsError(
                    f"cannot list CURVE allow-list {self.allow_dir}: {err}"
                ) from err
            log.error(
                "cannot list CURVE allow-list %s: %s; refusing every key", self.allow_dir, err
            )
            return {}
        for path in paths:
            try:
                public, _ = zmq.auth.load_certificate(str(path))
                if public is None or len(public) != 40:
                    raise ValueError("no 40-character z85 public key")
            except (OSError, ValueError) as err:
                if strict:
                    raise SettingsError(f"bad CURVE public key file {path}: {err}") from err
                log.error("bad CURVE public key file %s: %s; that key is refused", path, err)
                continue
            keys[public.decode("ascii")] = path.stem
        self._stems.update(keys)
        return keys


def enable_curve(
    sock: zmq.Socket[bytes], settings: BrokerSettings, context: zmq.Context[zmq.Socket[bytes]]
) -> tuple[ThreadAuthenticator | None, KeyRing | None]:
    """Make ``sock`` a CURVE server (before bind); return ``(authenticator, keyring)``.

    Both are None without an allow-list (encryption only). Raises:
        SettingsError: a key file is missing or holds no secret key, the allow-list
            directory does not exist or holds a bad key file, or the ACL is invalid.
    """
    import zmq.auth
    from zmq.auth.thread import ThreadAuthenticator

    try:
        public, secret = zmq.auth.load_certificate(str(settings.curve_secret))
    except (OSError, ValueError) as err:
        raise SettingsError(f"cannot load the broker's CURVE key: {err}") from err
    if secret is None:
        raise SettingsError(
            f"{settings.curve_secret} holds no secret key; pass the "
            ".key_secret file written by `mole keys generate broker`"
        )
    authenticator: ThreadAuthenticator | None = None
    keyring: KeyRing | None = None
    if settings.curve_allow:
        keyring = KeyRing(settings.curve_allow, settings.curve_acl)
        keyring.load()
        authenticator = ThreadAuthenticator(context)
        authenticator.start()
        authenticator.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=keyring)
        if keyring.keys:
            log.info(
                "CURVE on: %d allow-listed public key(s) in %s%s",
                len(keyring.keys),
                keyring.allow_dir,
                f", ACL {keyring.acl_file}" if keyring.acl else "",
            )
        else:
            log.warning(
                "CURVE on with an EMPTY allow-list %s: every peer is refused until "
                "a .key file is added",
                keyring.allow_dir,
            )
    else:
        log.warning(
            "CURVE on without an allow-list: traffic is encrypted but any key may "
            "connect (give --curve-allow DIR to authenticate peers)"
        )
    sock.curve_server = True
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    if authenticator is not None:
        sock.zap_domain = ZAP_DOMAIN.encode()
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    return authenticator, keyring


def peer_key(frame: zmq.Frame) -> str | None:
    """The z85 public key a received frame's sender authenticated with (CURVE), or None."""
    try:
        key = frame.get("User-Id")
    except (zmq.ZMQError, AttributeError, UnicodeDecodeError):
        return None
    # pyzmq types a named property as ``int | str``; "User-Id" is always a string.
    return key if isinstance(key, str) else None
