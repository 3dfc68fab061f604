"""Unit tests of ls_client and media against a tiny in-process HTTP server (no Label Studio needed).

The server's behaviour is chosen by path; it records every request (method, path, Authorization header) so the
tests can count attempts and check that credentials never go to a foreign host.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from glus_backend.ls_client import (
    LabelStudioClient,
    LabelStudioError,
    is_personal_access_token,
    jwt_payload,
    redact_url,
)
from glus_backend.media import MediaError, cache_path, fetch_to_file, presign_path, resolve_media
from glus_backend.url_guard import AddressGuard

BODY = bytes(range(256)) * 40  # 10 240 bytes


def make_jwt(payload: dict) -> str:
    def enc(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc(payload)}.c2lnbmF0dXJl"


PAT = make_jwt({"token_type": "refresh", "exp": time.time() + 10**9, "jti": "r1", "user_id": "1"})
LEGACY = "0123456789abcdef0123456789abcdef01234567"


class FakeLabelStudio:
    """State shared with the handler: request log, per-path counters, issued access tokens."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, str | None]] = []
        self.counts: dict[str, int] = {}
        self.valid_access: set[str] = set()
        self.access_ttl = 300
        self.issued = 0
        self.lock = threading.Lock()


def _handler(state: FakeLabelStudio) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, length: int | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: object) -> None:
            self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

        def _authorized(self) -> bool:
            auth = self.headers.get("Authorization") or ""
            if auth == f"Token {LEGACY}":
                return True
            return auth.startswith("Bearer ") and auth[7:] in state.valid_access

        def _handle(self, method: str) -> None:
            parts = urlsplit(self.path)
            path, query = parts.path, parse_qs(parts.query)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with state.lock:
                state.log.append((method, self.path, self.headers.get("Authorization")))
                n = state.counts[path] = state.counts.get(path, 0) + 1
            if path == "/api/token/refresh/":
                if json.loads(body or b"{}").get("refresh") != PAT:
                    return self._json(401, {"detail": "Token is invalid"})
                state.issued += 1
                access = make_jwt(
                    {"token_type": "access", "exp": int(time.time()) + state.access_ttl, "jti": f"a{state.issued}"}
                )
                state.valid_access.add(access)
                return self._json(200, {"access": access})
            if path.startswith("/public/"):  # a foreign host's file: no auth needed
                return self._send(200, BODY)
            if path == "/redirect-to-foreign":
                port = self.server.server_address[1]
                return self._send(303, headers={"Location": f"http://localhost:{port}/public/v.mp4"})
            if not self._authorized():
                return self._json(401, {"detail": "Authentication credentials were not provided."})
            if path == "/ok":
                return self._json(200, {"ok": True})
            if path == "/flaky":  # 503 twice, then fine
                return self._json(503, {"detail": "busy"}) if n <= 2 else self._json(200, {"ok": True})
            if path.startswith("/status/"):
                code = int(path.rsplit("/", 1)[1])
                return self._send(code, b'{"detail":"x"}', {"Retry-After": "7"} if code == 429 else None)
            if path == "/slow":
                time.sleep(0.5)
                return self._json(200, {"ok": True})
            if path.startswith("/data/upload/"):
                return self._send(200, BODY, {"Content-Type": "video/mp4"})
            if path == "/data/local-files/":
                return self._send(200, BODY) if query.get("d") == ["frames/0001.jpg"] else self._send(404)
            if path == "/nolength.mp4":  # streamed without Content-Length (chunked)
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(BODY), 1000):
                    chunk = BODY[i : i + 1000]
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
                return None
            if path == "/truncated.mp4":  # promises more than it sends, then hangs up
                self._send(200, BODY[:100], length=len(BODY))
                self.close_connection = True
                return None
            if path.startswith("/tasks/") and path.endswith("/presign/"):
                uri = base64.urlsafe_b64decode(query["fileuri"][0]).decode()
                if uri == "s3://bucket/v.mp4":
                    return self._send(303, headers={"Location": "/redirect-to-foreign"})
                return self._send(404)
            return self._json(404, {"detail": "Not found"})

        def do_GET(self) -> None:  # noqa: N802
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

        def do_DELETE(self) -> None:  # noqa: N802
            self._handle("DELETE")

    return Handler


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up mid-body (max_bytes) are expected here


@pytest.fixture
def fake() -> Iterator[tuple[FakeLabelStudio, str]]:
    state = FakeLabelStudio()
    server = QuietServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def client_for(url: str, key: str = PAT, **kwargs: object) -> tuple[LabelStudioClient, list[float]]:
    kwargs = {"retries": 3, "backoff": 0.1, "timeout": 5.0, **kwargs}
    client = LabelStudioClient(url, key, **kwargs)  # type: ignore[arg-type]
    sleeps: list[float] = []
    client._sleep = sleeps.append
    return client, sleeps


