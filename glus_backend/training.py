"""Fine-tuning on annotators' corrections: data snapshot -> LoRA fine-tune -> promotion gate -> model registry.

A training run for a project:

1. **snapshot** - the project's correction set (``MODEL_DIR/data/mevis/project_<id>/``, kept up to date by the
   ingest jobs) is first brought in line with Label Studio's export, so ``START_TRAINING`` works with nothing
   stored locally and a missed webhook loses nothing; then it is written under
   ``MODEL_DIR/data/snapshots/<project>-<id>/`` as two splits: ``heldout`` (a stable ``GLUS_HELDOUT_FRACTION``
   of the tasks, chosen by a hash of the task id, so a task never moves between the splits as data grows) and
   ``train`` (the rest). The id hashes the annotations.
2. **fine-tune** - ``glus train --train-parts lora`` in a subprocess, from the model currently served (its base
   and delta chain): LoRA on the LLM, projectors, ``[SEG]`` projector and SAM-2 mask decoder, GLUS's losses with
   the memory bank in the loop; saved as a delta of the served version (``model/delta.py``: the LoRA factors and
   the parts trained in full, 4 % of glus-7b) in ``MODEL_DIR/staging/``.
3. **gate** - the candidate (served chain + the new delta) and the served model segment the held-out split; J&F
   must not drop (:mod:`model.promotion`, tolerance ``GLUS_GATE_TOLERANCE``).
4. **registry** - the candidate is named by its content and stored in the version store (``GLUS_MODEL_STORE``)
   with ``version.json`` (parent, data snapshot, gate figures, training settings); it is promoted if it passed,
   for every host (Redis). Workers switch between jobs. ``glus-backend versions --prune`` deletes refused ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from redis import Redis

from .correction_set import CorrectionSet
from .corrections import task_frame_loader
from .registry import ModelRegistry, ModelVersion
from .settings import Settings

logger = logging.getLogger(__name__)


class UnsupportedTraining(RuntimeError):
    """The served model's family cannot be fine-tuned here (Sa2VA); retrying cannot help."""

    transient = False


class TrainingDataError(ValueError):
    """Not enough corrections to train and to hold some out."""


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    root: Path
    train_tasks: list[int]
    heldout_tasks: list[int]


def enqueue_training(queues, project_id: int, reason: str):
    """Put a training run of ``project_id`` on the train queue, unless one is already queued or running: then
    that one is returned (a second "Start training" click does not start a second run)."""
    from .queues import TRAIN, TRAIN_FUNC, Enqueued

    active_key = queues.key("train-active", str(int(project_id)))
    active = queues.redis.get(active_key)
    if active:
        job = queues.fetch(active.decode())
        status = str(getattr(job.get_status(refresh=True), "value", "")) if job is not None else ""
        if status in ("queued", "started", "deferred", "scheduled"):
            return Enqueued(job.id, False, status)
    job_id = queues.job_id(TRAIN, int(project_id), time.time(), uuid.uuid4().hex)
    queues.redis.set(active_key, job_id, ex=7 * 24 * 3600)
    return queues.enqueue(
        TRAIN,
        TRAIN_FUNC,
        job_id,
        {"project_id": int(project_id), "reason": reason},
        24 * 3600,
        meta={"project_id": int(project_id), "reason": reason},
    )


def _task_hash(task_id: int) -> int:
    return int(hashlib.sha256(f"task-{int(task_id)}".encode()).hexdigest()[:8], 16)


def split_tasks(task_ids: list[int], heldout_fraction: float) -> tuple[list[int], list[int]]:
    """``(train, heldout)``: a task is held out when its hash falls in the fraction; at least one of each."""
    if len(task_ids) < 2:
        raise TrainingDataError(f"{len(task_ids)} annotated task(s): at least 2 are needed (one is held out)")
    threshold = heldout_fraction * 0xFFFFFFFF
    heldout = [t for t in task_ids if _task_hash(t) < threshold]
    if not heldout:
        heldout = [min(task_ids, key=_task_hash)]
    train = [t for t in task_ids if t not in heldout]
    if not train:
        keep = max(heldout, key=_task_hash)
        heldout.remove(keep)
        train = [keep]
    return sorted(train), sorted(heldout)


