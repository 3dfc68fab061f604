"""End to end against real components: Label Studio 1.23.2 (own virtualenv, started by the tests), Redis,
the backend's web process and an RQ worker subprocess with the tiny model.

For each supported labeling config (frame sequence with brush + polygon; video with VideoRectangle) a
project is created, the backend connected through Label Studio's REST API, tasks imported (local-files frame
sequences, an uploaded video), and valid predictions must land in Label Studio for every task: through the
TASKS_CREATED webhook, and through a Data Manager "retrieve predictions" action (placeholders replaced by the
worker). An annotation must reach the backend through the webhook and run an ingest job.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import pytest
import requests
from conftest import SHARED_VIDEOS
from label_studio_sdk.label_interface import LabelInterface

from glus_backend.queues import is_placeholder

from .backend_stack import tiny_model_backend, write_frames
from .backend_stack import wait_for as _wait

FRAMES_CONFIG = """<View>
  <Header value="$expressions_text"/>
  <Image name="frames" valueList="$frames"/>
  <BrushLabels name="mask" toName="frames"><Label value="Object" background="red"/></BrushLabels>
  <PolygonLabels name="poly" toName="frames"><Label value="Object" background="blue"/></PolygonLabels>
</View>"""
VIDEO_CONFIG = """<View>
  <Labels name="videoLabels" toName="video"><Label value="Object" hint="the bed" background="red"/></Labels>
  <Video name="video" value="$video" framerate="30.0"/>
  <VideoRectangle name="box" toName="video"/>
