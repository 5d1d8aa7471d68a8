"""Frontend settings: one dataclass, and the one function that reads the environment.

Everything else in ``frontend`` takes a :class:`Settings` (or the objects built from it)
as an argument, so tests build exactly the settings they need without touching
``os.environ``. Names follow the original service where they still mean something
(``JWT_SECRET_KEY``, ``REQUEST_TIMEOUT_SECONDS``, ``SERVICE_MODE``,
``EXPERT_REGISTRY_PATH``); new ones are prefixed ``MOLE_``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

#: The secret the original's compose files and .env.example hard-code. Refused at start.
KNOWN_WEAK_SECRETS = frozenset({"your-super-secret-key-change-in-production"})
MIN_SECRET_BYTES = 32
#: uvicorn's event loop choices (its ``loop`` setting) that MOLE_EVENT_LOOP accepts.
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
SECRET_FILE_NAME = "jwt_secret"


class SettingsError(ValueError):
    """A setting is missing, malformed or unsafe; the message says which and what to do."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What the frontend needs to know. Defaults are safe for a single machine."""

    data_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "mole" / "frontend")
    broker_url: str = "tcp://127.0.0.1:5555"
    service_mode: str = "distributed"  # or "monolithic"
    jwt_secret: str | None = None  # None: generated once and kept in data_dir
    jwt_issuer: str = "mole"
    jwt_ttl_seconds: int = 1800
    request_timeout_s: float = 120.0
    allow_registration: bool = True
    bootstrap_admin: str | None = None  # "user:password"
    batch_limit: int = 100
    batch_concurrency: int = 32
    max_body_bytes: int = 1 << 20
    max_text_chars: int = 100_000
    registry_path: Path | None = None
    argon2_profile: str = "default"  # "default" (RFC 9106 low memory) or "cheap" (tests)
    broker_probe_timeout_s: float = 1.0
    user_cache_ttl_s: float = 5.0
    version: str = "0.1.0"
    # Rate limits ("COUNT/PERIOD", or "off"); see frontend.limits for what each one counts.
    rate_limit_login_user: str = "10/minute"
    rate_limit_login_address: str = "60/minute"
    rate_limit_classify_user: str = "6000/minute"  # 100 items/s sustained, a burst of 6000
    rate_limit_classify_address: str = "12000/minute"
    rate_limit_register_address: str = "20/hour"
    login_failure_cost: int = 5  # a failed login spends this many units of the login limits
    # Slow and abusive clients (frontend.server, frontend.guard, frontend.media)
    header_timeout_s: float = 10.0  # the request head must arrive within this
    body_timeout_s: float = 30.0  # the whole body must arrive within this
    max_header_bytes: int = 32 * 1024  # request line and headers together
    max_connections: int = 4096  # per serving process; beyond it a 503 and close
    keepalive_s: int = 5  # an idle kept-alive connection is closed after this
    access_log: bool = False  # one line per request (no query, body or headers)
    # Serving process (frontend.server): uvicorn's event loop ("auto": uvloop when
    # installed, "uvloop", "asyncio") and whether a response's head and body leave in one
    # send (off: measured side by side in four runs it did not lower the CPU per request
    # beyond this machine's noise; see frontend.coalesce)
    event_loop: str = "auto"
    coalesce_writes: bool = False

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests use it)."""
        return replace(self, **changes)

    @property
    def users_db(self) -> Path:
        return self.data_dir / "users.sqlite3"

    @property
    def analytics_db(self) -> Path:
        return self.data_dir / "analytics.sqlite3"

    @property
    def ratelimit_db(self) -> Path:
        return self.data_dir / "ratelimit.sqlite3"


def _bool(value: str, name: str) -> bool:
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={value!r}: expected true or false")


def _number(value: str, name: str, kind: type[float] | type[int] = float) -> Any:
    try:
        number = kind(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r}: expected a {kind.__name__}") from None
    if number <= 0:
        raise SettingsError(f"{name}={value!r}: must be positive")
    return number


def settings_from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from environment variables (``os.environ`` by default).

    Keyword overrides (command-line flags) win over the environment.

    Raises:
        SettingsError: a variable is malformed.
    """
    env = os.environ if env is None else env
    kw: dict[str, Any] = {}
    if env.get("MOLE_DATA_DIR"):
        kw["data_dir"] = Path(env["MOLE_DATA_DIR"]).expanduser() / "frontend"
    if env.get("MOLE_BROKER_URL"):
        kw["broker_url"] = env["MOLE_BROKER_URL"]
    if env.get("SERVICE_MODE"):
        mode = env["SERVICE_MODE"].strip().lower()
        if mode == "coordinator":  # the original's name for the distributed mode
            mode = "distributed"
        if mode not in ("distributed", "monolithic"):
            raise SettingsError(f"SERVICE_MODE={mode!r}: expected distributed or monolithic")
        kw["service_mode"] = mode
    if env.get("JWT_SECRET_KEY"):
        kw["jwt_secret"] = env["JWT_SECRET_KEY"]
    if env.get("MOLE_JWT_ISSUER"):
        kw["jwt_issuer"] = env["MOLE_JWT_ISSUER"]
    if env.get("JWT_ACCESS_TOKEN_EXPIRE_MINUTES"):
        minutes = _number(env["JWT_ACCESS_TOKEN_EXPIRE_MINUTES"], "JWT_ACCESS_TOKEN_EXPIRE_MINUTES")
        kw["jwt_ttl_seconds"] = int(minutes * 60)
    if env.get("REQUEST_TIMEOUT_SECONDS"):
        kw["request_timeout_s"] = _number(env["REQUEST_TIMEOUT_SECONDS"], "REQUEST_TIMEOUT_SECONDS")
    if env.get("MOLE_ALLOW_REGISTRATION"):
        kw["allow_registration"] = _bool(env["MOLE_ALLOW_REGISTRATION"], "MOLE_ALLOW_REGISTRATION")
    if env.get("MOLE_BOOTSTRAP_ADMIN"):
        kw["bootstrap_admin"] = env["MOLE_BOOTSTRAP_ADMIN"]
    if env.get("MOLE_BATCH_LIMIT"):
        kw["batch_limit"] = _number(env["MOLE_BATCH_LIMIT"], "MOLE_BATCH_LIMIT", int)
    if env.get("MOLE_MAX_BODY_BYTES"):
        kw["max_body_bytes"] = _number(env["MOLE_MAX_BODY_BYTES"], "MOLE_MAX_BODY_BYTES", int)
    if env.get("MOLE_MAX_TEXT_CHARS"):
        kw["max_text_chars"] = _number(env["MOLE_MAX_TEXT_CHARS"], "MOLE_MAX_TEXT_CHARS", int)
    if env.get("MOLE_FRONTEND_ACCESS_LOG"):
        kw["access_log"] = True
    if env.get("MOLE_EVENT_LOOP"):
        loop = env["MOLE_EVENT_LOOP"].strip().lower()
        if loop not in EVENT_LOOPS:
            raise SettingsError(
                f"MOLE_EVENT_LOOP={loop!r}: expected one of {', '.join(EVENT_LOOPS)}"
            )
        kw["event_loop"] = loop
    if env.get("MOLE_COALESCE_WRITES"):
        kw["coalesce_writes"] = _bool(env["MOLE_COALESCE_WRITES"], "MOLE_COALESCE_WRITES")
    kw.update(_rate_limits(env))
    for name, key, kind in (
        ("MOLE_HEADER_TIMEOUT_SECONDS", "header_timeout_s", float),
        ("MOLE_BODY_TIMEOUT_SECONDS", "body_timeout_s", float),
        ("MOLE_MAX_HEADER_BYTES", "max_header_bytes", int),
        ("MOLE_MAX_CONNECTIONS", "max_connections", int),
        ("MOLE_KEEPALIVE_SECONDS", "keepalive_s", int),
    ):
        if env.get(name):
            kw[key] = _number(env[name], name, kind)
    if env.get("EXPERT_REGISTRY_PATH"):
        kw["registry_path"] = Path(env["EXPERT_REGISTRY_PATH"])
    if env.get("MOLE_ARGON2_PROFILE"):
        kw["argon2_profile"] = env["MOLE_ARGON2_PROFILE"]
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**kw)


