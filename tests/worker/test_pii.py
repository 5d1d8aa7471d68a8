"""PII answers from models, valid and broken, become entities with the right offsets."""

import json

import pytest

from mole.worker.engine.pii import locate, normalize_label, parse_pii

LABELS = (
    "person_name",
    "date",
    "location",
    "organization",
    "contact_info",
    "government_id",
    "financial_account",
    "payment_card",
    "user_identifier",
    "secret",
    "ip_address",
)
TEXT = "Call John at john@x.com. John lives in Paris; John's IBAN is DE89 3704."


def entities(raw: str, text: str = TEXT):
    return parse_pii(raw, text, LABELS).entities


def test_valid_json_gives_offsets_into_the_input():
    raw = json.dumps(
        [
            {"text": "John", "label": "person_name", "occurrence": 1},
            {"text": "Paris", "label": "location", "occurrence": 1},
        ]
    )
    result = parse_pii(raw, TEXT, LABELS)
    assert result.repaired == "direct"
    assert result.entities == [
        {"text": "John", "label": "person_name", "start": 5, "end": 9},
        {"text": "Paris", "label": "location", "start": 39, "end": 44},
    ]
    assert json.loads(result.result_json) == [
        {"text": "John", "label": "person_name", "occurrence": 1},
        {"text": "Paris", "label": "location", "occurrence": 1},
    ]


def test_repeated_text_uses_the_nth_occurrence():
    raw = json.dumps([{"text": "John", "label": "person_name", "occurrence": n} for n in (1, 2, 3)])
    spans = [(e["start"], e["end"]) for e in entities(raw)]
    starts = [i for i in range(len(TEXT)) if TEXT.startswith("John", i)]
    assert spans == [(s, s + 4) for s in starts]
    assert all(TEXT[s:e] == "John" for s, e in spans)


def test_occurrence_beyond_the_repeats_is_dropped():
    raw = json.dumps([{"text": "Paris", "label": "location", "occurrence": 2}])
    assert entities(raw) == []


@pytest.mark.parametrize(
    ("alias", "label"),
    [
        ("email", "contact_info"),
        ("phone", "contact_info"),
        ("address", "location"),
        ("ssn", "government_id"),
        ("passport_number", "government_id"),
        ("iban", "financial_account"),
        ("bank_account", "financial_account"),
        ("credit_card", "payment_card"),
        ("username", "user_identifier"),
        ("password", "secret"),
        ("api_key", "secret"),
        ("Person Name", "person_name"),
    ],
)
def test_label_aliases_of_the_original_service(alias, label):
    assert normalize_label(alias, LABELS) == label


def test_unknown_labels_and_text_not_in_input_are_dropped():
    raw = json.dumps(
        [
            {"text": "John", "label": "favourite_colour"},
            {"text": "Berlin", "label": "location"},
            {"text": "john@x.com", "label": "email"},
        ]
    )
    assert entities(raw) == [
        {"text": "john@x.com", "label": "contact_info", "start": 13, "end": 23}
    ]


@pytest.mark.parametrize(
    ("raw", "step"),
    [
        ('Sure! ```json\n[{"text": "Paris", "label": "location", "occurrence": 1}]\n```', None),
        ('Here you go: [{"text": "Paris", "label": "location"}] hope it helps', None),
        ('[{"text": "Paris", "label": "location", "occurrence": 1},]', None),
        ("[{'text': 'Paris', 'label': 'address', 'occurrence': 1}]", None),
        ('[{"text": "Paris", "label": "location"} {"text": "Paris", "label": "city"}]', None),
        ('[{"text": "Paris", "label": "location", "occurrence": 1}, {"text": "Jo', "truncation"),
        ('{"entities": [{"text": "Paris", "label": "location"}]}', None),
        ('junk {"text": "Paris" "label": "location"} junk', "per_object_regex"),
    ],
)
def test_near_json_is_repaired(raw, step):
    result = parse_pii(raw, TEXT, LABELS)
    assert {"text": "Paris", "label": "location", "start": 39, "end": 44} in result.entities
    if step:
        assert step in result.repaired


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "no entities here",
        "[[[",
        "{",
        "null",
        "42",
        '[{"text": 5, "label": "date"}]',
        '[{"label": "date"}]',
        '[{"text": "John", "label": "person_name", "occurrence": 0}]',
        '[{"text": "John", "label": "person_name", "occurrence": "x"}]',
    ],
)
def test_unparseable_output_is_an_empty_list_never_a_crash(raw):
    result = parse_pii(raw, TEXT, LABELS)
    assert result.entities == []
    assert result.result_json == "[]"


def test_case_insensitive_fallback_reports_the_input_text():
    found = entities(json.dumps([{"text": "PARIS", "label": "location"}]))
    assert found == [{"text": "Paris", "label": "location", "start": 39, "end": 44}]


def test_locate_counts_from_one():
    assert locate("a b a b a", "a", 3) == 8
    assert locate("a b a", "a", 3) == -1
