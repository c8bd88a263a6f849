"""The simulator of the Catapult API that the tests and the demo run against, and its ``sim``
subcommand."""
