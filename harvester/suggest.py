"""Did you mean: the nearest of the names a setting takes, for an error that says a name is
unknown (a flag, a config key, a time zone, a placeholder)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the known name nearest to ``word``, compared without case;
    empty when none is near enough to be a typo of it."""
    by_folded = {name.casefold(): name for name in known}
    near = difflib.get_close_matches(word.casefold(), by_folded, n=1, cutoff=0.75)
    return f" (did you mean {by_folded[near[0]]}?)" if near else ""
