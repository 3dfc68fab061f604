"""bench/bench_chunks.py (whole-video job vs chunk-by-chunk) runs end to end on the smallest video that makes 3
chunk tasks (3 frames, one per task), and its report has the promised structure and ranges."""

import importlib.util
import json

import numpy as np
import pytest
from conftest import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("bench_chunks", ROOT / "bench" / "bench_chunks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_chunks_reports_both_modes(tmp_path, capsys):
    out = tmp_path / "chunks.json"
    report = _bench().main(["--videos", "1", "--frames", "3", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "whole / chunked: J&F" in printed and "identity kept" in printed and "torch" in printed
    assert json.loads(out.read_text())["summary"].keys() == report["summary"].keys() == {"whole", "chunked"}
    assert report["config"]["chunk_lengths"] == [1, 1, 1]
    assert report["config"]["options"] == {"schedule": "sliding", "key_frames": "first", "llm_every": 1}
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"]
    n = report["config"]["expressions"]
    assert n == len(report["rows"]) >= 1
    for mode, s in report["summary"].items():
        for key in ("j", "f", "jf", "jf_after_boundary"):
            assert 0.0 <= s[key] <= 1.0, (mode, key)
        assert s["total"] + s["not_applicable"] == 2 * n  # 2 boundaries per expression
        assert s["kept"] + s["switched"] + s["lost"] == s["total"]
        assert 0 <= s["kept_on_target"] <= s["kept"]
        assert s["seconds"] > 0 and s["seconds_per_frame"] == pytest.approx(s["seconds"] / 3)
        assert s["cpu_seconds"] > 0
    for row in report["rows"]:
        assert [b["boundary"] for b in row["whole"]["identity"]] == [1, 2]
    assert report["ratios"]["seconds"] > 0 and report["ratios"]["jf"] > 0


def test_split_follows_import_videos_and_identity_of_ground_truth_is_kept():
    bench = _bench()
    assert bench.split(24, 3) == [list(range(0, 8)), list(range(8, 16)), list(range(16, 24))]
    assert [len(p) for p in bench.split(25, 3)] == [9, 9, 7]
    with pytest.raises(ValueError):
        bench.split(4, 3)  # chunk() of size 2 gives 2 tasks

    from model.synthetic.world import WorldConfig, generate_video

    video = generate_video(0, WorldConfig(frames=6))
    for index, expression in enumerate(video.expressions):
        gt = video.expression_masks(index)
        outcomes = bench.boundary_identity(gt, video, expression, [2, 4])
        assert all(b["outcome"] in ("kept", "n/a") for b in outcomes)
        assert all(b["on_target"] for b in outcomes if b["outcome"] == "kept")
        empty = bench.boundary_identity(np.zeros_like(gt), video, expression, [2, 4])
        assert all(b["outcome"] in ("lost", "n/a") for b in empty)