def write_snapshot(
    settings: Settings,
    project_id: int,
    tasks: list[dict],
    label_config: str,
    frame_loader: Callable[[dict], list],
    heldout_fraction: float,
) -> Snapshot:
    """Bring the project's correction set up to date with ``tasks`` (its export), then write the training run's
    ``train`` and ``heldout`` splits of it (frames shared with the set)."""
    corrections = CorrectionSet.of_project(settings.model_dir, project_id)
    summary = corrections.rebuild(tasks, label_config, frame_loader, settings.expression_fields)
    logger.info("project %s corrections: %s", project_id, summary)
    task_ids = corrections.task_ids()
    train_ids, heldout_ids = split_tasks(task_ids, heldout_fraction)
    fingerprint = [(t, e["annotation_id"], str(e["updated_at"])) for t in task_ids for e in [corrections.entry(t)]]
    snapshot_id = hashlib.sha256(json.dumps(fingerprint).encode()).hexdigest()[:12]
    root = settings.model_dir / "data" / "snapshots" / f"project{project_id}-{snapshot_id}"
    for split, ids in (("train", train_ids), ("heldout", heldout_ids)):
        if not (root / split / "meta_expressions.json").is_file():
            corrections.write_split(root / split, ids)
    return Snapshot(snapshot_id, root, train_ids, heldout_ids)


def _base_training_aids(base: Path) -> list[str]:
    """Train as the base model was trained: a model trained with the from-scratch aids keeps them."""
    config_file = base / "train_config.json"
    if not config_file.is_file():
        return []
    train = json.loads(config_file.read_text()).get("train", {})
    aids = []
    if train.get("prompt_templates") == "inference":
        aids += ["--prompt-templates", "inference"]
    if train.get("same_video_negatives"):
        aids.append("--contrastive-aids")
    for field, flag in (
        ("pointer_weight", "--pointer-weight"),
        ("motion_weight", "--motion-weight"),
        ("seg_prompt_dropout", "--seg-prompt-dropout"),  # or LoRA may teach the decoder to ignore the point again
    ):
        if train.get(field):
            aids += [flag, str(train[field])]
    return aids


def _model_arguments(settings: Settings, served: ModelVersion) -> list[str]:
    """``glus train`` / gate arguments that load ``served``: its base, its delta chain, and for a released base
    the CLIP folder, SAM-2 file and architecture the workers use."""
    arguments = ["--init", str(served.base)]
    for delta in served.deltas:
        arguments += ["--init-delta", str(delta)]
    for flag, value in (("--clip-dir", settings.clip_dir), ("--sam2-checkpoint", settings.sam2_checkpoint),
                        ("--sam2-config", settings.sam2_config)):  # fmt: skip
        if value:
            arguments += [flag, str(value)]
    return arguments


def _precision_arguments(settings: Settings, device: str) -> list[str]:
    """Train in the precision the workers serve in: with bf16 (``GLUS_PRECISION``, or ``auto`` on a GPU) the frozen
    base stays bf16 (a 7B base never exists in float32), what trains is float32, the LLM's layers are recomputed
    in the backward pass, and the delta is stored in bf16 (4 % of glus-7b)."""
    bf16 = settings.precision == "bf16" or (settings.precision == "auto" and device.startswith("cuda"))
    return ["--precision", "bf16", "--gradient-checkpointing", "--save-dtype", "bfloat16"] if bf16 else []


