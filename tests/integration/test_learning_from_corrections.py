"""Learning from corrections, end to end on a domain shift, against real components: Label Studio 1.23.2,
Redis, the backend's web process and an RQ worker subprocess serving the **bundled** model.

The shift: the synthetic world's ``recoloured`` domain (every colour word drawn in a colour the shipped model never
saw: pink "red", cyan "blue", ...). Annotators' corrections of K tasks arrive as Label Studio annotations, reach the
backend through Label Studio's own webhooks, are ingested, and the K-th one enqueues a ``train`` job
(``GLUS_TRAIN_EVERY``). The worker fine-tunes (LoRA), the gate compares the candidate with the served model on
the held-out corrected tasks, the registry promotes it, workers and ``/health`` switch to it, the unannotated
tasks are re-labeled with it, and J&F on shifted videos that never reached Label Studio rises.

A second project's training corrections are corrupted (every object's mask replaced by the other objects'); its
candidate is refused by the gate and the served version stays.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests

from .backend_stack import running_backend, wait_for

logger = logging.getLogger(__name__)

CONFIG = """<View>
  <Header value="$expressions"/>
  <Image name="frames" valueList="$frames"/>
  <BrushLabels name="mask" toName="frames"><Label value="Object" background="red"/></BrushLabels>
</View>"""
TRAIN_VIDEOS = 80  # corrected tasks (K); GLUS_HELDOUT_FRACTION of them are held out for the gate
EVAL_VIDEOS = 40  # shifted videos that never reach Label Studio: the before/after measurement
UNANNOTATED = 3  # tasks nobody corrects: re-labeled after the promotion
TRAIN_SETTINGS = {
    "GLUS_TRAIN_STEPS": "400",
    "GLUS_TRAIN_LR": "1e-3",
    "GLUS_TRAIN_BATCH_SIZE": "4",
    "GLUS_HELDOUT_FRACTION": "0.3",  # ~24 tasks: one model's J&F varies a lot between single expressions
    "GLUS_TRAIN_EVERY": str(TRAIN_VIDEOS),
    "GLUS_RELABEL_ON_PROMOTE": "1",
}
MIN_GAIN = 0.05  # J&F points the promoted model must gain on the shifted evaluation videos


@pytest.fixture(scope="module")
def shifted_world(tmp_path_factory) -> Path:
    """The recoloured domain: ``train`` (corrections) and ``test`` (evaluation) splits, MeViS layout."""
    from model.synthetic.dataset import generate_benchmark
    from model.synthetic.world import DOMAINS

    root = tmp_path_factory.mktemp("recoloured")
    sizes = {"train": TRAIN_VIDEOS + UNANNOTATED, "valid": 0, "test": EVAL_VIDEOS}
    generate_benchmark(root, sizes, DOMAINS["recoloured"], progress=False)
    return root


@pytest.fixture(scope="module")
def hitl_stack(label_studio, redis_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("glus-hitl")
    env = {**TRAIN_SETTINGS, "GLUS_CHECKPOINT": ""}  # empty: the bundled model
    with running_backend(label_studio, redis_url, tmp, env) as running:
        yield running


def _videos(root: Path, split: str) -> list[dict]:
    """``[{"name", "frames": [paths], "expressions": [text], "masks": [(T, H, W) bool per expression]}]``."""
    from model.datasets import open_dataset

    dataset = open_dataset("mevis", root, split)
    out = []
    for video in sorted(dataset.videos.values(), key=lambda v: v.video_id):
        out.append(
            {
                "name": video.video_id,
                "frames": [Path(p) for p in dataset.frame_paths(video.video_id)],
                "expressions": [e.text for e in video.expressions],
                "masks": [dataset.gt_masks(video.video_id, e.exp_id).astype(bool) for e in video.expressions],
            }
        )
    return out


def _import(ls, project: int, videos: list[dict], folder: str) -> list[int]:
    """Frame-sequence tasks (local files) with the videos' expressions; returns task ids in the videos' order."""
    root = ls.files_root / folder
    for video in videos:
        (root / video["name"]).mkdir(parents=True, exist_ok=True)
        for frame in video["frames"]:
            shutil.copyfile(frame, root / video["name"] / frame.name)
    ls.add_local_storage(project, root)
    tasks = [
        {
            "frames": [f"/data/local-files/?d={folder}/{v['name']}/{f.name}" for f in v["frames"]],
            "expressions": v["expressions"],
        }
        for v in videos
    ]
    return ls.import_tasks(project, tasks)


def _correction(video: dict, masks: list[np.ndarray]) -> list[dict]:
    """The annotation an annotator submits after correcting our prediction: one brush region per object and
    frame, keeping the prediction's region ids (``<object>_<frame>_brush``), as the editor does."""
    from glus_backend.label_config import parse_label_config
    from glus_backend.results import ObjectTrack, frame_sequence_results

    height, width = masks[0].shape[1:]
    tracks = [ObjectTrack("Object", text, list(m)) for text, m in zip(video["expressions"], masks)]
    results = frame_sequence_results(tracks, parse_label_config(CONFIG), width, height, min_area=1)
    for r in results:
        r["origin"] = "manual"
        r.pop("score", None)
    return results


def _corrupted(masks: list[np.ndarray]) -> list[np.ndarray]:
    """Wrong labels: each expression's mask becomes the union of the masks of the video's other targets."""
    out = []
    for i, m in enumerate(masks):
        others = [o for j, o in enumerate(masks) if j != i]
        wrong = np.logical_or.reduce(others) & ~m if others else np.zeros_like(m)
        out.append(wrong)
    return out


