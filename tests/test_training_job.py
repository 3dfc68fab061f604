"""A fine-tuning run on corrections: snapshot (train / held-out), LoRA fine-tune, gate, registry."""

import json
from dataclasses import replace

import pytest

from glus_backend.registry import ModelRegistry, ModelVersion
from glus_backend.rle import mask_to_rle
from glus_backend.settings import Settings
from glus_backend.training import TrainingDataError, split_tasks, train_project
from model.synthetic.world import generate_video

CONFIG = """<View><Image name="frames" valueList="$frames"/>
<BrushLabels name="mask" toName="frames"><Label value="Object"/></BrushLabels></View>"""


def _task(task_id, video):
    """A frame-sequence task of a synthetic video, its expressions, and a submitted brush annotation."""
    n, h, w = video.frames.shape[:3]
    results = []
    for k, expr in enumerate(video.expressions[:2]):
        mask = video.masks[list(expr.object_ids)].any(0)
        for t in range(n):
            if mask[t].any():
                results.append({
                    "id": f"{k}_{t}_brush", "type": "brushlabels", "from_name": "mask", "to_name": "frames",
                    "item_index": t, "original_width": w, "original_height": h,
                    "value": {"format": "rle", "rle": mask_to_rle(mask[t]), "brushlabels": ["Object"]},
                })  # fmt: skip
    data = {"frames": [f"f{t}.jpg" for t in range(n)], "expressions": [e.text for e in video.expressions[:2]]}
    return {"id": task_id, "data": data, "annotations": [{"id": 100 + task_id, "updated_at": "x", "result": results}]}


def test_split_is_stable_and_keeps_one_of_each():
    train, heldout = split_tasks(list(range(1, 21)), 0.2)
    assert heldout and train and set(train) | set(heldout) == set(range(1, 21))
    more_train, more_heldout = split_tasks(list(range(1, 41)), 0.2)
    assert set(heldout) <= set(more_heldout) and set(train) <= set(more_train)  # tasks never change split
    assert split_tasks([5, 9], 0.0)[1] and split_tasks([5, 9], 1.0)[0]
    with pytest.raises(TrainingDataError):
        split_tasks([3], 0.2)


def test_train_project_registers_a_gated_version(tmp_path):
    videos = {i: generate_video(50_000 + i) for i in range(1, 5)}
    tasks = [_task(i, v) for i, v in videos.items()]
    settings = replace(
        Settings(), model_dir=tmp_path / "md", train_steps=3, train_batch_size=2, heldout_fraction=0.25
    )
    stages = []
    registry = ModelRegistry(settings.model_dir)  # this host alone (no Redis: the test owns no keys there)
    summary = train_project(settings, 1, tasks, CONFIG, lambda task: list(videos[task["id"]].frames),
                            progress=stages.append, registry=registry)  # fmt: skip
    assert stages == ["snapshot", "fine-tuning", "gate", "done"]
    (record,) = registry.versions()
    meta = record.metadata
    assert record.version == summary["version"] and meta["parent"] == summary["parent"]
    assert meta["gate"]["promoted"] == (meta["gate"]["candidate_jf"] >= meta["gate"]["current_jf"])
    assert (registry.current().version == record.version) == summary["promoted"]
    assert summary["train_tasks"] + summary["heldout_tasks"] == 4 and summary["heldout_expressions"] >= 1
    # stored as a delta of the served (bundled) model: LoRA factors + the parts trained in full
    delta = json.loads((record.path / "delta.json").read_text())
    assert delta["parent"] == summary["parent"] == registry.base().version and delta["lora"]["rank"] == 8
    assert (record.path / "delta.safetensors").is_file() and (record.path / "train.log").is_file()
    assert registry.resolve(record.version).deltas == (record.path,)
    snapshot = settings.model_dir / "data" / "snapshots" / f"project1-{summary['data_snapshot']}"
    held = json.loads((snapshot / "heldout" / "meta_expressions.json").read_text())["videos"]
    assert sorted(held) == sorted(f"task{i}" for i in meta["heldout_tasks"])
    # the fine-tuning command keeps the bundled model's training aids (it was trained with them)
    command = meta["train"]["command"]
    assert "--train-parts" in command and "lora" in command and "--contrastive-aids" in command


