"""ESCI requests in the served languages' own words, and the errors when a part is missing."""

from __future__ import annotations

import pytest

from mole.worker.engine.errors import InvalidPayload
from mole.worker.engine.esci import query_and_product, split_text
from tests.worker.enginehelpers import REGISTRY, load_engine

CASES = [
    ("en", "Query: red shoes Product: running shoe, red", "red shoes", "running shoe, red"),
    ("en", "search query: usb cable\nproduct: USB-C cable 2 m.", "usb cable", "USB-C cable 2 m"),
    (
        "ja",
        "検索クエリ：ワイヤレスイヤホン。商品：ノイズキャンセリング付きイヤホン",
        "ワイヤレスイヤホン",
        "ノイズキャンセリング付きイヤホン",
    ),
    ("ja", "クエリ: 水筒 商品: ステンレスボトル 500ml", "水筒", "ステンレスボトル 500ml"),
    (
        "es",
        "Consulta: zapatillas de running Producto: zapatilla trail, talla 42",
        "zapatillas de running",
        "zapatilla trail, talla 42",
    ),
    (
        "es",
        "BÚSQUEDA: funda móvil. PRODUCTO: protector de pantalla",
        "funda móvil",
        "protector de pantalla",
    ),
    (
        "de",
        "Suchanfrage: Kaffeemaschine Produkt: Gartenschlauch 30 m",
        "Kaffeemaschine",
        "Gartenschlauch 30 m",
    ),
    (
        "fr",
        "Requête : chaussures rouges ; Produit : baskets rouges",
        "chaussures rouges",
        "baskets rouges",
    ),
    ("zh", "查询：无线耳机，商品：蓝牙耳机", "无线耳机", "蓝牙耳机"),
    (
        "tr",
        "Sorgu: kablosuz kulaklık Ürün: bluetooth kulaklık",
        "kablosuz kulaklık",
        "bluetooth kulaklık",
    ),
]


@pytest.mark.parametrize(("lang", "text", "query", "product"), CASES)
def test_markers_in_the_request_language(lang, text, query, product):
    assert split_text(text) == (query, product)
    assert query_and_product({}, text, lang) == (query, product)


def test_fields_win_over_text_and_fill_what_text_lacks():
    text = "Consulta: a Producto: b"
    assert query_and_product({"query": "q", "product": "p"}, text, "es") == ("q", "p")
    assert query_and_product({"query": "q"}, text, "es") == ("q", "b")
    assert query_and_product({"query": "q", "product": "p"}, "", "ja") == ("q", "p")


@pytest.mark.parametrize(
    ("payload", "text", "field"),
    [
        ({}, "ワイヤレスイヤホン", "query"),
        ({"product": "p"}, "just words", "query"),
        ({"query": "q"}, "just words", "product"),
        ({"query": "  ", "product": "p"}, "", "query"),
    ],
)
def test_a_missing_part_is_named_with_how_to_give_it(payload, text, field):
    with pytest.raises(InvalidPayload) as err:
        query_and_product(payload, text, "ja")
    assert err.value.field == field
    assert err.value.code == "bad_request"
    message = str(err.value)
    assert f"no {field} was found" in message
    assert "'query' and 'product'" in message
    assert "検索クエリ" in message  # the markers of the request's language


def test_when_gating_chose_esci_the_error_says_so():
    with pytest.raises(InvalidPayload) as err:
        query_and_product({"routed_by": "gating"}, "Is this a good laptop?", "en")
    assert "gating routed this text to finance/esci" in str(err.value)
    assert err.value.field == "query"


def test_wrong_type_is_refused():
    with pytest.raises(InvalidPayload) as err:
        query_and_product({"query": 5, "product": "p"}, "", "en")
    assert err.value.field == "query"


def test_engine_prompts_are_the_same_from_fields_or_own_language_text(tiny_models):
    engine = load_engine(tiny_models, "llama-3.1-8b-instruct", warmup=False)
    expert = REGISTRY.resolve("finance/esci", "ja")
    marked = engine.prepare(
        {"task": "finance/esci", "adapter": expert.adapter_name, "text": CASES[2][1]}
    )
    fields = engine.prepare(
        {
            "task": "finance/esci",
            "adapter": expert.adapter_name,
            "query": CASES[2][2],
            "product": CASES[2][3],
        }
    )
    assert marked.prompt_ids == fields.prompt_ids
    assert (
        "Query: ワイヤレスイヤホン\nProduct: ノイズキャンセリング付きイヤホン" in marked.prompt_text
    )
    assert engine.run([marked])[0]["result"] in expert.label_set
