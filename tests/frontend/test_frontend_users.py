"""User management: names unique regardless of case (and rate-limited the same way),
registration limited per address, argon2 hashes upgraded at login when the parameters
change, `mole users delete` / `passwd`, and private database files. Real SQLite in
tmp_path, real argon2, the real app and the real CLI process."""

from __future__ import annotations

import os
import subprocess
import sys

import argon2
import pytest

from mole.frontend.passwords import PROFILES, PasswordHasher
from mole.frontend.users import UserError, UserStore
from tests.frontend.frontend_support import PASSWORD, REPO, child_env
from tests.frontend.test_frontend_ratelimit import Clock, assert_rate_limited, login


def register(api, username: str, address: str = "127.0.0.1"):
    return api.client.simulate_post(
        "/api/v1/auth/register",
        json={"username": username, "password": PASSWORD},
        remote_addr=address,
    )


def test_usernames_are_unique_regardless_of_case(make_offline):
    api = make_offline(Clock(), rate_limit_register_address="off")
    assert register(api, "Alice").status_code == 201
    for other in ("alice", "ALICE", "aLiCe"):
        r = register(api, other)
        assert r.status_code == 409, r.text
        assert r.json["error"] == "username_taken"
        assert r.json["field"] == "username"
    assert [u.username for u in api.components.users.list()] == ["Alice"]


def test_login_in_any_case_is_the_same_user(make_offline):
    api = make_offline(Clock())
    api.components.users.create("Alice", PASSWORD)
    r = login(api, "aLICE")
    assert r.status_code == 200, r.text
    token = r.json["access_token"]
    # the token names the user as created: the same account whatever case was typed
    assert api.components.tokens.verify(token) == "Alice"
    r = api.client.simulate_get(
        "/api/v1/classify/stats", headers={"Authorization": f"Bearer {token}"}
    )
    # past authentication: the resource itself answers (gating is not loaded offline)
    assert r.status_code == 503, r.text
    assert r.json["error"] == "not_ready"


def test_login_limits_count_every_spelling_of_a_name_together(make_offline):
    """10 attempts a minute per name, a failure costs 5: two failures under two
    spellings spend the whole budget of the one account, so a third spelling is refused
    (separate budgets per spelling would give an attacker 10 more guesses each)."""
    api = make_offline(Clock(), rate_limit_login_user="10/minute", rate_limit_login_address="off")
    api.components.users.create("alice", PASSWORD)
    assert login(api, "ALICE", "wrong-password").status_code == 401
    assert login(api, "Alice", "wrong-password").status_code == 401
    assert_rate_limited(login(api, "aLiCe"), 1, 60)


def test_registration_is_limited_per_address(make_offline):
    api = make_offline(Clock(), rate_limit_register_address="2/hour")
    assert register(api, "first1", "10.0.0.1").status_code == 201
    assert register(api, "second2", "10.0.0.1").status_code == 201
    r = register(api, "third3", "10.0.0.1")
    assert_rate_limited(r, 1, 3600)
    assert "registrations" in r.json["detail"]
    assert api.components.users.get("third3") is None
    assert register(api, "third3", "10.0.0.2").status_code == 201  # another address


def test_a_hash_with_old_parameters_is_upgraded_at_login(tmp_path):
    path = tmp_path / "users.sqlite3"
    old = UserStore(path, PasswordHasher("cheap"))
    old.create("carol", PASSWORD)
    old.close()
    new = UserStore(path, PasswordHasher("default"))
    try:
        assert new.authenticate("carol", "not-the-password") is None
        before = _stored_hash(new, "carol")
        assert argon2.extract_parameters(before) == PROFILES["cheap"]  # not upgraded on failure
        assert new.authenticate("carol", PASSWORD).username == "carol"
        after = _stored_hash(new, "carol")
        assert after != before
        assert argon2.extract_parameters(after) == PROFILES["default"]
        assert argon2.PasswordHasher.from_parameters(PROFILES["default"]).verify(after, PASSWORD)
        assert new.authenticate("carol", PASSWORD) is not None  # and still logs in
    finally:
        new.close()


def _stored_hash(store: UserStore, username: str) -> str:
    import sqlite3

    with sqlite3.connect(store.path) as db:
        return db.execute(
            "SELECT password_hash FROM users WHERE username = ?", (username,)
        ).fetchone()[0]


def test_store_delete_and_set_password_name_the_missing_user(tmp_path, hasher):
    store = UserStore(tmp_path / "users.sqlite3", hasher)
    try:
        for action in (
            lambda: store.delete("ghost"),
            lambda: store.set_password("ghost", PASSWORD),
            lambda: store.set_flags("ghost", disabled=True),
        ):
            with pytest.raises(UserError) as caught:
                action()
            assert caught.value.code == "not_found"
            assert "ghost" in str(caught.value)
    finally:
        store.close()


def _mole_users(data_dir, *args: str, stdin: str | None = None):
    env = child_env(MOLE_ARGON2_PROFILE="cheap")
    env.pop("MOLE_USER_PASSWORD", None)
    return subprocess.run(
        [sys.executable, "-m", "mole", "users", "--data-dir", str(data_dir), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )


def test_the_users_command_changes_passwords_and_deletes_users(tmp_path, hasher):
    data = tmp_path / "state"
    assert (
        _mole_users(data, "create", "dave", "--password-stdin", stdin=f"{PASSWORD}\n").returncode
        == 0
    )
    new_password = "a-new-long-password"
    done = _mole_users(data, "passwd", "DAVE", "--password-stdin", stdin=f"{new_password}\n")
    assert done.returncode == 0, done.stderr
    store = UserStore(data / "frontend" / "users.sqlite3", hasher)
    try:
        assert store.authenticate("dave", PASSWORD) is None
        assert store.authenticate("dave", new_password).username == "dave"
    finally:
        store.close()
    done = _mole_users(data, "delete", "dave")
    assert done.returncode == 0, done.stderr
    assert _mole_users(data, "list").stdout.strip() == ""
    missing = _mole_users(data, "delete", "dave")
    assert missing.returncode == 1
    assert "no user 'dave'" in missing.stderr
    missing = _mole_users(data, "passwd", "nobody", "--password-stdin", stdin="whatever-long\n")
    assert missing.returncode == 1
    assert "no user 'nobody'" in missing.stderr


def test_the_users_database_is_private(tmp_path, hasher):
    data = tmp_path / "fresh"
    store = UserStore(data / "users.sqlite3", hasher)
    try:
        store.create("erin1", PASSWORD)
        for name in ("users.sqlite3", "users.sqlite3-wal"):
            assert (data / name).stat().st_mode & 0o777 == 0o600, name
        assert data.stat().st_mode & 0o777 == 0o700
    finally:
        store.close()
    # a file left readable by others (an older version, a careless copy) is narrowed
    os.chmod(data / "users.sqlite3", 0o644)
    store = UserStore(data / "users.sqlite3", hasher)
    try:
        assert store.get("erin1") is not None
        assert (data / "users.sqlite3").stat().st_mode & 0o777 == 0o600
    finally:
        store.close()
