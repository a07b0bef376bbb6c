"""Checks on an image URL before any connection is made: scheme, userinfo and literal IP hosts.

The URL is parsed with httpx's own parser, the one the download client uses, so the check and the
request cannot disagree about which host is meant. Hostnames are not resolved here: the download
client's transport (httpx-secure) checks the address it actually connects to, which covers DNS names
that resolve to private addresses and every redirect hop. This module stops what can be refused
without the network, and `redact_url` keeps query strings (which may carry tokens) out of messages.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from pipeline.errors import JobRejected

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (hostname as written in the URL, IP address, port) -> allowed? Same signature as httpx-secure's
# custom_validator, so one allowlist serves both the literal-IP check here and the connect-time check.
AddressValidator = Callable[[str, IPAddress, int], bool]

ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}

# Networks that embed an IPv4 address inside an IPv6 one; the embedded address is what a
# translator or tunnel would reach, so it must pass the same check.
_NAT64_NETWORKS = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")

# A label that inet_aton() reads as a number: decimal, octal (leading 0) or hex (0x...).
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)
_MAX_REDACTED = 200


@dataclass(frozen=True)
class ImageURL:
    """A URL that passed `check_url`: `ip` is set when the host is a literal IP address."""

    url: str
    scheme: str
    host: str
    port: int
    ip: IPAddress | None

    @property
    def redacted(self) -> str:
        """The URL without query string, fragment or userinfo: safe to log and to show a shop."""
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """`url` without its query string, fragment and userinfo, at most 200 characters; never raises."""
    try:
        redacted = str(httpx.URL(url).copy_with(query=None, fragment=None, userinfo=b""))
    except (httpx.InvalidURL, TypeError, ValueError):
        # Unparsable: cut at the first '?' or '#', and drop anything up to an '@' after the scheme.
        base = re.split(r"[?#]", str(url), maxsplit=1)[0]
        scheme, sep, rest = base.partition("://")
        if sep and "@" in rest.split("/", 1)[0]:
            rest = rest.split("@", 1)[1]
        redacted = scheme + sep + rest
    # A data: URL can hold megabytes; messages only need to say which URL it was.
    return redacted if len(redacted) <= _MAX_REDACTED else redacted[:_MAX_REDACTED - 1] + "…"


def is_public_address(ip: IPAddress) -> bool:
    """True when `ip` is globally reachable unicast, checking IPv4 addresses embedded in IPv6 too.

    `ipaddress.is_global` alone lets multicast, NAT64 (64:ff9b::7f00:1) and 6to4 forms through.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            # A mapped, NAT64 or 6to4 address reaches its IPv4 address: that one decides.
            return is_public_address(embedded)
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or ip.is_loopback or ip.is_link_local:
        return False
    return ip.is_global


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if any(ip in net for net in _NAT64_NETWORKS):
        return ipaddress.IPv4Address(ip.packed[-4:])
    if ip in _SIX_TO_FOUR:
        return ipaddress.IPv4Address(ip.packed[2:6])
    return None  # Teredo (2001::/32) is left to is_global, which refuses it


def is_numeric_host(host: str) -> bool:
    """True for hosts like `2130706433`, `0177.0.0.1`, `0x7f.1` or `127.1` that resolvers read as IPs."""
    labels = host.rstrip(".").split(".")
    return all(_NUMERIC_LABEL.match(label) for label in labels)


def check_url(url: str, *, allow_private: bool = False,
              allow_address: AddressValidator | None = None) -> ImageURL:
    """Parse `url` and refuse what is unsafe before connecting.

    Raises JobRejected `url_not_allowed` (unparsable, not http(s), userinfo, no host) or `url_blocked`
    (a literal non-public IP, or a numeric host in a form resolvers reinterpret), unless `allow_private`
    or `allow_address(host, ip, port)` allows it.
    """
    safe = redact_url(url)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        # httpx refuses dotted quads with leading zeros (0177.0.0.1); resolvers would read them as octal.
        if is_numeric_host(_raw_host(url)):
            raise JobRejected("url_blocked", f"image URL host is an ambiguous numeric address: {safe}",
                              url=safe) from None
        raise JobRejected("url_not_allowed", f"image URL is not a valid URL: {safe}", url=safe) from None
    scheme = parsed.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise JobRejected("url_not_allowed", f"image URL scheme {scheme or '(none)'!r} is not http(s): {safe}",
                          url=safe)
    if parsed.userinfo:
        raise JobRejected("url_not_allowed", f"image URL carries credentials (user@host): {safe}", url=safe)
    host = parsed.host
    if not host:
        raise JobRejected("url_not_allowed", f"image URL has no host: {safe}", url=safe)
    port = parsed.port or DEFAULT_PORTS[scheme]
    ip = _literal_ip(host)
    if ip is not None and not (allow_private or is_public_address(ip)
                               or (allow_address is not None and allow_address(host, ip, port))):
        raise JobRejected("url_blocked", f"image URL points at a non-public address: {safe}", url=safe)
    if ip is None and is_numeric_host(host) and not allow_private:
        raise JobRejected("url_blocked", f"image URL host is an ambiguous numeric address: {safe}", url=safe)
    return ImageURL(url=str(parsed), scheme=scheme, host=host, port=port, ip=ip)


def _raw_host(url: str) -> str:
    try:
        return urllib.parse.urlsplit(str(url)).hostname or ""
    except ValueError:
        return ""


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