def _train_job(stack, project: int, timeout: float = 1200) -> dict:
    """The project's train job (enqueued by the backend), waited for; its result."""
    from rq.job import Job

    key = f"{stack['prefix']}:train-active:{project}"
    job_id = wait_for(lambda: stack["redis"].get(key), 300, f"a train job for project {project}", interval=1.0)
    job = Job.fetch(job_id.decode(), connection=stack["redis"])

    def finished():
        status = job.get_status(refresh=True)
        return str(getattr(status, "value", status)) in ("finished", "failed")

    try:
        wait_for(finished, timeout, "the train job", interval=2.0)
    except AssertionError:
        raise AssertionError((stack["logs"] / "worker.log").read_text()[-4000:]) from None
    assert job.get_status(refresh=True).value == "finished", job.latest_result().exc_string
    return job.return_value()


def _served(stack) -> str:
    """The version the registry serves (what workers load between jobs)."""
    from glus_backend.registry import ModelRegistry

    return ModelRegistry(stack["tmp"] / "model_dir").current().version


def test_corrections_on_a_domain_shift_train_promote_and_relabel(hitl_stack, shifted_world):
    from model.promotion import score_checkpoint

    stack, ls = hitl_stack, hitl_stack["ls"]
    base_version = stack["version"]
    videos = _videos(shifted_world, "train")
    project = ls.create_project("recoloured corrections", CONFIG)
    ls.connect_ml_backend(project, stack["url"])
    task_ids = _import(ls, project, videos, "recoloured")

    def predicted():
        preds = {t: [p for p in ls.predictions(t) if p.get("model_version") == base_version] for t in task_ids}
        return preds if all(preds.values()) else None

    predictions = wait_for(predicted, 300, "pre-labels of the imported tasks", interval=2.0)
    corrected = task_ids[:TRAIN_VIDEOS]
    for task_id, video in zip(corrected, videos):  # annotators fix the pre-labels
        ls.create_annotation(
            task_id, _correction(video, video["masks"]), parent_prediction=predictions[task_id][0]["id"]
        )

    result = _train_job(stack, project)  # the K-th ingested correction enqueued it
    logger.info("train job: %s", result)
    assert result["promoted"], result
    assert result["candidate_jf"] >= result["current_jf"]
    assert result["parent"] == base_version and result["train_tasks"] + result["heldout_tasks"] == TRAIN_VIDEOS
    new_version = result["version"]
    assert _served(stack) == new_version
    wait_for(
        lambda: requests.get(stack["url"] + "/health", timeout=5).json()["model_version"] == new_version,
        30,
        "/health to report the promoted version",
    )

    # re-labeling: the unannotated tasks get a prediction of the promoted version, the annotated ones do not
    assert result["relabel"] == {"tasks": len(task_ids), "annotated": TRAIN_VIDEOS, "enqueued": UNANNOTATED}
    fresh = task_ids[TRAIN_VIDEOS:]
    wait_for(
        lambda: all(any(p.get("model_version") == new_version for p in ls.predictions(t)) for t in fresh),
        300,
        "re-labeled predictions of the promoted version",
        interval=2.0,
    )
    assert not any(p.get("model_version") == new_version for p in ls.predictions(corrected[0]))

    # J&F on shifted videos that never reached Label Studio, before and after
    versions = stack["tmp"] / "model_dir" / "versions"
    from glus_backend.registry import bundled_checkpoint
    from model.checkpoint import CheckpointChain

    base = CheckpointChain(bundled_checkpoint())
    assert json.loads((versions / new_version / "delta.json").read_text())["parent"] == base_version
    before, n = score_checkpoint(base, shifted_world, "test")
    after, _ = score_checkpoint(base.with_delta(versions / new_version), shifted_world, "test")
    print(
        f"\nrecoloured domain, {n} held-out expressions: J&F before {before:.3f} (bundled {base_version}) -> "
        f"after {after:.3f} ({new_version}); gate on {result['heldout_tasks']} held-out corrected tasks: "
        f"{result['current_jf']:.3f} -> {result['candidate_jf']:.3f}; {result['train_minutes']} min of training"
    )
    assert after >= before + MIN_GAIN, (before, after)


def test_a_candidate_trained_on_corrupted_labels_is_refused(hitl_stack, shifted_world):
    from glus_backend.training import split_tasks

    stack, ls = hitl_stack, hitl_stack["ls"]
    served = _served(stack)
    videos = _videos(shifted_world, "train")[:TRAIN_VIDEOS]
    project = ls.create_project("corrupted corrections", CONFIG)
    ls.connect_ml_backend(project, stack["url"])
    task_ids = _import(ls, project, videos, "recoloured-bad")
    # a careless annotator labels the wrong objects on the training tasks; the held-out tasks stay right
    _, heldout = split_tasks(task_ids, float(TRAIN_SETTINGS["GLUS_HELDOUT_FRACTION"]))
    for task_id, video in zip(task_ids, videos):
        masks = video["masks"] if task_id in heldout else _corrupted(video["masks"])
        ls.create_annotation(task_id, _correction(video, masks))
    result = _train_job(stack, project)
    logger.info("train job on corrupted labels: %s", result)
    assert not result["promoted"], result
    assert result["candidate_jf"] < result["current_jf"] and result["parent"] == served
    assert _served(stack) == served
    assert requests.get(stack["url"] + "/health", timeout=5).json()["model_version"] == served
    registered = json.loads((stack["tmp"] / "model_dir" / "versions" / result["version"] / "version.json").read_text())
    assert registered["gate"]["promoted"] is False
    print(
        f"\ncorrupted labels: candidate J&F {result['candidate_jf']:.3f} < served {result['current_jf']:.3f} on "
        f"{result['heldout_tasks']} held-out tasks: refused, {served} stays"
    )