def fine_tune_command(
    settings: Settings, served: ModelVersion, snapshot: Snapshot, out: Path, device: str
) -> list[str]:
    """The ``glus train`` command line of a fine-tuning run (LoRA, from the served version, saved as its delta);
    with ``GLUS_TRAIN_PROCESSES`` > 1 launched by torchrun, one process per GPU (``--batch-size`` is per
    process)."""
    launcher = [sys.executable]
    if settings.train_processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={settings.train_processes}"]
    return [
        *launcher, "-m", "model.cli", "train",
        "--data", str(snapshot.root), "--split", "train",
        *_model_arguments(settings, served), "--parent-version", served.version, "--train-parts", "lora",
        "--steps", str(settings.train_steps), "--lr", str(settings.train_lr),
        "--batch-size", str(settings.train_batch_size), "--warmup", str(min(100, settings.train_steps // 10)),
        "--weight-decay", "0", "--contrastive-weight", str(settings.train_contrastive_weight),
        "--seed", "0", "--out", str(out), "--device", device, *_precision_arguments(settings, device),
        *_base_training_aids(served.path),
    ]  # fmt: skip


def train_project(
    settings: Settings,
    project_id: int,
    tasks: list[dict],
    label_config: str,
    frame_loader: Callable[[dict], list],
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
    registry: ModelRegistry | None = None,
) -> dict:
    """One training run (see the module docstring); returns what the job status shows."""
    from model.checkpoint import CheckpointChain
    from model.promotion import promotion_gate

    registry = registry or ModelRegistry.from_settings(settings, Redis.from_url(settings.redis_url))
    say = progress or (lambda stage: None)
    base = registry.current()
    from model.families import family_of

    if family_of(base.base) != "glus":
        raise UnsupportedTraining(
            f"the served model {base.version} is a {family_of(base.base)} model: fine-tuning from corrections is "
            "implemented for GLUS only (serve a GLUS checkpoint to train)"
        )
    say("snapshot")
    snapshot = write_snapshot(settings, project_id, tasks, label_config, frame_loader, settings.heldout_fraction)
    staging = settings.model_dir / "staging" / uuid.uuid4().hex[:12]
    staging.mkdir(parents=True)
    say("fine-tuning")
    started = time.perf_counter()
    command = fine_tune_command(settings, base, snapshot, staging, device)
    with (staging / "train.log").open("w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        tail = (staging / "train.log").read_text()[-2000:]
        raise RuntimeError(f"fine-tuning failed (exit {code}); end of {staging / 'train.log'}:\n{tail}")
    train_minutes = (time.perf_counter() - started) / 60
    say("gate")
    served = CheckpointChain(base.base, base.deltas, settings.clip_dir, settings.sam2_checkpoint, settings.sam2_config)
    candidate = served.with_delta(staging)
    gate = promotion_gate(candidate, served, snapshot.root, "heldout", settings.gate_tolerance, device)
    record = registry.register(
        staging,
        {
            "parent": base.version,
            "project": project_id,
            "data_snapshot": snapshot.snapshot_id,
            "train_tasks": snapshot.train_tasks,
            "heldout_tasks": snapshot.heldout_tasks,
            "gate": gate.to_dict(),
            "train": {"command": command[1:], "minutes": round(train_minutes, 2)},
        },
    )
    if gate.promoted:
        registry.promote(record.version, reason=f"gate: J&F {gate.candidate_jf:.3f} >= {gate.current_jf:.3f}")
    say("done")
    return {
        "version": record.version,
        "parent": base.version,
        "promoted": gate.promoted,
        "candidate_jf": gate.candidate_jf,
        "current_jf": gate.current_jf,
        "heldout_expressions": gate.expressions,
        "train_tasks": len(snapshot.train_tasks),
        "heldout_tasks": len(snapshot.heldout_tasks),
        "data_snapshot": snapshot.snapshot_id,
        "train_minutes": round(train_minutes, 2),
    }


def train_from_label_studio(
    settings: Settings,
    client,
    project_id: int,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
    registry: ModelRegistry | None = None,
) -> dict:
    """:func:`train_project` on the project's annotated tasks as Label Studio exports them (what
    ``START_TRAINING`` and ``glus-backend train`` run), media fetched as the workers fetch it."""
    project = client.get_project(project_id)
    label_config = project["label_config"]
    return train_project(
        settings,
        project_id,
        client.export_tasks(project_id),
        label_config,
        task_frame_loader(client, settings, label_config),
        device=device,
        progress=progress,
        registry=registry,
    )