def test_too_few_corrections_is_a_clear_error(tmp_path):
    video = generate_video(50_001)
    settings = replace(Settings(), model_dir=tmp_path / "md")
    with pytest.raises(TrainingDataError, match="at least 2"):
        train_project(settings, 1, [_task(1, video)], CONFIG, lambda task: list(video.frames))


def test_every_n_corrections_enqueue_one_training_run(redis_prefix, tmp_path):
    from types import SimpleNamespace

    from glus_backend.jobs import _count_correction
    from glus_backend.queues import JobQueues
    from tests.conftest import test_redis_url

    redis, prefix, created = redis_prefix
    settings = replace(Settings(), redis_url=test_redis_url(), queue_prefix=prefix, model_dir=tmp_path, train_every=3)
    runtime = SimpleNamespace(settings=settings, redis=redis, queues=JobQueues(redis, settings))
    outcomes = [_count_correction(runtime, 7) for _ in range(3)]
    assert [o["corrections_since_training"] for o in outcomes] == [1, 2, 3]
    assert "train_job" not in outcomes[1] and outcomes[2]["train_job"].startswith(f"{prefix}-train-")
    assert runtime.queues.queue("train").count == 1
    # while that run is queued, more corrections do not pile up more runs
    again = [_count_correction(runtime, 7) for _ in range(3)]
    assert again[2]["train_job"] == outcomes[2]["train_job"] and runtime.queues.queue("train").count == 1
    assert _count_correction(SimpleNamespace(settings=replace(settings, train_every=0)), 7) == {}
    created.extend(runtime.queues.queue("train").job_ids)


def test_relabel_enqueues_predictions_for_unannotated_tasks_only_once(redis_prefix, tmp_path):
    from glus_backend.queues import JobQueues
    from glus_backend.relabel import relabel_project, tasks_to_relabel
    from tests.conftest import test_redis_url

    redis, prefix, created = redis_prefix
    settings = replace(Settings(), redis_url=test_redis_url(), queue_prefix=prefix, model_dir=tmp_path)
    queues = JobQueues(redis, settings)
    frames = {"frames": ["a.jpg", "b.jpg"], "expression": "the red square"}
    tasks = [  # as Label Studio exports them: predictions by id only
        {"id": 1, "data": frames, "annotations": [{"id": 9, "result": []}], "predictions": []},  # annotated
        {"id": 2, "data": frames, "annotations": [{"id": 8, "was_cancelled": True}], "predictions": []},  # skipped
        {"id": 3, "data": frames, "annotations": [], "predictions": [31]},
        {"id": 4, "data": frames, "annotations": [], "predictions": [41]},  # already has one of v-new
    ]
    predictions = [{"id": 31, "task": 3, "model_version": "v-old"}, {"id": 41, "task": 4, "model_version": "v-new"}]
    assert [t["id"] for t in tasks_to_relabel(tasks, {4})] == [2, 3]

    class FakeLabelStudio:
        def get_project(self, project_id):
            return {"id": project_id, "label_config": CONFIG}

        def export_tasks(self, project_id, all_tasks=False):
            assert all_tasks  # unannotated tasks are the point
            return tasks

        def list_project_predictions(self, project_id):
            return predictions

    summary = relabel_project(queues, FakeLabelStudio(), 5, "v-new")
    assert (summary["tasks"], summary["annotated"], summary["enqueued"]) == (4, 1, 2)
    jobs = [queues.fetch(j) for j in summary["jobs"]]
    created.extend(summary["jobs"])
    assert sorted(j.args[0]["task_id"] for j in jobs) == [2, 3]
    assert {j.args[0]["model_version"] for j in jobs} == {"v-new"} and queues.queue("predict").count == 2
    # asked again before the predictions are posted: the same jobs, nothing new queued
    again = relabel_project(queues, FakeLabelStudio(), 5, "v-new")
    assert again["jobs"] == summary["jobs"] and queues.queue("predict").count == 2


