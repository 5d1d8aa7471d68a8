"""The expert worker's inference engine: load a base model and its LoRA adapters, score
label sets, generate and parse PII, batch requests, and keep an LRU pool of engines.

Modules, one job each: ``settings`` (knobs and their environment variables), ``loading``
(model, tokenizer, adapters), ``templates`` (prompts per model family, token budgets),
``scoring`` (label log-likelihoods with a cached prompt), ``generation`` (PII generation),
``pii`` (near-JSON repair and offsets), ``engine`` (payload validation and replies),
``batching`` (the worker's Handler), ``pool`` (LRU of resident engines).
"""
