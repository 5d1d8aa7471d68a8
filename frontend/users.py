"""The user store: usernames, argon2id hashes and roles in SQLite.

One connection per process, opened on first use (so a gunicorn master never holds one
across ``fork``), shared by the worker's threads under a lock. SQLite in WAL mode lets the
gunicorn worker processes read and write the same file.

Usernames are unique regardless of case: ``Alice`` cannot register beside ``alice``, and
logging in as ``ALICE`` is logging in as ``alice`` (the name keeps the case it was created
with, and tokens carry that spelling). Hashes made with older argon2 parameters are
replaced at the next successful login (``needs_rehash``).

The database file is created mode 0600 (``frontend.sqlite_db``): it holds password hashes.

The admin role is granted only by ``mole users create --admin`` or the explicit
``MOLE_BOOTSTRAP_ADMIN`` setting (both call :meth:`UserStore.create` with
``admin=True``); registering over HTTP never grants it.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mole.frontend.passwords import PasswordHasher
from mole.frontend.sqlite_db import ProcessLocalConnection

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{3,50}$")
PASSWORD_MIN, PASSWORD_MAX = 8, 128

# NOTE: the NOCASE index also covers files made before names were compared that way;
# every query names the collation so that index serves it whatever the column's own.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username      TEXT PRIMARY KEY COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    is_admin      INTEGER NOT NULL DEFAULT 0,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS users_username_nocase ON users (username COLLATE NOCASE)
"""
_BY_NAME = "username = ? COLLATE NOCASE"


class UserError(ValueError):
    """A user operation was refused; ``code`` and ``field`` say why."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


@dataclass(frozen=True, slots=True)
class User:
    username: str
    is_admin: bool = False
    disabled: bool = False


def check_username(username: object) -> str:
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise UserError(
            "validation_error", "username: 3 to 50 characters from A-Z a-z 0-9 _ . -", "username"
        )
    return username


def check_password(password: object) -> str:
    if not isinstance(password, str) or not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise UserError(
            "validation_error", f"password: {PASSWORD_MIN} to {PASSWORD_MAX} characters", "password"
        )
    return password


class UserStore:
    """Users in one SQLite file. Thread-safe; fork-safe (opens lazily per process)."""

    def __init__(self, path: str | os.PathLike[str], hasher: PasswordHasher) -> None:
        self.path = Path(path)
        self.hasher = hasher
        self._lock = threading.Lock()
        self._connection = ProcessLocalConnection(self.path, _SCHEMA)

    def _db(self) -> sqlite3.Connection:
        # NOTE: called with self._lock held. A connection made before fork is never reused.
        connection: sqlite3.Connection = self._connection.get()
        return connection

    def create(self, username: str, password: str, *, admin: bool = False) -> User:
        """Add a user.

        Raises:
            UserError: ``validation_error`` (bad username/password) or ``username_taken``.
        """
        check_username(username)
        check_password(password)
        password_hash = self.hasher.hash(password)
        with self._lock:
            try:
                self._db().execute(
                    "INSERT INTO users (username, password_hash, is_admin, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (username, password_hash, int(admin), time.time()),
                )
            except sqlite3.IntegrityError:
                raise UserError(
                    "username_taken",
                    f"username {username!r} is already taken (names are compared "
                    "without regard to case)",
                    "username",
                ) from None
        return User(username, admin, False)

    def _update(self, sql: str, values: tuple[object, ...], username: str) -> None:
        """One UPDATE of one user's row. Raises UserError(not_found) when there is none."""
        with self._lock:
            changed = self._db().execute(sql, values).rowcount
        if not changed:
            raise UserError("not_found", f"no user {username!r}", "username")

    def set_password(self, username: str, password: str) -> None:
        """Replace a user's password.

        Raises:
            UserError: ``validation_error`` (password rules) or ``not_found``.
        """
        check_password(password)
        password_hash = self.hasher.hash(password)
        self._update(
            f"UPDATE users SET password_hash=? WHERE {_BY_NAME}",
            (password_hash, username),
            username,
        )

    def set_flags(
        self, username: str, *, admin: bool | None = None, disabled: bool | None = None
    ) -> None:
        """Grant or revoke admin, disable or enable. Raises UserError(not_found)."""
        if admin is not None:
            self._update(
                f"UPDATE users SET is_admin=? WHERE {_BY_NAME}", (int(admin), username), username
            )
        if disabled is not None:
            self._update(
                f"UPDATE users SET disabled=? WHERE {_BY_NAME}", (int(disabled), username), username
            )

    def delete(self, username: str) -> None:
        """Remove a user; their tokens stop working within the frontend's user cache TTL.

        Raises:
            UserError: ``not_found``.
        """
        with self._lock:
            deleted = (
                self._db().execute(f"DELETE FROM users WHERE {_BY_NAME}", (username,)).rowcount
            )
        if not deleted:
            raise UserError("not_found", f"no user {username!r}", "username")

    def get(self, username: str) -> User | None:
        with self._lock:
            row = (
                self._db()
                .execute(
                    f"SELECT username, is_admin, disabled FROM users WHERE {_BY_NAME}", (username,)
                )
                .fetchone()
            )
        return None if row is None else User(row[0], bool(row[1]), bool(row[2]))

    def authenticate(self, username: str, password: str) -> User | None:
        """The user if the password matches and the account is enabled, else None.

        A matching hash made with other argon2 parameters than the hasher's is replaced
        by a new one (the password is at hand only now).
        """
        with self._lock:
            row = (
                self._db()
                .execute(
                    "SELECT username, password_hash, is_admin, disabled FROM users"
                    f" WHERE {_BY_NAME}",
                    (username,),
                )
                .fetchone()
            )
        ok = self.hasher.verify(row[1] if row else None, password)
        if not ok or row is None or row[3]:
            return None
        if self.hasher.needs_rehash(row[1]):
            new_hash = self.hasher.hash(password)
            with self._lock:
                self._db().execute(
                    "UPDATE users SET password_hash=? WHERE username=? AND password_hash=?",
                    (new_hash, row[0], row[1]),
                )
        return User(row[0], bool(row[2]), False)

    def list(self) -> list[User]:
        with self._lock:
            rows = (
                self._db()
                .execute("SELECT username, is_admin, disabled FROM users ORDER BY username")
                .fetchall()
            )
        return [User(r[0], bool(r[1]), bool(r[2])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def bootstrap_admin(store: UserStore, spec: str) -> User:
    """Apply ``MOLE_BOOTSTRAP_ADMIN=user:password``: create the admin, or make it one.

    Raises:
        UserError: the spec is malformed or the name/password break the rules.
    """
    username, sep, password = spec.partition(":")
    if not sep:
        raise UserError("validation_error", "MOLE_BOOTSTRAP_ADMIN must be 'username:password'")
    try:
        return store.create(username, password, admin=True)
    except UserError as err:
        if err.code != "username_taken":
            raise
    store.set_password(username, password)
    store.set_flags(username, admin=True, disabled=False)
    user = store.get(username)
    return User(user.username if user else username, True, False)
