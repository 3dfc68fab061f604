"""Fixed synthetic train / valid / test splits written in the MeViS layout, and an in-memory training stream.

A split folder holds what :class:`model.datasets.MevisDataset` reads, so the loaders, the evaluation and the
prediction commands that serve MeViS serve the synthetic benchmark unchanged:

* ``JPEGImages/<video>/<00000>.jpg`` (JPEG quality 95, 4:4:4 chroma so that 10-px objects keep their colour),
* ``meta_expressions.json`` (MeViS: frames, expressions with ``obj_id`` and ``anno_id`` lists),
* ``mask_dict.json`` (one ``anno_id`` per object and video: a COCO RLE, or null where the object is not visible),

plus two files MeViS does not have: ``expression_info.json`` ``{video: {exp_id: {"kind", "appearance_match",
"motion_lookalikes", "template"}}}`` for per-category evaluation and the motion-blind baseline, and
``objects.json`` ``{video: {"seed", "scenario", "lookalike_group", "objects": [{"obj_id", "anno_id", "colour",
"shape", "half_size", "program", "placement", "depth", "trajectory"}]}}``.

Video ``i`` of a split with seed ``s`` is ``generate_video(video_seed(s, i))``; :func:`iter_training_samples`
yields the same sequence, so the written train split is a prefix of the training stream of the same seed.
Everything is deterministic: the same arguments give byte-identical files.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import shutil
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ..datasets.masks import encode_rle
from ..datasets.writers import atomic_write_bytes
from .world import SyntheticVideo, WorldConfig, generate_video

logger = logging.getLogger(__name__)

SPLITS = MappingProxyType({"train": (4000, 1), "valid": (200, 2), "test": (400, 3)})
"""Default ``split -> (number of videos, seed)``; the seeds keep the splits disjoint."""

FRAME_NAME = "{:05d}"
JPEG_QUALITY = 95


def video_seed(split_seed: int, index: int) -> int:
    """The generator seed of video ``index`` of a split (well mixed, so splits with different seeds never share
    a video)."""
    state = np.random.SeedSequence(entropy=int(split_seed), spawn_key=(int(index),)).generate_state(1, np.uint64)
    return int(state[0])


def video_name(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


def iter_training_samples(seed: int, config: WorldConfig | None = None, start: int = 0) -> Iterator[SyntheticVideo]:
    """Endless stream of videos for training without touching the disk (video ``i`` = split video ``i`` of the
    same seed). Use a seed other than the valid / test seeds (2, 3)."""
    for index in itertools.count(start):
        yield generate_video(video_seed(seed, index), config)


def encode_frame(frame: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an RGB frame (4:4:4 chroma: no colour bleeding across the small objects' edges)."""
    params = [
        cv2.IMWRITE_JPEG_QUALITY,
        int(quality),
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
    ]
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(frame[:, :, ::-1]), params)
    if not ok:
        raise OSError("JPEG encoding failed")
    return data.tobytes()


def _object_record(video: SyntheticVideo, obj_id: int) -> dict[str, Any]:
    obj = video.objects[obj_id]
    program = obj.program
    return {
        "obj_id": obj_id,
        "colour": obj.colour,
        "shape": obj.shape,
        "half_size": round(float(obj.half_size), 3),
        "rgb": list(obj.rgb),
        "program": {
            "kind": program.kind,
            "direction": program.direction,
            "direction2": program.direction2,
            "speed": round(float(program.speed), 3),
            "switch": program.switch,
        },
        "placement": obj.placement,
        "depth": obj.depth,
        "trajectory": [[round(float(x), 3), round(float(y), 3)] for x, y in obj.trajectory],
    }


def _encode_video(job: tuple[int, int, WorldConfig | None, int]) -> dict[str, Any]:
    """Everything one video contributes to a split, as bytes and JSON-ready values (runs in workers)."""
    split_seed, index, config, quality = job
    video = generate_video(video_seed(split_seed, index), config)
    rles = [[encode_rle(mask) if mask.any() else None for mask in video.masks[k]] for k in range(len(video.objects))]
    return {
        "seed": video.seed,
        "scenario": video.scenario,
        "lookalike_group": list(video.lookalike_group),
        "frames": [encode_frame(frame, quality) for frame in video.frames],
        "rles": rles,
        "objects": [_object_record(video, k) for k in range(len(video.objects))],
        "expressions": [
            {
                "exp": e.text,
                "obj_id": list(e.object_ids),
                "kind": e.kind,
                "appearance_match": list(e.appearance_match),
                "motion_lookalikes": bool(e.motion_lookalikes),
                "template": e.template,
            }
            for e in video.expressions
        ],
    }


def _iter_encoded(jobs: list[tuple[int, int, WorldConfig | None, int]], workers: int) -> Iterator[dict[str, Any]]:
    if workers <= 1 or len(jobs) < 2:
        yield from map(_encode_video, jobs)
        return
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(_encode_video, jobs, chunksize=16)


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode("utf-8")