# ------------------------------------------------------------------ tokens
def test_jwt_detection() -> None:
    assert is_personal_access_token(PAT)
    assert not is_personal_access_token(make_jwt({"token_type": "access", "exp": 1}))
    assert not is_personal_access_token(LEGACY)
    assert not is_personal_access_token("a.b.c")
    assert not is_personal_access_token("eyJ.not-base64!.x")
    assert jwt_payload(PAT)["user_id"] == "1"
    assert LabelStudioClient("http://x", PAT).is_pat and not LabelStudioClient("http://x", LEGACY).is_pat
    assert PAT not in repr(LabelStudioClient("http://x", PAT))


def test_pat_is_exchanged_and_refreshed_before_expiry(fake) -> None:
    state, url = fake
    client, _ = client_for(url)
    client.request("GET", "/ok")
    client.request("GET", "/ok")
    assert client.token_refreshes == 1
    assert state.log[0][:2] == ("POST", "/api/token/refresh/") and state.log[0][2] is None
    assert state.log[1][2].startswith("Bearer ") and state.log[1][2] != f"Bearer {PAT}"
    state.access_ttl = 10  # the next token expires inside the refresh margin: renewed on every use
    client._access_expires_at = 0
    client.request("GET", "/ok")
    client.request("GET", "/ok")
    assert client.token_refreshes == 3


def test_pat_401_refreshes_once_and_resends(fake) -> None:
    state, url = fake
    client, _ = client_for(url)
    client.request("GET", "/ok")
    state.valid_access.clear()  # e.g. server restarted with a new secret
    assert client.request("GET", "/ok").json() == {"ok": True}
    assert client.token_refreshes == 2
    state.valid_access.clear()
    state.counts.clear()
    client._access_expires_at = time.time() + 3600
    real = client._refresh_access_token

    def refresh_but_useless() -> None:
        real()
        state.valid_access.clear()

    client._refresh_access_token = refresh_but_useless  # type: ignore[method-assign]
    with pytest.raises(LabelStudioError) as err:  # only one renewal per request, no loop
        client.request("GET", "/ok")
    assert err.value.status == 401 and not err.value.transient and state.counts["/ok"] == 2


def test_rejected_pat_and_legacy_header(fake) -> None:
    state, url = fake
    bad = make_jwt({"token_type": "refresh", "jti": "other"})
    client, sleeps = client_for(url, bad)
    with pytest.raises(LabelStudioError, match="rejected the Personal Access Token") as err:
        client.request("GET", "/ok")
    assert err.value.status == 401 and not err.value.transient and sleeps == []
    legacy, _ = client_for(url, LEGACY)
    assert legacy.request("GET", "/ok").ok
    assert state.log[-1][2] == f"Token {LEGACY}"


# ----------------------------------------------------------------- retries
def test_retries_with_exponential_backoff(fake) -> None:
    state, url = fake
    client, sleeps = client_for(url, LEGACY)
    assert client.request("GET", "/flaky").json() == {"ok": True}
    assert state.counts["/flaky"] == 3 and sleeps == [0.1, 0.2]


@pytest.mark.parametrize("code", [502, 503, 504])
def test_persistent_5xx_gateway_errors_are_transient(fake, code: int) -> None:
    state, url = fake
    client, sleeps = client_for(url, LEGACY, retries=2)
    with pytest.raises(LabelStudioError) as err:
        client.request("GET", f"/status/{code}")
    assert err.value.transient and err.value.status == code and f"HTTP {code}" in str(err.value)
    assert state.counts[f"/status/{code}"] == 3 and sleeps == [0.1, 0.2]


def test_429_honours_retry_after(fake) -> None:
    _, url = fake
    client, sleeps = client_for(url, LEGACY, retries=1)
    with pytest.raises(LabelStudioError) as err:
        client.request("POST", "/status/429", json={})  # 429: not processed, safe to resend even a POST
    assert err.value.transient and sleeps == [7.0]


@pytest.mark.parametrize("code", [400, 403, 404, 500])
def test_other_errors_fail_at_once(fake, code: int) -> None:
    state, url = fake
    client, sleeps = client_for(url, LEGACY)
    with pytest.raises(LabelStudioError) as err:
        client.request("GET", f"/status/{code}")
    assert not err.value.transient and err.value.status == code
    assert state.counts[f"/status/{code}"] == 1 and sleeps == []
    assert f"GET {url}/status/{code} -> HTTP {code}" in str(err.value) and '"detail": "x"' in str(err.value)


