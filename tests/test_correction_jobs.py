"""Correct one frame, the rest follows (backend side): which frames an annotation corrects, and the re-propagation
job with a fake Label Studio and the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import job_runtime

from glus_backend.corrections import DecodedAnnotation, ObjectMasks, corrected_frames
from glus_backend.label_config import parse_label_config
from glus_backend.prompts import ObjectPrompt
from glus_backend.results import ObjectTrack, frame_sequence_results

CONFIG = """<View><Image name="frames" valueList="$frames"/>
<BrushLabels name="mask" toName="frames"><Label value="Ball" hint="the ball"/><Label value="Cup" hint="the cup"/>
</BrushLabels></View>"""
H, W, N = 48, 64, 8
PROMPTS = [ObjectPrompt("the ball", "Ball"), ObjectPrompt("the cup", "Cup")]


def _square(x, y, size=12):
    mask = np.zeros((H, W), bool)
    mask[y : y + size, x : x + size] = True
    return mask


def _decoded(*per_object: dict) -> DecodedAnnotation:
    return DecodedAnnotation([ObjectMasks(p, dict(frames)) for p, frames in zip(PROMPTS, per_object)], [])


def test_corrected_frames_are_the_frames_that_differ():
    predicted = _decoded({0: _square(4, 4), 1: _square(8, 4), 2: _square(12, 4)}, {0: _square(40, 30)})
    annotated = _decoded(
        {0: _square(4, 4), 1: _square(30, 20), 3: _square(20, 4)},  # 1 moved, 2 deleted, 3 added
        {0: _square(40, 30) ^ _square(40, 30, 1)},  # one pixel off: not a correction
    )
    found = corrected_frames(annotated, predicted)
    assert set(found) == {0} and sorted(found[0]) == [1, 2, 3]
    assert np.array_equal(found[0][1], _square(30, 20)) and not found[0][2].any()
    assert sorted(corrected_frames(annotated, None)[0]) == [0, 1, 3]  # no prediction: every annotated frame


class FakeLabelStudio:
    def __init__(self, annotation, parent):
        self.annotation, self.parent = annotation, parent
        self.created: list[dict] = []

    def request(self, method, path, **kwargs):
        body = self.annotation if path.startswith("/api/annotations/") else self.parent

        class Answer:
            def json(self):
                return body

        return Answer()

    def create_prediction(self, task_id, result, score, model_version):
        self.created.append({"id": 99, "task": task_id, "result": result, "model_version": model_version})
        return self.created[-1]

    def list_predictions(self, task_id):
        return [p for p in self.created if p["task"] == task_id]

    def delete_prediction(self, prediction_id):
        raise AssertionError("the re-propagated prediction deletes nothing here (no placeholders)")


@pytest.fixture
def runtime(redis_prefix, tmp_path, tiny):
    frames = []
    for t in range(N):
        frame = np.full((H, W, 3), 80, np.uint8)
        frame[4:16, 4 + 4 * t : 16 + 4 * t] = (220, 200, 30)
        frames.append(frame)
    with job_runtime(redis_prefix, tmp_path, tiny, frames) as runtime:
        yield runtime


def _results(ball: list, cup: list) -> list[dict]:
    config = parse_label_config(CONFIG)
    tracks = [ObjectTrack("Ball", "the ball", ball, [0.9] * N), ObjectTrack("Cup", "the cup", cup, [0.9] * N)]
    return frame_sequence_results(tracks, config, W, H)


def test_a_correction_on_frame_k_is_repropagated_after_k_and_nothing_else_changes(runtime):
    from glus_backend import correction_jobs
    from glus_backend.rle import rle_to_mask

    ball = [_square(4 + 4 * t, 4) for t in range(N)]
    cup = [_square(40, 30) for _ in range(N)]
    predicted = _results(ball, cup)
    corrected_ball = list(ball)
    corrected_ball[3] = _square(30, 26)  # the annotator moves the ball on frame 3
    annotation = {"id": 5, "result": _results(corrected_ball, cup), "parent_prediction": 1, "updated_at": "t1"}
    fake = FakeLabelStudio(annotation, {"id": 1, "result": predicted})
    runtime.label_studio = lambda: fake
    task = {"id": 7, "data": {"frames": [f"/data/local-files/?d=v/{t:05d}.png" for t in range(N)]}}
    decided = correction_jobs.enqueue_if_corrected(runtime, task, annotation, {"id": 1, "label_config": CONFIG})
    assert decided["corrected_objects"] == {"0": 4}  # object 0, last corrected frame 3 (1-based: 4)
    job = runtime.queues.fetch(decided["repropagate_job"])
    summary = correction_jobs.repropagate_correction(job.args[0])
    assert summary["objects"] == {"the ball": {"last_corrected_frame": 3, "frames_repropagated": 4}}
    (offered,) = fake.created
    assert offered["model_version"].endswith(" + corrections") and offered["task"] == 7

    def masks(label):
        out = {}
        for r in offered["result"]:
            if r["value"]["brushlabels"] == [label]:
                out[r["item_index"]] = rle_to_mask(r["value"]["rle"], H, W)
        return out

    ball_now, cup_now = masks("Ball"), masks("Cup")
    for t in range(3):  # before the correction: the annotation's (= the prediction's) masks
        assert np.array_equal(ball_now[t], ball[t])
    assert np.array_equal(ball_now[3], corrected_ball[3])  # the correction itself
    assert all(np.array_equal(cup_now[t], cup[t]) for t in range(N))  # the other object untouched
    from model.repropagation import RepropagationOptions, repropagate
    from model.video_io import FrameFiles

    paths = sorted((runtime.settings.local_files_root / "v").glob("*.png"))
    options = RepropagationOptions(prompt=runtime.settings.repropagate_prompt)
    expected = {r.frame_index: r.mask for r in repropagate(runtime.model().segmenter, FrameFiles(paths), "the ball",
                                                           {3: corrected_ball[3]}, options)}  # fmt: skip
    for t in range(4, N):  # after it: the re-propagation from the correction
        assert np.array_equal(ball_now.get(t, np.zeros((H, W), bool)), expected[t])


def test_an_annotation_equal_to_its_prediction_or_corrected_only_on_the_last_frame_enqueues_nothing(runtime):
    from glus_backend import correction_jobs

    ball = [_square(4 + 4 * t, 4) for t in range(N)]
    cup = [_square(40, 30) for _ in range(N)]
    predicted = _results(ball, cup)
    task = {"id": 7, "data": {"frames": [f"f{t}" for t in range(N)]}}
    project = {"id": 1, "label_config": CONFIG}
    same = {"id": 5, "result": predicted, "prediction": {"id": 1, "result": predicted}}
    runtime.label_studio = lambda: FakeLabelStudio(same, None)
    assert correction_jobs.enqueue_if_corrected(runtime, task, same, project) == {
        "repropagate": "no correction before the last frame"}  # fmt: skip
    last = list(ball)
    last[N - 1] = _square(30, 26)
    edited = {"id": 6, "result": _results(last, cup), "prediction": {"id": 1, "result": predicted}}
    assert "repropagate_job" not in correction_jobs.enqueue_if_corrected(runtime, task, edited, project)