_LIMIT_FIELDS = (
    "rate_limit_login_user",
    "rate_limit_login_address",
    "rate_limit_classify_user",
    "rate_limit_classify_address",
    "rate_limit_register_address",
)


def _rate_limits(env: Mapping[str, str]) -> dict[str, Any]:
    """MOLE_RATE_LIMIT_{LOGIN,CLASSIFY} set both the per-user and the per-address limit;
    a ``_USER`` or ``_ADDRESS`` suffix sets one; MOLE_RATE_LIMIT_REGISTER (per address
    only) limits registrations; MOLE_RATE_LIMITS=off disables them all."""
    from mole.frontend.ratelimit import RateSpecError, parse_rate

    kw: dict[str, Any] = {}
    if env.get("MOLE_RATE_LIMITS", "").strip().lower() in ("0", "off", "false", "no"):
        return {name: "off" for name in _LIMIT_FIELDS}
    for kind in ("login", "classify", "register"):
        for scope in ("user", "address"):
            if f"rate_limit_{kind}_{scope}" not in _LIMIT_FIELDS:
                continue
            for name in (
                f"MOLE_RATE_LIMIT_{kind.upper()}",
                f"MOLE_RATE_LIMIT_{kind.upper()}_{scope.upper()}",
            ):
                if env.get(name):
                    try:
                        parse_rate(env[name], name)
                    except RateSpecError as err:
                        raise SettingsError(str(err)) from None
                    kw[f"rate_limit_{kind}_{scope}"] = env[name].strip()
    if env.get("MOLE_LOGIN_FAILURE_COST"):
        kw["login_failure_cost"] = _number(
            env["MOLE_LOGIN_FAILURE_COST"], "MOLE_LOGIN_FAILURE_COST", int
        )
    return kw


