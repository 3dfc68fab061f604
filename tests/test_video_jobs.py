"""Whole-video pre-labeling of chunk tasks: which tasks share a job (web side), how their frames are laid end to
end, and the job itself with a fake Label Studio: one pass, one prediction per chunk, a failed post losing nothing."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import job_runtime

from glus_backend.ls_client import LabelStudioError
from glus_backend.queues import JobQueues, is_placeholder
from glus_backend.settings import Settings
from glus_backend.video_chunks import chunk_ref, video_frames

CONFIG = """<View><Header value="$expressions_text"/><Image name="frames" valueList="$frames"/>
<BrushLabels name="mask" toName="frames"><Label value="Object"/></BrushLabels></View>"""


def _chunk(task_id, start, n, video="dog", step=1, **extra):
    frames = [f"/data/local-files/?d=v/{start + i * step:05d}.png" for i in range(n)]
    return {"id": task_id, "data": {"frames": frames, "video": video, "start_frame": start, "frame_step": step,
                                    "expression": "the square", **extra}}  # fmt: skip


# --- chunk references and frame layout ---


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"frames": ["a"], "video": "v", "start_frame": 0}, ("v", 0, 1)),
        ({"frames": ["a"], "video": "v", "start_frame": 8, "frame_step": 2}, ("v", 8, 2)),
        ({"frames": ["a"], "video": "v"}, None),  # no frame range
        ({"frames": ["a"], "video": "", "start_frame": 0}, None),
        ({"frames": ["a"], "video": "v", "start_frame": True}, None),
        ({"frames": ["a"], "video": "v", "start_frame": -1}, None),
        ({"frames": ["a"], "video": "v", "start_frame": 0, "frame_step": 0}, None),
        ({"frames": [], "video": "v", "start_frame": 0}, None),
        ({"video": "v", "start_frame": 0}, None),
    ],
)
def test_chunk_ref(data, expected):
    ref = chunk_ref(data, "frames")
    assert (None if ref is None else (ref.video, ref.start_frame, ref.frame_step)) == expected


def test_video_frames_orders_chunks_and_shares_overlapping_frames():
    tasks = [_chunk(3, 8, 4), _chunk(1, 0, 4), _chunk(2, 4, 5), _chunk(9, 0, 4, step=2)]  # 2 and 3 overlap at 8
    video = video_frames(tasks, "frames", 1)
    assert video.task_ids == [1, 2, 3]  # the frame_step=2 chunk is another sequence
    assert video.frame_numbers == list(range(12))
    assert video.urls[8] == "/data/local-files/?d=v/00008.png"
    assert video.items[8] == [(2, 4), (3, 0)]  # one frame, two tasks
    assert video.positions_of(3) == [8, 9, 10, 11]


# --- one job per video (web side) ---


@pytest.fixture
def queues(redis_prefix):
    redis, prefix, created = redis_prefix
    return JobQueues(redis, Settings(queue_prefix=prefix))


def test_chunks_of_one_video_share_one_job_and_others_do_not(queues):
    first = [queues.enqueue_prediction(t, CONFIG, 1, "v1") for t in (_chunk(1, 0, 4), _chunk(2, 4, 4))]
    assert first[0].created and not first[1].created and first[0].job_id == first[1].job_id
    assert all(e.per_task for e in first)
    job = queues.fetch(first[0].job_id)
    assert job.func_name == "glus_backend.video_jobs.predict_video" and job.meta["video"] == "dog"
    others = [
        queues.enqueue_prediction(_chunk(3, 0, 4, video="cat"), CONFIG, 1, "v1"),  # another video
        queues.enqueue_prediction(_chunk(4, 0, 4, expression="the circle"), CONFIG, 1, "v1"),  # other prompts
        queues.enqueue_prediction(_chunk(5, 0, 4), CONFIG, 1, "v2"),  # another model version
        queues.enqueue_prediction(_chunk(6, 0, 4), CONFIG, 2, "v1"),  # another project
    ]
    assert len({e.job_id for e in others} | {first[0].job_id}) == 5
    own = queues.enqueue_prediction(_chunk(7, 0, 4), CONFIG, 1, "v1", context={"text_prompt": "x"})
    plain = queues.enqueue_prediction({"id": 8, "data": {"frames": ["a"], "expression": "x"}}, CONFIG, 1, "v1")
    for enqueued in (own, plain):  # interactive requests and tasks without a video are tasks of their own
        assert not enqueued.per_task and queues.fetch(enqueued.job_id).func_name == "glus_backend.jobs.predict_task"


def test_a_chunk_the_video_job_did_not_list_gets_a_job_of_its_own(queues):
    video_job = queues.enqueue_prediction(_chunk(1, 0, 4), CONFIG, 1, "v1")
    job = queues.fetch(video_job.job_id)
    job.meta["task_ids"] = [1, 2]
    job.save_meta()
    assert queues.enqueue_prediction(_chunk(2, 4, 4), CONFIG, 1, "v1").job_id == video_job.job_id
    late = queues.enqueue_prediction(_chunk(3, 8, 4), CONFIG, 1, "v1")  # imported after the job listed the video
    assert late.job_id != video_job.job_id and not late.per_task


def test_whole_video_can_be_switched_off(redis_prefix):
    redis, prefix, _ = redis_prefix
    queues = JobQueues(redis, Settings(queue_prefix=prefix, whole_video=False))
    ids = {queues.enqueue_prediction(t, CONFIG, 1, "v1").job_id for t in (_chunk(1, 0, 4), _chunk(2, 4, 4))}
    assert len(ids) == 2


def test_placeholders_include_running_ones():
    assert is_placeholder({"result": [], "model_version": "pending"})
    assert is_placeholder({"result": [], "model_version": "running 40%"})
    assert not is_placeholder({"result": [{"x": 1}], "model_version": "running 40%"})
    assert not is_placeholder({"result": [], "model_version": "glus-demo-v1"})


# --- the job, with a fake Label Studio ---


class FakeLabelStudio:
    """Tasks and predictions in memory; ``fail_posts`` maps task ids to how many prediction POSTs (not placeholder
    ones) they refuse."""

    def __init__(self, tasks):
        self.tasks = {t["id"]: t for t in tasks}
        self.predictions: dict[int, dict] = {}
        self.fail_posts: dict[int, int] = {}
        self.fail_deletes = 0  # prediction DELETEs refused (Label Studio gone right after a post)
        self.updates: list[tuple[int, str]] = []
        self.next_id = 1

    def tasks_of_video(self, project_id, video):
        return [t for t in self.tasks.values() if t["data"].get("video") == video]

    def list_predictions(self, task_id):
        return [p for p in self.predictions.values() if p["task"] == task_id]

    def create_prediction(self, task_id, result, score, model_version):
        if result and self.fail_posts.get(task_id):
            self.fail_posts[task_id] -= 1
            raise LabelStudioError("Label Studio answered 502", status=502, transient=True)
        pid, self.next_id = self.next_id, self.next_id + 1
        self.predictions[pid] = {"id": pid, "task": task_id, "result": result, "score": score,
                                 "model_version": model_version}  # fmt: skip
        return self.predictions[pid]

    def update_prediction(self, prediction_id, **fields):
        self.predictions[prediction_id].update(fields)
        self.updates.append((prediction_id, fields["model_version"]))
        return self.predictions[prediction_id]

    def delete_prediction(self, prediction_id):
        if self.fail_deletes:
            self.fail_deletes -= 1
            raise LabelStudioError("connection refused", transient=True)
        self.predictions.pop(prediction_id, None)


@pytest.fixture
def video_runtime(redis_prefix, tmp_path, tiny):
    """A worker runtime (tiny model, real Redis) whose Label Studio is a :class:`FakeLabelStudio` of 3 chunks."""
    frames = []
    for t in range(10):
        frame = np.full((48, 64, 3), 80, np.uint8)
        frame[10:30, 4 + 4 * t : 24 + 4 * t] = (30, 30, 220)
        frames.append(frame)
    with job_runtime(redis_prefix, tmp_path, tiny, frames) as runtime:
        fake = FakeLabelStudio([_chunk(1, 0, 4), _chunk(2, 4, 4), _chunk(3, 8, 2)])
        runtime.label_studio = lambda: fake
        runtime.progress_client = lambda: fake
        yield runtime, fake


def _payload(runtime, task):
    enqueued = runtime.queues.enqueue_prediction(task, CONFIG, 1, "v1")
    return runtime.queues.fetch(enqueued.job_id).args[0]


def test_one_pass_posts_every_chunk_and_a_failed_post_loses_nothing(video_runtime, monkeypatch):
    from glus_backend import video_jobs

    runtime, fake = video_runtime
    payload = _payload(runtime, fake.tasks[2])  # asking for the middle chunk runs the whole video
    fake.fail_posts = {2: 2}  # down through the chunk's post and the job's last try
    calls = []
    real = video_jobs.segment_frames
    monkeypatch.setattr(video_jobs, "segment_frames", lambda *a: calls.append(len(a[1])) or real(*a))
    with pytest.raises(video_jobs.ChunkPostsFailed, match=r"tasks \[2\]"):
        video_jobs.predict_video(payload)
    assert calls == [10]  # one pass over the 10 frames of the 3 chunks
    posted = {p["task"]: p for p in fake.predictions.values() if not is_placeholder(p)}
    assert set(posted) == {1, 3}
    assert all(runtime.queues.get_prediction(payload["job_id"], t) is not None for t in (1, 2, 3))
    for task_id, n in ((1, 4), (3, 2)):  # each chunk's results index its own frames
        items = {r["item_index"] for r in posted[task_id]["result"]}
        assert items and items <= set(range(n))
        assert {r["value"]["brushlabels"][0] for r in posted[task_id]["result"]} == {"Object"}
    assert any(version.startswith("running ") for _, version in fake.updates)  # progress was shown

    summary = video_jobs.predict_video(payload)  # the retry posts the stored chunk, nothing is segmented
    assert calls == [10] and summary["segmented"] is False
    assert {p["task"] for p in fake.predictions.values() if not is_placeholder(p)} == {1, 2, 3}
    assert not [p for p in fake.predictions.values() if is_placeholder(p)]  # placeholders gone
    assert summary["task_ids"] == [1, 2, 3] and summary["frames"] == 10
    stored = runtime.queues.get_prediction(payload["job_id"], 2)["result"]
    assert [r for p in fake.predictions.values() if p["task"] == 2 for r in p["result"]] == stored


def test_label_studio_gone_between_a_post_and_its_placeholder_delete_leaves_the_task_to_the_sweeper(video_runtime):
    """Found by the fault test (tests/integration/test_faults.py): a chunk posted, then Label Studio gone before its
    placeholder was deleted. The post is recorded once and the task is queued for the sweeper's tidy before the
    delete is tried, so the placeholder does not outlive Label Studio's return."""
    import json

    from glus_backend import video_jobs
    from glus_backend.maintenance import tidy_task

    runtime, fake = video_runtime
    payload = _payload(runtime, fake.tasks[1])
    fake.fail_deletes = 1  # the first placeholder delete: task 1's, right after its post
    video_jobs.predict_video(payload)
    posted = runtime.queues.posted(payload["job_id"], 1)
    assert posted is not None and [p["id"] for p in fake.list_predictions(1) if not is_placeholder(p)] == [posted]
    assert [p for p in fake.list_predictions(1) if is_placeholder(p)]  # still there: the delete failed
    to_settle = [json.loads(e) for e in runtime.queues.redis.zrange(runtime.queues.key("to-settle"), 0, -1)]
    entry = next(e for e in to_settle if e["task_id"] == 1)
    assert entry["prediction_id"] == posted
    tidy_task(fake, entry["task_id"], entry["prediction_id"], entry["model_version"])  # what the sweeper does
    assert [p["id"] for p in fake.list_predictions(1)] == [posted]


def test_the_whole_video_pass_equals_one_segment_call_over_all_frames(video_runtime):
    """The chunk predictions are the whole video's masks cut at the chunk boundaries (not per-chunk runs)."""
    from glus_backend import video_jobs
    from glus_backend.rle import rle_to_mask
    from model.video_io import FrameFiles

    runtime, fake = video_runtime
    video_jobs.predict_video(_payload(runtime, fake.tasks[1]))
    loaded = runtime.model()
    paths = sorted((runtime.settings.local_files_root / "v").glob("*.png"))
    (whole,) = loaded.segmenter.segment(FrameFiles(paths), ["the square"])
    for task_id, start in ((1, 0), (2, 4), (3, 8)):
        (pred,) = [p for p in fake.predictions.values() if p["task"] == task_id]
        for r in pred["result"]:
            mask = rle_to_mask(r["value"]["rle"], 48, 64)
            assert np.array_equal(mask, whole.frames[start + r["item_index"]].mask)
