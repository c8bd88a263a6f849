"""``python -m harvester`` is the ``harvester`` command."""

import sys

from harvester.cli.commands import main

sys.exit(main())