MARKER = ".synthetic_split"
"""Written first into every split folder; only folders carrying it are ever deleted (``overwrite``)."""


def _prepare_folder(split_dir: Path, overwrite: bool) -> None:
    if split_dir.exists() and any(split_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{split_dir} is not empty (pass overwrite=True to replace a synthetic split)")
        if not (split_dir / MARKER).is_file():
            raise FileExistsError(f"{split_dir} has no {MARKER} marker, so it is not a synthetic split; not deleting")
        shutil.rmtree(split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / MARKER).write_bytes(b"")


def write_split(
    root: str | Path,
    split: str,
    num_videos: int,
    seed: int,
    config: WorldConfig | None = None,
    *,
    quality: int = JPEG_QUALITY,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``num_videos`` videos as ``root/<split>/`` in the MeViS layout and return that folder.

    ``workers`` > 1 generates in worker processes (the output is identical). An existing synthetic split is
    replaced only with ``overwrite``; the JSON files are written last, so an interrupted run is visibly
    incomplete (no ``meta_expressions.json``).
    """
    if num_videos < 0:
        raise ValueError("num_videos must be >= 0")
    (config or WorldConfig()).validate()
    split_dir = Path(root) / split
    _prepare_folder(split_dir, overwrite)
    images = split_dir / "JPEGImages"
    images.mkdir(exist_ok=True)
    meta: dict[str, Any] = {}
    mask_dict: dict[str, Any] = {}
    info: dict[str, Any] = {}
    objects: dict[str, Any] = {}
    next_anno = 0
    jobs = [(seed, index, config, quality) for index in range(num_videos)]
    logger.info("writing %d videos to %s (seed %d)", num_videos, split_dir, seed)
    for index, encoded in enumerate(
        tqdm(_iter_encoded(jobs, workers), total=num_videos, unit="video", desc=split, disable=not progress)
    ):
        vid = video_name(split, index)
        folder = images / vid
        folder.mkdir()
        frame_names = [FRAME_NAME.format(t) for t in range(len(encoded["frames"]))]
        for name, data in zip(frame_names, encoded["frames"]):
            (folder / f"{name}.jpg").write_bytes(data)
        anno_ids = list(range(next_anno, next_anno + len(encoded["rles"])))
        next_anno += len(anno_ids)
        for anno_id, rles in zip(anno_ids, encoded["rles"]):
            mask_dict[str(anno_id)] = rles
        expressions = {}
        video_info = {}
        for exp_id, exp in enumerate(encoded["expressions"]):
            expressions[str(exp_id)] = {
                "exp": exp["exp"],
                "obj_id": exp["obj_id"],
                "anno_id": [anno_ids[k] for k in exp["obj_id"]],
            }
            video_info[str(exp_id)] = {
                key: exp[key] for key in ("kind", "appearance_match", "motion_lookalikes", "template")
            }
        meta[vid] = {"frames": frame_names, "expressions": expressions}
        info[vid] = video_info
        for record, anno_id in zip(encoded["objects"], anno_ids):
            record["anno_id"] = anno_id
        objects[vid] = {
            "seed": encoded["seed"],
            "scenario": encoded["scenario"],
            "lookalike_group": encoded["lookalike_group"],
            "objects": encoded["objects"],
        }
    atomic_write_bytes(split_dir / "mask_dict.json", _json_bytes(mask_dict))
    atomic_write_bytes(split_dir / "expression_info.json", _json_bytes(info))
    atomic_write_bytes(split_dir / "objects.json", _json_bytes(objects))
    atomic_write_bytes(split_dir / "meta_expressions.json", _json_bytes({"videos": meta}))
    logger.info(
        "%s: %d videos, %d expressions, %d objects", split, num_videos, sum(len(v) for v in info.values()), next_anno
    )
    return split_dir


def generate_benchmark(
    root: str | Path,
    sizes: Mapping[str, int] | None = None,
    config: WorldConfig | None = None,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Write the fixed splits (:data:`SPLITS`; ``sizes`` overrides the number of videos per split, 0 skips one)
    under ``root`` and return ``{split: folder}``."""
    sizes = dict(sizes or {})
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; expected {', '.join(SPLITS)}")
    out = {}
    for split, (default_n, seed) in SPLITS.items():
        n = sizes.get(split, default_n)
        if n > 0:
            out[split] = write_split(
                root, split, n, seed, config, workers=workers, overwrite=overwrite, progress=progress
            )
    return out


def load_split_extras(split_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(expression_info, objects)`` of a written split folder."""
    split_dir = Path(split_dir)
    with (split_dir / "expression_info.json").open("rb") as handle:
        info = json.load(handle)
    with (split_dir / "objects.json").open("rb") as handle:
        objects = json.load(handle)
    return info, objects
