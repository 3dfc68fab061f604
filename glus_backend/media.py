"""Getting a task's media (a video file or image frames) onto local disk.

Label Studio hands the backend URLs, not files. Which credentials a URL needs depends on where it points:

* ``/data/upload/<project>/<file>`` and ``/data/local-files/?d=<rel>`` (relative to Label Studio) and absolute
  URLs on the Label Studio host: Label Studio auth (Bearer access token or legacy Token);
* cloud URIs (``s3://``, ``gs://``, ``azure-blob://``, ``azure-spi://``): Label Studio presigns (or proxies) them
  at ``/tasks/<task_id>/presign/?fileuri=<base64>``; the redirect to the bucket goes without our credentials;
* other hosts: a plain GET (Label Studio credentials never leave Label Studio's host), refused when the host is
  loopback, private or link-local and not allowed (:mod:`glus_backend.url_guard`), redirects included;
* local-files URLs, ``file://`` and plain paths are read from disk when the backend shares Label Studio's
  document root (``local_files_root``), never outside it.

Downloads stream into a temp file that is renamed when complete, so a crash never leaves a truncated file
that a later call would take for a cache hit.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import requests

from glus_backend.ls_client import LabelStudioClient, LabelStudioError, redact_url, send_with_retries
from glus_backend.url_guard import AddressGuard, AddressRefused

logger = logging.getLogger(__name__)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
LS_RELATIVE_PREFIXES = ("/data/upload/", "/data/local-files", "/storage-data/", "/tasks/", "/projects/", "/api/")
CHUNK = 1 << 20
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class MediaError(RuntimeError):
    """Media could not be obtained; ``transient`` says whether retrying later can help."""

    def __init__(self, message: str, transient: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


def _from_ls_error(url: str, exc: LabelStudioError) -> MediaError:
    """Media errors: any 5xx, 429 or network failure is transient; 4xx (auth, missing) is not."""
    if exc.status == 500 and "/data/upload/" in url and "has_permission" in str(exc):
        # Label Studio 1.23.2 answers a missing upload with 500 "'NoneType' object has no attribute
        # 'has_permission'" instead of 404: retrying cannot help.
        return MediaError(f"cannot fetch {redact_url(url)}: no such upload in Label Studio (HTTP 500 for a missing "
                          "file)", transient=False, status=404)
    transient = exc.transient or (exc.status is not None and exc.status >= 500)
    return MediaError(f"cannot fetch {redact_url(url)}: {exc}", transient=transient, status=exc.status)


def _scheme(url: str) -> str:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    return m.group(1).lower() if m else ""


def _basename(url: str) -> str:
    """A filesystem-safe name that keeps the extension (decoders guess the container from it)."""
    parts = urlsplit(url)
    name = ""
    if parts.query:
        d = parse_qs(parts.query).get("d")
        if d:
            name = d[0].rsplit("/", 1)[-1]
    if not name:
        name = unquote(parts.path.rstrip("/").rsplit("/", 1)[-1])
    name = _SAFE_NAME.sub("_", name).strip("._")[-80:]
    return name or "media"


def cache_path(url: str, dest_dir: Path) -> Path:
    """Where ``url`` is cached in ``dest_dir``: one file per URL (hash) keeping the original name's tail."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(dest_dir) / f"{digest}__{_basename(url)}"


def _check_size(path: Path, url: str, max_bytes: int | None) -> Path:
    if max_bytes is not None:
        size = path.stat().st_size
        if size > max_bytes:
            raise MediaError(f"{redact_url(url)} is larger than the limit ({size} > {max_bytes} bytes)")
    return path


def _under_root(path: Path, root: Path, url: str) -> Path:
    """Resolve ``path`` and refuse anything (.., symlinks) that escapes ``root``."""
    root_resolved = Path(root).resolve()
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(root_resolved):
        raise MediaError(f"{redact_url(url)} points outside the local files root {root_resolved}")
    return resolved


def _local_file(url: str, root: Path, path: Path, max_bytes: int | None) -> Path:
    """A file on disk under ``root`` (``path`` absolute, or relative to ``root``)."""
    path = _under_root(path if path.is_absolute() else Path(root) / path, root, url)
    if not path.is_file():
        raise MediaError(f"{redact_url(url)}: no file {path} under the local files root")
    return _check_size(path, url, max_bytes)


def presign_path(uri: str, task_id: int) -> str:
    """Label Studio's resolver URL for a cloud URI (the same urlsafe base64 the SDK uses)."""
    fileuri = base64.urlsafe_b64encode(uri.encode()).decode()
    return f"/tasks/{int(task_id)}/presign/?fileuri={fileuri}"


