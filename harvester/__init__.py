"""harvester: pull call events out of Bandwidth's Catapult voice API in bulk.

``harvest`` (async) and ``harvest_sync`` run the same job as ``harvester run``. They are
imported when first asked for, so that importing one stage of the package (the store, say)
loads nothing of the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from harvester.api import harvest, harvest_sync

__all__ = ["__version__", "harvest", "harvest_sync"]


def __getattr__(name: str) -> Any:
    if name in ("harvest", "harvest_sync"):
        from harvester import api

        return getattr(api, name)
    raise AttributeError(f"module 'harvester' has no attribute {name!r}")
