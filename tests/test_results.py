"""glus_backend.results: masks -> Label Studio results that the SDK's validator accepts and that mean what we want."""

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.label_interface import LabelInterface

from glus_backend.label_config import parse_label_config
from glus_backend.results import (
    ObjectTrack,
    frame_sequence_results,
    mask_to_box,
    mask_to_polygon,
    mean_score,
    prediction,
    video_rectangle_results,
)
from glus_backend.rle import rle_to_mask

W, H = 64, 48

BOTH = """<View><Header value="$prompt"/><Image name="frames" valueList="$frames"/>
<BrushLabels name="mask" toName="frames"><Label value="Dog" background="red"/><Label value="Cat"/></BrushLabels>
<PolygonLabels name="poly" toName="frames"><Label value="Dog" background="blue"/><Label value="Cat"/></PolygonLabels>
</View>"""
BRUSH = """<View><Image name="frames" valueList="$frames"/>
<BrushLabels name="mask" toName="frames"><Label value="Dog"/><Label value="Cat"/></BrushLabels></View>"""
POLYGON = """<View><Image name="frames" valueList="$frames"/>
<PolygonLabels name="poly" toName="frames"><Label value="Dog"/><Label value="Cat"/></PolygonLabels></View>"""
VIDEO = """<View><Labels name="videoLabels" toName="video"><Label value="Dog"/><Label value="Cat"/></Labels>
<Video name="video" value="$video" framerate="25.0"/><VideoRectangle name="box" toName="video"/></View>"""


