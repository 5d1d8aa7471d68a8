"""The one error shape, content negotiation, body limits, health, root, metrics, OpenAPI."""

from __future__ import annotations

import json

import msgpack
import pytest

from mole.frontend.errors import STATUS_BY_CODE, APIError, from_request_error
from mole.protocol.errors import ErrorCode, error_for_code


def assert_error(result, status: int, code: str) -> dict:
    assert result.status_code == status, result.text
    body = result.json
    assert body["error"] == code
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert body["request_id"] == result.headers["X-Request-ID"]
    return body


def test_unknown_route_is_404_in_the_shape(offline_api):
    body = assert_error(offline_api.client.simulate_get("/api/v1/nope"), 404, "not_found")
    assert "/api/v1/nope" in body["detail"]


def test_wrong_method_is_405_in_the_shape_with_allow(offline_api):
    r = offline_api.client.simulate_delete("/api/v1/classify")
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"]


def test_body_over_the_limit_is_413_before_auth(tmp_path, hasher, registry, dead_broker_url):
    from mole.frontend.gating_holder import GatingHolder
    from tests.frontend.frontend_support import Api, make_components, make_settings

    settings = make_settings(tmp_path, max_body_bytes=1000)
    api = Api(
        make_components(
            settings,
            hasher=hasher,
            gating=GatingHolder(registry_path=registry.path),
            broker_url=dead_broker_url,
        )
    )
    try:
        big = json.dumps({"username": "x" * 2000, "password": "longenough"})
        r = api.client.simulate_post(
            "/api/v1/auth/register", body=big, headers={"Content-Type": "application/json"}
        )
        assert_error(r, 413, "payload_too_large")
        # chunked bodies (no Content-Length) go through a real server, where they exist:
        # tests/frontend/test_frontend_server.py
    finally:
        api.close()


def test_malformed_json_is_400(offline_api):
    r = offline_api.client.simulate_post(
        "/api/v1/auth/register", body=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_error(r, 400, "invalid_body")


@pytest.mark.parametrize(
    "body",
    [
        b'{"username": NaN, "password": "longenough"}',
        b'{"username": "\\ud800x", "password": "longenough"}',
    ],
)
def test_json_that_python_alone_would_accept_is_400(offline_api, body):
    """NaN and a lone surrogate are not JSON (RFC 8259); a surrogate could not even be
    packed for a worker later."""
    r = offline_api.client.simulate_post(
        "/api/v1/auth/register", body=body, headers={"Content-Type": "application/json"}
    )
    assert "not valid JSON" in assert_error(r, 400, "invalid_body")["detail"]


def test_a_response_orjson_cannot_encode_still_goes_out_as_json():
    from mole.frontend.media import encode

    data, ctype = encode({"big": 2**70, "text": "h\u00e9"}, False)
    assert ctype == "application/json"
    assert json.loads(data) == {"big": 2**70, "text": "h\u00e9"}
    data, _ = encode({"nan": float("nan"), "text": "h\u00e9"}, False)
    assert data == '{"nan":null,"text":"h\u00e9"}'.encode()  # UTF-8, and no NaN token


def test_unsupported_content_type_is_415(offline_api):
    r = offline_api.client.simulate_post(
        "/api/v1/auth/register", body=b"<xml/>", headers={"Content-Type": "application/xml"}
    )
    assert_error(r, 415, "unsupported_media_type")


def test_msgpack_in_and_out(offline_api):
    body = msgpack.packb({"username": "packer", "password": "longenough"})
    r = offline_api.client.simulate_post(
        "/api/v1/auth/register",
        body=body,
        headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"},
    )
    assert r.status_code == 201
    assert r.headers["Content-Type"] == "application/msgpack"
    assert msgpack.unpackb(r.content) == {"username": "packer", "disabled": False}
    # errors are negotiated too
    r = offline_api.client.simulate_get("/api/v1/nope", headers={"Accept": "application/msgpack"})
    assert r.status_code == 404
    assert msgpack.unpackb(r.content)["error"] == "not_found"


_GOOD = msgpack.packb({"username": "packer2", "password": "longenough"})


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (_GOOD[:-4], "ends in the middle of a msgpack object"),  # cut short
        (_GOOD + b"\x01", "more than one msgpack object (1 bytes follow"),
        (b"\xc1", "starts no msgpack type"),
        (b"\x91" * 5000, "nests arrays or maps too deeply"),
        (b"\x81\xa1u\xa2\xff\xfe", "not valid UTF-8"),
    ],
)
def test_a_bad_msgpack_body_is_explained_in_words(offline_api, body, words):
    r = offline_api.client.simulate_post(
        "/api/v1/auth/register", body=body, headers={"Content-Type": "application/msgpack"}
    )
    document = assert_error(r, 400, "invalid_body")
    assert words in document["detail"]


def test_json_is_the_default_and_wins_on_equal_preference(offline_api):
    r = offline_api.client.simulate_get("/api/v1/health", headers={"Accept": "*/*"})
    assert r.headers["Content-Type"] == "application/json"
    r = offline_api.client.simulate_get(
        "/api/v1/health", headers={"Accept": "application/json;q=0.5, application/msgpack"}
    )
    assert r.headers["Content-Type"] == "application/msgpack"


def test_every_response_has_a_request_id(offline_api):
    ids = {
        offline_api.client.simulate_get("/api/v1/health").headers["X-Request-ID"] for _ in range(3)
    }
    assert len(ids) == 3