</View>"""


@pytest.fixture(scope="module")
def stack(label_studio, redis_url, tmp_path_factory):
    with tiny_model_backend(label_studio, redis_url, tmp_path_factory.mktemp("glus-stack")) as running:
        yield running


def _real_frames(ls, rel: str, n: int = 8) -> list[str]:
    return write_frames(ls, rel, n)


def _short_video(path: Path, n: int = 40) -> Path:
    cap = cv2.VideoCapture(str(SHARED_VIDEOS / "bedroom.mp4"))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (320, 180))
    for _ in range(n):
        ok, frame = cap.read()
        assert ok
        writer.write(cv2.resize(frame, (320, 180)))
    writer.release()
    cap.release()
    return path


def _final_predictions(stack, task_id: int) -> list[dict]:
    preds = stack["ls"].predictions(task_id)
    return [p for p in preds if p.get("model_version") == stack["version"]]


def _wait_for_predictions(stack, task_ids: list[int], timeout: float = 240) -> dict[int, dict]:
    def done():
        found = {t: _final_predictions(stack, t) for t in task_ids}
        pending = [p for t in task_ids for p in stack["ls"].predictions(t) if is_placeholder(p)]
        return found if all(found.values()) and not pending else None

    try:
        found = _wait(done, timeout, f"predictions for tasks {task_ids}", interval=1.0)
    except AssertionError:
        raise AssertionError((stack["logs"] / "worker.log").read_text()[-4000:]) from None
    for task_id, preds in found.items():
        assert len(preds) == 1, f"task {task_id} got {len(preds)} predictions of {stack['version']}"
    return {t: p[0] for t, p in found.items()}


def test_frame_sequence_project_prelabels_on_import(stack):
    ls = stack["ls"]
    project = ls.create_project("frames-brush-polygon", FRAMES_CONFIG)
    urls = _real_frames(ls, "clips/bedroom-a")
    ls.add_local_storage(project, ls.files_root / "clips")
    ls.connect_ml_backend(project, stack["url"])
    task_ids = ls.import_tasks(
        project,
        [
            {"frames": urls, "expressions": ["the bed", "the window"]},
            {"frames": urls[:5], "expression": "the lamp"},
        ],
    )
    preds = _wait_for_predictions(stack, task_ids)
    interface = LabelInterface(FRAMES_CONFIG)
    for task_id, pred in preds.items():
        assert not interface.validate_prediction({"result": pred["result"]}, return_errors=True)
        n_frames = 8 if task_id == task_ids[0] else 5
        assert pred["result"] and {r["item_index"] for r in pred["result"]} <= set(range(n_frames))
        assert {r["type"] for r in pred["result"]} == {"brushlabels", "polygonlabels"}
        assert all(r["original_width"] == 320 and r["original_height"] == 180 for r in pred["result"])


def test_video_project_from_an_uploaded_file_and_label_hints(stack):
    ls = stack["ls"]
    project = ls.create_project("video-rectangles", VIDEO_CONFIG)
    ls.connect_ml_backend(project, stack["url"])
    uploaded = ls.upload_file(project, _short_video(stack["tmp"] / "bedroom40.mp4"))  # no prompt: the label hint
    video_url = ls.api.get_task(uploaded)["data"]["video"]
    (second,) = ls.import_tasks(project, [{"video": video_url, "prompt": "the lamp; the window"}])
    preds = _wait_for_predictions(stack, [uploaded, second])
    interface = LabelInterface(VIDEO_CONFIG)
    for task_id, pred in preds.items():
        assert not interface.validate_prediction({"result": pred["result"]}, return_errors=True)
        tracks = pred["result"]
        assert len(tracks) == (1 if task_id == uploaded else 2)
        for track in tracks:
            assert track["type"] == "videorectangle" and track["value"]["framesCount"] == 40
            frames = [k["frame"] for k in track["value"]["sequence"]]
            assert frames == sorted(frames) and 1 <= frames[0] and frames[-1] <= 40


def test_retrieve_predictions_action_replaces_placeholders(stack):
    ls = stack["ls"]
    project = ls.create_project("frames-late-connect", FRAMES_CONFIG)
    urls = _real_frames(ls, "clips/bedroom-b", 4)
    ls.add_local_storage(project, ls.files_root / "clips")
    task_ids = ls.import_tasks(
        project, [{"frames": urls, "expression": "the bed"}, {"frames": urls[:2], "expression": "the wall"}]
    )
    ls.connect_ml_backend(project, stack["url"])  # connected after import: no TASKS_CREATED reached the backend
    started = time.perf_counter()
    ls.request_predictions(project)
    assert time.perf_counter() - started < 20  # Label Studio's synchronous /predict call returned quickly
    preds = _wait_for_predictions(stack, task_ids)  # placeholders gone, one real prediction each
    assert all(p["result"] for p in preds.values())
    ls.request_predictions(project)  # again: nothing new is posted (idempotent)
    time.sleep(3)
    assert all(len(_final_predictions(stack, t)) == 1 for t in task_ids)


def test_annotation_reaches_the_backend_and_runs_an_ingest_job(stack):
    ls = stack["ls"]
    project = ls.create_project("frames-annotate", FRAMES_CONFIG)
    urls = _real_frames(ls, "clips/bedroom-c", 3)
    ls.add_local_storage(project, ls.files_root / "clips")
    ls.connect_ml_backend(project, stack["url"])
    (task_id,) = ls.import_tasks(project, [{"frames": urls, "expression": "the bed"}])
    pred = _wait_for_predictions(stack, [task_id])[task_id]
    annotation_id = ls.create_annotation(task_id, pred["result"][:2], parent_prediction=pred["id"])
    stored = (
        stack["tmp"]
        / "model_dir"
        / "data"
        / "annotations"
        / f"project_{project}"
        / f"task_{task_id}"
        / f"annotation_{annotation_id}.json"
    )
    _wait(stored.is_file, 60, "the ingest job to store the annotation")
    from glus_backend.correction_set import CorrectionSet

    corrections = CorrectionSet.of_project(stack["tmp"] / "model_dir", project)
    _wait(lambda: task_id in corrections.task_ids(), 60, "the ingest job to add the task to the correction set")
    assert corrections.entry(task_id)["annotation_id"] == annotation_id
    metrics = requests.get(stack["url"] + "/metrics").json()
    assert metrics["queues"]["ingest"]["finished"] >= 1
    # the project's annotations, exported through the API, read back as a MeViS split
    from glus_backend.cli import main as backend_main
    from model.datasets import open_dataset

    out = stack["tmp"] / "export" / "train"
    assert (
        backend_main(
            [
                "export-mevis",
                "--project",
                str(project),
                "--out",
                str(out),
                "--label-studio-url",
                ls.url,
                "--api-key",
                ls.pat,
            ]
        )
        == 0
    )
    dataset = open_dataset("mevis", out.parent, "train")
    gt = dataset.gt_masks(f"task{task_id}", "0")
    assert gt.shape == (3, 180, 320) and gt.any()
    brush = [r for r in pred["result"][:2] if r["type"] == "brushlabels"]
    for r in brush:
        from glus_backend.rle import rle_to_mask

        assert (gt[r["item_index"]] >= rle_to_mask(r["value"]["rle"], 180, 320)).all()


def test_unsupported_config_is_refused_with_a_clear_message(stack):
    ls = stack["ls"]
    project = ls.create_project(
        "text-only", '<View><Text name="t" value="$text"/><TextArea name="a" toName="t"/></View>'
    )
    response = requests.post(
        ls.url + "/api/ml",
        headers=ls.api.auth_headers(),
        timeout=30,
        json={"project": project, "url": stack["url"], "title": "glus"},
    )
    # Label Studio refuses the connection and shows the user its requests error, "400 Client Error: <reason phrase>
    # for url: .../setup": the backend puts the reason there (Label Studio drops the body)
    assert response.status_code == 400 and "/setup" in response.text, response.text[:2000]
    assert "GLUS backend cannot serve this labeling config" in response.text, response.text[:2000]
    assert "no <Image valueList=...> or <Video> object tag" in response.text, response.text[:2000]
    config = ls.api.get_project(project)["label_config"]
    setup = requests.post(stack["url"] + "/setup", json={"project": f"{project}.0", "schema": config}, timeout=5)
    assert setup.status_code == 400
    assert "cannot serve this labeling config" in setup.json()["error"]
    assert "<Image valueList" in setup.json()["error"] or "<Video" in setup.json()["error"]


@pytest.mark.parametrize("storage", ["local", "upload"])
def test_import_videos_makes_frame_sequence_tasks_that_get_prelabeled(stack, storage):
    from glus_backend.cli import main as backend_main

    ls = stack["ls"]
    project = ls.create_project(f"imported-{storage}", FRAMES_CONFIG)
    ls.connect_ml_backend(project, stack["url"])
    frames_root = ls.files_root / f"imported-{storage}" if storage == "local" else stack["tmp"] / f"frames-{storage}"
    args = [
        "import-videos",
        str(SHARED_VIDEOS / "bedroom.mp4"),
        "--project",
        str(project),
        "-e",
        "the bed",
        "--frame-step",
        "10",
        "--max-side",
        "160",
        "--frames-per-task",
        "8",
        "--storage",
        storage,
        "--frames-root",
        str(frames_root),
        "--label-studio-url",
        ls.url,
        "--api-key",
        ls.pat,
        "--document-root",
        str(ls.files_root),
    ]
    assert backend_main(args) == 0
    tasks = ls.api.export_tasks(project, all_tasks=True)
    assert len(tasks) == 3  # 200 frames, every 10th -> 20 frames -> tasks of 8, 8, 4
    assert sorted(len(t["data"]["frames"]) for t in tasks) == [4, 8, 8]
    assert sorted(t["data"]["start_frame"] for t in tasks) == [0, 80, 160]
    prefix = "/data/local-files/?d=" if storage == "local" else f"/data/upload/{project}/"
    assert all(url.startswith(prefix) for t in tasks for url in t["data"]["frames"])
    preds = _wait_for_predictions(stack, [t["id"] for t in tasks])
    for task in tasks:
        result = preds[task["id"]]["result"]
        assert result and {r["item_index"] for r in result} <= set(range(len(task["data"]["frames"])))
        assert all(r["original_width"] == 160 and r["original_height"] == 90 for r in result)
    # extracted once: a second import reuses the frames on disk
    marker = frames_root / "bedroom" / "frames.json"
    before = marker.stat().st_mtime_ns
    assert backend_main([*args[:-6], "--dry-run", "--frames-root", str(frames_root)]) == 0
    assert marker.stat().st_mtime_ns == before


INTERACTIVE_CONFIG = """<View>
  <Image name="frames" valueList="$frames"/>
  <BrushLabels name="mask" toName="frames"><Label value="Object"/></BrushLabels>
  <TextArea name="prompt" toName="frames" editable="true" placeholder="what to segment"/>
