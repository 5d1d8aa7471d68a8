import sys

from mole_cli.main import main

sys.exit(main())
