"""Requests kept on disk while Redis is down, replayed when it is back.

Label Studio sends each webhook once (1 s timeout, no retry), so a ``TASKS_CREATED`` answered with 503 during a
Redis restart would never be pre-labeled. The web process instead writes the request body to
``GLUS_SPOOL_DIR`` (fsync, then an atomic rename) and answers 202; a thread replays the files, oldest first,
through the same handlers once Redis answers. Replay is idempotent because job ids are content hashes.
Several web processes may share the folder: a file is claimed by renaming it, and a claim whose process died is
released after :data:`CLAIM_TIMEOUT` seconds.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

CLAIM_TIMEOUT = 120.0


class SpoolFull(RuntimeError):
    """More than ``max_files`` requests are waiting: the outage has lasted too long to keep accepting."""


class RequestSpool:
    def __init__(self, root: Path, max_files: int = 100_000) -> None:
        self.root = Path(root)
        self.max_files = max_files

    def put(self, endpoint: str, body: Any) -> str:
        """Store one request durably; returns its id."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.pending() >= self.max_files:
            raise SpoolFull(f"{self.max_files} requests already wait in {self.root} for Redis")
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        tmp = self.root / f".{name}.tmp"
        with open(tmp, "w") as fh:
            json.dump({"endpoint": endpoint, "body": body, "received_at": time.time()}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / f"{name}.json")
        return name

    def pending(self) -> int:
        if not self.root.is_dir():
            return 0
        return sum(1 for p in self.root.iterdir() if p.suffix in (".json", ".claimed"))

    def _release_stale_claims(self) -> None:
        for claimed in self.root.glob("*.claimed"):
            try:
                if time.time() - claimed.stat().st_mtime > CLAIM_TIMEOUT:
                    os.replace(claimed, claimed.with_suffix(".json"))
            except FileNotFoundError:
                continue

    def replay(self, handle: Callable[[str, Any], Any]) -> int:
        """Feed stored requests to ``handle(endpoint, body)``, oldest first; returns how many were done.

        A ``RedisError`` puts the request back and stops (Redis is still down); any other error is logged and the
        request moved to ``failed/`` (a bug must not block the spool forever).
        """
        if not self.root.is_dir():
            return 0
        self._release_stale_claims()
        done = 0
        for path in sorted(self.root.glob("*.json")):
            claimed = path.with_suffix(".claimed")
            try:
                os.replace(path, claimed)
            except FileNotFoundError:
                continue  # another process took it
            try:
                record = json.loads(claimed.read_text())
                handle(record["endpoint"], record["body"])
            except RedisError:
                os.replace(claimed, path)
                raise
            except Exception:  # noqa: BLE001
                logger.exception("spooled request %s could not be replayed; moved to failed/", path.name)
                (self.root / "failed").mkdir(exist_ok=True)
                os.replace(claimed, self.root / "failed" / path.name)
                continue
            claimed.unlink(missing_ok=True)
            done += 1
        return done


class SpoolReplayer(threading.Thread):
    """Replays ``spool`` every ``interval`` seconds while this process lives."""

    def __init__(self, spool: RequestSpool, handle: Callable[[str, Any], Any], interval: float = 2.0) -> None:
        super().__init__(name="spool-replayer", daemon=True)
        self.spool, self.handle, self.interval = spool, handle, interval
        self.pid = os.getpid()

    def run(self) -> None:
        while True:
            try:
                done = self.spool.replay(self.handle)
                if done:
                    logger.info("replayed %d request(s) kept while Redis was down", done)
            except RedisError:
                pass  # still down: try again next tick
            except Exception:  # noqa: BLE001 - the replayer must not die
                logger.exception("spool replay failed")
            time.sleep(self.interval)
