"""The query and the product of an ESCI request, from fields or from text in its own words.

ESCI judges a product against a shopping query. A request gives them as the fields
``query`` and ``product``, or as text with a query marker and a product marker, written in
the request's language: ``Query: … Product: …``, ``検索クエリ：…。商品：…``,
``Consulta: … Producto: …``. Markers are matched case-insensitively, followed by an ASCII
or full-width colon; sentence punctuation between the query and the product marker is not
part of the query.
"""

from __future__ import annotations

import re
from typing import Any

from mole.worker.engine.errors import InvalidPayload

#: language code -> (query markers, product markers), longest first where one contains another
MARKERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "en": (("search query", "query", "search"), ("product", "item")),
    "de": (("suchanfrage", "suchbegriff", "anfrage", "suche"), ("produkt", "artikel")),
    "fr": (("requête", "recherche"), ("produit", "article")),
    "es": (("consulta", "búsqueda", "busqueda"), ("producto", "artículo", "articulo")),
    "ja": (("検索クエリ", "検索語", "クエリ", "検索"), ("商品", "製品")),
    "zh": (("搜索查询", "查询", "搜索词", "搜索"), ("商品", "产品")),
    "nl": (("zoekopdracht", "zoekterm"), ("product", "artikel")),
    "it": (("ricerca", "interrogazione"), ("prodotto", "articolo")),
    "sv": (("sökfråga", "sökning"), ("produkt", "artikel")),
    "da": (("søgeforespørgsel", "søgning"), ("produkt", "vare")),
    "pl": (("zapytanie", "wyszukiwanie"), ("produkt", "artykuł")),
    "tr": (("arama sorgusu", "sorgu", "arama"), ("ürün",)),
}

_COLON = r"\s*[:：]\s*"
_BETWEEN = r"[\s。．.,，、;；|]*"


def _alternatives(words: set[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_QUERY_WORDS = {w for q, _ in MARKERS.values() for w in q}
_PRODUCT_WORDS = {w for _, p in MARKERS.values() for w in p}
PATTERN = re.compile(
    rf"(?<!\w)(?:{_alternatives(_QUERY_WORDS)}){_COLON}(?P<query>.*?){_BETWEEN}"
    rf"(?<!\w)(?:{_alternatives(_PRODUCT_WORDS)}){_COLON}(?P<product>.*?)[\s。．.]*$",
    re.IGNORECASE | re.DOTALL,
)


def markers_for(language: str) -> str:
    """The markers of a language as an example for an error message."""
    queries, products = MARKERS.get(language, MARKERS["en"])
    return f"'{queries[0].capitalize()}: … {products[0].capitalize()}: …'"


def split_text(text: str) -> tuple[str, str] | None:
    """(query, product) from marked text in any served language; None if not marked."""
    match = PATTERN.search(text)
    if match is None:
        return None
    return match.group("query").strip(), match.group("product").strip()


def query_and_product(payload: dict[str, Any], text: str, language: str) -> tuple[str, str]:
    """The query and product of an ESCI request: fields first, then marked text.

    Raises:
        InvalidPayload: naming ``query`` or ``product`` and saying how to give them; when
            the frontend's gating chose the task (``routed_by == "gating"``), saying so.
    """
    query, product = payload.get("query"), payload.get("product")
    for name, value in (("query", query), ("product", product)):
        if value is not None and not isinstance(value, str):
            raise InvalidPayload(name, f"must be a string, got {type(value).__name__}")
    if not (query and query.strip() and product and product.strip()):
        found = split_text(text)
        if found is not None:
            query = query if query and query.strip() else found[0]
            product = product if product and product.strip() else found[1]
    for name, value in (("query", query), ("product", product)):
        if not value or not value.strip():
            routed = (
                "gating routed this text to finance/esci (product search relevance), which"
                if payload.get("routed_by") == "gating"
                else "finance/esci"
            )
            raise InvalidPayload(
                name,
                f"{routed} needs a shopping query and a product, and no {name} was found: "
                f"give the fields 'query' and 'product', or text marked as "
                f"{markers_for(language)} (or 'Query: … Product: …')",
            )
    assert query is not None
    assert product is not None
    return query, product
