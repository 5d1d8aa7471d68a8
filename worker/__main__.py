"""``python -m worker`` is ``mole worker``."""

import argparse
import sys

from mole.worker import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker", description="run an expert worker for one base model"
    )
    cli.configure(parser)
    return int(cli.run(parser.parse_args(argv)) or 0)


if __name__ == "__main__":
    sys.exit(main())
