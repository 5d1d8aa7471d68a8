"""Rate limits through falcon.testing on real parts (real SQLite counters, real gating,
broker and worker processes): per user, per address, batch items counted, Retry-After,
reset after the window (a controlled clock), failed-login lockout, disabled limits, and
the settings that configure them."""

from __future__ import annotations

import threading

import pytest

from mole.frontend.limits import Limits
from mole.frontend.ratelimit import Rate, RateLimiter, RateSpecError, parse_rate
from mole.frontend.settings import SettingsError, settings_from_env
from tests.frontend.frontend_support import PASSWORD, Clock

EN = "The quarterly revenue rose 12 percent and the company raised its full-year outlook."
RATE = "Rate the sentiment of this financial statement"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def classify(api, headers, address="127.0.0.1", text=EN):
    return api.client.simulate_post(
        "/api/v1/classify",
        json={"text": text, "description": RATE},
        headers=headers,
        remote_addr=address,
    )


def login(api, username, password=PASSWORD, address="127.0.0.1"):
    form = f"username={username}&password={password.replace(' ', '+')}"
    return api.client.simulate_post(
        "/api/v1/auth/token", body=form, headers=FORM, remote_addr=address
    )


def assert_rate_limited(r, low: int, high: int) -> None:
    assert r.status_code == 429, r.text
    assert r.json["error"] == "rate_limited"
    assert r.json["detail"]
    assert r.json["request_id"] == r.headers["X-Request-ID"]
    assert low <= int(r.headers["Retry-After"]) <= high, r.headers["Retry-After"]


def test_per_user_classify_limit_and_reset_after_the_window(make_api):
    clock = Clock()
    api = make_api(clock, rate_limit_classify_user="3/minute", rate_limit_classify_address="off")
    alice, bob = api.user("alice"), api.user("bobby")
    for _ in range(3):
        assert classify(api, alice).status_code == 200
    r = classify(api, alice)
    assert_rate_limited(r, 19, 20)  # one unit of 3/minute comes back every 20 s
    assert "user" in r.json["detail"]
    assert classify(api, bob).status_code == 200  # another user, same address: own budget
    metrics = api.client.simulate_get("/metrics").text
    assert 'mole_rate_limited_total{limit="classify_user"} 1.0' in metrics
    clock.now += 19.0
    assert classify(api, alice).status_code == 429
    clock.now += 1.0
    assert classify(api, alice).status_code == 200
    clock.now += 60.0  # a whole window: the full burst is back
    for _ in range(3):
        assert classify(api, alice).status_code == 200
    assert classify(api, alice).status_code == 429


def test_per_address_classify_limit(make_api):
    clock = Clock()
    api = make_api(clock, rate_limit_classify_user="off", rate_limit_classify_address="3/minute")
    alice, bob = api.user("alice"), api.user("bobby")
    assert classify(api, alice, "10.0.0.1").status_code == 200
    assert classify(api, bob, "10.0.0.1").status_code == 200
    assert classify(api, alice, "10.0.0.1").status_code == 200
    r = classify(api, bob, "10.0.0.1")  # a fresh user cannot escape its address's limit
    assert_rate_limited(r, 19, 20)
    assert "address" in r.json["detail"]
    assert classify(api, bob, "10.0.0.2").status_code == 200


def test_a_batch_counts_its_items_and_refusals_cost_nothing(make_api):
    clock = Clock()
    api = make_api(clock, rate_limit_classify_user="5/minute")
    alice = api.user("alice")
    batch = {"items": [{"text": EN, "description": RATE}] * 3}
    r = api.client.simulate_post("/api/v1/classify/batch", json=batch, headers=alice)
    assert r.status_code == 200
    assert r.json["successful"] == 3
    r = api.client.simulate_post("/api/v1/classify/batch", json=batch, headers=alice)
    assert_rate_limited(r, 12, 12)  # 2 left, 3 asked: one more unit of 5/minute is 12 s
    assert classify(api, alice).status_code == 200  # the refused batch spent nothing
    assert classify(api, alice).status_code == 200
    assert classify(api, alice).status_code == 429


