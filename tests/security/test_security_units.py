"""The pieces of CURVE authentication without processes: ACL parsing and matching, the key
ring's re-reading of the allow-list, broker settings, and ``CurveKeys.from_env``."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import zmq.auth

from mole.broker.acl import load_acl
from mole.broker.curve import KeyRing
from mole.broker.settings import BrokerSettings, SettingsError, settings_from_env
from mole.protocol.curve import CurveKeyError, CurveKeys


@pytest.fixture
def keydir(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("broker", "a", "b"):
        zmq.auth.create_certificates(str(keys), name)
    return keys


def _public(keydir, name: str) -> str:
    return zmq.auth.load_certificate(str(keydir / f"{name}.key"))[0].decode()


def test_acl_matches_names_prefixes_and_z85_keys(tmp_path, keydir):
    path = tmp_path / "acl.json"
    path.write_text(json.dumps({"a": ["svc", "gpu/*"], _public(keydir, "b"): ["*"]}))
    acl = load_acl(path)
    a, b = _public(keydir, "a"), _public(keydir, "b")
    assert acl.allows(a, "a", "svc")
    assert acl.allows(a, "a", "gpu/qwen")
    assert not acl.allows(a, "a", "svc2")
    assert not acl.allows(a, "a", "gpu")
    assert not acl.allows(a, None, "svc")  # named by stem only: needs the stem
    assert acl.allows(b, None, "anything")
    assert not acl.allows("x" * 40, "c", "svc")  # absent from the ACL: nothing


def test_acl_manage_is_a_permission_that_no_service_pattern_grants(tmp_path, keydir):
    path = tmp_path / "acl.json"
    path.write_text(json.dumps({"a": ["*"], "b": ["@manage"]}))
    acl = load_acl(path)
    a, b = _public(keydir, "a"), _public(keydir, "b")
    assert not acl.may_manage(a, "a")  # "*" is every service, not every permission
    assert acl.may_manage(b, "b")
    assert not acl.allows(b, "b", "@manage")  # a permission is not a service to register
    assert acl.allows(a, "a", "@manage")


def test_key_ring_manage_without_an_acl_is_any_allowed_key(tmp_path, keydir):
    allow = tmp_path / "allow"
    allow.mkdir()
    shutil.copy(keydir / "a.key", allow / "a.key")
    ring = KeyRing(allow)
    ring.load()
    assert ring.may_manage(_public(keydir, "a"))
    assert not ring.may_manage(_public(keydir, "b"))  # not allow-listed
    assert not ring.may_manage(None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "must be a JSON object"),
        ('{"a": "svc"}', "must be a list"),
        ('{"a": [""]}', "must be a list"),
        ('{"a": ["g*pu"]}', "only allowed at the end"),
        ('{"a": ["@admin"]}', "unknown permission '@admin'"),
        ("{oops", "is not valid JSON"),
    ],
)
def test_bad_acl_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "acl.json"
    path.write_text(text)
    with pytest.raises(SettingsError, match=message):
        load_acl(path)
    with pytest.raises(SettingsError, match="cannot read"):
        load_acl(tmp_path / "missing.json")


def test_key_ring_rereads_only_on_change_and_names_revoked_keys(tmp_path, keydir):
    allow = tmp_path / "allow"
    allow.mkdir()
    shutil.copy(keydir / "a.key", allow)
    shutil.copy(keydir / "b.key", allow)
    ring = KeyRing(allow)
    ring.load()
    a, b = _public(keydir, "a"), _public(keydir, "b")
    assert ring.callback("mole", a.encode())
    assert ring.allows(b)
    assert ring.refresh() is False  # nothing changed: no re-read
    (allow / "b.key").unlink()
    assert ring.refresh() is True
    assert not ring.allows(b)
    assert not ring.callback("mole", b.encode())
    assert ring.name(b) == "b.key"  # still named in logs after revocation
    (allow / "junk.key").write_text("garbage")
    assert ring.refresh() is True
    assert set(ring.keys) == {a}
    assert ring.may_register(a, "anything")  # no ACL: any service


def test_key_ring_keeps_the_last_good_acl(tmp_path, keydir):
    allow = tmp_path / "allow"
    allow.mkdir()
    shutil.copy(keydir / "a.key", allow)
    acl = tmp_path / "acl.json"
    acl.write_text(json.dumps({"a": ["svc"]}))
    ring = KeyRing(allow, acl)
    ring.load()
    a = _public(keydir, "a")
    assert ring.may_register(a, "svc")
    assert not ring.may_register(a, "other")
    acl.write_text(json.dumps({"a": ["other"]}))
    os.utime(acl, ns=(1, 1))  # a distinct mtime even on a coarse clock
    assert ring.refresh()
    assert ring.may_register(a, "other")
    assert not ring.may_register(a, "svc")
    acl.write_text("{broken")
    assert ring.refresh()
    assert ring.may_register(a, "other")  # the broken file is ignored, logged as an error


def test_key_ring_load_is_strict(tmp_path, keydir):
    allow = tmp_path / "allow"
    allow.mkdir()
    (allow / "bad.key").write_text("nope")
    with pytest.raises(SettingsError, match="bad CURVE public key file"):
        KeyRing(allow).load()
    with pytest.raises(SettingsError, match="is not a directory"):
        KeyRing(tmp_path / "none").load()


def test_broker_settings_for_the_acl():
    settings = settings_from_env(
        {
            "MOLE_BROKER_CURVE_SECRET": "s",
            "MOLE_BROKER_CURVE_ALLOW": "d",
            "MOLE_BROKER_CURVE_ACL": "acl.json",
        }
    )
    assert settings.validated().curve_acl == "acl.json"
    with pytest.raises(SettingsError, match="needs an allow-list"):
        BrokerSettings(curve_secret="s", curve_acl="acl.json").validated()


def test_curve_keys_from_env(keydir):
    assert CurveKeys.from_env({}) is None
    assert CurveKeys.from_env({"MOLE_CURVE_SERVER_KEY": "", "MOLE_CURVE_SECRET_KEY": ""}) is None
    keys = CurveKeys.from_env(
        {
            "MOLE_CURVE_SERVER_KEY": str(keydir / "broker.key"),
            "MOLE_CURVE_SECRET_KEY": str(keydir / "a.key_secret"),
        }
    )
    assert keys.public.decode() == _public(keydir, "a")
    assert keys.server_public.decode() == _public(keydir, "broker")
    with pytest.raises(CurveKeyError, match="MOLE_CURVE_SECRET_KEY is not set"):
        CurveKeys.from_env({"MOLE_CURVE_SERVER_KEY": str(keydir / "broker.key")})
    with pytest.raises(CurveKeyError, match="MOLE_CURVE_SERVER_KEY is not set"):
        CurveKeys.from_env({"MOLE_CURVE_SECRET_KEY": str(keydir / "a.key_secret")})
    with pytest.raises(CurveKeyError, match="holds no secret key"):
        CurveKeys.from_env(
            {
                "MOLE_CURVE_SERVER_KEY": str(keydir / "broker.key"),
                "MOLE_CURVE_SECRET_KEY": str(keydir / "a.key"),
            }
        )
    with pytest.raises(CurveKeyError, match="cannot load"):
        CurveKeys.from_env(
            {
                "MOLE_CURVE_SERVER_KEY": str(keydir / "nope.key"),
                "MOLE_CURVE_SECRET_KEY": str(keydir / "a.key_secret"),
            }
        )
