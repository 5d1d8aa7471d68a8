"""The Majordomo (MDP/0.2) broker: routing, heartbeats, queues, deadlines, MMI and status.

``mole broker`` (``broker.cli``) runs it; ``mole status`` (``broker.status_cli``) asks it
for its services and workers. Importing this package pulls in pyzmq and msgpack only.
"""

from mole.broker.core import Broker
from mole.broker.settings import BrokerSettings, SettingsError, settings_from_env

__all__ = ["Broker", "BrokerSettings", "SettingsError", "settings_from_env"]
