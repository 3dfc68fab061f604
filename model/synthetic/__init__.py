"""A deterministic synthetic referring-video world (moving shapes, masks, referring expressions) in the MeViS layout.

:mod:`.world` generates one video from a seed, :mod:`.dataset` writes fixed train / valid / test splits that the
MeViS reader (``model.datasets.open_dataset("mevis", ...)``) loads, :mod:`.baselines` scores the trivial answers
(empty, whole frame, all objects, motion-blind appearance union) and :mod:`.cli` is the command line. Torch-free.
"""

from __future__ import annotations

from .world import (
    COLOURS,
    DIRECTIONS,
    DOMAINS,
    KINDS,
    SHAPES,
    TEMPLATES,
    VOCABULARY,
    Meaning,
    MotionProgram,
    ObjectFacts,
    ObjectSpec,
    ReferringExpression,
    SyntheticVideo,
    WorldConfig,
    compute_facts,
    generate_video,
    parse_expression,
    render_meaning,
    resolve,
)

__all__ = [
    "COLOURS",
    "DIRECTIONS",
    "DOMAINS",
    "KINDS",
    "SHAPES",
    "TEMPLATES",
    "VOCABULARY",
    "Meaning",
    "MotionProgram",
    "ObjectFacts",
    "ObjectSpec",
    "ReferringExpression",
    "SyntheticVideo",
    "WorldConfig",
    "compute_facts",
    "generate_video",
    "parse_expression",
    "render_meaning",
    "resolve",
]
