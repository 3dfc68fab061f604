"""A Sa2VA-i checkpoint served through the real stack: Label Studio 1.23.2, Redis, the backend's web process and an
RQ worker subprocess. The checkpoint is the parity fixture's tiny network in the released layout, its LLM rigged
to answer ``[SEG]`` (random weights: the test is the plumbing, not the masks' quality).

Shown: the worker reads the family from the folder; predictions land in Label Studio under a version that names
the family (``sa2va-i-<digest>``), with brush masks; a one-frame task (an image-only request, which the Sa2VA
family does not serve) fails with a clear reason in its job status and the other tasks are unaffected.
"""

from __future__ import annotations

import pytest
import requests
from sa2va_fixture import answering_folder

from glus_backend.queues import is_placeholder

from .backend_stack import HINTS_CONFIG, running_backend, wait_for, work_budget, write_frames


@pytest.fixture(scope="module")
def stack(label_studio, redis_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sa2va-stack")
    folder = answering_folder(tmp / "Sa2VA-i-tiny")
    env = {"GLUS_CHECKPOINT": str(folder), "GLUS_SA2VA_KEY_FRAMES": "3"}
    with running_backend(label_studio, redis_url, tmp, env) as running:
        yield running


def test_a_sa2va_i_folder_pre_labels_tasks_in_label_studio(stack):
    ls, version = stack["ls"], stack["version"]
    assert version.startswith("sa2va-i-"), version  # the family is in every prediction's model version
    project = ls.create_project("sa2va-serving", HINTS_CONFIG)
    ls.connect_ml_backend(project, stack["url"])
    urls = write_frames(ls, "sa2va-serving", 6, size=(160, 90))
    ls.add_local_storage(project, ls.files_root / "sa2va-serving")
    good, image_only = ls.import_tasks(project, [{"frames": urls}, {"frames": urls[:1]}])

    def settled():
        preds = ls.predictions(good)
        final = [p for p in preds if p["model_version"] == version]
        return final if final and not [p for p in preds if is_placeholder(p)] else None

    (prediction,) = wait_for(settled, work_budget(2 * 6), f"the prediction of task {good}", interval=1.0)
    results = prediction["result"]
    assert results and {r["type"] for r in results} == {"brushlabels"}
    assert {r["value"]["brushlabels"][0] for r in results} == {"Bed", "Window"}
    assert {r["item_index"] for r in results} <= set(range(6))

    def failed_view():
        for key in stack["redis"].scan_iter(match=f"rq:job:{stack['prefix']}-predict-*"):
            job_id = key.decode().split(":")[-1]
            view = requests.get(f"{stack['url']}/jobs/{job_id}", timeout=10).json()
            if view.get("task_id") == image_only and view.get("status") == "failed":
                return view
        return None

    view = wait_for(failed_view, work_budget(2), "the image-only task's job to fail", interval=1.0)
    assert "image-only requests are not served by the Sa2VA family" in view["error"], view
    assert view["error_kind"] == "permanent"
    assert not [p for p in ls.predictions(image_only) if p["model_version"] == version]
