"""The annotator's side against a real Label Studio 1.23.2, Redis and a worker subprocess (tiny model):

* ``import-videos`` without expressions takes the labels' hints, writes ``expressions_text`` for the Header, joins a
  short tail to the task before it, and refuses an expression that names no single label before importing anything;
* the chunk tasks of one video are pre-labeled by one job over the whole video, each chunk posted with the same
  object -> label mapping; asking again for a chunk answers its stored prediction and runs nothing;
* while a job runs, its tasks show a ``running N%`` placeholder in Label Studio.
"""

from __future__ import annotations

import os
import re
import signal

import pytest
import requests
from conftest import SHARED_VIDEOS
from rq.registry import FinishedJobRegistry

from glus_backend.queues import is_placeholder

from .backend_stack import HINTS_CONFIG, tiny_model_backend, wait_for, work_budget, write_frames


@pytest.fixture(scope="module")
def stack(label_studio, redis_url, tmp_path_factory):
    with tiny_model_backend(label_studio, redis_url, tmp_path_factory.mktemp("glus-annotator")) as running:
        yield running


def _import(stack, project: int, *extra: str, frames_per_task: int = 6) -> int:
    from glus_backend.cli import main as backend_main

    ls = stack["ls"]
    return backend_main([
        "import-videos", str(SHARED_VIDEOS / "bedroom.mp4"), "--project", str(project), "--frame-step", "10",
        "--max-side", "160", "--frames-per-task", str(frames_per_task), "--frames-root",
        str(ls.files_root / f"annotator-{project}"), "--label-studio-url", ls.url, "--api-key", ls.pat,
        "--document-root", str(ls.files_root), *extra,
    ])  # fmt: skip


def _frames(stack, task_ids: list[int]) -> int:
    """The frames of these tasks (the work their predictions take)."""
    return sum(len(stack["ls"].api.request("GET", f"/api/tasks/{t}").json()["data"]["frames"]) for t in task_ids)


def _final(stack, task_ids: list[int], objects: int = 2) -> dict[int, dict]:
    """Each task's prediction of the served version once no placeholder is left; the wait grows with the frames."""
    ls, version = stack["ls"], stack["version"]
    budget = work_budget(_frames(stack, task_ids), objects)

    def done():
        found = {t: ls.predictions(t) for t in task_ids}
        ready = {t: [p for p in preds if p.get("model_version") == version] for t, preds in found.items()}
        waiting = [p for preds in found.values() for p in preds if is_placeholder(p)]
        return {t: preds[0] for t, preds in ready.items()} if all(ready.values()) and not waiting else None

    try:
        return wait_for(done, budget, f"predictions of tasks {task_ids}", interval=1.0)
    except AssertionError:
        raise AssertionError((stack["logs"] / "worker.log").read_text()[-4000:]) from None


def _video_jobs(stack, video: str) -> list:
    from rq.job import Job

    registry = FinishedJobRegistry(f"{stack['prefix']}-predict", connection=stack["redis"])
    jobs = [Job.fetch(i, connection=stack["redis"]) for i in registry.get_job_ids()]
    return [j for j in jobs if j.meta.get("video") == video]


def test_hints_import_and_one_whole_video_job_for_the_chunk_tasks(stack):
    ls = stack["ls"]
    project = ls.create_project("hints-chunks", HINTS_CONFIG)
    ls.connect_ml_backend(project, stack["url"])
    assert _import(stack, project) == 0  # no -e: the label hints are the prompts
    tasks = sorted(ls.api.export_tasks(project, all_tasks=True), key=lambda t: t["data"]["start_frame"])
    # 200 frames, every 10th -> 20 frames -> 6, 6, 6 + a tail of 2, which joins the last task
    assert [len(t["data"]["frames"]) for t in tasks] == [6, 6, 8]
    assert [t["data"]["start_frame"] for t in tasks] == [0, 60, 120]
    for task in tasks:
        assert "expressions" not in task["data"] and task["data"]["chunks"] == 3
        assert task["data"]["expressions_text"] == "Bed: the bed; Window: the window"
    ids = [t["id"] for t in tasks]
    preds = _final(stack, ids)

    # one job ran the whole video (it returns a moment after its last chunk is posted)
    (job,) = wait_for(lambda: _video_jobs(stack, "bedroom"), work_budget(0), "the video job to finish")
    summary = job.return_value()
    assert summary["task_ids"] == ids and summary["frames"] == 20 and summary["segmented"] is True
    assert summary["predictions"] == {str(t): preds[t]["id"] for t in ids}
    for task, pred in zip(tasks, preds.values()):
        labels = {r["id"].split("_")[0]: r["value"]["brushlabels"][0] for r in pred["result"]}
        assert labels and labels.items() <= {"0": "Bed", "1": "Window"}.items()  # the same object -> label everywhere
        assert {r["item_index"] for r in pred["result"]} <= set(range(len(task["data"]["frames"])))

    # asking again for one chunk answers its stored prediction; nothing runs again
    config = ls.api.get_project(project)["label_config"]
    answer = requests.post(stack["url"] + "/predict", timeout=30,
                           json={"tasks": [tasks[1]], "label_config": config, "project": f"{project}.0"}).json()
    assert answer["results"][0]["result"] == preds[ids[1]]["result"]
    assert len(_video_jobs(stack, "bedroom")) == 1
    assert requests.get(stack["url"] + "/metrics", timeout=5).json()["queues"]["predict"]["queued"] == 0


