"""A synthetic world of moving shapes with referring expressions that need what MeViS needs: motion among look-alikes.

One video is a static textured background with 2-4 flat-coloured shapes (square, circle, triangle) that follow
motion programs (still, constant velocity, move-then-stop, stop-then-move, turn), may leave or enter the frame and
may pass behind each other. Everything is drawn from ``np.random.default_rng(seed)``, so a seed fixes a video.

Why it is built this way: a tiny model trained from scratch must learn to *use* motion. Therefore most videos
contain look-alikes (same colour, shape and size) that differ only in how they move, and the expressions that
refer to them are checked to fit the target and to *not* fit its look-alikes. Every expression is validated by
:func:`resolve`, which interprets the expression's :class:`Meaning` on facts measured from the generated video
(trajectories, in-frame and visible pixel counts), never on the labels the sampler intended.

Semantics (three-valued: an expression is kept only if it is true for its targets and clearly false for every
other object its appearance words match, so borderline cases are never generated):

* appearance words: ``colour`` and/or ``shape`` ("object" = any shape); the *group* of an expression is the set
  of objects its appearance words match.
* motion, per step ``v = c[t+1] - c[t]`` of the centre: a step *moves* if ``|v| >= 1`` px, is *still* if
  ``|v| <= 0.3`` px, goes *in direction d* if it moves and is within 30 degrees of ``d``, goes *toward d* if
  ``v . d > 0.5`` px.

  - "moving d": every step goes in d (false: no step goes toward d);
  - "keeps moving d": every step goes in d (false: the last step is still, or no step goes toward d);
  - "stays still": every step is still (false: path length >= 6 px);
  - "moves d then stops": >= 2 steps in d, then >= 2 still steps (false: the last step moves, or no step goes
    toward d);
  - "waits then moves d": >= 2 still steps, then >= 2 steps in d (false: the first step moves, or no step goes
    toward d);
  - "moves d1 then d2": >= 2 steps in d1, then >= 2 in d2 (false: no step toward d1 is followed by a step
    toward d2).
* "faster" / "slower" (within the group): every group member moves on every step, and the fastest (slowest)
  member's mean speed is >= 1.6x and >= 1.5 px/frame away from every other member's.
* "leaves the frame": fully inside at the first frame and fully outside at the last (false: fully inside at
  every frame); "enters the frame" is the reverse. "gets hidden": in some frame at least half of the object is in
  the frame and at most 30 % of that part is visible (false: >= 95 % of the in-frame part is visible in every
  frame).
* relations, over the **whole video**: "left / right / upper / lower": every group member is fully in the frame
  in every frame and, in every frame, the target's centre is at least 6 px further in that direction than every
  other member's. "biggest / smallest": half-size ratio >= 1.3 to every other member.
* multi-object: "the red squares" / "all ..." / "both ..." (exactly two): the whole group (>= 2); "the squares
  moving right" / "the squares that stay still": the >= 2 group members for which the motion phrase is true
  (all others false, and not the whole group); "A and B": two single-object appearance expressions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

import cv2
import numpy as np

# ----------------------------------------------------------------------------------------------------------
# Vocabulary and grammar
# ----------------------------------------------------------------------------------------------------------

COLOURS = MappingProxyType(
    {
        "red": (220, 40, 40),
        "green": (40, 190, 60),
        "blue": (40, 80, 230),
        "yellow": (235, 215, 40),
        "white": (245, 245, 245),
        "purple": (150, 60, 200),
    }
)
"""Colour words and their base RGB values."""

SHAPES = ("square", "circle", "triangle")
DIRECTIONS = MappingProxyType({"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)})
"""Direction words as unit vectors in image coordinates (x right, y down)."""

KINDS = ("appearance", "relation", "motion", "multi")

TEMPLATES = MappingProxyType(
    {
        "appearance": ("the {np}",),
        "relation/left": ("the left {np}", "the {np} on the left"),
        "relation/right": ("the right {np}", "the {np} on the right"),
        "relation/upper": ("the upper {np}", "the {np} at the top"),
        "relation/lower": ("the lower {np}", "the {np} at the bottom"),
        "relation/biggest": ("the biggest {np}",),
        "relation/smallest": ("the smallest {np}",),
        "motion/linear": ("the {np} moving {d}", "the {np} that moves {d}"),
        "motion/still": ("the {np} that stays still", "the {np} that does not move"),
        "motion/keep": ("the {np} that keeps moving {d}",),
        "motion/move_stop": ("the {np} that moves {d} then stops",),
        "motion/stop_move": ("the {np} that waits then moves {d}",),
        "motion/turn": ("the {np} that moves {d} then {d2}",),
        "motion/faster": ("the {np} moving faster", "the faster {np}"),
        "motion/slower": ("the {np} moving slower", "the slower {np}"),
        "motion/leave": ("the {np} that leaves the frame",),
        "motion/enter": ("the {np} that enters the frame",),
        "motion/hidden": ("the {np} that gets hidden", "the {np} that goes behind another object"),
        "multi/all": ("the {nps}", "all {nps}"),
        "multi/both": ("both {nps}",),
        "multi/linear": ("the {nps} moving {d}",),
        "multi/still": ("the {nps} that stay still",),
        "multi/and": ("{a} and {b}",),
    }
)
"""The grammar: template name -> surface forms. ``{np}`` is a singular noun phrase ("red square", "red object",
"square", "object"), ``{nps}`` its plural, ``{d}`` / ``{d2}`` direction words, ``{a}`` / ``{b}`` two appearance
expressions ("the red square")."""

_GROUP_MOTION = ("faster", "slower")
_RELATIONS = ("left", "right", "upper", "lower", "biggest", "smallest")
_MULTI_MOTION = ("linear", "still")


def _vocabulary() -> tuple[str, ...]:
    words = set(COLOURS) | set(SHAPES) | {s + "s" for s in SHAPES} | {"object", "objects"} | set(DIRECTIONS)
    for forms in TEMPLATES.values():
        for form in forms:
            words.update(w for w in form.split() if not w.startswith("{"))
    return tuple(sorted(words))


VOCABULARY = _vocabulary()
"""Every word an expression can contain (sorted), e.g. to train a word-level tokenizer."""

# ----------------------------------------------------------------------------------------------------------
# Semantic thresholds (see the module docstring)
# ----------------------------------------------------------------------------------------------------------

MOVE_MIN = 1.0
STILL_MAX = 0.3
DIR_COS = math.cos(math.radians(30))
TOWARD_MIN = 0.5
STILL_FALSE_PATH = 6.0
MIN_PHASE_STEPS = 2
SPEED_RATIO = 1.6
SPEED_GAP = 1.5
RELATION_MARGIN = 6.0
SIZE_RATIO = 1.3
HIDDEN_MAX = 0.3
UNOCCLUDED_MIN = 0.95
IN_FRAME_MIN_FOR_HIDDEN = 0.5

# ----------------------------------------------------------------------------------------------------------
# Configuration and data classes
# ----------------------------------------------------------------------------------------------------------

RECOLOURED_PALETTE = (
    ("red", (255, 120, 190)),
    ("green", (150, 210, 30)),
    ("blue", (30, 200, 230)),
    ("yellow", (255, 140, 20)),
    ("white", (25, 25, 25)),
    ("purple", (130, 70, 30)),
)
"""The ``recoloured`` domain: every colour word drawn in a colour the default world never shows (pink, lime,
cyan, orange, black, brown), as if a camera rendered colours differently, in appearance and relation scenes
(no look-alike motion scenes: colour is what the shift changes). It shows learning from corrections on a shift
the shipped model has not seen."""


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the world. Lengths are pixels, speeds pixels per frame (defaults are tuned for 64 px, 8 frames:
    3-4 px/frame moves an object over several 8-px patches, so a small ViT can see the motion).

    ``p_lookalike`` / ``p_relation``: probability of a look-alike (motion) video / a relation video; the rest
    are appearance videos. ``contrast_weights``: how the look-alikes of a look-alike video differ.
    ``p_occlusion``: chance that an extra object is put in front of a moving one in a non-"hidden" video;
    ``p_edge``: chance that a distractor leaves, enters or partly leaves the frame. ``palette``: colour words
    drawn in other RGB values than :data:`COLOURS` (a domain shift, see :data:`DOMAINS`).
    """

    size: int = 64
    frames: int = 8
    min_objects: int = 2
    max_objects: int = 4
    half_size_range: tuple[float, float] = (5.0, 8.0)
    speed_range: tuple[float, float] = (3.0, 4.0)
    slow_speed_range: tuple[float, float] = (1.5, 2.0)
    fast_speed_range: tuple[float, float] = (4.0, 5.0)
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    colour_jitter: int = 12
    palette: tuple[tuple[str, tuple[int, int, int]], ...] = ()
    noise_sigma: float = 6.0
    background_level: tuple[float, float] = (70.0, 170.0)
    p_stripes: float = 0.6
    p_lookalike: float = 0.55
    p_relation: float = 0.2
    p_three_lookalikes: float = 0.25
    p_occlusion: float = 0.15
    p_edge: float = 0.1
    contrast_weights: tuple[tuple[str, float], ...] = (
        ("direction", 2.0),
        ("speed", 2.0),
        ("move_stop", 2.5),
        ("stop_move", 1.5),
        ("turn", 1.5),
        ("still", 1.0),
        ("leave", 1.0),
        ("enter", 0.75),
        ("hidden", 1.5),
        ("pair", 1.0),
    )
    kind_weights: tuple[tuple[str, float], ...] = (
        ("appearance", 1.0),
        ("relation", 1.0),
        ("motion", 1.5),
        ("multi", 1.2),
    )
    min_expressions: int = 2
    max_expressions: int = 4
    max_attempts: int = 200

    def validate(self) -> None:
        """Raise ValueError on settings the sampler cannot honour."""
        if self.size < 16 or self.frames < 2:
            raise ValueError("size must be >= 16 and frames >= 2")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")
        if not 0 < self.half_size_range[0] <= self.half_size_range[1] < self.size / 4:
            raise ValueError("half_size_range must be positive, ordered and < size / 4")
        for name in ("speed_range", "slow_speed_range", "fast_speed_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be positive and ordered")
        unknown = (set(self.shapes) - set(SHAPES)) | (set(self.colours) - set(COLOURS))
        unknown |= {word for word, _ in self.palette} - set(COLOURS)
        if unknown or not self.shapes or not self.colours:
            raise ValueError(f"unknown or missing shapes/colours: {sorted(unknown)}")
        if self.p_lookalike + self.p_relation > 1 or min(self.p_lookalike, self.p_relation) < 0:
            raise ValueError("p_lookalike + p_relation must be within [0, 1]")
        if not 1 <= self.min_expressions <= self.max_expressions:
            raise ValueError("need 1 <= min_expressions <= max_expressions")

    @property
    def steps(self) -> int:
        return self.frames - 1

    def rgb(self, colour: str) -> tuple[int, int, int]:
        """The base RGB a colour word is drawn with (``palette`` overrides :data:`COLOURS`)."""
        return dict(self.palette).get(colour, COLOURS[colour])


