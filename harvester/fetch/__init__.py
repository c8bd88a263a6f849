"""Fetching: the HTTP client, the answers it reads and the map of aiohttp's errors to ours (the
only importers of aiohttp), the answer's exact JSON, the 429's reset, the retry policy, the rate
limiter and its law."""
