"""Fetching: the HTTP client (the only importer of aiohttp) and its error map, the answer's exact
JSON, the retry policy, the rate limiter and its law."""
