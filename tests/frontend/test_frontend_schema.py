"""schemathesis against the served OpenAPI document, authenticated as an admin: no 5xx, no
status code, content type, header or body that the document does not describe.

Runs on the real app (real gating, a real broker and worker processes); examples per
operation are bounded so the whole file runs in well under a minute.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


@pytest.fixture
def api_schema(api):
    api.admin_headers = api.user("schema-admin", admin=True)
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", api.app)
    schema.api = api  # NOTE: lets the test reach the token without another fixture
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None,
          suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_matches_its_openapi_document(case):
    headers = dict(case.operation.schema.api.admin_headers)
    response = case.call(headers=headers)
    case.validate_response(response, checks=CHECKS)