def test_an_expression_naming_no_single_label_is_refused_before_anything_is_imported(stack):
    ls = stack["ls"]
    project = ls.create_project("ambiguous", HINTS_CONFIG)
    with pytest.raises(SystemExit, match="the expression 'the yellow ball' names none of the labels 'Bed', 'Window'"):
        _import(stack, project, "-e", "the yellow ball")
    assert ls.api.export_tasks(project, all_tasks=True) == []
    assert _import(stack, project, "-e", "Window: the yellow ball", "--dry-run") == 0  # explicit: accepted


def test_a_running_job_shows_its_progress_on_the_tasks(stack):
    """The worker is paused (SIGSTOP) mid-job, so the state is seen for sure, then resumed."""
    ls = stack["ls"]
    project = ls.create_project("progress", HINTS_CONFIG)
    ls.connect_ml_backend(project, stack["url"])
    assert _import(stack, project, frames_per_task=10) == 0
    ids = sorted(t["id"] for t in ls.api.export_tasks(project, all_tasks=True))
    worker = stack["workers"][0]

    def running_shown():
        shown = [p for t in ids for p in ls.predictions(t) if is_placeholder(p)]
        return shown if any(p["model_version"].startswith("running ") for p in shown) else None

    shown = wait_for(running_shown, work_budget(_frames(stack, ids), 2), "a running placeholder", interval=0.2)
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        shown = running_shown() or shown
        assert all(p["result"] == [] for p in shown)
        assert all(re.fullmatch(r"pending|running \d{1,3}%", p["model_version"]) for p in shown), shown
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    _final(stack, ids)  # and the placeholders are gone once the predictions are posted


def test_a_submitted_correction_is_repropagated_to_the_later_frames(stack):
    """An annotation that moves object 0's mask on frame 3 brings a new prediction: frames 0-3 as annotated, the
    object re-propagated from the correction on frames 4-7, the other object as annotated."""
    import numpy as np

    from glus_backend.rle import mask_to_rle, rle_to_mask


    ls = stack["ls"]
    project = ls.create_project("correct-one-frame", HINTS_CONFIG)
    ls.connect_ml_backend(project, stack["url"])
    urls = write_frames(ls, "correct-one-frame", 8, size=(160, 90))
    ls.add_local_storage(project, ls.files_root / "correct-one-frame")
    (task_id,) = ls.import_tasks(project, [{"frames": urls}])  # the hints are the prompts: Bed, Window
    first = _final(stack, [task_id])[task_id]
    corrected = np.zeros((90, 160), bool)
    corrected[20:60, 30:90] = True
    result = [r for r in first["result"] if not (r["id"].startswith("0_") and r["item_index"] == 3)]
    result.append({"id": "0_3_brush", "from_name": "mask", "to_name": "frames", "type": "brushlabels",
                   "item_index": 3, "original_width": 160, "original_height": 90, "image_rotation": 0,
                   "origin": "manual", "value": {"format": "rle", "rle": mask_to_rle(corrected),
                                                 "brushlabels": ["Bed"]}})  # fmt: skip
    ls.create_annotation(task_id, result, parent_prediction=first["id"])
    offered = wait_for(
        lambda: [p for p in ls.predictions(task_id) if p["model_version"] == stack["version"] + " + corrections"],
        work_budget(8), "the re-propagated prediction", interval=1.0,  # the ingest job, then frames 4-7 of one object
    )[0]

    def masks(preds_result, obj):
        return {r["item_index"]: rle_to_mask(r["value"]["rle"], 90, 160) for r in preds_result
                if r["id"].startswith(f"{obj}_")}  # fmt: skip

    annotated, now = masks(result, 0), masks(offered["result"], 0)
    for t in range(3):  # before the correction: as annotated
        assert np.array_equal(now.get(t, np.zeros((90, 160), bool)), annotated.get(t, np.zeros((90, 160), bool)))
    assert np.array_equal(now[3], corrected)
    assert set(now) >= {4, 5, 6, 7}  # re-propagated from the correction (the tiny model keeps the object)
    assert masks(offered["result"], 1).keys() == masks(result, 1).keys()  # the other object as annotated


