"""Sample texts for the gating tests and benchmark (module name unique on sys.path)."""

#: one financial sentence per served language (40+ characters)
SENTENCES = {
    "en": "The company's quarterly profit rose sharply thanks to strong demand.",
    "de": "Der Quartalsgewinn des Unternehmens stieg dank starker Nachfrage deutlich.",
    "fr": "Le bénéfice trimestriel de l'entreprise a fortement augmenté grâce à la demande.",
    "es": "El beneficio trimestral de la empresa aumentó con fuerza gracias a la demanda.",
    "it": "L'utile trimestrale dell'azienda è cresciuto molto grazie alla forte domanda.",
    "nl": "De kwartaalwinst van het bedrijf steeg sterk dankzij de grote vraag.",
    "sv": "Företagets kvartalsvinst steg kraftigt tack vare den starka efterfrågan.",
    "da": "Virksomhedens kvartalsoverskud steg kraftigt takket være den store efterspørgsel.",
    "pl": "Kwartalny zysk firmy mocno wzrósł dzięki silnemu popytowi na jej produkty.",
    "tr": "Şirketin çeyreklik kârı güçlü talep sayesinde keskin bir şekilde arttı.",
    "ja": "会社の四半期利益は旺盛な需要のおかげで大幅に増加しました。",
    "zh": "由于需求强劲，公司的季度利润大幅增长。",
}

#: an English description per task
DESCRIPTIONS = {
    "rating": "Rate the sentiment of this text from 1 (very negative) to 5 (very positive).",
    "pii": "Extract the personal information (names, account numbers, addresses) in the text.",
    "news": "Classify this financial news article into one of six topics.",
    "esci": "Is the product an exact match, a substitute, a complement or irrelevant to the query?",
}