def test_fine_tune_command_uses_torchrun_for_several_processes(tmp_path):
    from glus_backend.training import Snapshot, fine_tune_command

    snapshot = Snapshot("abc", tmp_path / "snap", [1, 2], [3])
    served = ModelVersion("glus-7b-0000aaaa", tmp_path / "v2", "registry", tmp_path / "base",
                          (tmp_path / "v1", tmp_path / "v2"))  # fmt: skip
    args = (served, snapshot, tmp_path / "out", "cuda")
    single = fine_tune_command(replace(Settings(), clip_dir="/clip", sam2_config="sam2-hiera-l"), *args)
    assert single[1:4] == ["-m", "model.cli", "train"] and single[single.index("--train-parts") + 1] == "lora"
    # from the served version's base and delta chain, saved as a delta of it, with the workers' CLIP and SAM-2
    text = " ".join(single)
    assert f"--init {tmp_path / 'base'} --init-delta {tmp_path / 'v1'} --init-delta {tmp_path / 'v2'}" in text
    assert "--parent-version glus-7b-0000aaaa" in text and "--clip-dir /clip --sam2-config sam2-hiera-l" in text
    # on a GPU (GLUS_PRECISION auto) the bf16 recipe; on a CPU in float32 unless GLUS_PRECISION=bf16
    assert "--precision bf16 --gradient-checkpointing --save-dtype bfloat16" in text
    cpu = " ".join(fine_tune_command(Settings(), served, snapshot, tmp_path / "out", "cpu"))
    assert "--precision" not in cpu
    assert "--precision bf16" in " ".join(fine_tune_command(replace(Settings(), precision="bf16"), served, snapshot,
                                                            tmp_path / "out", "cpu"))  # fmt: skip
    multi = fine_tune_command(replace(Settings(), train_processes=4, clip_dir="/clip", sam2_config="sam2-hiera-l"),
                              *args)  # fmt: skip
    assert multi[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert multi[5:] == single[1:]  # the same training command, one process per GPU


def test_fine_tuning_keeps_the_base_models_pointer_and_motion_aids(tmp_path):
    """A base trained with the pointer / motion losses and [SEG]-prompt dropout is fine-tuned with them; one
    trained without is not."""
    from glus_backend.training import Snapshot, fine_tune_command

    base = tmp_path / "base"
    base.mkdir()
    train = {"prompt_templates": "inference", "same_video_negatives": True, "pointer_weight": 1.0, "motion_weight": 0.5,
             "seg_prompt_dropout": 0.5}  # fmt: skip
    (base / "train_config.json").write_text(json.dumps({"train": train}))
    snapshot = Snapshot("s", tmp_path / "snap", [1], [2])
    command = fine_tune_command(Settings(), ModelVersion("v", base, "checkpoint"), snapshot, tmp_path / "out", "cpu")
    assert command[command.index("--pointer-weight") + 1] == "1.0"
    assert command[command.index("--motion-weight") + 1] == "0.5"
    assert command[command.index("--seg-prompt-dropout") + 1] == "0.5"
    (base / "train_config.json").write_text(json.dumps({"train": {**train, "pointer_weight": 0.0, "motion_weight": 0,
                                                                       "seg_prompt_dropout": 0.0}}))
    command = fine_tune_command(Settings(), ModelVersion("v", base, "checkpoint"), snapshot, tmp_path / "out", "cpu")
    assert "--pointer-weight" not in command and "--motion-weight" not in command and "--contrastive-aids" in command
    assert "--seg-prompt-dropout" not in command


def test_a_sa2va_model_is_refused_before_anything_is_written(tmp_path):
    """Fine-tuning Sa2VA is not implemented: the run stops at once, naming the family, and writes no snapshot."""
    from sa2va_fixture import released_folder

    from glus_backend.training import UnsupportedTraining

    folder = released_folder("sa2va-i-reference-tiny-a", tmp_path / "Sa2VA-i")
    settings = replace(Settings(), model_dir=tmp_path / "md", checkpoint=str(folder))
    registry = ModelRegistry(settings.model_dir, default_checkpoint=folder)
    video = generate_video(50_002)
    with pytest.raises(UnsupportedTraining, match=r"sa2va-i-[0-9a-f]{8} is a sa2va model: fine-tuning .* GLUS only"):
        train_project(settings, 1, [_task(1, video), _task(2, video)], CONFIG, lambda task: list(video.frames),
                      registry=registry)  # fmt: skip
    assert not (settings.model_dir / "data" / "snapshots").exists()
