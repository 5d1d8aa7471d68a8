"""``python -m gating ...`` is ``mole gating ...``."""

import argparse
import sys

from mole.gating import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gating", description="train and try the gating models"
    )
    cli.configure(parser)
    return int(cli.run(parser.parse_args(argv)) or 0)


if __name__ == "__main__":
    sys.exit(main())
