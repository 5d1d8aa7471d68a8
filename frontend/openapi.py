"""The OpenAPI 3.1 document of the HTTP API, written to match what the resources do.

Tests run schemathesis against it (authenticated) and check that responses conform, so
this document and the resources cannot drift apart silently. Every endpoint also speaks
msgpack (``Content-Type``/``Accept: application/msgpack``) with the same schemas; the
document lists JSON only.
"""

from __future__ import annotations

from typing import Any

from mole.frontend.settings import Settings
from mole.frontend.users import PASSWORD_MAX, PASSWORD_MIN

_STR = {"type": "string"}
_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_NUM = {"type": ["number", "null"]}
_OBJ = {"type": "object"}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/E{s}"} for s in statuses}


_ERROR_TEXT = {
    400: "Malformed body (not JSON/msgpack)",
    401: "Missing, malformed, expired or forged bearer token (WWW-Authenticate: Bearer)",
    403: "Not allowed (admin only, or registration switched off)",
    404: "Unknown route",
    405: "Method not allowed on this route",
    408: "The request body (body_timeout) or head (header_timeout) did not arrive in time; "
    "the connection is closed",
    409: "Username already taken (names are compared without regard to case)",
    413: "Body over the size limit",
    431: "Request line and headers over the size limit (headers_too_large)",
    415: "Unsupported Content-Type",
    422: "Validation error (field named), unsupported language (served ones listed), "
    "worker refused the payload, or invalid registry",
    429: "Rate limited (error rate_limited: too many login attempts or classifications for "
    "this user or client address, or registrations from this address; a failed login and "
    "each batch item count) or the "
    "model's queue is full (overloaded); Retry-After says how many seconds to wait",
    500: "Internal error",
    502: "The worker was lost or failed",
    503: "Not ready, no worker serves the model, or this server process has too many open "
    "connections (too_many_connections) (Retry-After)",
    504: "REQUEST_TIMEOUT_SECONDS passed",
}


