"""The sweeper's Label Studio side (a fake client recording calls) and the request spool (real files)."""

import json

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from glus_backend.maintenance import tidy_task
from glus_backend.spool import RequestSpool


class FakeClient:
    def __init__(self, predictions):
        self.predictions = predictions
        self.deleted = []

    def list_predictions(self, task_id):
        return [p for p in self.predictions if p["id"] not in self.deleted]

    def delete_prediction(self, prediction_id):
        self.deleted.append(prediction_id)


def test_tidy_task_removes_placeholders_and_duplicate_copies_only():
    real = [{"type": "brushlabels", "value": {"rle": [1, 2]}}]
    other = [{"type": "brushlabels", "value": {"rle": [3]}}]
    client = FakeClient([
        {"id": 1, "model_version": "pending", "result": []},
        {"id": 2, "model_version": "glus-a", "result": real},  # a copy a racing /predict stored
        {"id": 3, "model_version": "glus-a", "result": real},  # the one the worker posted
        {"id": 4, "model_version": "glus-a", "result": other},  # a different prediction of the same version
        {"id": 5, "model_version": "other-backend", "result": real},
        {"id": 6, "model_version": "pending", "result": real},  # not empty: not ours to delete
    ])  # fmt: skip
    assert tidy_task(client, 7, keep_id=3, model_version="glus-a") == (1, 1)
    assert sorted(client.deleted) == [1, 2]
    # without a version to dedupe (a failed job): placeholders only
    client = FakeClient([{"id": 1, "model_version": "pending", "result": []},
                         {"id": 2, "model_version": "x", "result": real},
                         {"id": 3, "model_version": "x", "result": real}])
    assert tidy_task(client, 7, keep_id=None, model_version=None) == (1, 0) and client.deleted == [1]


def test_spool_replays_oldest_first_and_keeps_what_redis_refused(tmp_path):
    spool = RequestSpool(tmp_path / "spool")
    names = [spool.put("/webhook", {"n": i}) for i in range(3)]
    assert spool.pending() == 3 and names == sorted(names)
    seen = []

    def redis_down_at_second(endpoint, body):
        if body["n"] == 1:
            raise RedisConnectionError("down")
        seen.append(body["n"])

    with pytest.raises(RedisConnectionError):
        spool.replay(redis_down_at_second)
    assert seen == [0] and spool.pending() == 2  # the refused request is back in the spool, not lost
    assert spool.replay(lambda e, b: seen.append(b["n"])) == 2 and seen == [0, 1, 2] and spool.pending() == 0


def test_spool_moves_a_request_that_cannot_be_handled_aside(tmp_path):
    spool = RequestSpool(tmp_path / "spool")
    spool.put("/predict", {"tasks": "broken"})
    spool.put("/predict", {"tasks": []})
    handled = []

    def handle(endpoint, body):
        if body["tasks"] == "broken":
            raise ValueError("bad")
        handled.append(body)

    assert spool.replay(handle) == 1 and handled == [{"tasks": []}]
    failed = list((tmp_path / "spool" / "failed").iterdir())
    assert len(failed) == 1 and json.loads(failed[0].read_text())["body"] == {"tasks": "broken"}


def test_spool_refuses_beyond_its_limit(tmp_path):
    from glus_backend.spool import SpoolFull

    spool = RequestSpool(tmp_path / "spool", max_files=2)
    spool.put("/webhook", {})
    spool.put("/webhook", {})
    with pytest.raises(SpoolFull):
        spool.put("/webhook", {})