DOMAINS = MappingProxyType(
    {
        "default": WorldConfig(),
        "recoloured": WorldConfig(palette=RECOLOURED_PALETTE, p_lookalike=0.0),
    }
)
"""Named worlds: ``default`` (the benchmark and the shipped model's training data) and shifted ones."""


@dataclass(frozen=True)
class MotionProgram:
    """How an object moves: ``kind`` in still / linear / move_stop / stop_move / turn.

    ``switch`` is the step at which a two-phase program changes (move_stop: moving steps; stop_move: still
    steps; turn: steps in ``direction`` before ``direction2``).
    """

    kind: str
    direction: str | None = None
    direction2: str | None = None
    speed: float = 0.0
    switch: int = 0

    def velocities(self, frames: int) -> np.ndarray:
        """``(frames - 1, 2)`` per-step displacement (x, y)."""
        steps = frames - 1
        out = np.zeros((steps, 2))
        if self.kind == "still":
            return out
        d1 = np.asarray(DIRECTIONS[self.direction]) * self.speed
        if self.kind == "linear":
            out[:] = d1
        elif self.kind == "move_stop":
            out[: self.switch] = d1
        elif self.kind == "stop_move":
            out[self.switch :] = d1
        elif self.kind == "turn":
            out[: self.switch] = d1
            out[self.switch :] = np.asarray(DIRECTIONS[self.direction2]) * self.speed
        else:
            raise ValueError(f"unknown motion program {self.kind!r}")
        return out

    def describe(self) -> str:
        if self.kind == "still":
            return "still"
        if self.kind == "turn":
            return f"turn {self.direction}->{self.direction2} at {self.switch} ({self.speed:.2f} px/f)"
        tail = f" at {self.switch}" if self.kind in ("move_stop", "stop_move") else ""
        return f"{self.kind} {self.direction}{tail} ({self.speed:.2f} px/f)"


@dataclass(frozen=True, eq=False)
class ObjectSpec:
    """One object: appearance, motion program, centre trajectory ``(T, 2)`` (x, y, may leave the frame) and
    drawing depth (larger is in front). ``placement``: inside / leave / enter / partial / occluder."""

    shape: str
    colour: str
    rgb: tuple[int, int, int]
    half_size: float
    program: MotionProgram
    trajectory: np.ndarray
    depth: int
    placement: str = "inside"


@dataclass(frozen=True)
class Meaning:
    """The structure of an expression: template name, appearance words, direction arguments, parts (for
    "A and B"), and which surface form of the template renders it."""

    template: str
    colour: str | None = None
    shape: str | None = None
    args: tuple[str, ...] = ()
    parts: tuple[Meaning, ...] = ()
    variant: int = 0

    @property
    def kind(self) -> str:
        return self.template.split("/")[0]

    @property
    def predicate(self) -> str:
        return self.template.split("/")[-1]

    @property
    def uses_motion(self) -> bool:
        return self.kind == "motion" or (self.kind == "multi" and self.predicate in _MULTI_MOTION)

    def key(self) -> Meaning:
        """The meaning without its surface variant (equal keys = same expression)."""
        return replace(self, variant=0, parts=tuple(p.key() for p in self.parts))