def _stream(resp: requests.Response, dest: Path, url: str, max_bytes: int | None) -> Path:
    """Write the body to a temp file beside ``dest`` and rename it; enforce ``max_bytes`` while streaming."""
    shown = redact_url(url)
    length = resp.headers.get("Content-Length", "")
    if max_bytes is not None and length.isdigit() and int(length) > max_bytes:
        resp.close()
        raise MediaError(f"{shown} is larger than the limit ({length} > {max_bytes} bytes)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    total = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in resp.iter_content(CHUNK):
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise MediaError(f"{shown} is larger than the limit (> {max_bytes} bytes)")
                fh.write(chunk)
        os.replace(tmp, dest)
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
        raise MediaError(f"cannot fetch {shown}: transfer broke after {total} bytes: {type(exc).__name__}",
                         transient=True) from exc
    finally:
        resp.close()
        tmp.unlink(missing_ok=True)
    logger.info("downloaded %s (%d bytes) to %s", shown, total, dest)
    return dest


def _trusted(client: LabelStudioClient | None) -> Callable[[str], bool]:
    return (lambda url: client.is_same_host(url)) if client is not None else (lambda url: False)


def _plain_get(url: str, client: LabelStudioClient | None, guard: AddressGuard, hooks: dict) -> requests.Response:
    """GET a URL on a foreign host without Label Studio credentials, with the same retry policy.

    The host is checked by ``guard`` and every redirect by ``hooks``; the error body of a foreign host is never
    quoted.
    """
    guard.check(url)
    timeout, retries, backoff = (client.timeout, client.retries, client.backoff) if client else (30.0, 3, 0.5)
    with requests.Session() as session:
        return send_with_retries(session, "GET", url, retries=retries, backoff=backoff, timeout=timeout, stream=True,
                                 hooks=hooks, quote_errors=False)


def fetch_to_file(
    url: str,
    dest: Path,
    client: LabelStudioClient | None = None,
    task_id: int | None = None,
    max_bytes: int | None = None,
    guard: AddressGuard | None = None,
) -> Path:
    """Download ``url`` to exactly ``dest`` over HTTP (no cache, no disk shortcut); see the module docstring.

    ``guard`` is the SSRF rule (default: protection on, nothing extra allowed).
    """
    dest = Path(dest)
    scheme = _scheme(url)
    shown = redact_url(url)
    guard = guard or AddressGuard()
    hooks = {"response": [guard.redirect_hook(_trusted(client))]}
    try:
        if scheme in CLOUD_SCHEMES:
            if client is None:
                raise MediaError(f"{shown}: cloud URIs need a Label Studio client to presign them")
            if task_id is None:
                raise MediaError(f"{shown}: cloud URIs are presigned per task; no task id given")
            try:
                resp = client.request("GET", presign_path(url, task_id), stream=True, allow_redirects=True,
                                      hooks=hooks)
            except LabelStudioError as exc:
                if exc.status == 404:
                    raise MediaError(
                        f"{shown}: Label Studio could not presign it for task {task_id} (HTTP 404: no cloud storage "
                        "of the project matches this URI, or the task does not exist)", status=404) from exc
                raise
        elif scheme in ("http", "https"):
            if client is not None and client.is_same_host(url):
                resp = client.request("GET", url, stream=True, hooks=hooks)
            else:
                resp = _plain_get(url, client, guard, hooks)
        elif scheme == "" and url.startswith("/"):
            if client is None:
                raise MediaError(f"{shown}: a Label Studio path needs a Label Studio client (LABEL_STUDIO_URL/API_KEY)")
            resp = client.request("GET", url, stream=True, hooks=hooks)
        else:
            raise MediaError(f"{shown}: unsupported URL scheme {scheme or '(none)'!r}")
    except LabelStudioError as exc:
        raise _from_ls_error(url, exc) from exc
    except AddressRefused as exc:
        raise MediaError(str(exc), transient=False) from exc
    except ConnectionError as exc:  # the host name does not resolve (now)
        raise MediaError(str(exc), transient=True) from exc
    return _stream(resp, dest, url, max_bytes)


def resolve_media(
    url: str,
    client: LabelStudioClient | None,
    dest_dir: Path,
    task_id: int | None = None,
    max_bytes: int | None = None,
    local_files_root: Path | None = None,
    guard: AddressGuard | None = None,
) -> Path:
    """A local path holding the media behind ``url`` (downloaded once into ``dest_dir``, cached by URL hash).

    Files read straight from ``local_files_root`` are returned in place (not copied): treat them as read-only.
    """
    if not isinstance(url, str) or not url.strip():
        raise MediaError(f"empty media URL {url!r}")
    url = url.strip()
    scheme = _scheme(url)
    parts = urlsplit(url)

    # Local-files URLs (relative or on the LS host): straight from disk when we share the document root.
    is_ls_local = parts.path.rstrip("/").endswith("/data/local-files") and (
        scheme == "" or (scheme in ("http", "https") and client is not None and client.is_same_host(url))
    )
    if is_ls_local and local_files_root is not None:
        rel = parse_qs(parts.query).get("d", [""])[0]
        if not rel:
            raise MediaError(f"{redact_url(url)}: local-files URL without ?d=")
        path = _under_root(Path(local_files_root) / rel.lstrip("/"), local_files_root, url)
        if path.is_file() or client is None:
            return _local_file(url, local_files_root, path, max_bytes)
        logger.info("%s not under %s; fetching it from Label Studio", redact_url(url), local_files_root)

    if scheme == "file" or (scheme == "" and not url.startswith(LS_RELATIVE_PREFIXES)):
        if local_files_root is None:
            raise MediaError(f"{redact_url(url)}: local paths are only read under a configured local files root")
        path = Path(unquote(parts.path)) if scheme == "file" else Path(url)
        return _local_file(url, local_files_root, path, max_bytes)

    dest = cache_path(url, Path(dest_dir))
    if dest.is_file():
        logger.debug("cache hit for %s: %s", redact_url(url), dest)
        return _check_size(dest, url, max_bytes)
    return fetch_to_file(url, dest, client=client, task_id=task_id, max_bytes=max_bytes, guard=guard)