def rect(x0: int, y0: int, x1: int, y1: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def disc(cx: int, cy: int, r: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    cv2.circle(m, (cx, cy), r, 1, -1)
    return m.astype(bool)


def tracks() -> list[ObjectTrack]:
    """Dog in items 0, 1, 3 (absent in 2 and 4); Cat only in item 2; a tiny speck in item 4 counts as absent."""
    speck = np.zeros((H, W), bool)
    speck[0, 0] = True
    dog = ObjectTrack(
        "Dog",
        "the dog",
        [disc(20, 20, 8), rect(5, 5, 30, 25), None, disc(40, 30, 6), speck],
        scores=[0.9, 0.7, 0.1, 0.8, 0.2],
    )
    cat = ObjectTrack("Cat", "the cat", [None, np.zeros((H, W), bool), rect(40, 10, 60, 40), None, None])
    return [dog, cat]


def validate(xml: str, results: list[dict]) -> list[str]:
    return LabelInterface(xml).validate_prediction(prediction(results, 0.5, "test"), return_errors=True)


@pytest.mark.parametrize("xml", [BOTH, BRUSH, POLYGON], ids=["both", "brush", "polygon"])
def test_frame_sequence_results_validate(xml):
    results = frame_sequence_results(tracks(), parse_label_config(xml), W, H)
    assert results
    assert validate(xml, results) == []  # sdk 2.1.2: a list of error strings, empty when valid


def test_validator_catches_a_wrong_label():
    """The validator used above does check brush labels (so the passing tests mean something)."""
    results = frame_sequence_results(tracks(), parse_label_config(BRUSH), W, H)
    results[0]["value"]["brushlabels"] = ["Horse"]
    assert validate(BRUSH, results)


def test_items_counts_ids_and_fields():
    results = frame_sequence_results(tracks(), parse_label_config(BOTH), W, H)
    keys = [(r["id"], r["type"], r["item_index"]) for r in results]
    assert keys == [
        ("0_0_brush", "brushlabels", 0),
        ("0_0_polygon", "polygonlabels", 0),
        ("0_1_brush", "brushlabels", 1),
        ("0_1_polygon", "polygonlabels", 1),
        ("0_3_brush", "brushlabels", 3),
        ("0_3_polygon", "polygonlabels", 3),
        ("1_2_brush", "brushlabels", 2),
        ("1_2_polygon", "polygonlabels", 2),
    ]
    for r in results:
        assert (r["original_width"], r["original_height"], r["image_rotation"]) == (W, H, 0)
        assert r["to_name"] == "frames" and r["origin"] == "prediction"
        assert r["from_name"] == ("mask" if r["type"] == "brushlabels" else "poly")
    dog, cat = results[0], results[-1]
    assert dog["value"]["brushlabels"] == ["Dog"] and cat["value"]["polygonlabels"] == ["Cat"]
    assert dog["value"]["format"] == "rle" and results[1]["value"]["closed"] is True
    # object score = mean over present frames with a score (items 0, 1, 3); no scores -> no key
    assert dog["score"] == pytest.approx((0.9 + 0.7 + 0.8) / 3)
    assert "score" not in cat


def test_min_area_decides_presence():
    results = frame_sequence_results(tracks(), parse_label_config(BRUSH), W, H, min_area=1)
    assert [r["item_index"] for r in results if r["id"].startswith("0_")] == [0, 1, 3, 4]


def test_brush_rle_decodes_back_to_the_mask():
    track = tracks()[0]
    results = frame_sequence_results([track], parse_label_config(BRUSH), W, H)
    for r in results:
        mask = track.masks[r["item_index"]]
        np.testing.assert_array_equal(rle_to_mask(r["value"]["rle"], H, W), mask)
        np.testing.assert_array_equal(decode_rle(r["value"]["rle"]).reshape(H, W, 4)[..., 3] == 255, mask)


def test_polygon_of_a_rectangle_is_its_pixel_centres_in_percent():
    points = mask_to_polygon(rect(8, 12, 24, 36), W, H)
    xs = sorted({p[0] for p in points})
    ys = sorted({p[1] for p in points})
    assert len(points) == 4
    assert xs == pytest.approx([8.5 / W * 100, 23.5 / W * 100], abs=1e-4)  # rounded to 4 decimals
    assert ys == pytest.approx([12.5 / H * 100, 35.5 / H * 100], abs=1e-4)


def test_polygon_keeps_the_largest_component_and_skips_degenerate_masks():
    m = rect(2, 2, 6, 6) | rect(20, 20, 40, 40)
    points = np.array(mask_to_polygon(m, W, H))
    assert points[:, 0].min() > 20 / W * 100
    assert mask_to_polygon(np.zeros((H, W), bool), W, H) is None
    assert mask_to_polygon(rect(3, 3, 30, 4), W, H) is None  # a 1-px line: < 3 points after simplification
    polygon_only = frame_sequence_results(
        [ObjectTrack("Dog", "a line", [rect(3, 3, 30, 4)])], parse_label_config(POLYGON), W, H
    )
    assert polygon_only == []


def test_label_outside_the_controls_is_an_error():
    with pytest.raises(ValueError, match="'Horse'"):
        frame_sequence_results([ObjectTrack("Horse", "x", [rect(0, 0, 9, 9)])], parse_label_config(BOTH), W, H)
    with pytest.raises(ValueError, match="mask shape"):
        frame_sequence_results([ObjectTrack("Dog", "x", [np.ones((5, 5), bool)])], parse_label_config(BOTH), W, H)


def test_label_of_one_control_only_gets_only_that_result():
    xml = """<View><Image name="frames" valueList="$frames"/>
    <BrushLabels name="mask" toName="frames"><Label value="Dog"/><Label value="Sky"/></BrushLabels>
    <PolygonLabels name="poly" toName="frames"><Label value="Dog"/></PolygonLabels></View>"""
    sky = ObjectTrack("Sky", "the sky", [rect(0, 0, 64, 10)])
    results = frame_sequence_results([sky], parse_label_config(xml), W, H)
    assert [r["type"] for r in results] == ["brushlabels"]
    assert validate(xml, results) == []


# videos ---------------------------------------------------------------------------------------------------------


def visible_frames(sequence: list[dict], frames_count: int) -> set[int]:
    """Frames where the Label Studio editor draws the box (VideoRegion.isInLifespan + getShape, 1-based frames).

    An enabled keyframe lasts until the next keyframe, a disabled one only on its own frame; nothing before the first.
    """
    shown = set()
    for i, kp in enumerate(sequence):
        if not kp["enabled"]:
            end = kp["frame"]
        else:
            end = sequence[i + 1]["frame"] - 1 if i + 1 < len(sequence) else frames_count
        shown.update(range(kp["frame"], end + 1))
    return shown


def video_tracks() -> list[ObjectTrack]:
    box = rect(16, 12, 48, 36)  # x 25 %, y 25 %, w 50 %, h 50 % of 64x48
    present = [0, 1, 2, 5, 8, 9]  # runs 1-3, 6, 9-10 (1-based) in a 12-frame video
    dog = ObjectTrack("Dog", "the dog", [box if t in present else None for t in range(10)], scores=[0.5] * 10)
    cat = ObjectTrack("Cat", "the cat", [None] * 12)
    return [dog, cat]


def test_video_rectangles_validate_and_describe_the_track():
    results = video_rectangle_results(video_tracks(), parse_label_config(VIDEO), frames_count=12, fps=25.0)
    assert validate(VIDEO, results) == []
    assert len(results) == 1  # the cat is never present: no track
    r = results[0]
    assert (r["from_name"], r["to_name"], r["type"], r["id"]) == ("box", "video", "videorectangle", "0_videorectangle")
    value = r["value"]
    assert value["framesCount"] == 12 and value["duration"] == pytest.approx(12 / 25)
    assert value["labels"] == ["Dog"] and r["score"] == pytest.approx(0.5)
    seq = value["sequence"]
    assert [k["frame"] for k in seq] == [1, 2, 3, 6, 9, 10]  # every present frame, 1-based
    assert [k["enabled"] for k in seq] == [True, True, False, False, True, False]  # off at the end of each run
    for k in seq:
        assert (k["x"], k["y"], k["width"], k["height"], k["rotation"]) == (25.0, 25.0, 50.0, 50.0, 0)
        assert k["time"] == pytest.approx((k["frame"] - 1) / 25)
    assert visible_frames(seq, 12) == {1, 2, 3, 6, 9, 10}


def test_video_track_reaching_the_last_frame_stays_enabled():
    box = rect(0, 0, 8, 8)
    results = video_rectangle_results(
        [ObjectTrack("Dog", "d", [None, box, box])], parse_label_config(VIDEO), frames_count=3, fps=10.0
    )
    seq = results[0]["value"]["sequence"]
    assert [(k["frame"], k["enabled"]) for k in seq] == [(2, True), (3, True)]
    assert visible_frames(seq, 3) == {2, 3}


def test_video_box_percentages():
    mask = rect(10, 6, 30, 18, h=60, w=100)
    assert mask_to_box(mask) == (10.0, 10.0, 20.0, 20.0)
    assert mask_to_box(np.zeros((4, 4), bool)) is None
    results = video_rectangle_results(
        [ObjectTrack("Cat", "c", [mask])], parse_label_config(VIDEO), frames_count=1, fps=30.0
    )
    k = results[0]["value"]["sequence"][0]
    assert (k["x"], k["y"], k["width"], k["height"], k["enabled"]) == (10.0, 10.0, 20.0, 20.0, True)


def test_video_accepts_boxes_already_reduced_from_masks():
    """The worker keeps only mask_to_box(mask) per frame for videos; the result must be the same as from masks."""
    cfg = parse_label_config(VIDEO)
    from_masks = video_rectangle_results(video_tracks(), cfg, frames_count=12, fps=25.0)
    boxed = [
        ObjectTrack(t.label, t.expression, [None if m is None else mask_to_box(m) for m in t.masks], t.scores)
        for t in video_tracks()
    ]
    assert video_rectangle_results(boxed, cfg, frames_count=12, fps=25.0) == from_masks
    assert mean_score(boxed) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2-D"):
        frame_sequence_results([ObjectTrack("Dog", "d", [(1.0, 2.0, 3.0, 4.0)])], parse_label_config(BRUSH), W, H)
    with pytest.raises(ValueError, match="frame entry"):
        video_rectangle_results([ObjectTrack("Dog", "d", [(1.0, 2.0)])], cfg, 2, 25.0)


def test_video_without_palette_has_no_labels_and_validates():
    xml = '<View><Video name="v" value="$video"/><VideoRectangle name="r" toName="v"/></View>'
    results = video_rectangle_results([ObjectTrack("", "x", [rect(0, 0, 8, 8)])], parse_label_config(xml), 1, 30.0)
    assert "labels" not in results[0]["value"]
    assert validate(xml, results) == []


def test_video_errors():
    cfg = parse_label_config(VIDEO)
    with pytest.raises(ValueError, match="3 masks for a 2-frame video"):
        video_rectangle_results([ObjectTrack("Dog", "d", [None] * 3)], cfg, 2, 25.0)
    with pytest.raises(ValueError, match="'Horse'"):
        video_rectangle_results([ObjectTrack("Horse", "d", [rect(0, 0, 8, 8)])], cfg, 2, 25.0)
    with pytest.raises(ValueError, match="fps"):
        video_rectangle_results([], cfg, 2, 0.0)
    with pytest.raises(ValueError, match="video config"):
        video_rectangle_results([], parse_label_config(BRUSH), 2, 25.0)
    with pytest.raises(ValueError, match="frame-sequence config"):
        frame_sequence_results([], cfg, W, H)


def test_prediction_and_mean_score():
    ts = tracks()
    assert mean_score(ts) == pytest.approx((0.9 + 0.7 + 0.8) / 3)  # the cat has no scores
    assert mean_score([ts[1]]) == 0.0
    assert mean_score([ObjectTrack("Dog", "d", [rect(0, 0, 9, 9)], scores=[3.0])]) == 1.0  # clipped to LS's range
    pred = prediction([{"a": 1}], 0.25, "glus-1")
    assert pred == {"result": [{"a": 1}], "score": 0.25, "model_version": "glus-1"}