def test_failed_logins_lock_the_username_out(make_offline):
    clock = Clock()
    api = make_offline(
        clock,
        rate_limit_login_user="10/minute",
        rate_limit_login_address="off",
        login_failure_cost=5,
    )
    api.components.users.create("carol", PASSWORD)
    api.components.users.create("dave1", PASSWORD)
    for _ in range(5):  # successful logins are cheap
        assert login(api, "carol").status_code == 200
    clock.now += 60.0
    assert login(api, "carol", "wrong-guess-1").status_code == 401
    assert login(api, "carol", "wrong-guess-2").status_code == 401
    # two failures spent 10 units: even the right password waits now
    r = login(api, "carol")
    assert_rate_limited(r, 5, 6)
    assert "login" in r.json["detail"]
    assert login(api, "dave1").status_code == 200  # other usernames are not affected
    clock.now += 6.0
    assert login(api, "carol").status_code == 200


def test_per_address_login_limit_stops_password_spraying(make_offline):
    clock = Clock()
    api = make_offline(
        clock,
        rate_limit_login_user="off",
        rate_limit_login_address="10/minute",
        login_failure_cost=5,
    )
    api.components.users.create("erin1", PASSWORD)
    assert login(api, "nobody1", "guess", "10.0.0.9").status_code == 401
    assert login(api, "nobody2", "guess", "10.0.0.9").status_code == 401
    assert_rate_limited(login(api, "erin1", address="10.0.0.9"), 5, 6)
    assert login(api, "erin1", address="10.0.0.10").status_code == 200
    # registering counts against the same per-address budget
    r = api.client.simulate_post(
        "/api/v1/auth/register",
        remote_addr="10.0.0.9",
        json={"username": "frank", "password": "long-password"},
    )
    assert_rate_limited(r, 5, 6)


def test_disabled_limits_never_refuse(make_offline):
    clock = Clock()
    api = make_offline(
        clock,
        rate_limit_login_user="off",
        rate_limit_login_address="0",
        rate_limit_classify_user="off",
        rate_limit_classify_address="off",
        rate_limit_register_address="off",
    )
    assert api.components.limits.limiter is None  # no database is even opened
    api.components.users.create("grace", PASSWORD)
    for _ in range(40):
        assert login(api, "grace", "wrong-password").status_code == 401
    assert login(api, "grace").status_code == 200