@dataclass(frozen=True)
class ReferringExpression:
    """An expression, the objects it refers to, its kind (appearance / relation / motion / multi), the objects
    its appearance words match (the motion-blind answer), whether it tells look-alikes apart by motion, and its
    template and meaning."""

    text: str
    object_ids: tuple[int, ...]
    kind: str
    appearance_match: tuple[int, ...] = ()
    motion_lookalikes: bool = False
    template: str = ""
    meaning: Meaning | None = None


@dataclass(eq=False)
class SyntheticVideo:
    """A generated video: frames ``(T, H, W, 3)`` uint8, visible masks ``(n, T, H, W)`` bool (occlusion and the
    frame border applied), in-frame masks ignoring occlusion ``full_masks``, objects and expressions."""

    seed: int
    scenario: str
    frames: np.ndarray
    masks: np.ndarray
    full_masks: np.ndarray
    objects: list[ObjectSpec]
    expressions: list[ReferringExpression]
    lookalike_group: tuple[int, ...] = ()

    def expression_masks(self, index: int) -> np.ndarray:
        """``(T, H, W)`` ground truth of expression ``index``: the union of its objects' visible masks."""
        ids = list(self.expressions[index].object_ids)
        return self.masks[ids].any(axis=0)


@dataclass(frozen=True, eq=False)
class ObjectFacts:
    """What the semantics look at, measured from a generated video: appearance, size, centres ``(T, 2)``,
    steps ``(T-1, 2)``, in-frame fraction of the shape's area ``(T,)``, visible fraction of the in-frame part
    ``(T,)`` (1 where nothing is in frame)."""

    colour: str
    shape: str
    half_size: float
    centres: np.ndarray
    steps: np.ndarray
    in_frame: np.ndarray
    visible: np.ndarray

    def matches(self, colour: str | None, shape: str | None) -> bool:
        return (colour is None or colour == self.colour) and (shape is None or shape == self.shape)


# ----------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------


