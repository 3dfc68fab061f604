"""Annotators' results -> per-object masks -> MeViS layout, read back with the project's own MeViS reader."""

import numpy as np

from glus_backend.corrections import decode_annotation, export_mevis, latest_annotation
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


def test_export_mevis_round_trip(tmp_path):
    frames = [np.full((H, W, 3), 100 + 10 * i, np.uint8) for i in range(3)]
    task = {
        "id": 7,
        "data": {"frames": ["a", "b", "c"], "expression": "the dog"},
        "annotations": [
            {"id": 1, "updated_at": "2026-01-01", "result": [_brush("r", 0, _square(0, 0))]},
            {
                "id": 2,
                "updated_at": "2026-02-01",
                "result": [_brush("s", 1, _square(5, 5)), _brush("t", 1, _square(9, 9))],
            },
            {"id": 3, "updated_at": "2026-03-01", "was_cancelled": True, "result": []},
        ],
    }
    assert latest_annotation(task)["id"] == 2
    summary = export_mevis(
        [task, {"id": 8, "data": {}, "annotations": []}], CONFIG, tmp_path / "train", lambda t: frames
    )
    assert summary["tasks"] == 1 and summary["expressions"] == 1
    dataset = open_dataset("mevis", tmp_path, "train")
    video = dataset.video("task7")
    assert list(video.frame_names) == ["00000", "00001", "00002"] and video.expressions[0].text == "the dog"
    gt = dataset.gt_masks("task7", "0")
    assert not gt[0].any() and not gt[2].any()
    assert np.array_equal(gt[1], _square(5, 5) | _square(9, 9))