def openapi_document(settings: Settings) -> dict[str, Any]:
    classify_errors = _errors(400, 401, 408, 413, 415, 422, 429, 502, 503, 504)
    classify_request = {
        "type": "object",
        "required": ["text"],
        "additionalProperties": False,
        "description": (
            "`description` is required unless `task` is given. Unknown fields are refused "
            "(422 validation_error naming them)."
        ),
        "properties": {
            "text": {
                "type": "string",
                "minLength": 1,
                "maxLength": settings.max_text_chars,
                "pattern": r"\S",
                "description": "the text to classify (sent to the expert; never stored or logged)",
            },
            "description": {
                "type": "string",
                "minLength": 1,
                "maxLength": settings.max_text_chars,
                "pattern": r"\S",
                "description": "what to do with the text; used for routing",
            },
            "task": {
                "type": "string",
                "minLength": 1,
                "maxLength": 100,
                "examples": ["rating", "finance/rating"],
                "description": (
                    "the task, when the caller knows it: skips task routing (and the domain, "
                    "which the task implies); an unserved task is a 422 unknown_task naming "
                    "the served ones"
                ),
            },
            "language": {
                "type": "string",
                "minLength": 1,
                "maxLength": 100,
                "examples": ["de", "german"],
                "description": (
                    "the text's language (ISO 639-1 code or English name): skips language "
                    "detection; an unserved language is a 422 unsupported_language"
                ),
            },
            "query": {
                "type": "string",
                "maxLength": settings.max_text_chars,
                "description": (
                    "ESCI only: the search query (or mark both parts in `text` in the request's "
                    "own words: `Query: … Product: …`, `検索クエリ：…。商品：…`, "
                    "`Consulta: … Producto: …`)"
                ),
            },
            "product": {
                "type": "string",
                "maxLength": settings.max_text_chars,
                "description": "ESCI only: the product text",
            },
            "options": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "return_probabilities": {"type": "boolean", "default": False},
                    "return_raw_response": {"type": "boolean", "default": False},
                    "return_candidates": {
                        "type": "boolean",
                        "default": False,
                        "description": (
                            "on a 422 task_not_served, list the router's tasks with their "
                            "scores (`candidates`, best first)"
                        ),
                    },
                },
            },
        },
    }
    entity = {
        "type": "object",
        "required": ["text", "label", "start", "end"],
        "properties": {
            "text": _STR,
            "label": _STR,
            "start": {"type": "integer"},
            "end": {"type": "integer"},
        },
    }
    classify_response = {
        "type": "object",
        "required": [
            "request_id",
            "language",
            "domain",
            "task",
            "result",
            "confidence",
            "routing_path",
            "processing_time_ms",
            "worker_id",
            "model",
            "timings",
        ],
        "properties": {
            "request_id": _STR,
            "language": {"type": "string", "description": "lower-case English name"},
            "language_confidence": _NULLABLE_NUM,
            "domain": _STR,
            "task": {"type": "string", "examples": ["rating", "pii", "news", "esci"]},
            "result": {
                "type": "string",
                "description": "the label; for PII the JSON array text of the entities",
            },
            "entities": {"type": "array", "items": entity},
            "confidence": _NULLABLE_NUM,
            "probabilities": {
                "type": ["object", "null"],
                "additionalProperties": {"type": "number"},
            },
            "raw_response": _NULLABLE_STR,
            "given": {
                "type": "array",
                "items": {"type": "string", "enum": ["language", "domain", "task"]},
                "description": "gating steps the request named rather than gating detected",
            },
            "routing_path": {
                "type": "string",
                "examples": ["english -> finance -> rating -> llama-2-7b-hf"],
            },
            "processing_time_ms": {"type": "number"},
            "worker_id": _NULLABLE_STR,
            "model": _STR,
            "adapter": _NULLABLE_STR,
            "timings": {"type": "object", "additionalProperties": {"type": "number"}},
            "tiny_model": {"type": "boolean"},
            "truncated": {"type": "boolean"},
        },
    }
    batch_request = {
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": settings.batch_limit,
                "items": _ref("ClassifyRequest"),
            }
        },
    }
    batch_item = {
        "type": "object",
        "required": ["index", "ok"],
        "properties": {
            "index": {"type": "integer"},
            "ok": {"type": "boolean"},
            "result": _ref("ClassifyResponse"),
            # a failed item: the fields of the top-level Error document
            "error": _STR,
            "detail": _STR,
            "field": _STR,
            "request_id": _STR,
        },
    }
    batch_response = {
        "type": "object",
        "required": ["request_id", "results", "total_processing_time_ms", "successful", "failed"],
        "properties": {
            "request_id": _STR,
            "results": {"type": "array", "items": batch_item},
            "total_processing_time_ms": {"type": "number"},
            "successful": {"type": "integer"},
            "failed": {"type": "integer"},
        },
    }
    counts = {
        "type": "object",
        "additionalProperties": {
            "type": "object",
            "properties": {"requests": {"type": "integer"}, "errors": {"type": "integer"}},
        },
    }
    stats = {
        "type": "object",
        "required": [
            "total_domains",
            "total_tasks",
            "supported_languages",
            "all_languages",
            "domains",
            "tasks",
            "live_workers",
            "analytics",
        ],
        "properties": {
            "total_domains": {"type": "integer"},
            "total_tasks": {"type": "integer"},
            "supported_languages": {"type": "integer"},
            "all_languages": {"type": "array", "items": _STR},
            "domains": {"type": "object", "additionalProperties": {"type": "array", "items": _STR}},
            "tasks": _OBJ,
            "live_workers": {
                "type": ["object", "null"],
                "additionalProperties": {"type": "integer"},
            },
            "broker_error": _NULLABLE_STR,
            "analytics": {
                "type": "object",
                "required": [
                    "total_requests",
                    "total_errors",
                    "by_language",
                    "by_task",
                    "by_model",
                    "latency_ms",
                ],
                "properties": {
                    "total_requests": {"type": "integer"},
                    "total_errors": {"type": "integer"},
                    "error_rate": {"type": "number"},
                    "avg_confidence": _NULLABLE_NUM,
                    "by_language": counts,
                    "by_task": counts,
                    "by_model": counts,
                    "errors_by_code": {
                        "type": "object",
                        "additionalProperties": {"type": "integer"},
                    },
                    "latency_ms": {
                        "type": "object",
                        "properties": {
                            "window": {"type": "integer"},
                            "p50": _NULLABLE_NUM,
                            "p90": _NULLABLE_NUM,
                            "p99": _NULLABLE_NUM,
                            "mean": _NULLABLE_NUM,
                        },
                    },
                },
            },
        },
    }
    error = {
        "type": "object",
        "required": ["error", "detail", "request_id"],
        "properties": {
            "error": {"type": "string", "description": "machine-readable code"},
            "detail": _STR,
            "request_id": _NULLABLE_STR,
            "field": {"type": "string", "description": "the field at fault"},
            "served": {"type": "array", "items": _STR},
        },
    }
    ready = {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["ready", "not_ready"]},
            "checks": _OBJ,
            "error": _STR,
            "detail": _STR,
            "request_id": _STR,
        },
    }
    registry = {
        "type": "object",
        "required": ["base_models", "domains", "languages", "tasks"],
        "properties": {
            "path": _NULLABLE_STR,
            "base_models": {"type": "array", "items": _STR},
            "domains": {"type": "array", "items": _STR},
            "languages": {"type": "array", "items": _STR},
            "tasks": {"type": "array", "items": _OBJ},
            "reloaded": {"type": "boolean"},
        },
    }
    responses = {}
    for status, text in _ERROR_TEXT.items():
        headers: dict[str, dict[str, Any]] = {"X-Request-ID": {"schema": _STR}}
        if status == 429:
            headers["Retry-After"] = {
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
                "description": "seconds",
                "required": True,
            }
        if status == 503:
            headers["Retry-After"] = {"schema": _STR, "description": "seconds"}
        if status == 401:
            headers["WWW-Authenticate"] = {"schema": _STR, "required": True}
        responses[f"E{status}"] = {
            "description": text,
            "headers": headers,
            "content": {"application/json": {"schema": _ref("Error")}},
        }
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    user_errors = _errors(401)
    admin_errors = _errors(401, 403)
    worker_drain_report = {
        "type": "object",
        "description": "The broker's report (docs/interfaces.md, mmi.drain)",
        "required": ["worker", "service", "state", "in_flight", "registered"],
        "properties": {
            "worker": _STR,
            "service": _STR,
            "state": {
                "type": "string",
                "enum": ["draining", "drained", "offline", "active", "released"],
            },
            "in_flight": {"type": "integer"},
            "registered": {"type": "integer"},
            "serving_workers": {"type": "integer"},
            "disconnect": {"type": "boolean"},
            "since_s": {"type": "number"},
            "note": _STR,
        },
    }

    paths: dict[str, Any] = {
        "/": {
            "get": {
                "summary": "Service card",
                "operationId": "root",
                "security": [],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["name", "version", "docs", "health"],
                            "properties": {
                                "name": _STR,
                                "version": _STR,
                                "docs": _STR,
                                "health": _STR,
                            },
                        }
                    )
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "security": [],
                "responses": {"200": _json(_OBJ)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (all gunicorn workers)",
                "operationId": "metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": _STR}},
                    }
                },
            }
        },
        "/api/v1/auth/register": {
            "post": {
                "summary": "Create a user (never an admin); can be switched off",
                "operationId": "register",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["username", "password"],
                                "properties": {
                                    "username": {
                                        "type": "string",
                                        "pattern": "^[A-Za-z0-9_.-]{3,50}$",
                                    },
                                    "password": {
                                        "type": "string",
                                        "minLength": PASSWORD_MIN,
                                        "maxLength": PASSWORD_MAX,
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": _json(
                        {
                            "type": "object",
                            "required": ["username", "disabled"],
                            "properties": {"username": _STR, "disabled": {"type": "boolean"}},
                        },
                        "Created",
                    ),
                    **_errors(400, 403, 408, 409, 413, 415, 422, 429),
                },
            }
        },
        "/api/v1/auth/token": {
            "post": {
                "summary": "OAuth2 password grant: a bearer token",
                "operationId": "token",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "required": ["username", "password"],
                                "properties": {
                                    "grant_type": {"type": "string", "enum": ["password"]},
                                    "username": {"type": "string", "minLength": 1},
                                    "password": {"type": "string", "minLength": 1},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["access_token", "token_type", "expires_in"],
                            "properties": {
                                "access_token": _STR,
                                "token_type": {"enum": ["bearer"]},
                                "expires_in": {"type": "integer"},
                            },
                        }
                    ),
                    **_errors(401, 408, 413, 415, 422, 429),
                },
            }
        },
        "/api/v1/classify": {
            "post": {
                "summary": "Classify one text with the expert gating selects",
                "operationId": "classify",
                "security": bearer,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ClassifyRequest")}},
                },
                "responses": {
                    "200": {
                        **_json(_ref("ClassifyResponse")),
                        "headers": {"X-Request-ID": {"schema": _STR}},
                    },
                    **classify_errors,
                },
            }
        },
        "/api/v1/classify/batch": {
            "post": {
                "summary": "Classify many texts concurrently; one result or error per item",
                "operationId": "classifyBatch",
                "security": bearer,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("BatchRequest")}},
                },
                "responses": {
                    "200": _json(_ref("BatchResponse")),
                    **_errors(400, 401, 408, 413, 415, 422, 429, 503),
                },
            }
        },
        "/api/v1/classify/stats": {
            "get": {
                "summary": "Registry facts, live workers per model, request analytics",
                "operationId": "stats",
                "security": bearer,
                "responses": {"200": _json(_ref("Stats")), **user_errors, **_errors(503)},
            }
        },
        "/api/v1/health": {
            "get": {
                "summary": "Process is up",
                "operationId": "health",
                "security": [],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status", "version"],
                            "properties": {"status": _STR, "version": _STR},
                        }
                    )
                },
            }
        },
        "/api/v1/health/live": {
            "get": {
                "summary": "Liveness",
                "operationId": "live",
                "security": [],
                "responses": {
                    "200": _json(
                        {"type": "object", "required": ["status"], "properties": {"status": _STR}}
                    )
                },
            }
        },
        "/api/v1/health/ready": {
            "get": {
                "summary": "Readiness: gating loaded and broker answering",
                "operationId": "ready",
                "security": [],
                "responses": {
                    "200": _json(_ref("Ready")),
                    "503": {
                        **_json(_ref("Ready"), "Not ready (details in checks)"),
                        "headers": {"Retry-After": {"schema": _STR}},
                    },
                },
            }
        },
        "/api/v1/admin/dashboard": {
            "get": {
                "summary": (
                    "What the fleet dashboard (/dashboard) shows: the broker's fleet, request "
                    "rate, latency percentiles and errors per bucket, and the routing "
                    "breakdown; admin only"
                ),
                "operationId": "adminDashboard",
                "security": bearer,
                "parameters": [
                    {
                        "name": "span",
                        "in": "query",
                        "schema": {"type": "number", "minimum": 60, "maximum": 21600},
                        "description": "seconds the charts cover (600)",
                    },
                    {
                        "name": "bucket",
                        "in": "query",
                        "schema": {"type": "number", "exclusiveMinimum": 0},
                        "description": "seconds per chart point (10; at most 720 points)",
                    },
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["now", "fleet", "fleet_error", "series", "routing"],
                            "properties": {
                                "now": {"type": "number"},
                                "fleet": {"type": ["object", "null"]},
                                "fleet_error": {"type": ["object", "null"]},
                                "series": _OBJ,
                                "routing": {"type": "array"},
                            },
                        }
                    ),
                    **admin_errors,
                    **_errors(422),
                },
            }
        },
        "/api/v1/admin/workers": {
            "get": {
                "summary": "Live workers and services (broker mmi.status); admin only",
                "operationId": "adminWorkers",
                "security": bearer,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["mode", "services", "workers"],
                            "properties": {
                                "mode": _STR,
                                "broker": {},
                                "services": _OBJ,
                                "workers": {"type": "array"},
                                "counters": _OBJ,
                            },
                        }
                    ),
                    **admin_errors,
                    **_errors(502, 503, 504),
                },
            }
        },
        **{
            f"/api/v1/admin/workers/{{worker_id}}/{action}": {
                "post": {
                    "summary": summary,
                    "operationId": operation,
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "worker_id",
                            "in": "path",
                            "required": True,
                            "schema": _STR,
                            "description": "the worker's id as /api/v1/admin/workers lists it",
                        }
                    ],
                    "responses": {
                        "200": _json(_ref("WorkerDrainReport")),
                        **admin_errors,
                        **_errors(404, 422, 502, 503, 504),
                    },
                }
            }
            for action, operation, summary in (
                (
                    "drain",
                    "adminDrainWorker",
                    "Drain one worker (the broker's mmi.drain): no new requests, what it "
                    "holds finishes; ask again to poll until state is drained; admin only, "
                    "and 403 forbidden unless the broker's ACL grants the frontend's key "
                    "@manage",
                ),
                (
                    "resume",
                    "adminResumeWorker",
                    "Undo a drain (the broker's mmi.resume); admin only, same broker permission",
                ),
            )
        },
        "/api/v1/admin/registry": {
            "get": {
                "summary": "The experts registry in force; admin only",
                "operationId": "adminRegistry",
                "security": bearer,
                "responses": {"200": _json(_ref("Registry")), **admin_errors, **_errors(503)},
            }
        },
        "/api/v1/admin/registry/reload": {
            "post": {
                "summary": "Re-read the registry file; validated first, the old one stays on error",
                "operationId": "adminRegistryReload",
                "security": bearer,
                "responses": {"200": _json(_ref("Registry")), **admin_errors, **_errors(422)},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "MoLE classification service",
            "version": settings.version,
            "description": "Multilingual text classification by a mixture of language "
            "experts. Every error has the shape {error, detail, "
            "request_id}. Bodies may be JSON or msgpack "
            "(Content-Type/Accept: application/msgpack).",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": {
                "ClassifyRequest": classify_request,
                "ClassifyResponse": classify_response,
                "BatchRequest": batch_request,
                "BatchResponse": batch_response,
                "Stats": stats,
                "Error": error,
                "Ready": ready,
                "Registry": registry,
                "WorkerDrainReport": worker_drain_report,
            },
            "responses": responses,
        },
    }
