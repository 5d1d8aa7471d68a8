"""``python -m mole``: the same as the ``mole`` command."""

import sys

from mole.cli.main import main

sys.exit(main())
