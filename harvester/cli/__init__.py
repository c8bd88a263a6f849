"""The command line: the parser and the commands; it parses and reports, and holds no
harvesting logic (``harvester.cli.commands``)."""

from harvester.cli.commands import main

__all__ = ["main"]
