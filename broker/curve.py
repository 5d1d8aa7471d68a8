"""CURVE encryption and authentication for the broker's socket (optional).

With a secret key the broker's ROUTER becomes a CURVE server. With an allow-list
directory, a ZAP authenticator (``zmq.auth``'s thread authenticator) admits only the
public keys in that directory. Field-notes pitfalls handled here: without an
authenticator a CURVE server accepts any key, so the socket sets a ZAP domain and
``ZAP_ENFORCE_DOMAIN`` to fail closed; and since ``ROUTER_HANDOVER`` lets another allowed
key take over a routing id, the broker binds each worker registration to the key it
registered with (see ``broker.core``) and checks it on every message.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq

from broker.settings import BrokerSettings, SettingsError

log = logging.getLogger("mole.broker")

ZAP_DOMAIN = "mole"


def enable_curve(sock: zmq.Socket, settings: BrokerSettings, context: zmq.Context):
    """Make ``sock`` a CURVE server (before bind); return the authenticator to stop later.

    Raises:
        SettingsError: a key file is missing or holds no secret key, or the allow-list
            directory does not exist.
    """
    import zmq.auth
    from zmq.auth.thread import ThreadAuthenticator

    try:
        public, secret = zmq.auth.load_certificate(str(settings.curve_secret))
    except (OSError, ValueError) as err:
        raise SettingsError(f"cannot load the broker's CURVE key: {err}") from err
    if secret is None:
        raise SettingsError(f"{settings.curve_secret} holds no secret key; pass the "
                            ".key_secret file written by `mole keys generate broker`")
    authenticator = None
    if settings.curve_allow:
        allow = Path(settings.curve_allow)
        if not allow.is_dir():
            raise SettingsError(f"CURVE allow-list {allow} is not a directory of .key files")
        authenticator = ThreadAuthenticator(context)
        authenticator.start()
        authenticator.configure_curve(domain=ZAP_DOMAIN, location=str(allow))
        count = len(list(allow.glob("*.key")))
        log.info("CURVE on: %d allow-listed public key(s) in %s", count, allow)
    else:
        log.warning("CURVE on without an allow-list: traffic is encrypted but any key may "
                    "connect (give --curve-allow DIR to authenticate peers)")
    sock.curve_server = True
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    if authenticator is not None:
        sock.zap_domain = ZAP_DOMAIN.encode()
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    return authenticator


def peer_key(frame: zmq.Frame) -> str | None:
    """The z85 public key a received frame's sender authenticated with (CURVE), or None."""
    try:
        return frame.get("User-Id")
    except (zmq.ZMQError, AttributeError, UnicodeDecodeError):
        return None
