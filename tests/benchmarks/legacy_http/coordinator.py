"""Legacy HTTP coordinator for the benchmark, as the original ran it (FastAPI under uvicorn)
with the one fix a careful user would make: ONE shared ``httpx.AsyncClient`` per process
(keep-alive connections to the worker) instead of a new client per request.

    LEGACY_WORKER_URL=http://127.0.0.1:9001 JWT_SECRET_KEY=... \
        uvicorn --workers 2 tests.benchmarks.legacy_http.coordinator:app

Per request it does what MoLE's frontend does: bearer-token verification (the same
``TokenService``, with its cache of verified tokens, so the baseline is not slowed by
token checks MoLE skips) and the real gating pipeline, then one HTTP call to the worker.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel

from mole.frontend.tokens import TokenError, TokenService
from mole.gating import GatingPipeline

WORKER_URL = os.environ.get("LEGACY_WORKER_URL", "http://127.0.0.1:9001")
TIMEOUT_S = float(os.environ.get("REQUEST_TIMEOUT_SECONDS", "120"))
TOKENS = TokenService(os.environ["JWT_SECRET_KEY"])
GATING = GatingPipeline.load()
CLIENT: dict[str, httpx.AsyncClient] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # one client per process, made on its event loop; pool large enough for every request
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=TIMEOUT_S, limits=limits) as client:
        CLIENT["worker"] = client
        yield


app = FastAPI(lifespan=lifespan)


class ClassifyRequest(BaseModel):
    text: str
    description: str


@app.post("/api/v1/classify")
async def classify(
    body: ClassifyRequest, authorization: str = Header(default="")
) -> dict[str, Any]:
    started = time.monotonic()
    _scheme, _, token = authorization.partition(" ")
    try:
        TOKENS.verify(token)
    except TokenError as err:
        raise HTTPException(status_code=401, detail=str(err)) from None
    routed = GATING.route(body.text, body.description)
    expert = routed.expert
    reply = (
        await CLIENT["worker"].post(
            f"{WORKER_URL}/infer",
            json={
                "task": expert.task_key,
                "language": expert.language.code,
                "adapter": expert.adapter_name,
                "model": expert.base_model_key,
                "text": body.text,
            },
        )
    ).json()
    return {
        "request_id": uuid.uuid4().hex,
        "language": routed.language.name,
        "domain": routed.domain,
        "task": routed.task,
        "result": reply["result"],
        "confidence": reply["confidence"],
        "routing_path": routed.routing_path,
        "processing_time_ms": (time.monotonic() - started) * 1000,
    }


@app.get("/api/v1/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
