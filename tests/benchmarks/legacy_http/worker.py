"""Legacy HTTP expert worker for the benchmark: POST /infer -> fixed label after a delay.

    LEGACY_DELAY_S=0.02 gunicorn -k gthread --threads 32 -w 1 \
        tests.benchmarks.legacy_http.worker:app
"""

from __future__ import annotations

import json
import os
import time

import falcon

DELAY_S = float(os.environ.get("LEGACY_DELAY_S", "0"))


class Infer:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        payload = json.loads(req.bounded_stream.read() or b"{}")
        started = time.monotonic()
        if DELAY_S > 0:
            time.sleep(DELAY_S)
        resp.data = json.dumps(
            {
                "result": "1",
                "label": "1",
                "confidence": 0.5,
                "model": payload.get("model"),
                "adapter": payload.get("adapter"),
                "worker_id": f"legacy-{os.getpid()}",
                "timings": {"inference_ms": (time.monotonic() - started) * 1000},
            }
        ).encode()
        resp.content_type = "application/json"


class Health:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


app = falcon.App()
app.add_route("/infer", Infer())
app.add_route("/health", Health())
