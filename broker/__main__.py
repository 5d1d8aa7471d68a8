"""``python -m broker``: the same as ``mole broker``."""

import sys

from mole.broker.cli import main

sys.exit(main())