def test_limits_are_shared_between_limiter_instances_on_one_file(tmp_path):
    # two RateLimiter objects on one file stand for two gunicorn worker processes (the
    # real two-process case is in test_frontend_gunicorn_limits.py)
    clock = Clock()
    rate = Rate(10, 60.0)
    one = RateLimiter(tmp_path / "rl.sqlite3", clock=clock)
    two = RateLimiter(tmp_path / "rl.sqlite3", clock=clock)
    allowed = []

    def spend(limiter):
        for _ in range(10):
            allowed.append(limiter.hit([("k", rate)]).allowed)

    threads = [threading.Thread(target=spend, args=(lim,)) for lim in (one, two, one, two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed.count(True) == 10
    assert len(allowed) == 40
    one.close()
    two.close()


def test_a_broken_database_lets_requests_through(tmp_path, caplog):
    path = tmp_path / "not-a-db"
    path.mkdir()  # a directory where the file should be: sqlite cannot open it
    limiter = RateLimiter(path)
    assert limiter.hit([("k", Rate(1, 60.0))]).allowed
    assert limiter.hit([("k", Rate(1, 60.0))]).allowed
    assert "let through unlimited" in caplog.text


def test_parse_rate_forms():
    assert parse_rate("10/minute") == Rate(10, 60.0)
    assert parse_rate("600/min") == Rate(600, 60.0)
    assert parse_rate("5/30s") == Rate(5, 30.0)
    assert parse_rate(" 100 / hour ") == Rate(100, 3600.0)
    assert parse_rate("2/1.5s") == Rate(2, 1.5)
    for off in ("0", "off", "OFF", "none", "", "0/minute"):
        assert parse_rate(off) is None
    for bad in ("ten/minute", "10/fortnight", "10", "-1/minute", "10/0s"):
        with pytest.raises(RateSpecError, match="COUNT/PERIOD"):
            parse_rate(bad, "X")


def test_rate_limit_settings_from_the_environment():
    s = settings_from_env(
        {
            "MOLE_RATE_LIMIT_LOGIN": "3/minute",
            "MOLE_RATE_LIMIT_CLASSIFY": "100/second",
            "MOLE_RATE_LIMIT_CLASSIFY_ADDRESS": "off",
            "MOLE_LOGIN_FAILURE_COST": "3",
            "MOLE_MAX_TEXT_CHARS": "500",
        }
    )
    assert (s.rate_limit_login_user, s.rate_limit_login_address) == ("3/minute", "3/minute")
    assert (s.rate_limit_classify_user, s.rate_limit_classify_address) == ("100/second", "off")
    assert s.login_failure_cost == 3
    assert s.max_text_chars == 500
    off = settings_from_env({"MOLE_RATE_LIMITS": "off"})
    assert Limits.from_settings(off).limiter is None
    defaults = settings_from_env({})
    limits = Limits.from_settings(defaults)
    assert limits.login_user == Rate(10, 60.0)
    assert limits.classify_user == Rate(6000, 60.0)
    limits.close()
    with pytest.raises(SettingsError, match="MOLE_RATE_LIMIT_LOGIN_USER"):
        settings_from_env({"MOLE_RATE_LIMIT_LOGIN_USER": "lots"})


def _count_transactions(limiter: RateLimiter) -> list[str]:
    seen: list[str] = []
    limiter._db().set_trace_callback(
        lambda sql: seen.append(sql) if sql.startswith("BEGIN") else None
    )
    return seen


def _spent_units(path, key: str, since: float, rate: Rate) -> float:
    import sqlite3

    with sqlite3.connect(path) as db:
        (tat,) = db.execute("SELECT tat FROM buckets WHERE key = ?", (key,)).fetchone()
    return round((tat - since) / rate.interval_s, 6)


def test_a_fast_client_is_served_from_a_lease_taken_ahead_from_the_shared_bucket(tmp_path):
    clock = Clock()
    start = clock.now
    rate = Rate(6400, 640.0)  # burst 6400: leases of up to 32 units
    limiter = RateLimiter(tmp_path / "rl.sqlite3", clock=clock)
    transactions = _count_transactions(limiter)
    assert all(limiter.hit([("k", rate)]).allowed for _ in range(100))
    # most checks never touched SQLite; the bucket paid ahead for what the lease holds
    assert len(transactions) < 15
    held = limiter._leases[(("k", rate),)].units
    assert 0 < held <= 32
    assert _spent_units(tmp_path / "rl.sqlite3", "k", start, rate) == 100 + held
    # the client pauses past the lease's time: its next check gives the rest back and
    # takes a smaller lease
    clock.now += 2.0
    assert limiter.hit([("k", rate)]).allowed
    lease = limiter._leases[(("k", rate),)]
    assert _spent_units(tmp_path / "rl.sqlite3", "k", start, rate) == 101 + lease.units
    limiter.close()


def test_leases_never_let_processes_together_exceed_the_rate(tmp_path):
    clock = Clock()
    rate = Rate(6400, 3600.0)
    one = RateLimiter(tmp_path / "rl.sqlite3", clock=clock)
    two = RateLimiter(tmp_path / "rl.sqlite3", clock=clock)
    allowed = {one: 0, two: 0}
    refused = set()
    while len(refused) < 2:  # take turns in bursts until both are refused
        for limiter in (one, two):
            for _ in range(7):
                if limiter.hit([("user", rate), ("addr", rate)]).allowed:
                    allowed[limiter] += 1
                else:
                    refused.add(limiter)
    assert allowed[one] + allowed[two] == 6400
    assert min(allowed.values()) > 3000  # both got their turns' worth
    decision = one.hit([("user", rate)])
    assert not decision.allowed
    assert decision.retry_after_s > 0
    one.close()
    two.close()


def test_small_rates_are_checked_in_sqlite_every_time(tmp_path):
    limiter = RateLimiter(tmp_path / "rl.sqlite3", clock=Clock())
    transactions = _count_transactions(limiter)
    results = [limiter.hit([("k", Rate(60, 60.0))]).allowed for _ in range(61)]
    assert results == [True] * 60 + [False]
    assert len(transactions) == 61
    limiter.close()


class CountingLimiter(RateLimiter):
    """The real limiter, counting the checks that go to SQLite (in a thread)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sqlite_checks = 0

    def hit(self, checks, cost=1.0):
        self.sqlite_checks += 1
        return super().hit(checks, cost)


def test_requests_in_flight_share_one_refill_of_an_empty_lease(tmp_path):
    """16 classify checks of one client at once on an empty lease: one goes to SQLite at a
    time and the others are answered from the lease it took (its size doubles each time:
    0, 1, 2, 4, 8 units), so 5 checks reach SQLite rather than 16."""
    import asyncio

    limiter = CountingLimiter(tmp_path / "ratelimit.sqlite3")
    limits = Limits(limiter, classify_user=parse_rate("100000/second"))

    async def burst() -> None:
        await asyncio.gather(*(limits.classify("alice", "10.0.0.1") for _ in range(16)))

    try:
        asyncio.run(burst())
    finally:
        limits.close()
    assert limiter.sqlite_checks == 5