def check_secret(secret: str) -> str:
    """Refuse a JWT secret that anyone could guess.

    Raises:
        SettingsError: the secret is a known placeholder or shorter than 32 bytes.
    """
    if secret in KNOWN_WEAK_SECRETS:
        raise SettingsError(
            "JWT_SECRET_KEY is the published placeholder from the original service's "
            ".env.example; set a random value of at least 32 bytes, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`, or unset it "
            "to have one generated and kept in the data directory"
        )
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SettingsError(
            f"JWT_SECRET_KEY is {len(secret.encode())} bytes; HS256 needs at least "
            f"{MIN_SECRET_BYTES} random bytes. Set a longer value or unset it to have one "
            "generated and kept in the data directory"
        )
    return secret


def resolve_secret(settings: Settings) -> str:
    """The JWT signing secret: the configured one (checked), else the one kept on disk.

    The generated secret is written once with mode 0600 and ``O_EXCL``, so concurrent
    gunicorn workers agree on one value (the launcher creates it before forking).
    """
    if settings.jwt_secret is not None:
        return check_secret(settings.jwt_secret)
    path = settings.data_dir / SECRET_FILE_NAME
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        # Write a private temporary file, then link it into place: the link fails if
        # another process won the race, and nobody ever reads a half-written secret.
        tmp = path.with_name(f".{SECRET_FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SettingsError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    secret = path.read_text().strip()
    if not secret:
        raise SettingsError(f"{path} is empty; delete it to have a new secret generated")
    return check_secret(secret)
