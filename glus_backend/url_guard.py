"""Which addresses a worker may fetch media from (server-side request forgery protection).

A task's media URL is user input: without a rule, ``http://127.0.0.1:6379/`` or a cloud metadata address
(``169.254.169.254``) in a task would make the worker fetch an internal service. Like Label Studio's own
``SSRF_PROTECTION_ENABLED``, hosts that resolve to loopback, private, link-local or other non-global addresses are
refused, unless the host is the configured Label Studio (media it serves or presigns) or is listed in
``GLUS_MEDIA_ALLOWED_HOSTS`` (host names, IP addresses or CIDR ranges, e.g. a MinIO on the private network).
Redirects are checked hop by hop with the same rule.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from .redact import redact_url

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(RuntimeError):
    """The URL points at an address the worker must not fetch; retrying cannot help."""

    transient = False


def _kind(ip: Address) -> str | None:
    """Why ``ip`` is internal (``"loopback"``, ``"private"``, ...), or None for a global address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-global"


@dataclass(frozen=True)
class AddressGuard:
    """The SSRF rule: ``enabled`` (GLUS_SSRF_PROTECTION) and ``allowed`` (GLUS_MEDIA_ALLOWED_HOSTS)."""

    enabled: bool = True
    allowed: tuple[str, ...] = ()
    resolve: Callable[[str, int], list[str]] | None = None  # tests inject DNS answers

    @classmethod
    def from_settings(cls, settings: Any) -> AddressGuard:
        return cls(enabled=settings.ssrf_protection, allowed=tuple(settings.media_allowed_hosts))

    def _networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        out = []
        for entry in self.allowed:
            try:
                out.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                continue  # a host name
        return out

    def _addresses(self, host: str, port: int) -> list[str]:
        if self.resolve is not None:
            return self.resolve(host, port)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return sorted({info[4][0] for info in infos})

    def check(self, url: str) -> None:
        """Raise :class:`AddressRefused` when ``url``'s host is internal and not allowed; DNS errors are transient."""
        if not self.enabled:
            return
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if not host:
            raise AddressRefused(f"refused to fetch {redact_url(url)}: no host name")
        if host in {a.lower() for a in self.allowed}:
            return
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise AddressRefused(f"refused to fetch {redact_url(url)}: bad port") from None
        try:
            addresses = self._addresses(host, port)
        except (socket.gaierror, UnicodeError) as exc:
            raise ConnectionError(f"cannot resolve the host of {redact_url(url)}: {exc}") from exc
        networks = self._networks()
        for raw in addresses:
            ip = ipaddress.ip_address(raw.split("%", 1)[0])
            kind = _kind(ip)
            if kind is None or any(ip in net for net in networks if net.version == ip.version):
                continue
            raise AddressRefused(
                f"refused to fetch {redact_url(url)}: {host} is a {kind} address ({ip}). Media on internal hosts "
                "must come through Label Studio, or the host must be listed in GLUS_MEDIA_ALLOWED_HOSTS"
            )

    def redirect_hook(self, trusted: Callable[[str], bool]) -> Callable[..., requests.Response]:
        """A ``requests`` response hook that checks each redirect target before it is followed.

        ``trusted(url)`` exempts the configured Label Studio (which redirects to its own pages and to buckets).
        """

        def hook(resp: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
            if resp.is_redirect:
                target = urljoin(resp.url, resp.headers.get("Location", ""))
                if not trusted(target):
                    try:
                        self.check(target)
                    except AddressRefused as exc:
                        resp.close()
                        raise AddressRefused(f"{exc} (a redirect from {redact_url(resp.url)})") from None
            return resp

        return hook
