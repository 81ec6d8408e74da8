"""Evidence of a use case's model version, as the operator writes it into ``status.evidence``.

The arithmetic (Wilson 95 % intervals, the ``status.evidence`` shape) is :mod:`pacsflow_router.evidence`, shared with
the results store and the API; here is only where the operator gets the counts: an :data:`EvidenceSource` it is given.
"""

from __future__ import annotations

from collections.abc import Callable

from pacsflow_router.evidence import DIGITS, Z_95, Counts, evidence, proportion, wilson_interval

__all__ = ["DIGITS", "Z_95", "Counts", "EvidenceSource", "evidence", "proportion", "wilson_interval"]

#: Where the operator gets the counts: (namespace, use case name, model version) -> counts, or ``None``
#: when the store has nothing for that version (then ``status.evidence`` is left as it is).
EvidenceSource = Callable[[str, str, int], Counts | None]
