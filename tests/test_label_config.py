"""glus_backend.label_config: which object tag and controls a labeling config lets the backend fill."""

import pytest

from glus_backend.label_config import (
    ControlSpec,
    LabelOption,
    UnsupportedLabelConfig,
    parse_label_config,
    result_labels,
)

FRAMES_BOTH = """
<View>
  <Header value="$prompt"/>
  <Image name="frames" valueList="$frames"/>
  <BrushLabels name="mask" toName="frames"><Label value="Object" background="red"/></BrushLabels>
  <PolygonLabels name="poly" toName="frames"><Label value="Object" background="blue"/></PolygonLabels>
</View>
"""

VIDEO = """
<View>
  <Header value="$prompt"/>
  <Labels name="videoLabels" toName="video" allowEmpty="true">
    <Label value="Car" hint="the red car"/><Label value="Person"/>
  </Labels>
  <Video name="video" value="$video" framerate="25.0"/>
  <VideoRectangle name="box" toName="video"/>
</View>
"""


def test_frame_sequence_with_brush_and_polygon():
    cfg = parse_label_config(FRAMES_BOTH)
    assert (cfg.kind, cfg.object_name, cfg.value_key) == ("frames", "frames", "frames")
    assert cfg.brush == ControlSpec("mask", "brushlabels", "frames", (LabelOption("Object"),))
    assert cfg.polygon == ControlSpec("poly", "polygonlabels", "frames", (LabelOption("Object"),))
    assert cfg.video_rectangle is None and cfg.labels is None and cfg.framerate is None
    assert cfg.textareas == ()
    assert cfg.label_options() == (LabelOption("Object"),)


def test_frame_sequence_brush_only():
    cfg = parse_label_config(
        '<View><Image name="img" valueList="$images"/>'
        '<BrushLabels name="b" toName="img"><Label value="A"/><Label value="B"/></BrushLabels></View>'
    )
    assert cfg.kind == "frames" and cfg.value_key == "images"
    assert cfg.brush.name == "b" and cfg.polygon is None
    assert [o.value for o in cfg.label_options()] == ["A", "B"]


def test_frame_sequence_polygon_only():
    cfg = parse_label_config(
        '<View><Image name="img" valueList="$images"/>'
        '<PolygonLabels name="p" toName="img"><Label value="A"/></PolygonLabels></View>'
    )
    assert cfg.brush is None and cfg.polygon.name == "p" and cfg.polygon.tag == "polygonlabels"


def test_video_with_rectangle_and_labels():
    cfg = parse_label_config(VIDEO)
    assert (cfg.kind, cfg.object_name, cfg.value_key, cfg.framerate) == ("video", "video", "video", 25.0)
    assert cfg.video_rectangle == ControlSpec("box", "videorectangle", "video", ())
    assert cfg.labels.name == "videoLabels" and cfg.labels.tag == "labels"
    assert cfg.label_options() == (LabelOption("Car", "the red car"), LabelOption("Person"))
    assert cfg.brush is None and cfg.polygon is None


def test_video_without_labels_palette_or_framerate():
    cfg = parse_label_config('<View><Video name="v" value="$video"/><VideoRectangle name="r" toName="v"/></View>')
    assert cfg.labels is None and cfg.framerate is None and cfg.label_options() == ()


def test_nested_views_hints_and_textareas():
    cfg = parse_label_config(
        """
        <View>
          <View style="display:flex">
            <View><Image name="seq" valueList="$frames" zoom="true"/></View>
            <View>
              <View>
                <BrushLabels name="mask" toName="seq">
                  <Label value="Dog" hint="the dog on the left" background="red"/>
                  <Label value="Ball" hint="  "/>
                </BrushLabels>
              </View>
              <PolygonLabels name="poly" toName="seq"><Label value="Ball" hint="the ball"/></PolygonLabels>
            </View>
          </View>
          <TextArea name="prompt_area" toName="seq" editable="true"/>
          <TextArea name="notes" toName="seq"/>
        </View>
        """
    )
    assert cfg.object_name == "seq" and cfg.brush.name == "mask" and cfg.polygon.name == "poly"
    # a blank hint counts as none; a later control fills in the missing hint of the same value
    assert cfg.brush.labels == (LabelOption("Dog", "the dog on the left"), LabelOption("Ball", None))
    assert cfg.label_options() == (LabelOption("Dog", "the dog on the left"), LabelOption("Ball", "the ball"))
    assert [t.name for t in cfg.textareas] == ["prompt_area", "notes"]
    assert all(t.tag == "textarea" for t in cfg.textareas)


