"""harvester: pull call events out of Bandwidth's Catapult voice API in bulk.

``harvest`` (async) and ``harvest_sync`` run the same job as ``harvester run``.
"""

__version__ = "0.1.0"

from harvester.api import harvest, harvest_sync

__all__ = ["__version__", "harvest", "harvest_sync"]
