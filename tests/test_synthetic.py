"""The synthetic referring-video world: determinism, masks against frames, unambiguous expressions (checked by an
independent, symbolic reading of the motion programs), occlusion and frame exits, the MeViS-layout round trip
through the project's reader, and the trivial baselines."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from model.datasets import open_dataset
from model.synthetic import (
    SHAPES,
    VOCABULARY,
    WorldConfig,
    compute_facts,
    generate_video,
    parse_expression,
    render_meaning,
    resolve,
)
from model.synthetic.baselines import items_from_split, items_from_videos, score_baselines
from model.synthetic.cli import main as cli_main
from model.synthetic.dataset import (
    SPLITS,
    generate_benchmark,
    iter_training_samples,
    video_name,
    video_seed,
    write_split,
)
from model.synthetic.world import render_masks

ROOT = Path(__file__).resolve().parents[1]
N_VIDEOS = 120


@pytest.fixture(scope="module")
def videos():
    return [generate_video(video_seed(11, i)) for i in range(N_VIDEOS)]


def _forced(contrast: str, n: int = 6) -> list:
    """Look-alike videos whose look-alikes differ by one kind of contrast."""
    config = WorldConfig(p_lookalike=1.0, p_relation=0.0, contrast_weights=((contrast, 1.0),))
    return [generate_video(1000 + i, config) for i in range(n)]


# ----------------------------------------------------------------------------------------------------------
# Determinism
# ----------------------------------------------------------------------------------------------------------


def test_same_seed_same_video_different_seed_different_video():
    a, b, c = generate_video(7), generate_video(7), generate_video(8)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks)
    assert a.expressions == b.expressions
    assert [o.program for o in a.objects] == [o.program for o in b.objects]
    assert not np.array_equal(a.frames, c.frames)
    assert a.frames.dtype == np.uint8 and a.frames.shape == (8, 64, 64, 3)
    assert a.masks.dtype == bool and a.masks.shape == (len(a.objects), 8, 64, 64)


def _split_digest(split_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in ("meta_expressions.json", "mask_dict.json", "expression_info.json", "objects.json"):
        digest.update((split_dir / name).read_bytes())
    for frame in sorted((split_dir / "JPEGImages").rglob("*.jpg"))[::7]:
        digest.update(frame.read_bytes())
    return digest.hexdigest()


def test_written_split_is_byte_identical_for_a_seed(tmp_path):
    one = write_split(tmp_path / "a", "test", 10, 3, progress=False)
    two = write_split(tmp_path / "b", "test", 10, 3, workers=2, progress=False)
    other = write_split(tmp_path / "c", "test", 10, 4, progress=False)
    assert _split_digest(one) == _split_digest(two)
    assert _split_digest(one) != _split_digest(other)
    with pytest.raises(FileExistsError):
        write_split(tmp_path / "a", "test", 10, 3, progress=False)
    again = write_split(tmp_path / "a", "test", 10, 3, overwrite=True, progress=False)
    assert _split_digest(again) == _split_digest(one)


def test_training_stream_extends_the_split_and_splits_are_disjoint():
    stream = iter_training_samples(5)
    first = next(stream)
    assert np.array_equal(first.frames, generate_video(video_seed(5, 0)).frames)
    seeds = {video_seed(s, i) for _, s in SPLITS.values() for i in range(200)}
    assert len(seeds) == 200 * len(SPLITS)


# ----------------------------------------------------------------------------------------------------------
# Masks against frames and geometry
# ----------------------------------------------------------------------------------------------------------


def test_masks_match_frames_and_geometry(videos):
    config = WorldConfig()
    for video in videos[:40]:
        assert not np.any(video.masks & ~video.full_masks)
        assert np.all(video.masks.sum(axis=0) <= 1)  # visible masks never overlap
        for k, obj in enumerate(video.objects):
            assert np.array_equal(video.full_masks[k], render_masks(obj.shape, obj.half_size, obj.trajectory, 64))
            pixels = video.frames[video.masks[k]].astype(float)
            if len(pixels):  # the object's colour is where its visible mask is (up to the frame noise)
                assert np.abs(pixels - obj.rgb).mean() < 2 * config.noise_sigma
                assert np.abs(pixels.mean(axis=0) - obj.rgb).max() < 2.5
            front = [j for j, o in enumerate(video.objects) if o.depth > obj.depth]
            hidden_by_front = video.full_masks[front].any(axis=0) if front else np.zeros_like(video.masks[k])
            assert np.array_equal(video.masks[k], video.full_masks[k] & ~hidden_by_front)


def test_objects_leave_and_enter_the_frame_with_empty_masks():
    leavers = [(v, e) for v in _forced("leave") for e in v.expressions if e.template == "motion/leave"]
    enterers = [(v, e) for v in _forced("enter") for e in v.expressions if e.template == "motion/enter"]
    assert leavers and enterers
    for video, expression in leavers:
        (k,) = expression.object_ids
        areas = video.masks[k].sum(axis=(1, 2))
        assert areas[0] > 0 and areas[-1] == 0
        assert np.all(np.diff(areas[areas.argmax() :]) <= 2)  # shrinks while it crosses (up to sub-pixel wobble)
        assert any(0 < a < areas.max() for a in areas)  # partly out on the way
    for video, expression in enterers:
        (k,) = expression.object_ids
        areas = video.masks[k].sum(axis=(1, 2))
        assert areas[0] == 0 and areas[-1] > 0


def test_partial_exits_appear(videos):
    partial = [(v, k) for v in videos for k, o in enumerate(v.objects) if o.placement == "partial"]
    assert partial
    for video, k in partial:
        area = video.full_masks[k].sum(axis=(1, 2))
        assert 0 < area[-1] < area[0]


def test_occluded_objects_have_partial_then_empty_visible_masks():
    hidden = [(v, e) for v in _forced("hidden", 8) for e in v.expressions if e.template == "motion/hidden"]
    assert hidden
    fully_hidden = 0
    for video, expression in hidden:
        (k,) = expression.object_ids
        visible, full = video.masks[k].sum(axis=(1, 2)), video.full_masks[k].sum(axis=(1, 2))
        assert np.all(visible <= full)
        ratio = visible / np.maximum(full, 1)
        assert ratio.min() <= 0.3 and ratio.max() > 0.6  # mostly visible before or after, (nearly) gone behind
        assert np.any((0 < visible) & (visible < full))  # partly hidden on the way
        fully_hidden += int(np.any((visible == 0) & (full > 0)))
        occluders = [o for o in video.objects if o.placement == "occluder"]
        assert occluders and all(o.depth > video.objects[k].depth for o in occluders)
    assert fully_hidden > 0


# ----------------------------------------------------------------------------------------------------------
# Expressions
# ----------------------------------------------------------------------------------------------------------


def test_expressions_round_trip_and_resolve_to_their_targets(videos):
    vocabulary = set(VOCABULARY)
    for video in videos:
        facts = compute_facts(video.objects, video.masks, video.full_masks)
        assert video.expressions
        for expression in video.expressions:
            meaning = parse_expression(expression.text)
            assert meaning == expression.meaning and render_meaning(meaning) == expression.text
            assert resolve(meaning, facts) == frozenset(expression.object_ids)
            assert set(expression.text.split()) <= vocabulary
            assert set(expression.object_ids) <= set(expression.appearance_match)
            assert (len(expression.object_ids) >= 2) == (expression.kind == "multi")
        assert len({e.text for e in video.expressions}) == len(video.expressions)


def _symbolic_fit(video, k: int, template: str, args: tuple[str, ...], group: list[int]) -> bool:
    """Does object k fit the motion words, read from its *program* (not from measured motion)?"""
    obj = video.objects[k]
    program = obj.program
    predicate = template.split("/")[1]
    if predicate in ("linear", "keep"):
        return program.kind == "linear" and program.direction == args[0]
    if predicate == "still":
        return program.kind == "still"
    if predicate in ("move_stop", "stop_move"):
        return program.kind == predicate and program.direction == args[0]
    if predicate == "turn":
        return program.kind == "turn" and (program.direction, program.direction2) == args
    if predicate in ("faster", "slower"):
        speeds = {j: video.objects[j].program.speed for j in group}
        pick = max(speeds, key=speeds.get) if predicate == "faster" else min(speeds, key=speeds.get)
        return k == pick
    if predicate in ("leave", "enter"):
        return obj.placement == predicate
    if predicate == "hidden":
        visible, full = video.masks[k].sum(axis=(1, 2)), video.full_masks[k].sum(axis=(1, 2))
        return bool(np.any((full > 0) & (visible <= 0.3 * full)))
    raise AssertionError(predicate)


def test_motion_expressions_fit_the_target_and_not_its_lookalikes(videos):
    checked = set()
    pool = list(videos) + [v for c in ("speed", "turn", "move_stop", "stop_move", "pair") for v in _forced(c, 4)]
    for video in pool:
        for expression in video.expressions:
            if not expression.motion_lookalikes:
                continue
            meaning = expression.meaning
            targets = set(expression.object_ids)
            looks = {(video.objects[k].colour, video.objects[k].shape) for k in targets}
            lookalikes = [j for j, o in enumerate(video.objects) if j not in targets and (o.colour, o.shape) in looks]
            assert lookalikes and set(lookalikes) <= set(expression.appearance_match)
            group = list(expression.appearance_match)
            for j in group:
                fits = _symbolic_fit(video, j, meaning.template, meaning.args, group)
                assert fits == (j in targets), (expression.text, j)
            checked.add(meaning.template)
    assert {
        "motion/linear",
        "motion/still",
        "motion/move_stop",
        "motion/stop_move",
        "motion/turn",
        "motion/faster",
        "motion/slower",
        "multi/linear",
    } <= checked


def test_scenario_mix_and_lookalike_coverage(videos):
    scenarios = [v.scenario for v in videos]
    assert 0.4 < scenarios.count("lookalike") / len(videos) < 0.7
    kinds = {e.kind for v in videos for e in v.expressions}
    assert kinds == {"appearance", "relation", "motion", "multi"}
    for video in videos:
        if video.scenario == "lookalike":
            assert len(video.lookalike_group) >= 2
            looks = {
                (video.objects[k].colour, video.objects[k].shape, video.objects[k].rgb) for k in video.lookalike_group
            }
            assert len(looks) == 1
            covered = {k for e in video.expressions if e.motion_lookalikes for k in e.object_ids}
            assert set(video.lookalike_group) <= covered  # every look-alike is a target once


def test_grammar_parser_rejects_other_text_and_config_is_validated():
    with pytest.raises(ValueError):
        parse_expression("the dog jumping")
    assert parse_expression("the red square and the circle").template == "multi/and"
    assert parse_expression("the squares moving left").args == ("left",)
    assert {"square", "squares", "left", "faster", "hidden"} <= set(VOCABULARY) and set(SHAPES) <= set(VOCABULARY)
    with pytest.raises(ValueError):
        WorldConfig(colours=("red", "brown")).validate()
    with pytest.raises(ValueError):
        WorldConfig(p_lookalike=0.9, p_relation=0.3).validate()


def test_other_sizes_still_generate():
    video = generate_video(3, WorldConfig(size=96, frames=12, half_size_range=(6.0, 10.0)))
    assert video.frames.shape == (12, 96, 96, 3) and video.expressions


# ----------------------------------------------------------------------------------------------------------
# MeViS layout and baselines
# ----------------------------------------------------------------------------------------------------------


def test_written_split_loads_with_the_mevis_reader(tmp_path):
    split_dir = write_split(tmp_path, "valid", 8, 2, progress=False)
    dataset = open_dataset("mevis", tmp_path, "valid")
    assert dataset.has_gt and list(dataset.videos) == [video_name("valid", i) for i in range(8)]
    for index, (video_id, entry) in enumerate(dataset.videos.items()):
        video = generate_video(video_seed(2, index))
        assert [e.text for e in entry.expressions] == [e.text for e in video.expressions]
        for exp_index, expression in enumerate(entry.expressions):
            assert expression.obj_ids == video.expressions[exp_index].object_ids
            assert np.array_equal(dataset.gt_masks(video_id, expression.exp_id), video.expression_masks(exp_index))
        paths = dataset.frame_paths(video_id)
        assert dataset.frame_size(video_id) == (64, 64)
        decoded = cv2.imread(str(paths[3]))[:, :, ::-1].astype(int)
        assert np.abs(decoded - video.frames[3]).mean() < 5.0  # JPEG q95 of a noisy frame
        for k, obj in enumerate(video.objects):
            if video.masks[k, 3].sum() > 20:  # colours survive the compression
                assert np.abs(decoded[video.masks[k, 3]].mean(axis=0) - obj.rgb).max() < 6
    assert (split_dir / "expression_info.json").is_file() and (split_dir / "objects.json").is_file()


def test_baselines_are_ordered_and_beatable(videos, tmp_path):
    results = score_baselines(items_from_videos(videos))
    whole, union, appearance = results["whole_frame"], results["all_objects"], results["appearance_union"]
    assert results["empty"]["all"].j < union["all"].j
    assert whole["all"].j < union["all"].j
    motion = appearance["motion_lookalikes"]
    assert union["motion_lookalikes"].j < motion.j < 0.8  # motion-blind is better than objectness, far from 1
    assert appearance["appearance"].j == 1.0
    # The same numbers come back from the written files through the MeViS reader.
    write_split(tmp_path, "test", 12, 3, progress=False)
    from_disk = score_baselines(items_from_split(tmp_path, "test"))
    in_memory = score_baselines(items_from_videos(generate_video(video_seed(3, i)) for i in range(12)))
    for name in from_disk:
        for category, score in from_disk[name].items():
            assert score.j == pytest.approx(in_memory[name][category].j)
            assert score.f == pytest.approx(in_memory[name][category].f)


def test_baselines_by_template_split_every_expression_once(tmp_path):
    """Template groups partition the expressions: counts add up to "all", look-alike contrasts are their own
    group, the written split gives the same groups as the videos in memory, and the motion-blind answer is
    exact on appearance templates but not on look-alike motion ones."""
    from model.synthetic.baselines import TEMPLATE_PREFIX

    videos = [generate_video(video_seed(3, i)) for i in range(24)]
    results = score_baselines(items_from_videos(videos), by_template=True)
    union = results["appearance_union"]
    groups = {c: s for c, s in union.items() if c.startswith(TEMPLATE_PREFIX)}
    assert sum(s.n_expressions for s in groups.values()) == union["all"].n_expressions
    lookalike_groups = [c for c in groups if c.endswith("(look-alikes)")]
    assert lookalike_groups and all("motion/" in c or "multi/" in c for c in lookalike_groups)
    assert sum(groups[c].n_expressions for c in lookalike_groups) == union["motion_lookalikes"].n_expressions
    assert groups[TEMPLATE_PREFIX + "appearance"].jf == 1.0
    assert min(groups[c].jf for c in lookalike_groups) < 1.0
    assert not any(c.startswith(TEMPLATE_PREFIX) for c in score_baselines(items_from_videos(videos))["empty"])
    write_split(tmp_path, "test", 24, 3, progress=False)
    from_disk = score_baselines(items_from_split(tmp_path, "test"), by_template=True)["appearance_union"]
    assert {c: s.n_expressions for c, s in from_disk.items()} == {c: s.n_expressions for c, s in union.items()}


def test_cli_generate_and_baselines(tmp_path, capsys):
    assert cli_main(["-q", "generate", "--root", str(tmp_path), "--train", "3", "--valid", "2", "--test", "6"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test", "train", "valid"]
    capsys.readouterr()
    assert cli_main(["-q", "baselines", "--root", str(tmp_path), "--split", "test"]) == 0
    table = capsys.readouterr().out
    assert "appearance_union" in table and "motion_lookalikes" in table and "J&F" in table
    assert cli_main(["-q", "generate", "--root", str(tmp_path), "--train", "1"]) == 2  # exists, no --overwrite
    paths = generate_benchmark(tmp_path / "b", {"train": 2, "valid": 0, "test": 1}, progress=False)
    assert set(paths) == {"train", "test"}


def test_recoloured_domain_draws_the_same_words_in_new_colours(tmp_path):
    from model.synthetic.world import COLOURS, DOMAINS, RECOLOURED_PALETTE

    shifted = DOMAINS["recoloured"]
    palette = dict(RECOLOURED_PALETTE)
    assert set(palette) == set(COLOURS) and all(palette[c] != COLOURS[c] for c in COLOURS)
    for seed in range(12):
        video = generate_video(seed, shifted)
        assert video.scenario != "lookalike"  # colour is what the shift changes
        for obj in video.objects:
            drawn = np.asarray(obj.rgb)
            assert np.abs(drawn - palette[obj.colour]).max() <= shifted.colour_jitter
        plain = generate_video(seed, replace(shifted, palette=()))  # same scene, default colours
        assert [e.text for e in plain.expressions] == [e.text for e in video.expressions]
    assert cli_main(["-q", "generate", "--root", str(tmp_path), "--domain", "recoloured", "--train", "2",
                     "--valid", "0", "--test", "0"]) == 0  # fmt: skip
    assert len(open_dataset("mevis", tmp_path, "train").videos) == 2
    with pytest.raises(ValueError, match="unknown"):
        replace(shifted, palette=(("teal", (0, 128, 128)),)).validate()


def test_modules_do_not_import_torch():
    code = (
        "import sys, model.synthetic, model.synthetic.dataset, model.synthetic.baselines, model.synthetic.cli; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_glus_benchmark_ablation_rows_compare_and_table_file(tmp_path, capsys):
    """`glus benchmark --rows ablation --compare NAME=DIR --out FILE`: every ablation row, the compared
    checkpoint and the baselines, printed and written with the command that made them."""
    from model.checkpoint import save_pretrained
    from model.cli import main as glus_main
    from model.config import get_config, with_sam_image_size
    from model.factory import random_model

    write_split(tmp_path / "bench", "test", 2, 3, progress=False)
    config = with_sam_image_size(get_config("glus-tiny"), 64)
    model, tok = random_model(config, seed=0, seg_logit_bias=20.0)
    ckpt = save_pretrained(model, tok, tmp_path / "ckpt")
    out = tmp_path / "table.md"
    code = glus_main(
        ["benchmark", "--root", str(tmp_path / "bench"), "--split", "test", "--checkpoint", str(ckpt),
         "--rows", "ablation", "--compare", f"no-contrastive={ckpt}", "--out", str(out), "--by-template"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for row in ("full", "no-context", "no-memory", "no-kfs", "clip", "no-contrastive", "baseline: all_objects"):
        assert f"| model: {row} |" in printed or f"| {row} |" in printed or row in printed
    written = out.read_text()
    assert written.startswith("<!-- written by: glus benchmark") and "model: no-contrastive" in written
    # --by-template: a second table, one line per template with a J&F for every row and the two baselines
    header = "| template | n | model: full | model: no-context | model: no-memory | model: no-kfs | model: clip | "
    assert header + "model: no-contrastive | all_objects | appearance_union |" in written
    template_lines = [line for line in written.split(header)[1].splitlines() if line.startswith("| ")]
    expressions = sum(len(v.expressions) for v in open_dataset("mevis", tmp_path / "bench", "test").videos.values())
    assert template_lines and sum(int(line.split(" | ")[1]) for line in template_lines) == expressions
    assert glus_main(["benchmark", "--root", str(tmp_path / "bench"), "--rows", "full", "--compare", "x"]) == 2
