"""Which known name a user's unknown one was probably meant as: one rule for raw files' column names and
params.yaml's sections, so a misspelling is named the same way wherever it is made."""

from __future__ import annotations

import difflib
import re

SIMILAR_FROM_CHARS = 5  # names this long or longer may be misspellings by similarity: 'pid' is no 'id'


def probably_meant(name: str, candidates: list[str]) -> str | None:
    """The candidate ``name`` was probably meant as (``Unit Sales``, ``unit_sale``), or None: the same but for
    case, spaces, ``_``, ``-`` and ``.``; or, both names at least SIMILAR_FROM_CHARS long, difflib's ratio >= 0.8
    (for short names it is not telling: ``pid``, ``idx`` and ``uid`` are all 0.8 from ``id``)."""
    def folded(text: str) -> str:
        return re.sub(r"[\s_\-.]", "", text.casefold())
    same = [c for c in candidates if folded(c) == folded(name)]
    if same:
        return same[0]
    if len(folded(name)) < SIMILAR_FROM_CHARS:
        return None
    long_enough = {folded(c): c for c in candidates if len(folded(c)) >= SIMILAR_FROM_CHARS}
    close = difflib.get_close_matches(folded(name), list(long_enough), n=1, cutoff=0.8)
    return long_enough[close[0]] if close else None
