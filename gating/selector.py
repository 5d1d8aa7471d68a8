"""Expert selection: (language, domain, task) -> the registry's expert, or a typed error.

A thin layer over :meth:`protocol.registry.ExpertsRegistry.resolve` that turns the
registry's ``UnknownExpert`` into gating's ``UnsupportedLanguage`` (naming what the task
does serve) — there is deliberately no fallback to another language's expert.
"""

from __future__ import annotations

from mole.gating.errors import UnknownTask, UnsupportedLanguage
from mole.protocol.registry import ExpertSpec, ExpertsRegistry, Language, UnknownExpert


class ExpertSelector:
    def __init__(self, registry: ExpertsRegistry) -> None:
        self.registry = registry

    def select(self, lang: Language, domain: str, task: str) -> ExpertSpec:
        """The expert serving ``domain/task`` in ``lang``.

        Raises:
            UnknownTask: the registry has no such task.
            UnsupportedLanguage: the task is not served in that language.
        """
        key = f"{domain}/{task}"
        if key not in self.registry.tasks:
            known = [t.name for t in self.registry.tasks_of_domain(domain)]
            raise UnknownTask(
                f"the registry has no task {key!r}; {domain} tasks: {', '.join(known)}",
                task=key,
                known=known,
            )
        try:
            return self.registry.resolve(key, lang.code)
        except UnknownExpert as err:
            raise UnsupportedLanguage(
                f"task {key!r} is not served in {lang.name}; it is served in: "
                f"{', '.join(err.served)}",
                language=lang.name,
                served=list(err.served),
                task=key,
            ) from err
