"""The report's sections, in report order: each builder returns a ``Section``, a reason it was skipped, or
None (no section and nothing skipped). Their prose lives in ``raysem.report.captions``."""

from __future__ import annotations

from collections.abc import Callable

from raysem.report.render import Section
from raysem.report.sections.context import Context
from raysem.report.sections.knowledge import fig3, fig4_table1, fig5, fig6, fig8, table2, table5
from raysem.report.sections.remedies import fig7, sweep, tables3_4

SECTIONS: tuple[tuple[str, Callable[[Context], Section | str | None]], ...] = (
    ("fig3", fig3),
    ("fig4_table1", fig4_table1),
    ("fig6", fig6),
    ("table2", table2),
    ("fig5", fig5),
    ("fig7", fig7),
    ("tables3_4", tables3_4),
    ("fig8", fig8),
    ("sweep", sweep),
    ("table5", table5),
)
