"""A local Label Studio 1.23.2 server started from its own virtualenv, driven through its REST API.

Used by the demo (``glus-backend demo``) and by the integration tests: the things that break ML backends are
Label Studio's actual behaviour (PAT vs legacy auth, media URLs, SSRF switches, webhook headers), which fakes
would only restate. Everything goes through the REST API with a Personal Access Token, the way a deployed
backend talks to Label Studio.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from .ls_client import LabelStudioClient, LabelStudioError

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = ROOT / "scripts" / "install_label_studio.sh"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "glus-test-password-123"
LEGACY_TOKEN = "glus0legacy0token0123456789abcdef"
START_TIMEOUT = 240.0


def ls_venv() -> Path:
    return Path(os.environ.get("GLUS_LS_VENV") or ROOT / ".venv-ls")


def ensure_label_studio() -> Path:
    """The ``label-studio`` executable, installing it with scripts/install_label_studio.sh when missing."""
    exe = ls_venv() / "bin" / "label-studio"
    stamp_ok = any(ls_venv().glob(".glus-label-studio-*"))
    if exe.is_file() and stamp_ok:
        return exe
    logger.info("Label Studio venv missing at %s: running %s", ls_venv(), INSTALL_SCRIPT)
    proc = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not exe.is_file():
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"{INSTALL_SCRIPT} failed (exit {proc.returncode}):\n{tail}")
    return exe


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelStudioServer:
    """``label-studio start`` in ``workdir`` (SQLite, local files served from ``workdir/files``); a context manager."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        legacy_tokens: bool = False,
        env: dict | None = None,
        admin_email: str = ADMIN_EMAIL,
        admin_password: str = ADMIN_PASSWORD,
        host: str = "127.0.0.1",
    ) -> None:
        self.admin_email = admin_email
        self.admin_password = admin_password
        self.host = host
        self.workdir = Path(workdir).resolve()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.files_root = self.workdir / "files"
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "label-studio.log"
        self.legacy_tokens = legacy_tokens
        self.legacy_token: str | None = LEGACY_TOKEN if legacy_tokens else None
        self.pat = ""
        self.start_seconds = 0.0
        self._extra_env = dict(env or {})
        self._proc: subprocess.Popen | None = None
        self._log_fh = None
        self._client: LabelStudioClient | None = None

    # ------------------------------------------------------------ lifecycle
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_", "VIRTUAL_ENV"))}
        home = self.workdir / "home"
        env.update(
            HOME=str(home),
            LABEL_STUDIO_USERNAME=self.admin_email,
            LABEL_STUDIO_PASSWORD=self.admin_password,
            LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
            LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(self.files_root),
            LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
            ML_BLOCK_LOCAL_IP="false",
            SSRF_PROTECTION_ENABLED="false",
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
            COLLECT_ANALYTICS="false",
            LATEST_VERSION_CHECK="false",
            PYTHONUNBUFFERED="1",
        )
        env["SECRET_KEY"] = self._secret_key()
        if self.legacy_tokens:
            env.update(LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true", LABEL_STUDIO_USER_TOKEN=LEGACY_TOKEN)
        env.update({k: str(v) for k, v in self._extra_env.items()})
        return env

    def _secret_key(self) -> str:
        """A SECRET_KEY kept in the workdir, so that a restart keeps every token valid. Label Studio 1.23.2 writes
        its own to ``<data-dir>/.env``, but django-environ reads a value starting with ``$`` as a reference to
        another variable: one generated key in 50 is lost at the next start, and with it every access token."""
        path = self.workdir / "secret_key"
        if not path.is_file():
            # a data dir from before this file existed: keep the key Label Studio has been using, if it can read it
            env_file = self.data_dir / ".env"
            known = [line.split("=", 1)[1] for line in (env_file.read_text().splitlines() if env_file.is_file() else [])
                     if line.startswith("SECRET_KEY=")]  # fmt: skip
            key = known[-1] if known and not known[-1].startswith("$") else secrets.token_urlsafe(48)
            self.workdir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(key)
        return path.read_text().strip()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def start(self) -> LabelStudioServer:
        exe = ensure_label_studio()
        for d in (self.files_root, self.data_dir, self.workdir / "home"):
            d.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(exe),
            "start",
            "--no-browser",
            "--internal-host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        t0 = time.monotonic()
        self._log_fh = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the server
        self._proc = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            env=self._env(),
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_healthy(t0)
            self.pat = self._obtain_pat()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        logger.info("Label Studio up at %s in %.1f s (log %s)", self.url, self.start_seconds, self.log_path)
        return self

    def _wait_healthy(self, t0: float) -> None:
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"label-studio exited with {self._proc.returncode} during start:\n{self.log_tail()}")
            try:
                r = requests.get(f"{self.url}/health", timeout=2)
                if r.status_code == 200 and r.json().get("status") == "UP":
                    return
            except (requests.RequestException, ValueError):
                pass
            if time.monotonic() - t0 > START_TIMEOUT:
                raise RuntimeError(f"label-studio not healthy after {START_TIMEOUT:.0f} s:\n{self.log_tail()}")
            time.sleep(0.5)

    def _obtain_pat(self) -> str:
        """A Personal Access Token without a browser: log in with the form, then POST /api/token/ (CSRF)."""
        pat_file = self.workdir / "pat.txt"
        s = requests.Session()
        s.get(f"{self.url}/user/login/", timeout=30)
        csrf = s.cookies.get("csrftoken", "")
        r = s.post(
            f"{self.url}/user/login/",
            timeout=30,
            allow_redirects=False,
            data={"csrfmiddlewaretoken": csrf, "email": self.admin_email, "password": self.admin_password},
            headers={"Referer": f"{self.url}/user/login/"},
        )
        if r.status_code != 302 or "sessionid" not in s.cookies:
            raise RuntimeError(f"login to Label Studio failed: HTTP {r.status_code}")
        r = s.post(
            f"{self.url}/api/token/",
            timeout=30,
            headers={"X-CSRFToken": s.cookies.get("csrftoken", csrf), "Referer": self.url},
        )
        if r.status_code == 201:
            pat = r.json()["token"]
            pat_file.write_text(pat)
            return pat
        if r.status_code == 409 and pat_file.is_file():  # a reused workdir: the token we stored last time
            return pat_file.read_text().strip()
        raise RuntimeError(f"POST /api/token/ -> HTTP {r.status_code}: {r.text[:300]}")

    def stop(self) -> None:
        """Stop our own process group (the dev server forks its autoreloader child)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def __enter__(self) -> LabelStudioServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------- clients
    def client(self, **kwargs: Any) -> LabelStudioClient:
        """A fresh client authenticated with the PAT (kwargs: timeout, retries, backoff)."""
        return LabelStudioClient(self.url, self.pat, **kwargs)

    @property
    def api(self) -> LabelStudioClient:
        """One shared PAT client for the helpers below."""
        if self._client is None:
            self._client = self.client()
        return self._client

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.api.request(method, path, **kwargs)
        return r.json() if r.content else None

    # ------------------------------------------------------------- helpers
    def create_project(self, title: str, label_config: str) -> int:
        return int(self._json("POST", "/api/projects", json={"title": title, "label_config": label_config})["id"])

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        data = self._json("POST", f"/api/projects/{project_id}/import", params={"return_task_ids": "true"}, json=tasks)
        return [int(t) for t in data.get("task_ids", [])]

    def upload_file(self, project_id: int, path: Path) -> int:
        path = Path(path)
        with open(path, "rb") as fh:
            data = self._json(
                "POST",
                f"/api/projects/{project_id}/import",
                params={"return_task_ids": "true"},
                files={"file": (path.name, fh)},
            )
        ids = data.get("task_ids") or []
        if len(ids) != 1:
            raise LabelStudioError(f"upload of {path.name} created {len(ids)} tasks: {data}")
        return int(ids[0])

    def add_local_storage(self, project_id: int, path: Path) -> int:
        path = Path(path).resolve()
        if not path.is_relative_to(self.files_root):
            raise ValueError(f"{path} is not under the local files root {self.files_root}")
        body = {"project": project_id, "path": str(path), "use_blob_urls": False, "title": path.name}
        return int(self._json("POST", "/api/storages/localfiles", json=body)["id"])

    def connect_ml_backend(
        self,
        project_id: int,
        url: str,
        title: str = "glus",
        basic_auth: tuple[str, str] | None = None,
        interactive: bool = True,
    ) -> int:
        """POST /api/ml; with basic auth also give the auto-created webhook the header (LS creates it without)."""
        body: dict[str, Any] = {"project": project_id, "url": url, "title": title, "is_interactive": interactive}
        if basic_auth:
            body.update(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
        ml_id = int(self._json("POST", "/api/ml", json=body)["id"])
        if basic_auth:
            header = "Basic " + base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
            hooks = self._json("GET", "/api/webhooks", params={"project": project_id})
            target = url.rstrip("/") + "/webhook"
            matched = [h for h in hooks if h.get("url", "").rstrip("/") == target]
            if not matched:
                raise LabelStudioError(f"no ML webhook {target} in project {project_id} (SSRF protection on?)")
            for hook in matched:
                self._json("PATCH", f"/api/webhooks/{hook['id']}", json={"headers": {"Authorization": header}})
        return ml_id

    def request_predictions(self, project_id: int, task_ids: list[int] | None = None) -> dict:
        """The Data Manager action "Retrieve predictions" (synchronous /predict call from Label Studio)."""
        selected = {"all": True, "excluded": []} if task_ids is None else {"all": False, "included": task_ids}
        return self._json(
            "POST",
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project_id},
            json={"selectedItems": selected},
            timeout=200,
        )

    def predictions(self, task_id: int) -> list[dict]:
        return self.api.list_predictions(task_id)

    def create_annotation(self, task_id: int, result: list, parent_prediction: int | None = None) -> int:
        body: dict[str, Any] = {"result": result, "lead_time": 1.0}
        if parent_prediction is not None:
            body["parent_prediction"] = parent_prediction
        return int(self._json("POST", f"/api/tasks/{task_id}/annotations", json=body)["id"])

    def delete_annotation(self, annotation_id: int) -> None:
        self.api.request("DELETE", f"/api/annotations/{annotation_id}")

    def set_legacy_tokens(self, enabled: bool) -> None:
        """Org setting for legacy ``Token`` auth (off by default on 1.23 unless the org was created with it)."""
        self._json("POST", "/api/jwt/settings", json={"api_tokens_enabled": True, "legacy_api_tokens_enabled": enabled})

    def get_legacy_token(self) -> str:
        """The admin's legacy DRF token (exists even while legacy auth is disabled)."""
        return self._json("GET", "/api/current-user/token")["token"]

    def copy_into_files(self, src: Path, rel: str) -> Path:
        """Put a file under the local files root (for local-storage tests)."""
        dest = self.files_root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return dest
