"""Request texts, descriptions and passwords never reach the logs, at any level.

The app runs on real parts (real gating, broker and worker processes) with every logger
captured at DEBUG, through real requests that succeed and that fail (unsupported language,
worker errors, validation errors, bad bodies, a rate-limited request, wrong passwords).
"""

from __future__ import annotations

import logging

import msgpack

from mole.frontend.gating_holder import GatingHolder
from tests.frontend.frontend_support import Api, make_components, make_settings

SECRET = "ZQXJ-7781-vbkw"  # looks like nothing any library would print by itself
EN = f"The quarterly revenue rose 12 percent, says {SECRET}, and the company raised its outlook."
RU = f"Выручка компании {SECRET} за квартал выросла на двенадцать процентов по сравнению."
DESCRIPTION = f"Rate the sentiment of this financial statement {SECRET}"
PASSWORD = f"pw-{SECRET}-long"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_secrets_never_appear_in_any_log_record(
    tmp_path, hasher, registry, gating_pipeline, broker_url, fixed_workers, caplog
):
    settings = make_settings(tmp_path, max_text_chars=200, rate_limit_classify_user="12/minute")
    api = Api(
        make_components(
            settings,
            hasher=hasher,
            broker_url=broker_url,
            gating=GatingHolder.loaded(gating_pipeline, registry),
        )
    )
    c = api.client
    caplog.set_level(logging.DEBUG)  # the root logger and everything under it
    try:
        statuses = []
        r = c.simulate_post(
            "/api/v1/auth/register", json={"username": "secretive", "password": PASSWORD}
        )
        statuses.append(r.status_code)
        r = c.simulate_post(
            "/api/v1/auth/register",  # too short: a validation error
            json={"username": "secretive2", "password": SECRET[:5]},
        )
        statuses.append(r.status_code)
        r = c.simulate_post(
            "/api/v1/auth/token", headers=FORM, body=f"username=secretive&password={PASSWORD}x"
        )
        statuses.append(r.status_code)
        r = c.simulate_post(
            "/api/v1/auth/token", headers=FORM, body=f"username=secretive&password={PASSWORD}"
        )
        statuses.append(r.status_code)
        headers = {"Authorization": f"Bearer {r.json['access_token']}"}

        def post(path, body, **kw):
            statuses.append(c.simulate_post(path, json=body, headers=headers, **kw).status_code)

        post(
            "/api/v1/classify",
            {"text": EN, "description": DESCRIPTION, "options": {"return_raw_response": True}},
        )
        post("/api/v1/classify", {"text": RU, "description": DESCRIPTION})  # unsupported
        post("/api/v1/classify", {"text": f"{EN} __error:internal", "description": DESCRIPTION})
        post("/api/v1/classify", {"text": f"{EN} __error:bad_request", "description": DESCRIPTION})
        post("/api/v1/classify", {"text": EN, "description": 42})  # validation
        post("/api/v1/classify", {"text": EN * 5, "description": DESCRIPTION})  # too long
        post("/api/v1/classify", {"text": EN, "description": DESCRIPTION, "options": [SECRET]})
        post(
            "/api/v1/classify/batch",
            {
                "items": [
                    {"text": EN, "description": DESCRIPTION},
                    {"text": RU, "description": DESCRIPTION},
                    {"text": f"{EN} __error:worker_lost", "description": DESCRIPTION},
                    {"text": SECRET},
                ]
            },
        )
        statuses.append(
            c.simulate_post(
                "/api/v1/classify", body=f'{{"text": "{SECRET}', headers=headers
            ).status_code
        )
        statuses.append(
            c.simulate_post(
                "/api/v1/classify",
                headers={**headers, "Content-Type": "application/msgpack"},
                body=msgpack.packb({"text": RU, "description": DESCRIPTION}),
            ).status_code
        )
        for _ in range(4):  # past the 12/minute limit: 429s
            post("/api/v1/classify", {"text": EN, "description": DESCRIPTION})
    finally:
        api.close()
    assert statuses[:4] == [201, 422, 401, 200], statuses
    assert {200, 400, 422, 429, 502} <= set(statuses), statuses
    records = caplog.records
    # the capture works: the classifier's own DEBUG lines about these requests are there
    assert sum("request " in r.getMessage() for r in records) >= 8, [
        r.getMessage() for r in records
    ]
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in records:
        text = formatter.format(record) + repr(record.args) + str(record.__dict__)
        for secret in (SECRET, PASSWORD, EN[:30], RU[:20], DESCRIPTION[:30]):
            assert secret not in text, f"{secret!r} leaked into a log record: {text[:500]}"


def test_the_access_log_line_has_no_body_query_or_headers(tmp_path, hasher, registry, caplog):
    """The access log (MOLE_FRONTEND_ACCESS_LOG) names the path, never the query string, a
    header or the body: a request carrying a secret in all three leaves none of it."""
    settings = make_settings(tmp_path, access_log=True)
    api = Api(
        make_components(
            settings,
            hasher=hasher,
            broker_url="tcp://127.0.0.1:9",
            gating=GatingHolder(registry_path=registry.path, loader=lambda reg: None),
        )
    )
    caplog.set_level(logging.INFO, logger="mole.frontend.access")
    try:
        r = api.client.simulate_post(
            "/api/v1/auth/token",
            query_string=f"password={SECRET}",
            body=f"username=nobody&password={PASSWORD}",
            headers={**FORM, "Authorization": f"Bearer {SECRET}", "X-Note": SECRET},
        )
    finally:
        api.close()
    assert r.status_code == 401
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "mole.frontend.access"]
    assert len(lines) == 1, lines
    line = lines[0]
    assert '"POST /api/v1/auth/token HTTP/1.1" 401' in line
    assert r.headers["X-Request-ID"] in line
    assert SECRET not in line
    assert PASSWORD not in line
