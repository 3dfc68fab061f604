"""Fixtures for integration tests: one real Label Studio per test session, and a Redis database for tests.

Nothing is skipped silently: a missing Label Studio venv is installed first, and any failure fails the test
with the reason (install log or server log tail).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from .label_studio import LabelStudioServer, ensure_label_studio

logger = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A started Label Studio 1.23.2 (fresh SQLite in a session tmp dir) with a PAT; stopped at session end."""
    try:
        ensure_label_studio()
    except Exception as exc:  # noqa: BLE001 - turn any install problem into a readable failure
        pytest.fail(f"cannot install Label Studio: {exc}", pytrace=False)
    server = LabelStudioServer(tmp_path_factory.mktemp("label-studio"))
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"cannot start Label Studio: {exc}", pytrace=False)
    logger.info("Label Studio started in %.1f s at %s", server.start_seconds, server.url)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """``redis://127.0.0.1:6379/<GLUS_TEST_REDIS_DB or 13>``; the server is shared, so only touch your own keys."""
    db = int(os.environ.get("GLUS_TEST_REDIS_DB", "13"))
    url = f"redis://127.0.0.1:6379/{db}"
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Redis at {url} is not reachable: {exc}", pytrace=False)
    return url
