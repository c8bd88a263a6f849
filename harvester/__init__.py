"""harvester: pull call events out of Bandwidth's Catapult voice API in bulk."""

__version__ = "0.1.0"
