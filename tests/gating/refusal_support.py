"""Helpers shared by the refusal tests of the router, the pipeline and the CLI."""

from __future__ import annotations

from mole.gating.router import QRouter
from mole.gating.scope import read_out_of_scope
from mole.gating.settings import DEFAULT_OUT_OF_SCOPE_HELDOUT


def served_though_unserved(router: QRouter) -> str:
    """A held-out description of an unserved task that the router still serves (so a
    test of feedback starts from a route, not from a refusal already made)."""
    served = [
        o.description
        for o in read_out_of_scope(DEFAULT_OUT_OF_SCOPE_HELDOUT)
        if not router.route(o.description, "finance").refused
    ]
    assert served, "every held-out unserved description is refused already"
    return served[0]