def test_first_object_with_a_fillable_control_is_served():
    xml = (
        '<View><Video name="v" value="$video"/>'  # no VideoRectangle: skipped
        '<Image name="a" valueList="$frames"/><BrushLabels name="b" toName="a"><Label value="X"/></BrushLabels>'
        '<Video name="v2" value="$video2"/><VideoRectangle name="r" toName="v2"/></View>'
    )
    cfg = parse_label_config(xml)
    assert cfg.kind == "frames" and cfg.object_name == "a"


def test_to_name_with_several_targets_and_case_insensitive_tags():
    cfg = parse_label_config(
        '<view><image name="a" valueList="$frames"/><brushlabels name="b" toName="x, a"><label value="X"/>'
        "</brushlabels></view>"
    )
    assert cfg.object_name == "a" and cfg.brush.tag == "brushlabels" and cfg.brush.to_name == "x, a"


def test_framerate_from_task_data_is_unknown():
    cfg = parse_label_config(
        '<View><Video name="v" value="$video" framerate="$fps"/><VideoRectangle name="r" toName="v"/></View>'
    )
    assert cfg.framerate is None


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        ('<View><Text name="t" value="$text"/></View>', "no <Image valueList=...> or <Video> object tag"),
        (
            '<View><Image name="img" value="$image"/>'
            '<BrushLabels name="b" toName="img"><Label value="A"/></BrushLabels></View>',
            "single images are not served; use valueList",
        ),
        (
            '<View><Image name="img" valueList="$frames"/>'
            '<BrushLabels name="b" toName="missing"><Label value="A"/></BrushLabels></View>',
            "<BrushLabels name='b'> points to 'missing', which is not an <Image valueList>",
        ),
        (
            '<View><Image name="img" valueList="$frames"/><BrushLabels name="b" toName="img"/></View>',
            "<BrushLabels name='b'> has no <Label> children",
        ),
        (
            '<View><Image name="img" valueList="$frames"/><PolygonLabels name="p" toName="img"></PolygonLabels></View>',
            "<PolygonLabels name='p'> has no <Label> children",
        ),
        ('<View><Image name="img" valueList="$frames"/>', "malformed labeling config XML"),
        (
            '<View><Labels name="l" toName="v"><Label value="A"/></Labels><Video name="v" value="$video"/></View>',
            "<Video name='v'> has no <VideoRectangle toName='v'>",
        ),
        (
            '<View><Image name="img" valueList="$frames"/><Choices name="c" toName="img"/></View>',
            "no control tag the backend can fill: add <BrushLabels>, <PolygonLabels> (frame sequences) or "
            "<VideoRectangle> (videos)",
        ),
        (
            '<View><Video name="v" value="$video" framerate="fast"/><VideoRectangle name="r" toName="v"/></View>',
            "framerate='fast' is not a number",
        ),
        (
            '<View><Image name="img" valueList="frames"/><BrushLabels name="b" toName="img"><Label value="A"/>'
            "</BrushLabels></View>",
            "valueList='frames' must reference a task data field as '$key'",
        ),
        (
            '<View><Image name="img" valueList="$f"/><BrushLabels toName="img"><Label value="A"/></BrushLabels></View>',
            "<BrushLabels> has no name attribute",
        ),
        (
            '<View><Video name="v" value="$v"/><VideoRectangle name="r" toName="img"/></View>',
            "<VideoRectangle name='r'> points to 'img', which is not a <Video>",
        ),
        ("", "the labeling config is empty"),
    ],
    ids=[
        "no-object",
        "single-image",
        "missing-target",
        "brush-no-labels",
        "polygon-no-labels",
        "malformed",
        "video-without-rectangle",
        "no-control",
        "bad-framerate",
        "valuelist-without-dollar",
        "control-without-name",
        "rectangle-to-missing",
        "empty",
    ],
)
def test_unsupported_configs_say_what_is_missing(xml, expected):
    with pytest.raises(UnsupportedLabelConfig) as info:
        parse_label_config(xml)
    assert expected in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"type": "brushlabels", "value": {"format": "rle", "rle": [1], "brushlabels": ["Cup"]}}, ["Cup"]),
        ({"type": "polygonlabels", "value": {"points": [], "polygonlabels": ["Car", "Red"]}}, ["Car", "Red"]),
        # a smart KeyPoint click carries both keys; its type's key decides
        ({"type": "keypointlabels", "value": {"labels": ["A"], "keypointlabels": ["B"]}}, ["B"]),
        ({"value": {"rectanglelabels": ["Dog"]}}, ["Dog"]),  # no type: any labels key
        ({"type": "brushlabels", "value": {"brushlabels": []}}, []),
        ({"type": "brushlabels", "value": "not a dict"}, []),
        ({"type": "brushlabels"}, []),
        ("not a result", []),
    ],
)
def test_result_labels_reads_a_regions_labels(result, expected):
    assert result_labels(result) == expected
