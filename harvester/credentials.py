"""Credentials and where they go: a ``Secret`` that never prints, the base URL's checks, and
``redact_url`` for printing whatever was meant as a URL."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from harvester.errors import ConfigError


class Secret:
    """A credential that prints as ``***`` wherever it ends up (repr, logs, tracebacks)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The real value, for the one place that builds the Authorization header."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def check_base_url(url: str) -> None:
    """Refuse a base URL that would leak or send credentials badly, saying how to fix it."""
    shown = redact_url(url)
    if "@" in url:
        raise ConfigError(
            f"base URL {shown!r} must not hold credentials; use CATAPULT_API_TOKEN and "
            "CATAPULT_API_SECRET"
        )
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigError(
            f"base URL {shown!r} cannot be parsed; it must look like "
            "https://api.catapult.inetwork.com"
        ) from exc
    if parts.scheme not in ("https", "http") or not host or not url.isprintable() or " " in url:
        raise ConfigError(f"base URL {shown!r} must look like https://api.catapult.inetwork.com")
    if port == 0:
        raise ConfigError(f"base URL {shown!r}: port 0 is not a port")
    if parts.query or parts.fragment:
        raise ConfigError(f"base URL {shown!r} must not have a query or fragment")
    if parts.scheme == "http" and not is_loopback(host):
        raise ConfigError(
            f"base URL {shown!r} is plain http: credentials would travel unencrypted. "
            "Use https (plain http is allowed only for a loopback host such as 127.0.0.1)"
        )


def check_proxy(url: str) -> None:
    """Refuse a proxy URL aiohttp could not use (it may hold the proxy's own credentials)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (parses the port, or raises)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{redact_url(url)!r} must look like http://proxy.example.com:3128 (credentials, "
            "if the proxy needs them, as http://user:password@proxy...)"
        )


def proxy_from_environment(url: str, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY`` or ``HTTP_PROXY`` by its
    scheme, either case) and the variable that names it; None when there is none or
    ``NO_PROXY`` names its host (or ``*``)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if is_loopback(host):
        return None  # this machine itself (the simulator) is never reached through a proxy
    bypass = _variable(environ, "no_proxy")
    for entry in (bypass[1] if bypass else "").split(","):
        name = entry.strip().lower().lstrip(".")
        if name.count(":") == 1:  # host:port (an IPv6 address holds more than one colon)
            name = name.split(":")[0]
        if name == "*" or (name and (host == name or host.endswith("." + name))):
            return None
    return _variable(environ, f"{parts.scheme}_proxy")


def _variable(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    for variable in (name.lower(), name.upper()):
        if environ.get(variable):
            return variable, environ[variable]
    return None


def redact_url(text: str) -> str:
    """``text``, a URL or what was meant as one, fit to print: whatever stands before its last
    ``@`` (credentials, however the URL is mistyped, and whatever they hold, ``?`` and ``#``
    too) and any query or fragment after it become ``***``."""
    scheme = _SCHEME.match(text)
    head = scheme.group(0) if scheme else ""
    rest = text[len(head) :]
    if "@" in rest:
        rest = rest.rsplit("@", 1)[1]
        head += "***@"
    query = min((rest.index(mark) for mark in "?#" if mark in rest), default=len(rest))
    rest, tail = rest[:query], ("?***" if query < len(rest) else "")
    return head + rest + tail


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]*")


def redact_urls_in(text: str) -> str:
    """``text`` with every URL in it fit to print (``redact_url``): for text that is not all
    ours, such as the description of an error nobody foresaw."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda found: redact_url(found.group(0)), text)


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
