"""Parse a Label Studio labeling config into the part this backend can fill.

Two task shapes are served (see docs/DESIGN.md section 3):

* **frames** - ``<Image name=.. valueList="$key">`` (a frame sequence) with ``<BrushLabels>`` and/or
  ``<PolygonLabels>`` whose ``toName`` is that image: per-frame masks (results carry ``item_index``);
* **video** - ``<Video name=.. value="$key">`` with ``<VideoRectangle toName=..>``: one box track per object; the
  label palette is the ``<Labels toName=..>`` of the same video (optional).

Rules where a config offers more than one choice:

* object tags are tried in document order and the **first one with a fillable control is served** (a config with both
  a frame sequence and a video is not an error); the others are ignored;
* for an object, the first ``<BrushLabels>``/``<PolygonLabels>``/``<VideoRectangle>``/``<Labels>`` pointing at it is
  used; ``toName`` may list several names separated by commas;
* every ``<TextArea>`` of the config is reported (interactive prompts may come from any of them);
* tag names are matched case-insensitively, attribute names case-sensitively (``toName``, ``valueList``, ``value``,
  ``name``, ``hint``, ``framerate``), as Label Studio does.

Only the standard library's XML parser is used, so the web process stays light.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from dataclasses import dataclass

__all__ = [
    "ControlSpec",
    "LabelOption",
    "ServedConfig",
    "UnsupportedLabelConfig",
    "parse_label_config",
    "result_labels",
    "served_config",
]

_FILLABLE_HINT = (
    "no control tag the backend can fill: add <BrushLabels>, <PolygonLabels> (frame sequences) "
    "or <VideoRectangle> (videos)"
)
_TAG_NAMES = {
    "image": "Image",
    "video": "Video",
    "brushlabels": "BrushLabels",
    "polygonlabels": "PolygonLabels",
    "videorectangle": "VideoRectangle",
    "labels": "Labels",
    "textarea": "TextArea",
}


_RESULT_LABEL_KEYS = ("brushlabels", "polygonlabels", "keypointlabels", "rectanglelabels", "labels")


def result_labels(result: dict) -> list[str]:
    """The labels of one Label Studio result (a region): the list under its ``type`` in its ``value``
    (``{"type": "brushlabels", "value": {"brushlabels": ["Cup"]}}``), else under any labels key."""
    value = result.get("value") if isinstance(result, dict) else None
    if not isinstance(value, dict):
        return []
    kind = result.get("type")
    for key in (kind, *_RESULT_LABEL_KEYS) if isinstance(kind, str) else _RESULT_LABEL_KEYS:
        labels = value.get(key)
        if isinstance(labels, list) and labels:
            return [str(v) for v in labels]
    return []


class UnsupportedLabelConfig(ValueError):
    """The labeling config has nothing this backend can fill; the message says what is missing or wrong."""


@dataclass(frozen=True)
class LabelOption:
    """One ``<Label value=.. hint=..>``: ``value`` goes into the result, ``hint`` may serve as the text prompt."""

    value: str
    hint: str | None = None


@dataclass(frozen=True)
class ControlSpec:
    """A control tag: ``tag`` is lower-case ('brushlabels', 'polygonlabels', 'videorectangle', 'labels', 'textarea')."""

    name: str
    tag: str
    to_name: str
    labels: tuple[LabelOption, ...] = ()


@dataclass(frozen=True)
class ServedConfig:
    """What the backend fills for a project: one object tag and the controls that point at it."""

    kind: str  # "frames" (<Image valueList="$key">) or "video" (<Video value="$key">)
    object_name: str
    value_key: str  # task data key, without '$'
    brush: ControlSpec | None
    polygon: ControlSpec | None
    video_rectangle: ControlSpec | None
    labels: ControlSpec | None  # video only: the <Labels toName=video> palette whose values go into value.labels
    textareas: tuple[ControlSpec, ...]
    framerate: float | None  # <Video framerate=..>, None if absent

    def label_options(self) -> tuple[LabelOption, ...]:
        """Labels an object can be given: brush, polygon and palette labels in that order, unique by value.

        When a value occurs twice, the first occurrence is kept, taking the hint of a later one if it has none.
        """
        merged: dict[str, LabelOption] = {}
        for control in (self.brush, self.polygon, self.labels):
            if control is None:
                continue
            for option in control.labels:
                known = merged.get(option.value)
                if known is None:
                    merged[option.value] = option
                elif known.hint is None and option.hint is not None:
                    merged[option.value] = LabelOption(known.value, option.hint)
        return tuple(merged.values())


def _tag(element: ET.Element) -> str:
    tag = element.tag if isinstance(element.tag, str) else ""
    return tag.rsplit("}", 1)[-1].lower()


def _describe(element: ET.Element) -> str:
    tag = _tag(element)
    shown = _TAG_NAMES.get(tag, element.tag)
    name = element.get("name")
    return f"<{shown} name='{name}'>" if name is not None else f"<{shown}>"


def _data_key(element: ET.Element, attribute: str) -> str:
    raw = (element.get(attribute) or "").strip()
    if not raw.startswith("$") or len(raw) < 2:
        raise UnsupportedLabelConfig(
            f"{_describe(element)} {attribute}='{raw}' must reference a task data field as '$key'"
        )
    return raw[1:]


def _labels(element: ET.Element) -> tuple[LabelOption, ...]:
    options = []
    for child in element.iter():
        if child is element or _tag(child) != "label":
            continue
        value = child.get("value")
        if value is None or not value.strip():
            raise UnsupportedLabelConfig(f"a <Label> inside {_describe(element)} has no value attribute")
        hint = child.get("hint")
        options.append(LabelOption(value=value, hint=hint.strip() if hint and hint.strip() else None))
    return tuple(options)


def _control(element: ET.Element) -> ControlSpec:
    name = element.get("name")
    if not name:
        raise UnsupportedLabelConfig(f"<{_TAG_NAMES[_tag(element)]}> has no name attribute")
    to_name = element.get("toName")
    if not to_name:
        raise UnsupportedLabelConfig(f"{_describe(element)} has no toName attribute")
    return ControlSpec(name=name, tag=_tag(element), to_name=to_name.strip(), labels=_labels(element))


def _points_to(control: ControlSpec, name: str) -> bool:
    return name in (part.strip() for part in control.to_name.split(","))


def _first(controls: list[ControlSpec], tag: str, name: str) -> ControlSpec | None:
    return next((c for c in controls if c.tag == tag and _points_to(c, name)), None)


def _require_labels(control: ControlSpec | None) -> None:
    if control is not None and not control.labels:
        shown = _TAG_NAMES[control.tag]
        raise UnsupportedLabelConfig(
            f"<{shown} name='{control.name}'> has no <Label> children: add at least one <Label value=\"...\"/>"
        )


def _dangling(controls: list[ControlSpec], objects: dict[str, ET.Element]) -> list[str]:
    """Explain controls (of the kinds we fill) that point at no servable object."""
    problems = []
    for control in controls:
        if control.tag not in ("brushlabels", "polygonlabels", "videorectangle"):
            continue
        wanted = "an <Image valueList>" if control.tag != "videorectangle" else "a <Video>"
        for target in (part.strip() for part in control.to_name.split(",")):
            obj = objects.get(target)
            head = f"<{_TAG_NAMES[control.tag]} name='{control.name}'> points to '{target}', which is not {wanted}"
            if obj is None:
                problems.append(f"{head} (no object tag is named '{target}')")
            elif control.tag != "videorectangle" and _tag(obj) == "image" and obj.get("valueList") is None:
                problems.append(f"{head} (it is a single <Image value=...>)")
            elif (control.tag == "videorectangle") != (_tag(obj) == "video"):
                problems.append(f"{head} (it is {_describe(obj)})")
    return problems


def parse_label_config(xml: str) -> ServedConfig:
    """Find the object tag and controls to fill, or raise :class:`UnsupportedLabelConfig` saying why there is none."""
    if not isinstance(xml, str) or not xml.strip():
        raise UnsupportedLabelConfig("the labeling config is empty")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise UnsupportedLabelConfig(f"malformed labeling config XML: {exc}") from exc

    objects: dict[str, ET.Element] = {}
    candidates: list[ET.Element] = []
    single_images: list[ET.Element] = []
    controls: list[ControlSpec] = []
    for element in root.iter():
        tag = _tag(element)
        if tag in ("image", "video"):
            name = element.get("name")
            if not name:
                raise UnsupportedLabelConfig(f"<{_TAG_NAMES[tag]}> has no name attribute")
            objects.setdefault(name, element)
            if tag == "video" or element.get("valueList") is not None:
                candidates.append(element)
            else:
                single_images.append(element)
        elif tag in ("brushlabels", "polygonlabels", "videorectangle", "labels", "textarea"):
            controls.append(_control(element))
    textareas = tuple(c for c in controls if c.tag == "textarea")

    for element in candidates:
        name = element.get("name") or ""
        if _tag(element) == "image":
            brush = _first(controls, "brushlabels", name)
            polygon = _first(controls, "polygonlabels", name)
            if brush is None and polygon is None:
                continue
            _require_labels(brush)
            _require_labels(polygon)
            return ServedConfig(
                kind="frames",
                object_name=name,
                value_key=_data_key(element, "valueList"),
                brush=brush,
                polygon=polygon,
                video_rectangle=None,
                labels=None,
                textareas=textareas,
                framerate=None,
            )
        rectangle = _first(controls, "videorectangle", name)
        if rectangle is None:
            continue
        palette = _first(controls, "labels", name)
        _require_labels(palette)
        return ServedConfig(
            kind="video",
            object_name=name,
            value_key=_data_key(element, "value"),
            brush=None,
            polygon=None,
            video_rectangle=rectangle,
            labels=palette,
            textareas=textareas,
            framerate=_framerate(element),
        )

    problems = _dangling(controls, objects)
    for element in candidates:
        name = element.get("name")
        if _tag(element) == "video":
            problems.append(f"<Video name='{name}'> has no <VideoRectangle toName='{name}'>")
        else:
            problems.append(f"<Image name='{name}' valueList=...> has no <BrushLabels> or <PolygonLabels> for it")
    if not candidates:
        if single_images:
            shown = ", ".join(f"<Image name='{e.get('name')}' value='{e.get('value', '')}'>" for e in single_images)
            problems.append(f"single images are not served; use valueList (found {shown})")
        else:
            problems.append("no <Image valueList=...> or <Video> object tag")
    if candidates or single_images:
        problems.append(_FILLABLE_HINT)
    raise UnsupportedLabelConfig("; ".join(dict.fromkeys(problems)))


@functools.lru_cache(maxsize=64)
def served_config(xml: str) -> ServedConfig:
    """:func:`parse_label_config`, cached: every request and task of a project carries the same config."""
    return parse_label_config(xml)


def _framerate(element: ET.Element) -> float | None:
    raw = element.get("framerate")
    if raw is None or not raw.strip() or raw.strip().startswith("$"):
        return None  # absent, or taken from task data: the caller reads the rate from the video file
    try:
        value = float(raw)
    except ValueError:
        raise UnsupportedLabelConfig(f"{_describe(element)} framerate='{raw}' is not a number") from None
    if not value > 0:
        raise UnsupportedLabelConfig(f"{_describe(element)} framerate='{raw}' must be positive")
    return value