def test_read_timeout_retried_for_get_but_not_for_post(fake) -> None:
    state, url = fake
    client, sleeps = client_for(url, LEGACY, timeout=0.1, retries=1)
    with pytest.raises(LabelStudioError) as err:
        client.request("GET", "/slow")
    assert err.value.transient and state.counts["/slow"] == 2 and len(sleeps) == 1
    state.counts.clear()
    with pytest.raises(LabelStudioError) as err:
        client.request("POST", "/slow", json={})  # may have been processed: resending could post twice
    assert err.value.transient and state.counts["/slow"] == 1


def test_connection_refused_is_transient_after_retries() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client, sleeps = client_for(f"http://127.0.0.1:{port}", LEGACY, retries=2)
    with pytest.raises(LabelStudioError) as err:
        client.request("POST", "/api/predictions", json={})  # never reached the server: resent
    assert err.value.transient and err.value.status is None and sleeps == [0.1, 0.2]


def test_credentials_stay_on_the_label_studio_host(fake) -> None:
    _, url = fake
    client, _ = client_for(url, LEGACY)
    foreign = url.replace("127.0.0.1", "localhost")
    with pytest.raises(LabelStudioError, match="refusing to send"):
        client.request("GET", foreign + "/ok")
    assert client.absolute_url("/api/x") == f"{url}/api/x" and client.absolute_url("api/x") == f"{url}/api/x"
    assert LabelStudioClient("http://h/ls/", LEGACY).absolute_url("/ls/api/x") == "http://h/ls/api/x"


# ------------------------------------------------------------------- media
def test_redact_url() -> None:
    shown = redact_url("https://user:pw@b.s3.amazonaws.com/v.mp4?X-Amz-Signature=abc&X-Amz-Credential=k&d=ok")
    assert "pw" not in shown and "abc" not in shown and "X-Amz-Signature=***" in shown and "d=ok" in shown


def test_upload_download_and_cache_hit(fake, tmp_path: Path) -> None:
    state, url = fake
    client, _ = client_for(url, LEGACY)
    path = resolve_media("/data/upload/1/abc-video.mp4", client, tmp_path)
    assert path.read_bytes() == BODY and path.name.endswith("__abc-video.mp4")
    assert path == cache_path("/data/upload/1/abc-video.mp4", tmp_path)
    again = resolve_media("/data/upload/1/abc-video.mp4", client, tmp_path)
    assert again == path and state.counts["/data/upload/1/abc-video.mp4"] == 1
    other = resolve_media(url + "/data/upload/1/abc-video.mp4", client, tmp_path)  # absolute: other cache key
    assert other != path and other.read_bytes() == BODY
    assert all(auth == f"Token {LEGACY}" for _, p, auth in state.log if p.startswith("/data/upload/"))
    assert not list(tmp_path.glob("*.part"))


def test_foreign_host_gets_no_credentials(fake, tmp_path: Path) -> None:
    state, url = fake
    client, _ = client_for(url, LEGACY)
    foreign = url.replace("127.0.0.1", "localhost") + "/public/clip.mp4?sig=secret"
    with pytest.raises(MediaError, match="loopback"):  # "localhost" is internal: refused unless allowed
        resolve_media(foreign, client, tmp_path)
    allow = AddressGuard(allowed=("localhost",))
    assert resolve_media(foreign, client, tmp_path, guard=allow).read_bytes() == BODY
    assert state.log[-1] == ("GET", "/public/clip.mp4?sig=secret", None)
    assert resolve_media(foreign + "2", None, tmp_path, guard=allow).read_bytes() == BODY  # no client needed either


def test_max_bytes_with_and_without_content_length(fake, tmp_path: Path) -> None:
    _, url = fake
    client, _ = client_for(url, LEGACY)
    for path in ("/data/upload/1/big.mp4", url + "/nolength.mp4"):
        with pytest.raises(MediaError, match="larger than the limit") as err:
            resolve_media(path, client, tmp_path, max_bytes=5000)
        assert not err.value.transient
    assert list(tmp_path.iterdir()) == []
    assert resolve_media(url + "/nolength.mp4", client, tmp_path, max_bytes=len(BODY)).read_bytes() == BODY


