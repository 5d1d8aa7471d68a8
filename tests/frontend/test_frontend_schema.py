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

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


def test_api_matches_its_openapi_document(api):
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", api.app)
    headers = api.user("schema-admin", admin=True)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 13  # every route (schemathesis may skip the document itself)
    calls: dict[str, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def conforms(case):
            response = case.call(headers=headers)
            calls[case.operation.label] = calls.get(case.operation.label, 0) + 1
            case.validate_response(response, checks=CHECKS)

        conforms()
    # the run really exercised every operation, most with several examples
    assert set(calls) == {op.label for op in operations}
    assert sum(calls.values()) > 5 * len(operations), calls
