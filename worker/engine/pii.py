"""Turning a model's PII answer into entities with character offsets.

Models asked for "ONLY a JSON array of {text, label, occurrence}" often answer with
near-JSON: code fences, chatter around the array, a truncated tail, trailing commas, single
quotes. The repair cascade follows the original service (direct parse, bracket-balanced
extraction, truncation repair, syntax fixes, per-object regex); labels go through the
original alias map, unknown labels are dropped, and ``occurrence`` (the 1-based index of
identical text) becomes the offset of that occurrence in the input, found even where the
prompt cleaning changed whitespace or the model changed case or Unicode form
(:mod:`mole.worker.engine.spans`). Entity text that is not in the input is dropped.
Nothing here raises on model output: the worst case is no entity.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mole.worker.engine.spans import find_span

#: aliases seen in model output -> the registry's label
LABEL_ALIASES: dict[str, str] = {
    # people
    "name": "person_name",
    "person": "person_name",
    "full_name": "person_name",
    "per": "person_name",
    "first_name": "person_name",
    "last_name": "person_name",
    # dates
    "dob": "date",
    "date_of_birth": "date",
    "birth_date": "date",
    "birthdate": "date",
    # places
    "address": "location",
    "street_address": "location",
    "city": "location",
    "country": "location",
    "loc": "location",
    "gpe": "location",
    "postal_address": "location",
    # organisations
    "org": "organization",
    "company": "organization",
    "organisation": "organization",
    # contact
    "email": "contact_info",
    "email_address": "contact_info",
    "phone": "contact_info",
    "phone_number": "contact_info",
    "telephone": "contact_info",
    "mobile": "contact_info",
    "fax": "contact_info",
    "contact": "contact_info",
    # government ids
    "ssn": "government_id",
    "passport": "government_id",
    "passport_number": "government_id",
    "national_id": "government_id",
    "tax_id": "government_id",
    "id_number": "government_id",
    "driver_license": "government_id",
    "drivers_license": "government_id",
    "personal_id": "government_id",
    # money
    "iban": "financial_account",
    "bank_account": "financial_account",
    "account_number": "financial_account",
    "bank_account_number": "financial_account",
    "credit_card": "payment_card",
    "credit_card_number": "payment_card",
    "card_number": "payment_card",
    "debit_card": "payment_card",
    # online identity and secrets
    "username": "user_identifier",
    "user_name": "user_identifier",
    "user_id": "user_identifier",
    "login": "user_identifier",
    "account_id": "user_identifier",
    "password": "secret",
    "api_key": "secret",
    "token": "secret",
    "secret_key": "secret",
    "pin": "secret",
    "access_token": "secret",
    "ip": "ip_address",
    "ipv4": "ip_address",
    "ipv6": "ip_address",
}

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)(?:```|$)", re.S)
_TRAILING_COMMA = re.compile(r",\s*([\]}])")
_MISSING_COMMA = re.compile(r"}\s*{")
_OBJECT = re.compile(r"\{[^{}]*\}", re.S)
_FIELD = {
    "text": re.compile(r"""["']text["']\s*:\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')""", re.S),
    "label": re.compile(r"""["']label["']\s*:\s*["']([^"']*)["']"""),
    "occurrence": re.compile(r"""["']occurrence["']\s*:\s*["']?(\d+)"""),
}


@dataclass(slots=True)
class PiiResult:
    """Parsed items as the original service returned them, and the located entities."""

    items: list[dict[str, Any]] = field(default_factory=list)  # {text, label, occurrence}
    entities: list[dict[str, Any]] = field(default_factory=list)  # {text, label, start, end}
    repaired: str = "none"  # which step of the cascade produced the items

    @property
    def result_json(self) -> str:
        return json.dumps(self.items, ensure_ascii=False)


def normalize_label(label: str, labels: tuple[str, ...] | frozenset[str]) -> str | None:
    """The registry label for a model's label, through the alias map; None if unknown."""
    key = re.sub(r"[\s\-]+", "_", label.strip().lower())
    if key in labels:
        return key
    alias = LABEL_ALIASES.get(key)
    return alias if alias in labels else None


def _balanced(text: str, start: int) -> str | None:
    """The bracket-balanced JSON value starting at ``text[start]`` (string-aware)."""
    opening = text[start]
    closing = "]" if opening == "[" else "}"
    depth, in_string, escape, quote = 0, False, False, ""
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == quote:
                in_string = False
        elif ch in "\"'":
            in_string, quote = True, ch
        elif ch == opening:
            depth += 1
        elif ch == closing:
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None


def _fix_syntax(text: str) -> str:
    text = _MISSING_COMMA.sub("},{", text)
    text = _TRAILING_COMMA.sub(r"\1", text)
    if "'" in text and '"' not in text:
        text = text.replace("'", '"')
    text = re.sub(r"\bTrue\b", "true", re.sub(r"\bNone\b", "null", text))
    return text


def _try_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None


def _repair_truncated(text: str) -> str | None:
    """Close an array whose tail was cut: keep the objects that were complete."""
    start = text.find("[")
    if start < 0:
        return None
    last = text.rfind("}")
    if last <= start:
        return "[]"
    return text[start : last + 1] + "]"


def _candidates(raw: str) -> Iterator[tuple[str, str]]:
    """Texts to try parsing, in the cascade's order, each with the step's name."""
    text = raw.strip()
    yield "direct", text
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
        yield "code_fence", text
    start = text.find("[")
    if start >= 0:
        block = _balanced(text, start)
        if block is not None:
            yield "bracket_extraction", block
            yield "syntax_fix", _fix_syntax(block)
        truncated = _repair_truncated(text)
        if truncated is not None:
            yield "truncation_repair", truncated
            yield "truncation_repair+syntax_fix", _fix_syntax(truncated)
    start = text.find("{")
    if start >= 0:
        block = _balanced(text, start)
        if block is not None:
            yield "bracket_extraction", block
            yield "syntax_fix", _fix_syntax(block)
    yield "syntax_fix", _fix_syntax(text)


def _as_list(value: Any) -> list[Any] | None:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        for key in ("entities", "pii", "items", "results"):
            items = value.get(key)
            if isinstance(items, list):
                return items
        if "text" in value:
            return [value]
    return None


def _regex_objects(raw: str) -> list[dict[str, Any]]:
    """Last resort: pull text/label/occurrence out of each ``{...}`` by regex."""
    found = []
    for match in _OBJECT.finditer(raw):
        chunk = match.group(0)
        obj = _try_json(_fix_syntax(chunk))
        if isinstance(obj, dict):
            found.append(obj)
            continue
        text_m = _FIELD["text"].search(chunk)
        label_m = _FIELD["label"].search(chunk)
        if not (text_m and label_m):
            continue
        text_v = text_m.group(1) if text_m.group(1) is not None else text_m.group(2)
        occ_m = _FIELD["occurrence"].search(chunk)
        occurrence = occ_m.group(1) if occ_m else 1
        found.append({"text": text_v, "label": label_m.group(1), "occurrence": occurrence})
    return found


def extract_items(raw: str) -> tuple[list[Any], str]:
    """The list of raw objects in a model answer, and the cascade step that found it."""
    if not raw or not raw.strip():
        return [], "empty"
    for step, candidate in _candidates(raw):
        items = _as_list(_try_json(candidate))
        if items is not None:
            return items, step
    objects = _regex_objects(raw)
    return objects, "per_object_regex" if objects else "unparseable"


def _occurrence(value: Any) -> int | None:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return n if n >= 1 else None


def locate(text: str, needle: str, occurrence: int) -> int:
    """Start of the ``occurrence``-th (1-based) ``needle`` in ``text``; -1 if absent.

    See :func:`mole.worker.engine.spans.find_span` for how whitespace, case and Unicode
    normalisation are forgiven.
    """
    span = find_span(text, needle, occurrence)
    return -1 if span is None else span[0]


def parse_pii(raw: str, text: str, labels: tuple[str, ...]) -> PiiResult:
    """Parse a PII answer into validated items and entities with offsets into ``text``."""
    label_set = frozenset(labels)
    objects, step = extract_items(raw)
    result = PiiResult(repaired=step)
    seen: set[tuple[str, str, int]] = set()
    for obj in objects:
        if not isinstance(obj, dict):
            continue
        span, label = obj.get("text"), obj.get("label")
        if not isinstance(span, str) or not span.strip() or not isinstance(label, str):
            continue
        canonical = normalize_label(label, label_set)
        occurrence = _occurrence(obj.get("occurrence", 1))
        if canonical is None or occurrence is None:
            continue
        found = find_span(text, span, occurrence)
        if found is None:
            continue
        key = (span, canonical, occurrence)
        if key in seen:
            continue
        seen.add(key)
        start, end = found
        result.items.append({"text": span, "label": canonical, "occurrence": occurrence})
        result.entities.append(
            {"text": text[start:end], "label": canonical, "start": start, "end": end}
        )
    return result
