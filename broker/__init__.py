"""The Majordomo (MDP/0.2) broker: routing, heartbeats, queues, deadlines, MMI and status.

``mole broker`` (``broker.cli``) runs it; ``mole status`` (``broker.status_cli``) asks it
for its services and workers. Importing this package pulls in pyzmq, msgpack and msgspec only.
"""

from mole.broker.settings import BrokerSettings, SettingsError, settings_from_env
from mole.broker.shell import Broker

__all__ = ["Broker", "BrokerSettings", "SettingsError", "settings_from_env"]