def _shape_test(shape: str, dx: np.ndarray, dy: np.ndarray, h: float) -> np.ndarray:
    """Pixels (centre offsets dx, dy) inside a shape of half-size h; the triangle points up."""
    if shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "circle":
        return dx * dx + dy * dy <= h * h
    if shape == "triangle":
        return (dy >= -h) & (dy <= h) & (np.abs(dx) <= (dy + h) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def render_masks(shape: str, half_size: float, centres: np.ndarray, size: int) -> np.ndarray:
    """``(T, size, size)`` in-frame masks of a shape whose centre follows ``centres`` (pixel centres are at
    integer coordinates)."""
    axis = np.arange(size, dtype=np.float64)
    dx = axis[None, None, :] - centres[:, 0, None, None]
    dy = axis[None, :, None] - centres[:, 1, None, None]
    return _shape_test(shape, dx, dy, half_size)


def shape_areas(shape: str, half_size: float, centres: np.ndarray) -> np.ndarray:
    """``(T,)`` pixel count of the shape at each centre on an unbounded grid (for in-frame fractions)."""
    radius = int(math.ceil(half_size)) + 2
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    base = np.floor(centres)
    dx = base[:, 0, None, None] + offsets[None, None, :] - centres[:, 0, None, None]
    dy = base[:, 1, None, None] + offsets[None, :, None] - centres[:, 1, None, None]
    return _shape_test(shape, dx, dy, half_size).sum(axis=(1, 2))


def compute_facts(objects: Sequence[ObjectSpec], masks: np.ndarray, full_masks: np.ndarray) -> list[ObjectFacts]:
    """Measure every object's facts from its trajectory and its masks (visible and in-frame)."""
    facts = []
    for index, obj in enumerate(objects):
        area = shape_areas(obj.shape, obj.half_size, obj.trajectory).astype(np.float64)
        in_px = full_masks[index].sum(axis=(1, 2)).astype(np.float64)
        vis_px = masks[index].sum(axis=(1, 2)).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            in_frame = np.where(area > 0, in_px / np.maximum(area, 1), 0.0)
            visible = np.where(in_px > 0, vis_px / np.maximum(in_px, 1), 1.0)
        facts.append(
            ObjectFacts(
                obj.colour, obj.shape, obj.half_size, obj.trajectory, np.diff(obj.trajectory, axis=0), in_frame, visible
            )
        )
    return facts


# ----------------------------------------------------------------------------------------------------------
# Semantics
# ----------------------------------------------------------------------------------------------------------


def _step_flags(steps: np.ndarray, direction: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    d = np.asarray(DIRECTIONS[direction])
    speed = np.linalg.norm(steps, axis=1)
    along = steps @ d
    moving = speed >= MOVE_MIN
    in_dir = moving & (along >= DIR_COS * speed)
    toward = along > TOWARD_MIN
    still = speed <= STILL_MAX
    return moving, in_dir, toward, still


def unary_truth(facts: ObjectFacts, predicate: str, args: tuple[str, ...] = ()) -> bool | None:
    """True / False / None (neither clearly) for a single-object motion predicate on one object."""
    steps = facts.steps
    n = len(steps)
    if predicate == "still":
        speed = np.linalg.norm(steps, axis=1)
        if np.all(speed <= STILL_MAX):
            return True
        return False if speed.sum() >= STILL_FALSE_PATH else None
    if predicate in ("leave", "enter"):
        first, last = facts.in_frame[0], facts.in_frame[-1]
        inside_first, inside_last = first >= 0.999, last >= 0.999
        if predicate == "leave" and inside_first and last == 0:
            return True
        if predicate == "enter" and first == 0 and inside_last:
            return True
        return False if np.all(facts.in_frame >= 0.999) else None
    if predicate == "hidden":
        mostly_in = facts.in_frame >= IN_FRAME_MIN_FOR_HIDDEN
        if np.any(mostly_in & (facts.visible <= HIDDEN_MAX)):
            return True
        present = facts.in_frame > 0
        return False if np.all(facts.visible[present] >= UNOCCLUDED_MIN) else None
    if n == 0:
        return None
    moving, in_dir, toward, still = _step_flags(steps, args[0])
    if predicate == "linear":
        if np.all(in_dir):
            return True
        return False if not toward.any() else None
    if predicate == "keep":
        if np.all(in_dir):
            return True
        return False if (still[-1] or not toward.any()) else None
    if predicate == "move_stop":
        k = int(np.argmin(in_dir)) if not in_dir.all() else n
        if k >= MIN_PHASE_STEPS and n - k >= MIN_PHASE_STEPS and np.all(still[k:]):
            return True
        return False if (moving[-1] or not toward.any()) else None
    if predicate == "stop_move":
        k = int(np.argmin(still)) if not still.all() else n
        if k >= MIN_PHASE_STEPS and n - k >= MIN_PHASE_STEPS and np.all(in_dir[k:]):
            return True
        return False if (moving[0] or not toward.any()) else None
    if predicate == "turn":
        _, in_dir2, toward2, _ = _step_flags(steps, args[1])
        k = int(np.argmin(in_dir)) if not in_dir.all() else n
        if k >= MIN_PHASE_STEPS and n - k >= MIN_PHASE_STEPS and np.all(in_dir2[k:]):
            return True
        first_toward = np.flatnonzero(toward)
        if first_toward.size == 0 or not toward2[first_toward[0] + 1 :].any():
            return False
        return None
    raise ValueError(f"unknown motion predicate {predicate!r}")


def _group_pick(predicate: str, group: Sequence[int], facts: Sequence[ObjectFacts]) -> int | None:
    """The one group member a comparative / relation picks, or None when it does not pick one clearly."""
    if len(group) < 2:
        return None
    members = [facts[i] for i in group]
    if predicate in ("faster", "slower"):
        speeds = []
        for f in members:
            step_speed = np.linalg.norm(f.steps, axis=1)
            if step_speed.size == 0 or np.any(step_speed < MOVE_MIN):
                return None
            speeds.append(float(step_speed.mean()))
        order = np.argsort(speeds)
        best, second = (order[-1], order[-2]) if predicate == "faster" else (order[0], order[1])
        hi, lo = (speeds[best], speeds[second]) if predicate == "faster" else (speeds[second], speeds[best])
        return group[best] if hi >= SPEED_RATIO * lo and hi - lo >= SPEED_GAP else None
    if predicate in ("biggest", "smallest"):
        sizes = np.array([f.half_size for f in members])
        pick = int(np.argmax(sizes) if predicate == "biggest" else np.argmin(sizes))
        others = np.delete(sizes, pick)
        ok = (
            np.all(sizes[pick] >= SIZE_RATIO * others)
            if predicate == "biggest"
            else np.all(others >= SIZE_RATIO * sizes[pick])
        )
        return group[pick] if ok else None
    if any(np.any(f.in_frame < 0.999) for f in members):
        return None
    axis, sign = {"left": (0, -1.0), "right": (0, 1.0), "upper": (1, -1.0), "lower": (1, 1.0)}[predicate]
    coords = np.stack([f.centres[:, axis] * sign for f in members])  # larger = further in the direction
    pick = int(np.argmax(coords[:, 0]))
    others = np.delete(coords, pick, axis=0)
    return group[pick] if np.all(coords[pick][None, :] - others >= RELATION_MARGIN) else None


def group_of(colour: str | None, shape: str | None, facts: Sequence[ObjectFacts]) -> list[int]:
    """Indices of the objects that appearance words match."""
    return [i for i, f in enumerate(facts) if f.matches(colour, shape)]


def resolve(meaning: Meaning, facts: Sequence[ObjectFacts], cache: dict | None = None) -> frozenset[int] | None:
    """The objects an expression refers to in a video, or None when it does not refer unambiguously.

    ``cache`` (a dict owned by the caller, for one video) memoises per-object truths across many calls.
    """
    if meaning.template == "multi/and":
        if len(meaning.parts) != 2:
            return None
        targets = [resolve(part, facts, cache) for part in meaning.parts]
        if any(t is None or len(t) != 1 for t in targets) or targets[0] == targets[1]:
            return None
        return targets[0] | targets[1]
    group = group_of(meaning.colour, meaning.shape, facts)
    kind, predicate = meaning.kind, meaning.predicate
    if meaning.template == "appearance":
        return frozenset(group) if len(group) == 1 else None
    if kind == "relation" or predicate in _GROUP_MOTION:
        pick = _group_pick(predicate, group, facts)
        return None if pick is None else frozenset([pick])
    if predicate in ("all", "both"):
        ok = len(group) == 2 if predicate == "both" else len(group) >= 2
        return frozenset(group) if ok else None
    if cache is None:
        truths = [unary_truth(facts[i], predicate, meaning.args) for i in group]
    else:
        truths = []
        for i in group:
            key = (i, predicate, meaning.args)
            if key not in cache:
                cache[key] = unary_truth(facts[i], predicate, meaning.args)
            truths.append(cache[key])
    chosen = [i for i, t in zip(group, truths) if t is True]
    if any(t is None for t in truths):
        return None
    if kind == "motion" and len(chosen) == 1:
        return frozenset(chosen)
    if kind == "multi" and len(chosen) >= 2:
        return frozenset(chosen)
    return None


def appearance_match(meaning: Meaning, facts: Sequence[ObjectFacts]) -> tuple[int, ...]:
    """Objects that the expression's appearance words match (the best a motion-blind reader can answer)."""
    if meaning.parts:
        return tuple(sorted(set().union(*(appearance_match(p, facts) for p in meaning.parts))))
    return tuple(group_of(meaning.colour, meaning.shape, facts))


# ----------------------------------------------------------------------------------------------------------
# Text: rendering and parsing
# ----------------------------------------------------------------------------------------------------------


def _noun_phrase(colour: str | None, shape: str | None, plural: bool) -> str:
    noun = (shape or "object") + ("s" if plural else "")
    return f"{colour} {noun}" if colour else noun


def render_meaning(meaning: Meaning) -> str:
    """The text of a meaning (its template's ``variant``-th surface form)."""
    forms = TEMPLATES[meaning.template]
    form = forms[meaning.variant % len(forms)]
    if meaning.template == "multi/and":
        return form.format(a=render_meaning(meaning.parts[0]), b=render_meaning(meaning.parts[1]))
    args = meaning.args + ("", "")
    return form.format(
        np=_noun_phrase(meaning.colour, meaning.shape, False),
        nps=_noun_phrase(meaning.colour, meaning.shape, True),
        d=args[0],
        d2=args[1],
    )


def _form_regex(form: str) -> re.Pattern[str]:
    colour = "|".join(COLOURS)
    shape = "|".join(SHAPES)
    direction = "|".join(DIRECTIONS)
    pattern = re.escape(form)
    pattern = pattern.replace(re.escape("{np}"), rf"(?:(?P<colour>{colour}) )?(?P<shape>{shape}|object)")
    pattern = pattern.replace(re.escape("{nps}"), rf"(?:(?P<colour>{colour}) )?(?P<shape>(?:{shape}|object))s")
    pattern = pattern.replace(re.escape("{d2}"), rf"(?P<d2>{direction})")
    pattern = pattern.replace(re.escape("{d}"), rf"(?P<d>{direction})")
    return re.compile(pattern)


_FORM_REGEXES = tuple(
    (template, variant, _form_regex(form))
    for template, forms in TEMPLATES.items()
    if template != "multi/and"
    for variant, form in enumerate(forms)
)


def parse_expression(text: str) -> Meaning:
    """Invert :func:`render_meaning`: the meaning of a text of the grammar (ValueError if it is not one)."""
    text = " ".join(text.split())
    for template, variant, regex in _FORM_REGEXES:
        match = regex.fullmatch(text)
        if match:
            groups = match.groupdict()
            shape = groups.get("shape")
            args = tuple(groups[k] for k in ("d", "d2") if groups.get(k))
            return Meaning(template, groups.get("colour"), None if shape == "object" else shape, args, variant=variant)
    if " and " in text:
        left, _, right = text.partition(" and ")
        parts = (parse_expression(left), parse_expression(right))
        if all(p.template == "appearance" for p in parts):
            return Meaning("multi/and", parts=parts)
    raise ValueError(f"not an expression of the synthetic grammar: {text!r}")


# ----------------------------------------------------------------------------------------------------------
# Candidate expressions of a video
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    meaning: Meaning
    targets: frozenset[int]
    appearance_match: tuple[int, ...]
    motion_lookalikes: bool

    @property
    def kind(self) -> str:
        return self.meaning.kind


def _has_lookalike_outside(targets: frozenset[int], facts: Sequence[ObjectFacts]) -> bool:
    looks = {(facts[i].colour, facts[i].shape) for i in targets}
    return any((f.colour, f.shape) in looks for i, f in enumerate(facts) if i not in targets)


def _meanings_for(colour: str | None, shape: str | None, group_size: int) -> list[Meaning]:
    out = [Meaning("appearance", colour, shape)] if group_size == 1 else []
    if group_size >= 2:
        out += [Meaning(f"relation/{r}", colour, shape) for r in _RELATIONS]
        out += [Meaning(f"motion/{p}", colour, shape) for p in _GROUP_MOTION]
        if colour is not None or shape is not None:
            out += [Meaning("multi/all", colour, shape)]
            if group_size == 2:
                out += [Meaning("multi/both", colour, shape)]
    dirs = list(DIRECTIONS)
    out += [Meaning("motion/linear", colour, shape, (d,)) for d in dirs]
    out += [Meaning("motion/keep", colour, shape, (d,)) for d in dirs]
    out += [Meaning("motion/move_stop", colour, shape, (d,)) for d in dirs]
    out += [Meaning("motion/stop_move", colour, shape, (d,)) for d in dirs]
    out += [
        Meaning("motion/turn", colour, shape, (a, b))
        for a in dirs
        for b in dirs
        if np.dot(DIRECTIONS[a], DIRECTIONS[b]) == 0
    ]
    out += [Meaning(f"motion/{p}", colour, shape) for p in ("still", "leave", "enter", "hidden")]
    if group_size >= 3:
        out += [Meaning("multi/linear", colour, shape, (d,)) for d in dirs]
        out += [Meaning("multi/still", colour, shape)]
    return out


def _candidates(facts: Sequence[ObjectFacts]) -> list[_Candidate]:
    """Every expression of the grammar that refers unambiguously to something in this video."""
    descriptions = {(None, None)}
    for f in facts:
        descriptions |= {(f.colour, f.shape), (f.colour, None), (None, f.shape)}
    out: list[_Candidate] = []
    singles: list[_Candidate] = []
    cache: dict = {}
    for colour, shape in sorted(descriptions, key=lambda cs: (cs[0] or "", cs[1] or "")):
        group = group_of(colour, shape, facts)
        if not group:
            continue
        for meaning in _meanings_for(colour, shape, len(group)):
            targets = resolve(meaning, facts, cache)
            if targets is None:
                continue
            if meaning.kind == "multi" and meaning.predicate in _MULTI_MOTION and len(targets) == len(group):
                continue  # the motion words would add nothing
            if meaning.template == "motion/keep" and resolve(replace(meaning, template="motion/linear"), facts, cache):
                continue  # "moving d" already says it; "keeps moving d" is for contrasts with a stopping look-alike
            lookalikes = meaning.uses_motion and _has_lookalike_outside(targets, facts)
            candidate = _Candidate(meaning, targets, appearance_match(meaning, facts), lookalikes)
            out.append(candidate)
            if meaning.template == "appearance":
                singles.append(candidate)
    for i, a in enumerate(singles):
        for b in singles[i + 1 :]:
            if a.targets != b.targets:
                meaning = Meaning("multi/and", parts=(a.meaning, b.meaning))
                out.append(_Candidate(meaning, a.targets | b.targets, appearance_match(meaning, facts), False))
    return out


# ----------------------------------------------------------------------------------------------------------
# Scene sampling
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Draft:
    """An object before placement (internal, mutable while a scene is being built)."""

    colour: str
    shape: str
    half_size: float
    program: MotionProgram
    placement: str = "inside"
    occludes: int = -1
    occlude_frame: int = 0
    occlude_offset: float = 0.0


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _two_phase_switch(rng: np.random.Generator, config: WorldConfig, kind: str) -> int | None:
    """Where a two-phase program switches: the first phase lasts >= 40 % of the steps (>= 2), the second >= 2."""
    steps = config.steps
    lo = max(MIN_PHASE_STEPS, round(steps * 0.4))
    if kind == "stop_move":
        lo = MIN_PHASE_STEPS
        hi = steps - max(MIN_PHASE_STEPS, round(steps * 0.4))
    else:
        hi = steps - MIN_PHASE_STEPS
    if lo > hi:
        return None
    return int(rng.integers(lo, hi + 1))


def _program(
    rng: np.random.Generator,
    config: WorldConfig,
    kind: str,
    direction: str | None = None,
    direction2: str | None = None,
    speed: float | None = None,
) -> MotionProgram | None:
    dirs = list(DIRECTIONS)
    if kind == "still":
        return MotionProgram("still")
    direction = direction or str(rng.choice(dirs))
    speed = _uniform(rng, config.speed_range) if speed is None else speed
    if kind == "linear":
        return MotionProgram("linear", direction, speed=speed)
    switch = _two_phase_switch(rng, config, kind)
    if switch is None:
        return None
    if kind == "turn":
        if direction2 is None:
            options = [d for d in dirs if np.dot(DIRECTIONS[d], DIRECTIONS[direction]) == 0]
            direction2 = str(rng.choice(options))
        return MotionProgram("turn", direction, direction2, speed, switch)
    return MotionProgram(kind, direction, speed=speed, switch=switch)


def _random_program(rng: np.random.Generator, config: WorldConfig) -> MotionProgram | None:
    kinds = ("still", "linear", "move_stop", "stop_move", "turn")
    kind = str(rng.choice(kinds, p=[0.3, 0.4, 0.1, 0.1, 0.1]))
    return _program(rng, config, kind)


def _random_look(rng: np.random.Generator, config: WorldConfig, avoid: set[tuple[str, str]]) -> tuple[str, str] | None:
    options = [(c, s) for c in config.colours for s in config.shapes if (c, s) not in avoid]
    if not options:
        return None
    return options[int(rng.integers(len(options)))]


def _distractor(rng: np.random.Generator, config: WorldConfig, avoid: set[tuple[str, str]]) -> _Draft | None:
    look = _random_look(rng, config, avoid)
    program = _random_program(rng, config)
    if look is None or program is None:
        return None
    draft = _Draft(look[0], look[1], _uniform(rng, config.half_size_range), program)
    if rng.random() < config.p_edge:
        draft.program = _program(rng, config, "linear")
        draft.placement = str(rng.choice(["leave", "enter", "partial"]))
    return draft


def _add_occluder(
    rng: np.random.Generator,
    config: WorldConfig,
    drafts: list[_Draft],
    target: int,
    avoid: set[tuple[str, str]],
    full: bool,
) -> bool:
    """Put a larger, still object on ``target``'s path (in front of it) at a middle frame."""
    back = drafts[target]
    if back.program.kind != "linear" or back.placement != "inside":
        return False
    hi = config.half_size_range[1]
    look = _random_look(rng, config, avoid | {(c, "triangle") for c in COLOURS})
    if look is None:
        return False
    front_half = max(hi, back.half_size * (1.45 if look[1] == "circle" and back.shape == "square" else 1.0) + 2.5)
    steps = config.steps
    if steps < 4:
        return False
    drafts.append(
        _Draft(
            look[0],
            look[1],
            front_half,
            MotionProgram("still"),
            placement="occluder",
            occludes=target,
            occlude_frame=int(rng.integers(2, steps - 1)),
            occlude_offset=_uniform(rng, (0.0, 1.0) if full else (2.0, 6.0)),
        )
    )
    return True


def _lookalike_scene(rng: np.random.Generator, config: WorldConfig) -> tuple[list[_Draft], list[int]] | None:
    """2-3 look-alikes that differ only in motion (the contrast), plus distractors."""
    names = [name for name, _ in config.contrast_weights]
    weights = np.array([w for _, w in config.contrast_weights], float)
    contrast = str(rng.choice(names, p=weights / weights.sum()))
    k = 3 if (rng.random() < config.p_three_lookalikes and config.max_objects >= 3) else 2
    if config.max_objects < 2 or (contrast == "pair" and config.max_objects < 3):
        return None
    if contrast == "pair":
        k = 3
    if contrast == "hidden" and config.max_objects < k + 1:
        k = 2
    colour, shape = str(rng.choice(config.colours)), str(rng.choice(config.shapes))
    lo, hi = config.half_size_range
    half = _uniform(rng, (lo, min(hi, lo + 1.0))) if contrast == "hidden" else _uniform(rng, (lo, hi))
    dirs = list(DIRECTIONS)
    programs: list[MotionProgram | None] = []
    placements = ["inside"] * k
    if contrast == "pair":  # two move together, the third does not: "the red squares moving left"
        d0 = str(rng.choice(dirs))
        programs = [_program(rng, config, "linear", d0), _program(rng, config, "linear", d0)]
        roll = rng.random()
        other = str(rng.choice([d for d in dirs if d != d0]))
        programs.append(
            _program(rng, config, "linear", other)
            if roll < 0.6
            else MotionProgram("still")
            if roll < 0.85
            else _program(rng, config, "move_stop", other)
        )
    elif contrast == "direction":
        chosen = rng.choice(dirs, k, replace=False)
        programs = [_program(rng, config, "linear", str(d)) for d in chosen]
        if rng.random() < 0.25:
            programs[int(rng.integers(k))] = MotionProgram("still")
    elif contrast == "speed":
        same = rng.random() < 0.5
        d0 = str(rng.choice(dirs))
        odd_fast = k == 2 or rng.random() < 0.5
        for i in range(k):
            fast = (i == 0) == odd_fast
            speed = _uniform(rng, config.fast_speed_range if fast else config.slow_speed_range)
            programs.append(_program(rng, config, "linear", d0 if same else str(rng.choice(dirs)), speed=speed))
    elif contrast in ("move_stop", "stop_move", "turn", "still"):
        d0 = str(rng.choice(dirs))
        programs.append(_program(rng, config, contrast, d0) if contrast != "still" else MotionProgram("still"))
        first = programs[0]
        if first is None:
            return None
        used = {first.direction, first.direction2} if first is not None else set()
        for _ in range(k - 1):
            roll = rng.random()
            if contrast == "turn":
                other = [d for d in dirs if d not in used]
                programs.append(
                    _program(rng, config, "turn", first.direction2, first.direction)
                    if roll < 0.4
                    else MotionProgram("still")
                    if roll < 0.55
                    else _program(rng, config, "linear", str(rng.choice(other)))
                )
            elif contrast == "still":
                programs.append(_program(rng, config, "linear") if roll < 0.7 else _program(rng, config, "move_stop"))
            elif contrast == "move_stop":  # keeps moving / stops / waits / another direction
                other = str(rng.choice([d for d in dirs if d != d0]))
                programs.append(
                    _program(rng, config, "linear", d0)
                    if roll < 0.35
                    else _program(rng, config, "stop_move", d0)
                    if roll < 0.55
                    else MotionProgram("still")
                    if roll < 0.75
                    else _program(rng, config, "linear", other)
                )
            else:  # stop_move: moves then stops / still / another direction
                other = str(rng.choice([d for d in dirs if d != d0]))
                programs.append(
                    _program(rng, config, "move_stop", d0)
                    if roll < 0.35
                    else MotionProgram("still")
                    if roll < 0.6
                    else _program(rng, config, "linear", other)
                )
    elif contrast in ("leave", "enter"):
        programs.append(
            _program(rng, config, "linear", speed=_uniform(rng, (config.speed_range[1], config.fast_speed_range[1])))
        )
        placements[0] = contrast
        for _ in range(k - 1):
            programs.append(_program(rng, config, "linear") if rng.random() < 0.7 else MotionProgram("still"))
    elif contrast == "hidden":
        programs.append(_program(rng, config, "linear"))
        for _ in range(k - 1):
            programs.append(_program(rng, config, "linear") if rng.random() < 0.7 else MotionProgram("still"))
    else:
        raise ValueError(f"unknown contrast {contrast!r}")
    if any(p is None for p in programs):
        return None
    drafts = [_Draft(colour, shape, half, p, placement) for p, placement in zip(programs, placements)]
    avoid = {(colour, shape)}
    group = list(range(k))
    if contrast == "hidden" and not _add_occluder(rng, config, drafts, 0, avoid, full=True):
        return None
    if len(drafts) > config.max_objects:
        return None
    n_total = int(rng.integers(max(config.min_objects, len(drafts)), config.max_objects + 1))
    while len(drafts) < n_total:
        extra = _distractor(rng, config, avoid)
        if extra is None:
            return None
        drafts.append(extra)
    return drafts, group


def _relation_scene(rng: np.random.Generator, config: WorldConfig) -> tuple[list[_Draft], list[int]] | None:
    """2-3 objects sharing a shape (or a colour), spread in space or size, mostly slow; plus distractors."""
    if config.max_objects < 2:
        return None
    m = 3 if (rng.random() < 0.3 and config.max_objects >= 3) else 2
    share_shape = rng.random() < 0.6
    shared = str(rng.choice(config.shapes if share_shape else config.colours))
    drafts = []
    for _ in range(m):
        colour = shared if not share_shape else str(rng.choice(config.colours))
        shape = shared if share_shape else str(rng.choice(config.shapes))
        roll = rng.random()
        program = (
            MotionProgram("still")
            if roll < 0.4
            else _program(rng, config, "linear", speed=_uniform(rng, config.slow_speed_range))
            if roll < 0.7
            else _random_program(rng, config)
        )
        if program is None:
            return None
        drafts.append(_Draft(colour, shape, _uniform(rng, config.half_size_range), program))
    avoid = {(d.colour, d.shape) for d in drafts}
    n_total = int(rng.integers(max(config.min_objects, m), config.max_objects + 1))
    while len(drafts) < n_total:
        extra = _distractor(rng, config, avoid)
        if extra is None:
            return None
        avoid.add((extra.colour, extra.shape))
        drafts.append(extra)
    return drafts, []


def _appearance_scene(rng: np.random.Generator, config: WorldConfig) -> tuple[list[_Draft], list[int]] | None:
    """Objects with distinct (colour, shape) pairs; often sharing a colour or a shape so both words matter."""
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    palette = list(config.colours)
    shapes = list(config.shapes)
    if rng.random() < 0.5:  # a narrow palette forces "the red square" instead of "the red object"
        palette = [str(c) for c in rng.choice(palette, min(len(palette), 2), replace=False)]
    if rng.random() < 0.3:
        shapes = [str(s) for s in rng.choice(shapes, min(len(shapes), 2), replace=False)]
    looks = [(c, s) for c in palette for s in shapes]
    if len(looks) < n:
        looks = [(c, s) for c in config.colours for s in config.shapes]
    picks = rng.choice(len(looks), min(n, len(looks)), replace=False)
    drafts = []
    for index in picks:
        program = _random_program(rng, config)
        if program is None:
            return None
        drafts.append(_Draft(looks[index][0], looks[index][1], _uniform(rng, config.half_size_range), program))
        if rng.random() < config.p_edge:
            drafts[-1].program = _program(rng, config, "linear")
            drafts[-1].placement = str(rng.choice(["leave", "enter", "partial"]))
    return drafts, []


def _axis_range(lo: float, hi: float, offsets: np.ndarray) -> tuple[float, float]:
    """Start positions along one axis keeping ``lo <= start + offset <= hi`` for every offset."""
    return lo - float(offsets.min()), hi - float(offsets.max())


def _start_position(
    rng: np.random.Generator, config: WorldConfig, draft: _Draft, offsets: np.ndarray
) -> np.ndarray | None:
    """A random frame-0 centre honouring the draft's placement (None if the placement is impossible)."""
    size = config.size
    h = draft.half_size
    inside = (h + 1.0, size - 2.0 - h)
    start = np.zeros(2)
    motion_axis = None
    if draft.placement in ("leave", "enter", "partial"):
        direction = np.asarray(DIRECTIONS[draft.program.direction])
        motion_axis = int(np.argmax(np.abs(direction)))
        sign = float(direction[motion_axis])
        travel = float(abs(offsets[-1, motion_axis]))
        # Work in a coordinate u that grows along the motion, then map back.
        if draft.placement == "leave":  # fully in at the start, fully out (u - h >= size) at the end
            u_lo, u_hi = max(inside[0], size + h - travel), inside[1]
        elif draft.placement == "enter":  # fully out (u + h <= -1) at the start, fully in at the end
            u_lo, u_hi = inside[0] - travel, min(-1.0 - h, inside[1] - travel)
        else:  # fully in at the start, 30-70 % out at the end
            u_lo = max(inside[0], size - 1 - 0.4 * h - travel)
            u_hi = min(inside[1], size - 1 + 0.4 * h - travel)
        if u_lo > u_hi:
            return None
        u = _uniform(rng, (u_lo, u_hi))
        start[motion_axis] = u if sign > 0 else size - 1 - u
    for axis in range(2):
        if axis == motion_axis:
            continue
        lo, hi = _axis_range(inside[0], inside[1], offsets[:, axis])
        if lo > hi:
            return None
        start[axis] = _uniform(rng, (lo, hi))
    return start


def _occluder_trajectory(
    rng: np.random.Generator, config: WorldConfig, drafts: list[_Draft], index: int, back: np.ndarray
) -> np.ndarray | None:
    """A still occluder centred on its target's path at ``occlude_frame`` (None if it would leave the frame)."""
    draft = drafts[index]
    h = draft.half_size
    direction = np.asarray(DIRECTIONS[drafts[draft.occludes].program.direction])
    normal = np.array([-direction[1], direction[0]])
    centre = back[draft.occlude_frame] + normal * draft.occlude_offset * (1 if rng.random() < 0.5 else -1)
    if np.any(centre < h + 1.0) or np.any(centre > config.size - 2.0 - h):
        return None
    return np.repeat(centre[None, :], config.frames, axis=0)


def _place(
    rng: np.random.Generator, config: WorldConfig, drafts: list[_Draft], tries: int = 30
) -> list[np.ndarray] | None:
    """Centre trajectories ``(T, 2)`` for every draft, placed one by one so that objects keep >= 1.5 px apart
    (occluders excepted, which sit on their target's path); None if some draft cannot be placed."""
    trajectories: list[np.ndarray | None] = [None] * len(drafts)
    occupied = np.zeros((config.frames, config.size, config.size), bool)
    occluder_of = {d.occludes: i for i, d in enumerate(drafts) if d.placement == "occluder"}
    priority = {"leave": 0, "enter": 0, "partial": 0, "inside": 1}
    order = sorted(
        (i for i, d in enumerate(drafts) if d.placement != "occluder"),
        key=lambda i: (priority[drafts[i].placement], drafts[i].program.kind == "still", i),
    )
    for index in order:
        draft = drafts[index]
        offsets = np.vstack([np.zeros((1, 2)), np.cumsum(draft.program.velocities(config.frames), axis=0)])
        for _ in range(tries):
            start = _start_position(rng, config, draft, offsets)
            if start is None:
                return None
            path = start[None, :] + offsets
            if np.any(render_masks(draft.shape, draft.half_size + 1.5, path, config.size) & occupied):
                continue
            placed = [(index, path)]
            if index in occluder_of:
                front = occluder_of[index]
                front_path = _occluder_trajectory(rng, config, drafts, front, path)
                if front_path is None or np.any(
                    render_masks(drafts[front].shape, drafts[front].half_size + 1.5, front_path, config.size) & occupied
                ):
                    continue
                placed.append((front, front_path))
            for i, p in placed:
                trajectories[i] = p
                occupied |= render_masks(drafts[i].shape, drafts[i].half_size, p, config.size)
            break
        else:
            return None
    return trajectories  # type: ignore[return-value]


def _overlaps(config: WorldConfig, drafts: list[_Draft], trajectories: list[np.ndarray]) -> tuple[np.ndarray, bool]:
    """In-frame masks of all drafts, and whether two objects overlap other than as intended (a safety net:
    :func:`_place` already keeps them apart)."""
    full = np.stack([render_masks(d.shape, d.half_size, t, config.size) for d, t in zip(drafts, trajectories)])
    allowed = {frozenset((i, d.occludes)) for i, d in enumerate(drafts) if d.placement == "occluder"}
    for i in range(len(drafts)):
        for j in range(i + 1, len(drafts)):
            if frozenset((i, j)) not in allowed and np.any(full[i] & full[j]):
                return full, True
    return full, False


def _background(rng: np.random.Generator, config: WorldConfig) -> np.ndarray:
    """A static, deterministic texture: grey level, smooth luminance noise, a gradient, maybe stripes, a tint."""
    size = config.size
    axis = np.arange(size, dtype=np.float32) / size
    xx, yy = np.meshgrid(axis, axis)
    level = _uniform(rng, config.background_level)
    grid = int(rng.integers(3, 8))
    smooth = cv2.resize(
        rng.normal(0, 1, (grid, grid)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC
    ) * _uniform(rng, (8.0, 22.0))
    angle = _uniform(rng, (0.0, 2 * math.pi))
    gradient = ((xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle)) * _uniform(rng, (0.0, 40.0))
    lum = level + smooth + gradient
    if rng.random() < config.p_stripes:
        period = _uniform(rng, (5.0, 14.0)) / size
        theta = _uniform(rng, (0.0, math.pi))
        phase = _uniform(rng, (0.0, 2 * math.pi))
        lum = lum + np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + phase) * _uniform(
            rng, (6.0, 16.0)
        )
    tint = rng.normal(0, 5, 3).astype(np.float32)
    chroma = (
        cv2.resize(rng.normal(0, 1, (3, 3, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC) * 5.0
    )
    return np.clip(lum[:, :, None] + tint[None, None, :] + chroma, 0, 255).astype(np.float32)


def _scene_ok(scenario: str, candidates: list[_Candidate], group: list[int]) -> bool:
    if scenario == "lookalike":
        covered = set().union(*(c.targets for c in candidates if c.motion_lookalikes))
        return all(member in covered for member in group)
    if scenario == "relation":
        return any(c.kind == "relation" for c in candidates)
    return any(c.kind == "appearance" for c in candidates)


def _pick(rng: np.random.Generator, options: list[_Candidate], covered: set[int]) -> _Candidate:
    """A template uniformly among those available, then a candidate, preferring objects not referred to yet."""
    templates = sorted({c.meaning.template for c in options})
    template = templates[int(rng.integers(len(templates)))]
    pool = [c for c in options if c.meaning.template == template]
    fresh = [c for c in pool if not c.targets <= covered]
    pool = fresh or pool
    return pool[int(rng.integers(len(pool)))]


def _select(
    rng: np.random.Generator, config: WorldConfig, scenario: str, candidates: list[_Candidate], group: list[int]
) -> list[_Candidate]:
    """A few expressions per video: first what the scenario is about, then a kind-weighted mix."""
    chosen: list[_Candidate] = []
    covered: set[int] = set()

    def take(candidate: _Candidate) -> None:
        chosen.append(candidate)
        covered.update(candidate.targets)

    if scenario == "lookalike":  # every look-alike is a target, alone if possible
        for member in rng.permutation(group):
            if member in covered:
                continue
            lookalike = [c for c in candidates if c.motion_lookalikes and int(member) in c.targets]
            singles = [c for c in lookalike if len(c.targets) == 1]
            take(_pick(rng, singles or lookalike, covered))
    elif scenario in ("relation", "appearance"):
        kind = "relation" if scenario == "relation" else "appearance"
        for _ in range(2):
            options = [c for c in candidates if c.kind == kind and not c.targets <= covered]
            if options:
                take(_pick(rng, options, covered))
    wanted = max(len(chosen), int(rng.integers(config.min_expressions, config.max_expressions + 1)))
    weights = dict(config.kind_weights)
    while len(chosen) < wanted:
        # Not the same phrase for the same objects again (only the appearance words would differ).
        used = {(c.meaning.template, c.meaning.args, c.targets) for c in chosen}
        remaining = [c for c in candidates if (c.meaning.template, c.meaning.args, c.targets) not in used]
        kinds = sorted({c.kind for c in remaining if weights.get(c.kind, 0) > 0})
        if not kinds:
            break
        w = np.array([weights[k] for k in kinds], float)
        kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
        take(_pick(rng, [c for c in remaining if c.kind == kind], covered))
    return chosen


def _with_variants(rng: np.random.Generator, meaning: Meaning) -> Meaning:
    parts = tuple(_with_variants(rng, p) for p in meaning.parts)
    return replace(meaning, variant=int(rng.integers(len(TEMPLATES[meaning.template]))), parts=parts)


def generate_video(seed: int, config: WorldConfig | None = None) -> SyntheticVideo:
    """Generate one video, its visible masks and validated referring expressions from ``seed`` (deterministic)."""
    config = config or WorldConfig()
    config.validate()
    rng = np.random.default_rng(seed)
    roll = rng.random()
    scenario = (
        "lookalike"
        if roll < config.p_lookalike
        else "relation"
        if roll < config.p_lookalike + config.p_relation
        else "appearance"
    )
    if config.max_objects < 2:
        scenario = "appearance"  # look-alikes and relations need two objects
    builders = {"lookalike": _lookalike_scene, "relation": _relation_scene, "appearance": _appearance_scene}
    for attempt in range(3 * config.max_attempts):
        if attempt == config.max_attempts and scenario != "appearance":
            scenario = "appearance"  # give up on a rare configuration rather than loop forever
        built = builders[scenario](rng, config)
        if built is None:
            continue
        drafts, group = built
        if (
            scenario != "lookalike"
            and config.p_occlusion > 0
            and len(drafts) < config.max_objects
            and rng.random() < config.p_occlusion
        ):
            movers = [i for i, d in enumerate(drafts) if d.program.kind == "linear" and d.placement == "inside"]
            if movers:
                target = movers[int(rng.integers(len(movers)))]
                _add_occluder(
                    rng, config, drafts, target, {(d.colour, d.shape) for d in drafts}, full=rng.random() < 0.6
                )
        if len(drafts) > config.max_objects:
            continue
        trajectories = _place(rng, config, drafts)
        if trajectories is None:
            continue
        full, clash = _overlaps(config, drafts, trajectories)
        if clash:
            continue
        # Shuffle the object order so that ids carry no information; occluders go in front of their targets.
        perm = rng.permutation(len(drafts))
        inverse = np.argsort(perm)
        depth = rng.permutation(len(drafts))
        for i, d in enumerate(drafts):
            if d.placement == "occluder" and depth[i] < depth[d.occludes]:
                depth[i], depth[d.occludes] = depth[d.occludes], depth[i]
        objects = []
        for new in range(len(drafts)):
            d = drafts[perm[new]]
            rgb = np.clip(
                np.asarray(config.rgb(d.colour)) + rng.integers(-config.colour_jitter, config.colour_jitter + 1, 3),
                0,
                255,
            )
            objects.append(
                ObjectSpec(
                    d.shape,
                    d.colour,
                    (int(rgb[0]), int(rgb[1]), int(rgb[2])),
                    d.half_size,
                    d.program,
                    trajectories[perm[new]],
                    int(depth[perm[new]]),
                    d.placement,
                )
            )
        group = sorted(int(inverse[g]) for g in group)
        if group:  # look-alikes share one exact colour
            shared = objects[group[0]].rgb
            objects = [replace(o, rgb=shared) if i in group else o for i, o in enumerate(objects)]
        full = full[perm]
        masks = np.zeros_like(full)
        covered = np.zeros(full.shape[1:], bool)
        for i in sorted(range(len(objects)), key=lambda i: -objects[i].depth):
            masks[i] = full[i] & ~covered
            covered |= full[i]
        facts = compute_facts(objects, masks, full)
        candidates = _candidates(facts)
        if not _scene_ok(scenario, candidates, group):
            continue
        chosen = _select(rng, config, scenario, candidates, group)
        if not chosen:
            continue
        expressions = []
        for candidate in chosen:
            meaning = _with_variants(rng, candidate.meaning)
            expressions.append(
                ReferringExpression(
                    render_meaning(meaning),
                    tuple(sorted(candidate.targets)),
                    candidate.kind,
                    candidate.appearance_match,
                    candidate.motion_lookalikes,
                    meaning.template,
                    meaning,
                )
            )
        frames = _render_frames(rng, config, objects, full)
        return SyntheticVideo(int(seed), scenario, frames, masks, full, objects, expressions, tuple(group))
    raise RuntimeError(f"could not generate a video for seed {seed} with {config}")


def _render_frames(
    rng: np.random.Generator, config: WorldConfig, objects: list[ObjectSpec], full: np.ndarray
) -> np.ndarray:
    background = _background(rng, config)
    frames = np.repeat(background[None], config.frames, axis=0)
    for i in sorted(range(len(objects)), key=lambda i: objects[i].depth):
        frames[full[i]] = np.asarray(objects[i].rgb, np.float32)
    if config.noise_sigma > 0:
        frames += rng.normal(0, config.noise_sigma, frames.shape).astype(np.float32)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)