</View>"""


def test_interactive_textarea_context_prompts_new_objects(stack):
    ls = stack["ls"]
    project = ls.create_project("interactive", INTERACTIVE_CONFIG)
    urls = _real_frames(ls, "clips/bedroom-d", 3)
    ls.add_local_storage(project, ls.files_root / "clips")
    ml_id = ls.connect_ml_backend(project, stack["url"], interactive=True)
    (task_id,) = ls.import_tasks(project, [{"frames": urls}])  # no expression field: the label value is the prompt
    first = _wait_for_predictions(stack, [task_id])[task_id]
    assert {r["id"].split("_")[0] for r in first["result"]} == {"0"}  # one object
    context = {
        "result": [
            {"type": "textarea", "from_name": "prompt", "to_name": "frames", "value": {"text": ["the bed; the window"]}}
        ]
    }
    answer = ls.api.request(
        "POST", f"/api/ml/{ml_id}/interactive-annotating", json={"task": task_id, "context": context}
    ).json()
    assert answer["data"]["model_version"] == "pending"  # queued: the worker posts the masks itself

    def two_objects():
        preds = _final_predictions(stack, task_id)
        return [p for p in preds if {r["id"].split("_")[0] for r in p["result"]} == {"0", "1"}]

    (pred,) = _wait(two_objects, 120, "the interactive prediction with two objects")
    assert not LabelInterface(INTERACTIVE_CONFIG).validate_prediction({"result": pred["result"]}, return_errors=True)
