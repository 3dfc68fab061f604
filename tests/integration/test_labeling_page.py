"""What the annotator sees, in a real browser (Debian's headless Chromium) on a real Label Studio 1.23.2 with the
backend and a worker (tiny model): the prompt in the Header, the progress of a running job in the prediction tab,
and an object re-propagated from a clicked frame after a one-frame correction. Screenshots go to
``tmp/test-artifacts/labeling-page/`` (not committed)."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from conftest import ROOT

from glus_backend.queues import is_placeholder
from glus_backend.rle import mask_to_rle, rle_to_mask
from glus_backend.settings import Settings

from .backend_stack import tiny_model_backend, ui_budget, wait_for, work_budget, write_frames
from .browser import ensure_browser, labeling_page

SHOTS = ROOT / "tmp" / "test-artifacts" / "labeling-page"
CONFIG = """<View>
  <Header value="$expressions_text"/>
  <Image name="frames" valueList="$frames"/>
  <BrushLabels name="mask" toName="frames">
    <Label value="Bed" hint="the bed" background="#ff3355"/>
    <Label value="Window" hint="the window" background="#3355ff"/>
  </BrushLabels>
  <KeyPointLabels name="propagate" toName="frames" smart="true">
    <Label value="Bed" background="#ff3355"/><Label value="Window" background="#3355ff"/>
  </KeyPointLabels>
