"""A small Label Studio REST client on plain ``requests``.

Why not ``label-studio-sdk``: the worker only needs a handful of calls (tasks, predictions, export, media) and
the SDK drags pandas/nltk/datamodel-codegen along. This client handles the two things that matter in practice:

* auth: a Personal Access Token (a JWT *refresh* token) must be exchanged at ``/api/token/refresh/`` for a
  short-lived (300 s) access token sent as ``Bearer``; any other key is a legacy ``Token`` key.
* transient failures: connection errors, timeouts, 429/502/503/504 are retried with exponential backoff and, if
  they persist, raised with ``transient=True`` so a job queue can retry later; everything else fails at once.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from .redact import redact_url

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
ACCESS_TOKEN_TTL = 300.0  # Label Studio 1.23 access tokens live 300 s
REFRESH_MARGIN = 30.0  # refresh this long before the access token's exp
MAX_RETRY_AFTER = 60.0


class LabelStudioError(RuntimeError):
    """A failed Label Studio call; ``transient`` says whether retrying later can help."""

    def __init__(self, message: str, status: int | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient


def jwt_payload(token: str) -> dict | None:
    """Decode a JWT's payload without verifying it (only used to classify keys and read ``exp``)."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def is_personal_access_token(api_key: str) -> bool:
    """A PAT is a JWT whose payload says ``token_type == "refresh"``; anything else is a legacy key."""
    payload = jwt_payload(api_key)
    return bool(payload) and payload.get("token_type") == "refresh"


def _body_excerpt(resp: requests.Response, limit: int = 200) -> str:
    """A safe summary of an error body: JSON's ``detail``/``validation_errors``, an HTML page's title, or the
    first ``limit`` printable characters of plain text - never a whole page."""
    try:
        text = resp.text[:65536]
    except Exception:  # noqa: BLE001 - a broken body must not hide the status
        return ""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        picked = {k: body[k] for k in ("detail", "validation_errors", "error", "message") if k in body}
        text = json.dumps(picked or {"fields": sorted(body)[:8]})
    elif "<html" in text[:512].lower():
        match = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        text = f"HTML page {match.group(1).strip()!r}" if match else "an HTML page"
    text = "".join(ch for ch in " ".join(text.split()) if ch.isprintable())
    return text[:limit] + ("..." if len(text) > limit else "")


