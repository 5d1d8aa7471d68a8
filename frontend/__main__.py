"""``python -m frontend``: the same as ``mole frontend``."""

import argparse
import sys

from mole.frontend import cli

parser = argparse.ArgumentParser(prog="python -m frontend", description="MoLE HTTP frontend")
cli.configure(parser)
sys.exit(cli.run(parser.parse_args()))
