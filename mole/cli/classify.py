"""``mole classify TEXT --description D``: one request through the running stack.

It speaks to the frontend over HTTP exactly as any user's program would (token, then
classify), so it doubles as a smoke test of a running ``mole up``. The URL comes from
``--url``, ``MOLE_URL``, or else the running stack's record (``stack.json`` in the data
directory), so a stack started on another port is found without flags. Credentials come
from flags, ``MOLE_USERNAME``/``MOLE_PASSWORD`` or ``MOLE_TOKEN``, or else the local admin
that ``mole up`` created in the data directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from mole.cli.stack_state import default_data_dir, read_state

DEFAULT_URL = "http://127.0.0.1:8000"


class ClassifyFailed(Exception):
    """The frontend answered with an error, or could not be reached."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="the text to classify")
    parser.add_argument(
        "--description",
        "-d",
        required=True,
        help="what to do with the text, e.g. 'Classify the sentiment ...'",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("MOLE_URL"),
        help="the frontend (env MOLE_URL; default: the URL of the stack `mole up` runs "
        f"from the data directory, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--username", default=os.environ.get("MOLE_USERNAME"), help="env MOLE_USERNAME"
    )
    parser.add_argument(
        "--password", default=os.environ.get("MOLE_PASSWORD"), help="env MOLE_PASSWORD"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("MOLE_TOKEN"),
        help="a bearer token instead of a username and password (env MOLE_TOKEN)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the data directory of `mole up` (default: MOLE_DATA_DIR or ~/.cache/mole); "
        "its local admin is used when no credentials are given",
    )
    parser.add_argument(
        "--probabilities", action="store_true", help="return every label's p (default off)"
    )
    parser.add_argument(
        "--raw", action="store_true", help="return the model's raw output (default off)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the JSON reply (default: a table)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to wait for each HTTP answer (default 120)",
    )


def _call(request: urllib.request.Request, timeout: float) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply: dict[str, Any] = json.loads(response.read())
            return reply
    except urllib.error.HTTPError as err:
        try:
            body = json.loads(err.read())
            detail = f"{body.get('error')}: {body.get('detail')}"
        except ValueError:
            detail = err.reason
        raise ClassifyFailed(f"HTTP {err.code} from {request.full_url}: {detail}") from None
    except (urllib.error.URLError, OSError) as err:
        raise ClassifyFailed(
            f"cannot reach {request.full_url}: {err}; is `mole up` running?"
        ) from None


def get_token(url: str, username: str, password: str, timeout: float) -> str:
    form = urllib.parse.urlencode({"username": username, "password": password}).encode()
    request = urllib.request.Request(
        f"{url}/api/v1/auth/token",
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    return str(_call(request, timeout)["access_token"])


def classify(
    url: str,
    token: str,
    text: str,
    description: str,
    *,
    probabilities: bool = False,
    raw: bool = False,
    timeout: float = 120.0,
) -> dict[str, Any]:
    body = {
        "text": text,
        "description": description,
        "options": {"return_probabilities": probabilities, "return_raw_response": raw},
    }
    request = urllib.request.Request(
        f"{url}/api/v1/classify",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    return _call(request, timeout)


def _credentials(args: argparse.Namespace) -> tuple[str, str]:
    if args.username and args.password:
        return args.username, args.password
    path = (args.data_dir or default_data_dir()) / "local-admin.json"
    if path.exists():
        creds = json.loads(path.read_text())
        return creds["username"], creds["password"]
    raise ClassifyFailed(
        "no credentials: pass --username/--password (or MOLE_TOKEN), "
        f"or run `mole up` which writes {path}"
    )


def render(reply: dict[str, Any]) -> str:
    lines = [
        f"result      {reply.get('result')}",
        f"confidence  {reply.get('confidence')}",
        f"language    {reply.get('language')}",
        f"domain      {reply.get('domain')}",
        f"task        {reply.get('task')}",
        f"route       {reply.get('routing_path')}",
        f"worker      {reply.get('worker_id')} ({reply.get('model')})",
        f"time        {reply.get('processing_time_ms')} ms",
    ]
    for entity in reply.get("entities") or []:
        lines.append(
            f"entity      {entity['label']:<18} {entity['text']!r} "
            f"[{entity['start']}:{entity['end']}]"
        )
    for label, p in sorted((reply.get("probabilities") or {}).items(), key=lambda kv: -kv[1]):
        lines.append(f"  p({label}) = {p:.4f}")
    if reply.get("tiny_model"):
        lines.append("note        tiny random model: this prediction means nothing")
    return "\n".join(lines)


def resolve_url(args: argparse.Namespace) -> str:
    """``--url``/``MOLE_URL``, else the running stack's URL, else the default."""
    if args.url:
        return str(args.url).rstrip("/")
    state = read_state(args.data_dir)
    return state.url if state is not None else DEFAULT_URL


def run(args: argparse.Namespace) -> int:
    url = resolve_url(args)
    try:
        token = args.token or get_token(url, *_credentials(args), args.timeout)
        reply = classify(
            url,
            token,
            args.text,
            args.description,
            probabilities=args.probabilities,
            raw=args.raw,
            timeout=args.timeout,
        )
    except ClassifyFailed as err:
        print(f"mole classify: {err}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=2, ensure_ascii=False) if args.json else render(reply))
    return 0