def _connect_failed(exc: BaseException) -> bool:
    """True when the request certainly never reached the server (safe to resend even a POST)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        name = type(reason).__name__ if reason is not None else ""
        return name in ("NewConnectionError", "ConnectTimeoutError", "NameResolutionError")
    return False


def send_with_retries(
    session: requests.Session,
    method: str,
    url: str,
    *,
    retries: int,
    backoff: float,
    timeout: float,
    headers_fn: Callable[[], Mapping[str, str]] | None = None,
    on_unauthorized: Callable[[], bool] | None = None,
    idempotent: bool | None = None,
    sleep: Callable[[float], None] = time.sleep,
    quote_errors: bool = True,
    **kwargs: Any,
) -> requests.Response:
    """Send one HTTP request with Label Studio's retry policy; returns a 2xx/3xx response or raises.

    ``headers_fn`` supplies auth headers per attempt (so a refreshed token is used on the retry);
    ``on_unauthorized`` may renew credentials once after a 401 and return True to resend.
    Non-idempotent requests (POST, PATCH) are resent only when the server certainly did not get them
    (connection refused, connect timeout, 429, 503): a read timeout could otherwise duplicate a prediction.
    ``quote_errors=False`` keeps the error body out of the message (foreign hosts: only the status is reported).
    """
    method = method.upper()
    if idempotent is None:
        idempotent = method in IDEMPOTENT_METHODS
    kwargs.setdefault("timeout", timeout)
    shown = redact_url(url)
    extra_headers = dict(kwargs.pop("headers", None) or {})
    attempt = 0
    renewed = False
    while True:
        headers = dict(extra_headers)
        if headers_fn is not None:
            headers.update(headers_fn())
        delay = backoff * (2**attempt)
        try:
            resp = session.request(method, url, headers=headers, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            retryable = idempotent or _connect_failed(exc)
            if not retryable or attempt >= retries:
                raise LabelStudioError(
                    f"{method} {shown} failed after {attempt + 1} attempt(s): {type(exc).__name__}: {exc}",
                    status=None,
                    transient=True,
                ) from exc
            logger.warning("%s %s: %s; retry %d/%d in %.2fs", method, shown, type(exc).__name__,
                           attempt + 1, retries, delay)
        else:
            status = resp.status_code
            if status == 401 and on_unauthorized is not None and not renewed:
                renewed = True
                if on_unauthorized():
                    resp.close()
                    logger.info("%s %s: HTTP 401, credentials renewed, resending", method, shown)
                    continue
            if status < 400:
                return resp
            retryable = status in RETRY_STATUSES and (idempotent or status in (429, 503))
            excerpt = _body_excerpt(resp) if quote_errors else (resp.reason or "")
            resp.close()
            if not retryable or attempt >= retries:
                transient = status in RETRY_STATUSES
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise LabelStudioError(
                    f"{method} {shown} -> HTTP {status}{tries}: {excerpt}", status=status, transient=transient
                )
            retry_after = resp.headers.get("Retry-After", "")
            if retry_after.isdigit():
                delay = max(delay, min(float(retry_after), MAX_RETRY_AFTER))
            logger.warning("%s %s: HTTP %d; retry %d/%d in %.2fs", method, shown, status, attempt + 1, retries, delay)
        attempt += 1
        sleep(delay)


class LabelStudioClient:
    """Thread-safe client for one Label Studio instance; see the module docstring for auth and retries."""

    def __init__(self, url: str, api_key: str, timeout: float = 30.0, retries: int = 3, backoff: float = 0.5) -> None:
        if not url:
            raise ValueError("Label Studio URL is empty")
        if not api_key:
            raise ValueError("Label Studio API key is empty")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._api_key = api_key
        self.is_pat = is_personal_access_token(api_key)
        self._session = requests.Session()
        self._lock = threading.Lock()
        self._access_token: str | None = None
        self._access_expires_at = 0.0  # wall-clock epoch seconds, like JWT exp
        self.token_refreshes = 0  # how many access tokens were fetched (observability, tests)
        self._sleep: Callable[[float], None] = time.sleep

    def __repr__(self) -> str:  # never show the key
        return f"LabelStudioClient({self.url!r}, auth={'pat' if self.is_pat else 'legacy'})"

    # ----------------------------------------------------------------- auth
    def _refresh_access_token(self) -> None:
        """Exchange the PAT for a new access token (caller holds the lock)."""
        resp = send_with_retries(
            self._session, "POST", f"{self.url}/api/token/refresh/", retries=self.retries, backoff=self.backoff,
            timeout=self.timeout, idempotent=True, sleep=self._sleep, json={"refresh": self._api_key},
        )
        try:
            access = resp.json()["access"]
        except (ValueError, KeyError, TypeError) as exc:
            raise LabelStudioError(
                f"POST /api/token/refresh/ -> HTTP {resp.status_code}: no access token in the answer",
                status=resp.status_code,
            ) from exc
        payload = jwt_payload(access) or {}
        exp = payload.get("exp")
        self._access_expires_at = float(exp) if isinstance(exp, int | float) else time.time() + ACCESS_TOKEN_TTL
        self._access_token = access
        self.token_refreshes += 1
        logger.debug("Label Studio access token refreshed (valid %.0f s)", self._access_expires_at - time.time())

    def auth_headers(self) -> dict[str, str]:
        """The Authorization header for the next request, refreshing a PAT's access token when near expiry."""
        if not self.is_pat:
            return {"Authorization": f"Token {self._api_key}"}
        with self._lock:
            if self._access_token is None or time.time() >= self._access_expires_at - REFRESH_MARGIN:
                try:
                    self._refresh_access_token()
                except LabelStudioError as exc:
                    if exc.status in (400, 401, 403):
                        raise LabelStudioError(
                            f"Label Studio rejected the Personal Access Token (HTTP {exc.status}); "
                            "create a new one in Account & Settings",
                            status=exc.status,
                        ) from exc
                    raise
            return {"Authorization": f"Bearer {self._access_token}"}

    def _on_unauthorized(self) -> bool:
        """After a 401 a PAT's access token may have been revoked or expired early: fetch a new one once."""
        if not self.is_pat:
            return False
        with self._lock:
            self._access_token = None
        return True

    # ------------------------------------------------------------- plumbing
    def is_same_host(self, url: str) -> bool:
        """True when an absolute URL points at this Label Studio (scheme, host and port match)."""
        a, b = urlsplit(self.url), urlsplit(url)
        port = {"http": 80, "https": 443}
        return (
            a.scheme == b.scheme
            and (a.hostname or "").lower() == (b.hostname or "").lower()
            and (a.port or port.get(a.scheme)) == (b.port or port.get(b.scheme))
        )

    def absolute_url(self, path: str) -> str:
        """``path`` relative to the Label Studio URL, or an absolute URL that must be on the same host."""
        if "://" in path:
            if not self.is_same_host(path):
                raise LabelStudioError(f"refusing to send Label Studio credentials to {redact_url(path)}")
            return path
        base_path = urlsplit(self.url).path.rstrip("/")
        if base_path and path.startswith(base_path + "/"):
            path = path[len(base_path):]  # already carries the sub-path Label Studio is served under
        return f"{self.url}/{path.lstrip('/')}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """An authenticated request; see :func:`send_with_retries` for the retry policy.

        Extra keyword ``idempotent`` overrides the method-based guess (e.g. a POST that is safe to resend).
        """
        idempotent = kwargs.pop("idempotent", None)
        timeout = kwargs.pop("timeout", self.timeout)
        url = self.absolute_url(path)
        return send_with_retries(
            self._session, method, url, retries=self.retries, backoff=self.backoff, timeout=timeout,
            headers_fn=self.auth_headers, on_unauthorized=self._on_unauthorized, idempotent=idempotent,
            sleep=self._sleep, **kwargs,
        )

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        try:
            return resp.json()
        except ValueError as exc:
            raise LabelStudioError(
                f"{method} {redact_url(path)} -> HTTP {resp.status_code}: not JSON: {_body_excerpt(resp, 120)}",
                status=resp.status_code,
            ) from exc

    def _paginated(self, path: str, params: dict[str, Any]) -> list[dict]:
        """GET a list endpoint that may or may not paginate (``[...]`` or ``{"results": [...], "next": ...}``)."""
        out: list[dict] = []
        data = self._json("GET", path, params=params)
        while True:
            if isinstance(data, list):
                return out + data
            if not isinstance(data, dict) or "results" not in data:
                raise LabelStudioError(f"GET {path}: unexpected answer shape {type(data).__name__}")
            out.extend(data["results"])
            nxt = data.get("next")
            if not nxt:
                return out
            data = self._json("GET", nxt)

    # ------------------------------------------------------------------ API
    def get_project(self, project_id: int) -> dict:
        return self._json("GET", f"/api/projects/{int(project_id)}")

    def get_task(self, task_id: int) -> dict:
        return self._json("GET", f"/api/tasks/{int(task_id)}")

    def create_prediction(self, task_id: int, result: list, score: float, model_version: str) -> dict:
        """POST /api/predictions. Not resent after a read timeout (it may have been stored): callers de-duplicate."""
        body = {"task": int(task_id), "result": result, "score": float(score), "model_version": model_version}
        return self._json("POST", "/api/predictions", json=body)

    def update_prediction(self, prediction_id: int, **fields: Any) -> dict:
        """PATCH /api/predictions/<id> with ``fields`` (e.g. ``model_version``)."""
        return self._json("PATCH", f"/api/predictions/{int(prediction_id)}", json=fields)

    def tasks_of_video(self, project_id: int, video: str) -> list[dict]:
        """Tasks of a project whose ``data.video`` is ``video`` (the Data Manager's filter, 100 a page), with data."""
        query = {"filters": {"conjunction": "and", "items": [
            {"filter": "filter:tasks:data.video", "operator": "equal", "type": "String", "value": video}]}}  # fmt: skip
        out: list[dict] = []
        page = 1
        while True:
            params = {"project": int(project_id), "query": json.dumps(query), "page": page, "page_size": 100}
            try:
                data = self._json("GET", "/api/tasks", params=params)
            except LabelStudioError as exc:
                if exc.status == 404 and page > 1:  # past the last page
                    return out
                raise
            tasks = data.get("tasks") if isinstance(data, dict) else None
            if not isinstance(tasks, list):
                raise LabelStudioError(f"GET /api/tasks: unexpected answer shape {type(data).__name__}")
            out.extend(t for t in tasks if isinstance(t, dict) and (t.get("data") or {}).get("video") == video)
            if not tasks or page * 100 >= int(data.get("total") or 0):
                return out
            page += 1

    def delete_prediction(self, prediction_id: int) -> None:
        """DELETE /api/predictions/<id>; an already deleted prediction (404) is fine."""
        try:
            self.request("DELETE", f"/api/predictions/{int(prediction_id)}")
        except LabelStudioError as exc:
            if exc.status != 404:
                raise
            logger.debug("prediction %s already gone", prediction_id)

    def list_predictions(self, task_id: int) -> list[dict]:
        """GET /api/predictions?task=<id> (LS 1.23.2 filters on ``task``, ``project``, ``task__project``)."""
        return self._paginated("/api/predictions", {"task": int(task_id)})

    def list_project_predictions(self, project_id: int) -> list[dict]:
        """GET /api/predictions?project=<id>: every prediction of a project (the export lists only their ids)."""
        return self._paginated("/api/predictions", {"project": int(project_id)})

    def export_tasks(self, project_id: int, all_tasks: bool = False) -> list[dict]:
        """Tasks with their annotations (and predictions) via GET /api/projects/<id>/export?exportType=JSON.

        By default only tasks that have at least one annotation (Label Studio's own default);
        ``all_tasks=True`` adds unannotated ones. ``download_resources=false`` keeps the server from copying media.
        """
        params = {"exportType": "JSON", "download_resources": "false"}
        if all_tasks:
            params["download_all_tasks"] = "true"
        data = self._json("GET", f"/api/projects/{int(project_id)}/export", params=params,
                          timeout=max(self.timeout, 300.0))
        if not isinstance(data, list):
            raise LabelStudioError(f"export of project {project_id}: expected a list, got {type(data).__name__}")
        return data

    def download(self, url: str, dest: Path, task_id: int | None = None, max_bytes: int | None = None) -> Path:
        """Fetch a task's media URL to exactly ``dest`` (no cache, no local-disk shortcut).

        Label Studio URLs (``/data/upload/...``, ``/data/local-files/?d=...``, same-host absolute) go with auth,
        other hosts without it, cloud URIs through ``/tasks/<task_id>/presign/``. Raises ``media.MediaError``.
        """
        from glus_backend.media import fetch_to_file  # media imports this module

        return fetch_to_file(url, Path(dest), client=self, task_id=task_id, max_bytes=max_bytes)
