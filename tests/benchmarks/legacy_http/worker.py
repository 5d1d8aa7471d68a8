"""Legacy HTTP expert worker for the benchmark (FastAPI under uvicorn, as the original's
expert worker): POST /infer answers a fixed label after ``LEGACY_DELAY_S`` seconds.

    LEGACY_DELAY_S=0.02 uvicorn tests.benchmarks.legacy_http.worker:app
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fastapi import FastAPI

DELAY_S = float(os.environ.get("LEGACY_DELAY_S", "0"))

app = FastAPI()


@app.post("/infer")
async def infer(payload: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    if DELAY_S > 0:
        await asyncio.sleep(DELAY_S)
    return {
        "result": "1",
        "label": "1",
        "confidence": 0.5,
        "model": payload.get("model"),
        "adapter": payload.get("adapter"),
        "worker_id": f"legacy-{os.getpid()}",
        "timings": {"inference_ms": (time.monotonic() - started) * 1000},
    }


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
