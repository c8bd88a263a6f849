"""Reporting: the summary document and line, the progress bar and log lines, the metrics file."""