def test_request_ids_are_32_hex_digits_and_differ_in_a_forked_process():
    import os
    import re

    from mole.frontend.app import new_request_id

    ids = {new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # a gunicorn worker is such a child
        os.write(write_end, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_id = os.read(read_end, 64).decode()
    os.close(read_end)
    os.close(write_end)
    assert re.fullmatch(r"[0-9a-f]{32}", child_id)
    assert child_id != new_request_id()


def test_root_and_health(offline_api):
    c = offline_api.client
    assert c.simulate_get("/").json == {
        "name": "MoLE classification service",
        "version": "0.1.0",
        "docs": "/api/v1/openapi.json",
        "health": "/api/v1/health",
    }
    assert c.simulate_get("/api/v1/health").json == {"status": "healthy", "version": "0.1.0"}
    assert c.simulate_get("/api/v1/health/live").json == {"status": "alive"}


def test_ready_is_503_with_details_while_gating_loads_and_broker_is_down(offline_api):
    r = offline_api.client.simulate_get("/api/v1/health/ready")
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "5"
    body = r.json
    assert body["status"] == "not_ready"
    assert body["error"] == "not_ready"
    assert body["checks"]["gating"] == {"ready": False, "detail": "gating is loading"}
    assert body["checks"]["broker"]["ready"] is False
    assert "broker did not answer" in body["checks"]["broker"]["detail"]


def test_classify_while_gating_loads_is_503_with_retry_after(offline_api):
    headers = offline_api.user()
    r = offline_api.client.simulate_post(
        "/api/v1/classify", headers=headers, json={"text": "hello", "description": "rate it"}
    )
    assert_error(r, 503, "not_ready")
    assert r.headers["Retry-After"] == "5"


def test_a_bug_is_a_500_in_the_shape_and_logs_no_text(
    tmp_path, hasher, registry, dead_broker_url, caplog
):
    from mole.frontend.gating_holder import GatingHolder
    from tests.frontend.frontend_support import Api, make_components, make_settings

    class Exploding:
        """A gating stand-in with a bug (the only way to reach the 500 path)."""

        def route(self, text, description, **choices):
            raise RuntimeError("boom")

    api = Api(
        make_components(
            make_settings(tmp_path),
            hasher=hasher,
            gating=GatingHolder.loaded(Exploding(), registry),
            broker_url=dead_broker_url,
        )
    )
    try:
        r = api.client.simulate_post(
            "/api/v1/classify",
            headers=api.user(),
            json={"text": "SECRET-PII-4111", "description": "rate"},
        )
        body = assert_error(r, 500, "internal_error")
        assert body["request_id"] in body["detail"]
        assert "SECRET-PII-4111" not in caplog.text
        assert "boom" in caplog.text
    finally:
        api.close()


def test_metrics_count_requests_by_route_and_status(offline_api):
    c = offline_api.client
    c.simulate_get("/api/v1/health")
    c.simulate_get("/api/v1/nope")
    text = c.simulate_get("/metrics").text
    assert 'mole_http_requests_total{method="GET",route="/api/v1/health",status="200"} 1.0' in text
    assert 'route="unmatched",status="404"' in text
    assert "mole_http_request_duration_seconds_bucket" in text


def test_openapi_document_is_served_and_lists_every_route(offline_api):
    doc = offline_api.client.simulate_get("/api/v1/openapi.json").json
    assert doc["openapi"].startswith("3.")
    expected = {
        "/",
        "/metrics",
        "/api/v1/openapi.json",
        "/api/v1/auth/register",
        "/api/v1/auth/token",
        "/api/v1/classify",
        "/api/v1/classify/batch",
        "/api/v1/classify/stats",
        "/api/v1/health",
        "/api/v1/health/live",
        "/api/v1/health/ready",
        "/api/v1/admin/workers",
        "/api/v1/admin/workers/{worker_id}/drain",
        "/api/v1/admin/workers/{worker_id}/resume",
        "/api/v1/admin/registry",
        "/api/v1/admin/registry/reload",
        "/api/v1/admin/dashboard",
    }
    assert set(doc["paths"]) == expected
    # every documented path answers something other than 404 on its documented method
    for path, ops in doc["paths"].items():
        for method in ops:
            r = offline_api.client.simulate_request(method.upper(), path)
            assert r.status_code != 404, (method, path)
            assert r.status_code != 405, (method, path)


# -- the one table ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "retry"),
    [
        ("no_worker", 503, "5"),
        ("overloaded", 429, "1"),
        ("deadline_exceeded", 504, None),
        ("worker_lost", 502, None),
        ("bad_request", 422, None),
        ("unknown_service", 503, "5"),
        ("internal", 502, None),
    ],
)
def test_bus_errors_map_through_the_table(code, status, retry):
    err = from_request_error(error_for_code(code, "details from the bus"))
    assert err.status == status
    assert err.code == code
    assert err.headers.get("Retry-After") == retry
    assert "details from the bus" in err.detail


def test_table_covers_every_bus_code_and_every_gating_code():
    import mole.gating.errors as ge

    assert {c.value for c in ErrorCode} <= set(STATUS_BY_CODE)
    gating_codes = {
        cls.code
        for cls in vars(ge).values()
        if isinstance(cls, type) and issubclass(cls, ge.GatingError)
    }
    assert gating_codes <= set(STATUS_BY_CODE)


def test_unauthenticated_error_carries_www_authenticate():
    assert APIError("invalid_token", "x").headers["WWW-Authenticate"] == "Bearer"