def test_media_error_classification(fake, tmp_path: Path) -> None:
    _, url = fake
    client, _ = client_for(url, LEGACY, retries=1)
    cases = {
        "/status/404": False,
        "/status/403": False,
        "/status/500": True,
        "/status/503": True,
        "/truncated.mp4": True,
    }
    for path, transient in cases.items():
        with pytest.raises(MediaError) as err:
            resolve_media(url + path, client, tmp_path)
        assert err.value.transient is transient, path
        assert f"cannot fetch {url}{path}" in str(err.value)
    for bad in ("ftp://host/x.mp4", "", "mailto:x"):
        with pytest.raises(MediaError) as err:
            resolve_media(bad, client, tmp_path)
        assert not err.value.transient
    with pytest.raises(MediaError, match="needs a Label Studio client"):
        resolve_media("/data/upload/1/x.mp4", None, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_local_files_and_path_escapes(fake, tmp_path: Path) -> None:
    state, url = fake
    client, _ = client_for(url, LEGACY)
    root = tmp_path / "root"
    (root / "frames").mkdir(parents=True)
    frame = root / "frames" / "0001.jpg"
    frame.write_bytes(b"jpeg")
    (tmp_path / "secret.txt").write_text("s")
    (root / "frames" / "link.jpg").symlink_to(tmp_path / "secret.txt")
    cache = tmp_path / "cache"

    lf = "/data/local-files/?d=frames/0001.jpg"
    assert resolve_media(lf, client, cache, local_files_root=root) == frame.resolve()
    assert resolve_media(url + lf, client, cache, local_files_root=root) == frame.resolve()
    assert not state.log  # read from disk, no HTTP
    assert resolve_media(lf, client, cache).read_bytes() == BODY  # no root: over HTTP
    assert resolve_media(f"file://{frame}", None, cache, local_files_root=root) == frame.resolve()
    assert resolve_media(str(frame), None, cache, local_files_root=root) == frame.resolve()
    assert resolve_media("frames/0001.jpg", None, cache, local_files_root=root) == frame.resolve()
    with pytest.raises(MediaError, match="larger than the limit"):
        resolve_media(lf, client, cache, local_files_root=root, max_bytes=2)

    escapes = [
        "/data/local-files/?d=../secret.txt",
        "/data/local-files/?d=frames/../../secret.txt",
        "/data/local-files/?d=frames/link.jpg",
        f"file://{tmp_path}/secret.txt",
        str(tmp_path / "secret.txt"),
        "../secret.txt",
    ]
    for bad in escapes:
        with pytest.raises(MediaError, match="outside the local files root") as err:
            resolve_media(bad, client, cache, local_files_root=root)
        assert not err.value.transient
    for local in (f"file://{frame}", str(frame)):
        with pytest.raises(MediaError, match="only read under a configured local files root"):
            resolve_media(local, client, cache)
    with pytest.raises(MediaError, match="no file"):
        resolve_media("/data/local-files/?d=frames/9999.jpg", None, cache, local_files_root=root)


def test_cloud_uri_presign_follows_redirect_without_credentials(fake, tmp_path: Path) -> None:
    state, url = fake
    client, _ = client_for(url, LEGACY)
    assert presign_path("s3://bucket/v.mp4", 7) == "/tasks/7/presign/?fileuri=czM6Ly9idWNrZXQvdi5tcDQ="
    with pytest.raises(MediaError, match="loopback.*a redirect from"):  # each redirect hop is checked
        resolve_media("s3://bucket/v.mp4", client, tmp_path, task_id=7)
    path = resolve_media("s3://bucket/v.mp4", client, tmp_path, task_id=7, guard=AddressGuard(allowed=("localhost",)))
    assert path.read_bytes() == BODY and path.name.endswith("__v.mp4")
    auth_by_path = {urlsplit(p).path: a for _, p, a in state.log}
    assert auth_by_path["/tasks/7/presign/"] == f"Token {LEGACY}"
    assert auth_by_path["/public/v.mp4"] is None  # the bucket never sees Label Studio's credentials
    for uri in ("gs://b/x.mp4", "azure-blob://c/x.mp4"):
        with pytest.raises(MediaError, match="could not presign") as err:
            resolve_media(uri, client, tmp_path, task_id=7)
        assert err.value.status == 404 and not err.value.transient
    with pytest.raises(MediaError, match="no task id"):
        resolve_media("s3://bucket/v.mp4", client, tmp_path / "other")
    with pytest.raises(MediaError, match="need a Label Studio client"):
        fetch_to_file("s3://bucket/v.mp4", tmp_path / "x.mp4", None, task_id=7)


def test_client_download_writes_exact_destination(fake, tmp_path: Path) -> None:
    _, url = fake
    client, _ = client_for(url, LEGACY)
    dest = client.download("/data/upload/1/x.mp4", tmp_path / "sub" / "exact.mp4")
    assert dest == tmp_path / "sub" / "exact.mp4" and dest.read_bytes() == BODY
