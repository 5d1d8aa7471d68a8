"""The ``mole`` command: one entry point whose subcommands live in their own packages."""