</View>"""
PROMPT_TEXT = "Bed: the bed; Window: the window"
W, H = 320, 180


@pytest.fixture(scope="module")
def stack(label_studio, redis_url, tmp_path_factory):
    ensure_browser()  # installs Debian's chromium and playwright when missing (scripts/install_browser.sh)
    with tiny_model_backend(label_studio, redis_url, tmp_path_factory.mktemp("glus-page")) as running:
        yield running


def _project(stack, title: str, tasks: list[dict]) -> tuple[int, list[int]]:
    ls = stack["ls"]
    project = ls.create_project(title, CONFIG)
    ls.connect_ml_backend(project, stack["url"], interactive=True)
    ls.add_local_storage(project, ls.files_root / title)
    return project, ls.import_tasks(project, tasks)


def _final(stack, task_id: int, frames: int) -> dict:
    """The task's prediction once posted, waiting in proportion to the video job's ``frames`` (two objects)."""
    ls = stack["ls"]

    def done():
        preds = ls.predictions(task_id)
        final = [p for p in preds if p["model_version"] == stack["version"]]
        return final[0] if final and not [p for p in preds if is_placeholder(p)] else None

    return wait_for(done, work_budget(frames, 2), f"the prediction of task {task_id}", interval=1.0)


def _until_predictions_show(page, attempts: int = 3) -> None:
    """Now and then (about one load in three here) Label Studio 1.23.2's page loads a task without its predictions
    or annotations, though the API lists them; a reload shows them. Not this backend's doing: reload up to
    ``attempts`` times, and say so when it happens."""
    store = "window.Htx.annotationStore"
    has = f"() => {store}.predictions.length + {store}.annotations.filter(a => a.pk).length"
    for attempt in range(attempts):
        try:
            page.page.wait_for_function(f"({has})() > 0", timeout=ui_budget(15) * 1000)
            return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError
            print(f"the labeling page showed no prediction (load {attempt + 1}): reloading")
            page.reload()
    raise AssertionError(f"the labeling page showed no prediction after {attempts} loads")


def test_the_prompt_header_and_a_running_jobs_progress_show_on_the_labeling_page(stack):
    ls = stack["ls"]
    urls = write_frames(ls, "page-progress", 45, size=(W, H))
    chunks = [{"frames": urls[i : i + 15], "expressions_text": PROMPT_TEXT, "video": "page-progress",
               "start_frame": i, "chunk": i // 15, "chunks": 3} for i in (0, 15, 30)]  # fmt: skip
    project, ids = _project(stack, "page-progress", chunks)
    worker = stack["workers"][0]

    def running():
        return [t for t in ids if any(p["model_version"].startswith("running ") for p in ls.predictions(t))]

    wait_for(running, work_budget(len(urls), 2), "a running placeholder", interval=0.2)
    os.kill(worker.pid, signal.SIGSTOP)  # hold the job mid-way while the page is looked at
    try:
        shown = running()  # the chunks not posted yet when the worker stopped
        assert shown, "the job finished before the worker could be paused"
        with labeling_page(ls, project, shown[-1], screenshots_dir=SHOTS) as page:
            _until_predictions_show(page)
            header = page.page.get_by_text(PROMPT_TEXT, exact=True)
            header.first.wait_for(state="visible", timeout=ui_budget() * 1000)
            tab = page.page.get_by_text("running", exact=False)
            try:
                tab.first.wait_for(state="visible", timeout=ui_budget() * 1000)
            except Exception:
                page.screenshot("progress-not-shown.png")
                state = page.js("() => window.Htx.annotationStore.predictions.map(p => [p.pk, p.createdBy])")
                raise AssertionError(f"no 'running' tab; predictions on the page: {state}; in Label Studio: "
                                     f"{ls.predictions(shown[-1])}") from None
            assert "%" in tab.first.inner_text(), tab.first.inner_text()
            page.screenshot("prompt-header-and-progress.png")
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    for task_id in ids:
        _final(stack, task_id, len(urls))


def test_a_click_after_a_one_frame_correction_repropagates_the_object_on_the_page(stack):
    """The annotator corrects the window on frame 3 (a draft), then clicks frame 3 with the smart KeyPoint and the
    window's label: the page asks the backend, and the window's regions on frames 3-7 are replaced by the
    re-propagated masks (same ids, no duplicates), frame 3 being the correction; frames 0-2 and the bed stay."""
    ls = stack["ls"]
    urls = write_frames(ls, "page-click", 8, size=(W, H))
    project, (task_id,) = _project(stack, "page-click", [{"frames": urls, "expressions_text": PROMPT_TEXT}])
    predicted = _final(stack, task_id, len(urls))
    corrected = np.zeros((H, W), bool)
    corrected[40:140, 60:220] = True
    draft = [r for r in predicted["result"] if r["id"] != "1_3_brush"] + [
        {"id": "1_3_brush", "from_name": "mask", "to_name": "frames", "type": "brushlabels", "item_index": 3,
         "original_width": W, "original_height": H, "image_rotation": 0, "origin": "manual",
         "value": {"format": "rle", "rle": mask_to_rle(corrected), "brushlabels": ["Window"]}}]  # fmt: skip
    covered = np.zeros((H, W), bool)
    for r in draft + predicted["result"]:  # the page may show either
        if r["item_index"] == 3:
            covered |= rle_to_mask(r["value"]["rle"], H, W)
    ys, xs = np.nonzero(~covered)
    assert len(xs), "frame 3 has no free pixel to click"
    pick = len(xs) // 2
    free = ((xs[pick] + 0.5) / W, (ys[pick] + 0.5) / H)
    # the corrected frame 3, saved as the page's autosave saves the annotator's draft
    ls.api.request("POST", f"/api/tasks/{task_id}/drafts", json={"result": draft, "lead_time": 1.0})

    with labeling_page(ls, project, task_id, auto_annotation=True, auto_accept=True, screenshots_dir=SHOTS) as page:
        _until_predictions_show(page)
        ids = {r["id"] for r in predicted["result"]}

        def draft_loaded():
            shown = page.serialize()
            return shown if {r["id"] for r in shown} == ids else None

        try:
            loaded = wait_for(draft_loaded, ui_budget(60), "the predicted regions")
        except AssertionError:
            state = page.js("""() => { const s = window.Htx.annotationStore; return {
                annotations: s.annotations.map(a => [a.pk, a.type, a.results.length, a.draftId]),
                predictions: s.predictions.map(a => [a.pk, a.type, a.results.length]),
                selected: [s.selected.pk, s.selected.type, s.selected.results.length],
                task: window.Htx.task && window.Htx.task.id, url: location.href}; }""")
            page.screenshot("click-failed-to-load.png")
            raise AssertionError(f"the page shows {state}, the prediction has {len(ids)} regions") from None
        before = {r["id"]: r for r in loaded}
        page.goto_item(3)
        page.unselect()
        page.select_label("Window", "propagate")
        page.select_tool("KeyPointTool", smart=True, control="propagate")
        # the backend answers within GLUS_INTERACTIVE_WAIT (the click job: frames 3-7 of one object)
        answer_s = float(stack["env"].get("GLUS_INTERACTIVE_WAIT", Settings.interactive_wait)) + ui_budget()
        with page.page.expect_response(lambda r: "interactive-annotating" in r.url, timeout=answer_s * 1000) as answer:
            page.click(free)  # beside every region (a click on a region would select it)
        offered = {r["id"]: r for r in answer.value.json()["data"]["result"]}
        assert set(offered) == {f"1_{k}_brush" for k in range(3, 8)} & set(offered) and "1_3_brush" in offered

        # a brush region replaced on a page not shown yet keeps serializing its old mask until the page is shown
        # (the editor decodes a brush mask when it draws it): the annotator pages through to check anyway
        for k in range(3, 8):
            page.goto_item(k)

        def applied():
            now = {r["id"]: r for r in page.serialize()}
            return all(np.array_equal(rle_to_mask(now[i]["value"]["rle"], H, W), rle_to_mask(r["value"]["rle"], H, W))
                       for i, r in offered.items() if i in now)  # fmt: skip

        wait_for(applied, ui_budget(60), "the re-propagated regions on the page", interval=0.5)
        page.page.wait_for_timeout(500)
        raw = page.serialize()
        after = {r["id"]: r for r in raw}
        page.goto_item(3)
        page.screenshot("click-frame-4-corrected.png")
        page.goto_item(6)
        page.screenshot("click-frame-7-repropagated.png")
    ids = [r["id"] for r in raw]
    assert len(ids) == len(set(ids)), "regions were duplicated instead of replaced"
    window = {r["item_index"]: rle_to_mask(r["value"]["rle"], H, W) for r in after.values()
              if r["type"] == "brushlabels" and r["value"]["brushlabels"] == ["Window"]}  # fmt: skip
    assert np.array_equal(window[3], corrected)
    assert set(window) >= {4, 5, 6, 7}
    for rid, region in before.items():  # frames 0-2 and the bed: untouched (the page re-encodes shown masks' RLE)
        if region["type"] == "brushlabels" and (region["item_index"] < 3 or rid.startswith("0_")):
            assert after[rid]["value"]["brushlabels"] == region["value"]["brushlabels"], rid
            old, new = (rle_to_mask(r["value"]["rle"], H, W) for r in (region, after[rid]))
            assert np.array_equal(old, new), (rid, int(np.count_nonzero(old ^ new)))
    assert not [r for r in after.values() if r["type"] == "keypointlabels"]  # the click itself is not kept

