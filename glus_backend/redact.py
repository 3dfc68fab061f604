"""Keeping secrets out of responses and logs: URLs lose their credentials and query values."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SAFE_QUERY_KEYS = frozenset({"d", "task", "project", "page", "page_size", "exportType", "id", "ids[]"})
_URL_WITH_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^\s/@]*@")


def redact_url(url: str) -> str:
    """The URL without user info and with query values replaced by ``***`` (presigned URLs carry signatures).

    A few harmless keys (``d`` of local-files URLs, ids) keep their values so messages stay useful.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if parts.netloc != netloc:
        netloc = f"***@{netloc}"
    query = ""
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = urlencode([(k, v if k in _SAFE_QUERY_KEYS else "***") for k, v in pairs], safe="/*[]")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_text(text: str) -> str:
    """``text`` with the credentials of any URL in it replaced (``redis://:pw@host`` -> ``redis://***@host``)."""
    return _URL_WITH_USERINFO.sub(r"\1***@", text)