CLICK_CONFIG = """<View>
  <Header value="$expressions_text"/>
  <Image name="frames" valueList="$frames"/>
  <BrushLabels name="mask" toName="frames">
    <Label value="Bed" hint="the bed" background="red"/><Label value="Window" hint="the window" background="blue"/>
  </BrushLabels>
  <KeyPointLabels name="propagate" toName="frames" smart="true">
    <Label value="Bed" background="red"/><Label value="Window" background="blue"/>
  </KeyPointLabels>
</View>"""


def _click(item: int, label: str, x: float, y: float) -> dict:
    """What the labeling page sends for a smart KeyPoint click (captured from Label Studio 1.23.2)."""
    return {"original_width": 160, "original_height": 90, "image_rotation": 0, "item_index": item,
            "value": {"x": x, "y": y, "width": 0.2, "labels": [label], "keypointlabels": [label]},
            "is_positive": True, "id": f"click{item}", "from_name": "propagate", "to_name": "frames",
            "type": "keypointlabels", "origin": "manual"}  # fmt: skip


def test_an_interactive_click_repropagates_the_object_from_the_clicked_frame(stack):
    """Through Label Studio's interactive endpoint, as the page calls it: a click on frame 3 answers the clicked
    object on frames 3..7 with the ids of its predicted regions (the page replaces them); with the annotator's
    corrected region on frame 3 in their draft, that region seeds the memory and comes back unchanged."""
    import numpy as np

    from glus_backend.rle import mask_to_rle, rle_to_mask


    ls = stack["ls"]
    project = ls.create_project("click-to-propagate", CLICK_CONFIG)
    ml_id = ls.connect_ml_backend(project, stack["url"], interactive=True)
    urls = write_frames(ls, "click-to-propagate", 8, size=(160, 90))
    ls.add_local_storage(project, ls.files_root / "click-to-propagate")
    (task_id,) = ls.import_tasks(project, [{"frames": urls}])
    _final(stack, [task_id])

    def interactive(click):
        answer = ls.api.request("POST", f"/api/ml/{ml_id}/interactive-annotating",
                                json={"task": task_id, "context": {"result": [click]}}).json()  # fmt: skip
        assert "errors" not in answer, answer
        return answer["data"]

    clicked = interactive(_click(3, "Window", 50.0, 40.0))
    assert clicked["model_version"] == stack["version"] and clicked["result"]
    assert {r["item_index"] for r in clicked["result"]} <= set(range(3, 8))
    assert {r["id"] for r in clicked["result"]} == {f"1_{r['item_index']}_brush" for r in clicked["result"]}

    corrected = np.zeros((90, 160), bool)
    corrected[25:70, 40:110] = True
    draft = [{"id": "1_3_brush", "from_name": "mask", "to_name": "frames", "type": "brushlabels", "item_index": 3,
              "original_width": 160, "original_height": 90, "image_rotation": 0, "origin": "manual",
              "value": {"format": "rle", "rle": mask_to_rle(corrected), "brushlabels": ["Window"]}}]  # fmt: skip
    ls.api.request("POST", f"/api/tasks/{task_id}/drafts", json={"result": draft, "lead_time": 1.0})
    seeded = interactive(_click(3, "Window", 50.0, 50.0))  # inside the corrected region
    frame3 = [r for r in seeded["result"] if r["item_index"] == 3]
    assert len(frame3) == 1 and np.array_equal(rle_to_mask(frame3[0]["value"]["rle"], 90, 160), corrected)
    assert {r["item_index"] for r in seeded["result"]} >= {3, 4}
