"""Legacy HTTP coordinator for the benchmark: JWT check, gating, then HTTP to a worker.

    LEGACY_CLIENT_MODE=per_call|shared LEGACY_WORKER_URL=http://127.0.0.1:9001 \
    JWT_SECRET_KEY=... gunicorn -k gthread --threads 16 -w 2 \
        tests.benchmarks.legacy_http.coordinator:app

``per_call`` reproduces the original (a new client for every request); ``shared`` is the
careful fix (one keep-alive client per process). Everything else is the same as MoLE's
frontend does per request: bearer-token verification and the real gating pipeline.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import falcon
import httpx2 as httpx  # an httpx-compatible client (same Client() construction cost)

from mole.frontend.tokens import TokenError, TokenService
from mole.gating import GatingPipeline

MODE = os.environ.get("LEGACY_CLIENT_MODE", "per_call")
WORKER_URL = os.environ.get("LEGACY_WORKER_URL", "http://127.0.0.1:9001")
TIMEOUT_S = float(os.environ.get("REQUEST_TIMEOUT_SECONDS", "120"))
TOKENS = TokenService(os.environ["JWT_SECRET_KEY"])
GATING = GatingPipeline.load()
_SHARED = httpx.Client(timeout=TIMEOUT_S) if MODE == "shared" else None


def _forward(payload: dict) -> dict:
    if _SHARED is not None:
        return _SHARED.post(f"{WORKER_URL}/infer", json=payload).json()
    # As the original did: a new client per call (it builds an SSL context every time).
    with httpx.Client(timeout=TIMEOUT_S) as client:
        return client.post(f"{WORKER_URL}/infer", json=payload).json()


class Classify:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.monotonic()
        _scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
        try:
            TOKENS.verify(token)
        except TokenError as err:
            raise falcon.HTTPUnauthorized(description=str(err)) from None
        body = json.loads(req.bounded_stream.read())
        routed = GATING.route(body["text"], body["description"])
        expert = routed.expert
        reply = _forward(
            {
                "task": expert.task_key,
                "language": expert.language.code,
                "adapter": expert.adapter_name,
                "model": expert.base_model_key,
                "text": body["text"],
            }
        )
        resp.data = json.dumps(
            {
                "request_id": uuid.uuid4().hex,
                "language": routed.language.name,
                "domain": routed.domain,
                "task": routed.task,
                "result": reply["result"],
                "confidence": reply["confidence"],
                "routing_path": f"{routed.routing_path.rsplit(' -> ', 1)[0]} -> "
                f"gateway:{expert.base_model_key}",
                "processing_time_ms": (time.monotonic() - started) * 1000,
            }
        ).encode()
        resp.content_type = "application/json"


class Health:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok", "mode": MODE}


app = falcon.App()
app.add_route("/api/v1/classify", Classify())
app.add_route("/api/v1/health", Health())
