"""Which CURVE keys may register which services as workers (an optional JSON file).

The file maps a key to the service names it may register::

    {"worker-gpu1": ["qwen2.5-1.5b", "llama-3.2-*"], "Hx7...40 z85 chars...": ["*"]}

A key is named by its file stem in the allow-list directory (``worker-gpu1`` for
``worker-gpu1.key``) or by its 40-character z85 public key. A pattern is a service name,
or a prefix ending in ``*`` (``"*"`` alone allows every service). With an ACL given, a key
the file does not name may not register any service; clients need no entry (the ACL is
about who may *serve*, not who may ask).

An entry starting with ``@`` is a permission, never a service pattern (``"*"`` does not
grant it): ``"@manage"`` lets that key use the broker's management services
(``mmi.drain``, ``mmi.resume``)::

    {"worker": ["*"], "operator": ["@manage"]}

With an ACL given, only keys it grants ``@manage`` may manage; without an ACL every
allow-listed key may (as every one may register).
"""

from __future__ import annotations

import json
from pathlib import Path

from mole.broker.settings import SettingsError

Z85_KEY_LENGTH = 40
#: The permission to use the broker's management services (``mmi.drain``/``mmi.resume``).
MANAGE = "@manage"
PERMISSIONS = (MANAGE,)


class Acl:
    """Parsed ACL: name (stem or z85 key) -> patterns. Build it with :func:`load_acl`."""

    def __init__(self, rules: dict[str, tuple[str, ...]]) -> None:
        self.rules = rules

    def allows(self, key: str, stem: str | None, service: str) -> bool:
        """May the peer with z85 ``key`` (file stem ``stem``) register ``service``?"""
        for pattern in self._entries(key, stem):
            if pattern.startswith("@"):
                continue  # a permission, not a service pattern
            if pattern.endswith("*"):
                if service.startswith(pattern[:-1]):
                    return True
            elif service == pattern:
                return True
        return False

    def may_manage(self, key: str, stem: str | None) -> bool:
        """May the peer with z85 ``key`` (file stem ``stem``) use management services?"""
        return MANAGE in self._entries(key, stem)

    def _entries(self, key: str, stem: str | None) -> tuple[str, ...]:
        patterns = self.rules.get(key)
        if patterns is None and stem is not None:
            patterns = self.rules.get(stem)
        return patterns or ()


def load_acl(path: str | Path) -> Acl:
    """Read and check the ACL file.

    Raises:
        SettingsError: the file is missing, not JSON, or not a map of names to lists of
            non-empty strings (the message says which entry is wrong).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise SettingsError(f"cannot read the CURVE ACL {path}: {err.strerror or err}") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SettingsError(f"CURVE ACL {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise SettingsError(
            f"CURVE ACL {path} must be a JSON object mapping a key file stem "
            "or z85 public key to a list of services, e.g. "
            '{"worker-gpu1": ["qwen2.5-1.5b", "llama-*"]}'
        )
    rules: dict[str, tuple[str, ...]] = {}
    for name, patterns in data.items():
        if not name:
            raise SettingsError(f"CURVE ACL {path}: an entry has an empty key name")
        if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
            raise SettingsError(
                f"CURVE ACL {path}: entry {name!r} must be a list of non-empty "
                "service names or prefixes ending in '*'"
            )
        if any("*" in p[:-1] for p in patterns):
            raise SettingsError(
                f"CURVE ACL {path}: entry {name!r}: '*' is only allowed at the end of a pattern"
            )
        unknown = [p for p in patterns if p.startswith("@") and p not in PERMISSIONS]
        if unknown:
            raise SettingsError(
                f"CURVE ACL {path}: entry {name!r}: unknown permission {unknown[0]!r}; "
                f"entries starting with '@' are permissions: {', '.join(PERMISSIONS)}"
            )
        rules[name] = tuple(patterns)
    return Acl(rules)
