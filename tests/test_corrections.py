"""Annotators' results -> per-object masks -> MeViS layout, read back with the project's own MeViS reader."""

import numpy as np

from glus_backend.correction_set import CorrectionSet
from glus_backend.corrections import decode_annotation, latest_annotation
from glus_backend.label_config import parse_label_config
from glus_backend.prompts import extract_prompts
from glus_backend.results import ObjectTrack, frame_sequence_results
from glus_backend.rle import encode_flat, mask_to_rle
from model.datasets import open_dataset

CONFIG = """<View><Image name="frames" valueList="$frames"/>
<BrushLabels name="mask" toName="frames"><Label value="Object"/><Label value="Other"/></BrushLabels>
<PolygonLabels name="poly" toName="frames"><Label value="Object"/><Label value="Other"/></PolygonLabels></View>"""
H, W = 30, 40


def _square(y, x, s=8):
    m = np.zeros((H, W), bool)
    m[y : y + s, x : x + s] = True
    return m


def _brush(id_, item, mask, label="Object", rle=None):
    return {
        "id": id_,
        "type": "brushlabels",
        "from_name": "mask",
        "to_name": "frames",
        "item_index": item,
        "original_width": W,
        "original_height": H,
        "value": {"format": "rle", "rle": rle or mask_to_rle(mask), "brushlabels": [label]},
    }


def test_regions_are_assigned_to_objects_and_joined():
    config = parse_label_config(CONFIG)
    data = {
        "frames": ["a", "b", "c"],
        "expressions": [{"text": "the left one", "label": "Object"}, {"text": "the right one", "label": "Object"}],
    }
    prompts = extract_prompts(data, config)
    predicted = frame_sequence_results(
        [
            ObjectTrack("Object", "the left one", [_square(2, 2), None, None]),
            ObjectTrack("Object", "the right one", [None, _square(10, 20), None]),
        ],
        config,
        W,
        H,
    )
    # an annotator's anti-aliased stroke on a new region: alpha 200 inside, 60 on a fringe (below 128)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[_square(20, 5, 4)] = 200
    rgba[_square(20, 9, 2)] = 60
    stroke = _brush("newregion1", 0, None, rle=encode_flat(rgba.ravel()))
    decoded = decode_annotation([*predicted, stroke], config, prompts)
    assert decoded.unassigned == ["newregion1"]  # label "Object" is carried by both objects: not guessed
    left, right = decoded.objects
    assert np.array_equal(left.frames[0], _square(2, 2)) and set(left.frames) == {0}
    assert np.array_equal(right.frames[1], _square(10, 20))
    single = decode_annotation([stroke, _brush("x", 2, _square(0, 0))], config, prompts[:1])
    assert np.array_equal(single.objects[0].frames[0], _square(20, 5, 4))  # fringe below 128 dropped
    assert set(single.objects[0].frames) == {0, 2}


def _task(task_id, annotations, expression="Object: the dog"):
    return {"id": task_id, "data": {"frames": ["a", "b", "c"], "expression": expression}, "annotations": annotations}


FRAMES = [np.full((H, W, 3), 100 + 10 * i, np.uint8) for i in range(3)]


def test_correction_set_round_trip_through_the_mevis_reader(tmp_path):
    task = _task(
        7,
        [
            {"id": 1, "updated_at": "2026-01-01", "result": [_brush("r", 0, _square(0, 0))]},
            {
                "id": 2,
                "updated_at": "2026-02-01",
                "result": [_brush("s", 1, _square(5, 5)), _brush("t", 1, _square(9, 9))],
            },
            {"id": 3, "updated_at": "2026-03-01", "was_cancelled": True, "result": []},
        ],
    )
    assert latest_annotation(task)["id"] == 2
    corrections = CorrectionSet(tmp_path / "train")
    loads = []
    summary = corrections.rebuild([task, _task(8, [])], CONFIG, lambda t: loads.append(t["id"]) or FRAMES)
    assert (summary["tasks"], summary["expressions"], summary["written"]) == (1, 1, 1) and loads == [7]
    dataset = open_dataset("mevis", tmp_path, "train")
    video = dataset.video("task7")
    assert list(video.frame_names) == ["00000", "00001", "00002"] and video.expressions[0].text == "the dog"
    gt = dataset.gt_masks("task7", "0")
    assert not gt[0].any() and not gt[2].any()
    assert np.array_equal(gt[1], _square(5, 5) | _square(9, 9))
    # the same export again: nothing is fetched or decoded again
    assert corrections.rebuild([task], CONFIG, lambda t: loads.append(t["id"]) or FRAMES)["written"] == 0
    assert loads == [7]


def test_a_resubmitted_annotation_replaces_the_task_and_a_deleted_one_removes_it(tmp_path):
    corrections = CorrectionSet.of_project(tmp_path, 3)
    first = {"id": 10, "updated_at": "1", "result": [_brush("a", 0, _square(0, 0))]}
    corrections.put(_task(1, [first]), first, CONFIG, FRAMES)
    other = {"id": 11, "updated_at": "1", "result": [_brush("b", 2, _square(3, 3))]}
    corrections.put(_task(2, [other], "Object: the cat"), other, CONFIG, FRAMES)
    again = {"id": 12, "updated_at": "2", "result": [_brush("c", 1, _square(20, 30))]}  # a new submission of task 1
    corrections.put(_task(1, [first, again]), again, CONFIG, FRAMES)
    assert corrections.task_ids() == [1, 2] and corrections.root == tmp_path / "data" / "mevis" / "project_3"
    dataset = open_dataset("mevis", corrections.root.parent, corrections.root.name)
    assert sorted(dataset.videos) == ["task1", "task2"]
    gt = dataset.gt_masks("task1", "0")
    assert np.array_equal(gt[1], _square(20, 30)) and not gt[0].any()  # the old mask is gone
    # a training run's split links the frames; removing the task from the set later leaves the split whole
    split = corrections.write_split(tmp_path / "snap" / "heldout", [1])
    assert corrections.remove_annotation(10) == []  # superseded: not the task's annotation any more
    assert corrections.remove_annotation(12) == [1] and corrections.task_ids() == [2]
    assert sorted(open_dataset("mevis", corrections.root.parent, corrections.root.name).videos) == ["task2"]
    held = open_dataset("mevis", split.parent, "heldout")
    assert sorted(held.videos) == ["task1"] and len(held.frame_paths("task1")) == 3
    assert np.array_equal(held.gt_masks("task1", "0")[1], _square(20, 30))
    # the export has only task 2 now: a rebuild keeps the set in line (task 1's frames were removed above)
    assert corrections.rebuild([_task(2, [other], "Object: the cat")], CONFIG, lambda t: FRAMES)["removed"] == 0
