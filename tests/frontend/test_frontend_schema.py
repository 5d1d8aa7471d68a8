"""schemathesis against the served OpenAPI document, authenticated as an admin: no 5xx, no
status code, content type, header or body that the document does not describe.

Runs on the real app (real gating, a real broker and worker processes); examples per
operation are bounded so the whole file runs in well under a minute.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.frontend.frontend_support import served

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_api_matches_its_openapi_document(api):
    headers = api.user("schema-admin", admin=True)
    with served(api) as base:
        _conforms_everywhere(schemathesis.openapi.from_url(f"{base}/api/v1/openapi.json"), headers)


def _conforms_everywhere(schema, headers: dict[str, str]) -> None:
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 13  # every route (schemathesis may skip the document itself)
    calls: dict[str, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=12,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def conforms(case):
            response = case.call(headers=headers)
            calls[case.operation.label] = calls.get(case.operation.label, 0) + 1
            case.validate_response(response, checks=CHECKS)

        conforms()
    # the run really exercised every operation, most with several examples
    assert set(calls) == {op.label for op in operations}
    assert sum(calls.values()) > 5 * len(operations), calls


LIMITED = ("register", "token", "classify", "classifyBatch")


def test_rate_limited_operations_document_429_with_retry_after(api):
    doc = api.client.simulate_get("/api/v1/openapi.json").json
    operations = {op["operationId"]: op for path in doc["paths"].values() for op in path.values()}
    e429 = doc["components"]["responses"]["E429"]
    assert e429["headers"]["Retry-After"]["required"] is True
    assert "rate_limited" in e429["description"]
    for name in LIMITED:
        assert operations[name]["responses"]["429"] == {"$ref": "#/components/responses/E429"}


def test_429_answers_conform_to_the_document(
    tmp_path, hasher, registry, gating_pipeline, broker_url, fixed_workers
):
    """schemathesis on the rate-limited operations with tiny limits: the 429s it provokes
    have the documented status, headers and body."""
    from mole.frontend.gating_holder import GatingHolder
    from tests.frontend.frontend_support import Api, make_components, make_settings

    tight = make_settings(
        tmp_path, rate_limit_classify_user="2/minute", rate_limit_login_address="3/minute"
    )
    api = Api(
        make_components(
            tight,
            hasher=hasher,
            broker_url=broker_url,
            gating=GatingHolder.loaded(gating_pipeline, registry),
        )
    )
    try:
        headers = api.user("limited-admin", admin=True)
        with served(api) as base:
            statuses = _provoke_limits(
                schemathesis.openapi.from_url(f"{base}/api/v1/openapi.json"), headers
            )
    finally:
        api.close()
    assert len(statuses) == len(LIMITED)
    limited = [label for label, seen in statuses.items() if 429 in seen]
    assert len(limited) >= 3, statuses  # classify, batch and the login pair all hit 429


def _provoke_limits(schema, headers: dict[str, str]) -> dict[str, set[int]]:
    statuses: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.definition.raw.get("operationId") not in LIMITED:
            continue

        @given(case=operation.as_strategy())
        @settings(
            max_examples=8,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def conforms(case):
            response = case.call(headers=headers)
            statuses.setdefault(case.operation.label, set()).add(response.status_code)
            case.validate_response(response, checks=CHECKS)

        conforms()
    return statuses
