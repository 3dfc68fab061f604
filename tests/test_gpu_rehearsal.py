"""The GPU rehearsal (bench/gpu_rehearsal.sh -> bench/gpu_rehearsal.py) dry-run on CPU at tiny size, through the
same script, writer, loader and sections a device machine runs at glus-7b shapes, so that it cannot rot between
the rare sessions that are lent a GPU."""

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPT = ROOT / "bench" / "gpu_rehearsal.sh"


def rehearse(tmp_path, *args, python=sys.executable, wheels=None, timeout=1200):
    env = {**os.environ, "PYTHON": str(python), "OMP_NUM_THREADS": "2"}
    env.pop("OUT", None)
    if wheels is not None:
        env["GLUS_WHEELS"] = str(wheels)
        env["GLUS_SITE"] = str(tmp_path / "site")
    return subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--threads", "2", "--workdir",
                           str(tmp_path / "weights"), "--out", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)  # fmt: skip


@pytest.mark.slow
def test_dry_run_measures_every_section_and_reports_them(tmp_path):
    done = rehearse(tmp_path, "--long-frames", "400", "--long-seconds", "3")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    report = json.loads((tmp_path / "out" / "gpu_rehearsal.json").read_text())
    sections = report["sections"]
    assert list(sections) == ["write", "load", "exact", "modes", "syncs", "precision", "memory", "compile", "finetune"]
    assert not [name for name, s in sections.items() if "error" in s], sections
    assert report["environment"]["config"] == "glus-tiny" and report["environment"]["sam2_size"] == "tiny"

    assert sum(sections["write"]["bytes"].values()) == sections["write"]["total_bytes"] > 0
    load = sections["load"]
    assert load["parameters"] > 1e6 and load["dtype"] == "torch.bfloat16" and load["sam2_dtype"] == "torch.float32"
    exact = sections["exact"]
    assert exact["frames"] == 4 and exact["expressions"] == 2
    assert exact["masks_identical"] and exact["max_abs_logit_diff"] < 1e-3, exact
    assert exact["exact_fps_per_expression"] > 0 and exact["reference_fps_per_expression"] > 0
    assert {"exact", "clip", "llm_every=2", "llm_every=4"} <= set(sections["modes"])
    assert all(0.0 <= row["iou_vs_exact"] <= 1.0 for row in sections["modes"].values() if isinstance(row, dict))
    assert sections["syncs"]["skipped"].startswith("CUDA only")
    assert 0.9 < sections["precision"]["bfloat16_vs_float32_mean_iou"] <= 1.0
    memory = sections["memory"]
    assert memory["short"]["frames_done"] == memory["short"]["frames_asked"] == 6
    assert 0 < memory["long"]["frames_done"] < memory["long"]["frames_asked"] == 400  # cut short after 3 s, and says so
    compiled = sections["compile"]
    assert compiled["backend"] == "eager" and len(compiled["parts"]) == 4 and compiled["masks_identical"], compiled
    finetune = sections["finetune"]
    assert math.isfinite(finetune["loss"]) and finetune["step_seconds"] > 0 and finetune["trained_parameters"] > 0

    table = (tmp_path / "out" / "gpu_rehearsal.md").read_text()
    assert table in done.stdout
    assert "| exact vs reference-style loop (4 frames, 2 expressions) |" in table
    assert f"{memory['long']['frames_done']}/400 frames" in table and "masks identical: True" in table

    # a second call reuses the weights; a section that does not fit in the budget is skipped, not started
    again = rehearse(tmp_path, "--sections", "write,load,compile", "--budget-s", "100")
    assert again.returncode == 0, again.stderr[-3000:]
    sections = json.loads((tmp_path / "out" / "gpu_rehearsal.json").read_text())["sections"]
    assert sections["write"]["reused"] and sections["load"]["seconds"] > 0
    assert sections["compile"]["skipped"].endswith("needs about 150 s")


def test_a_module_missing_without_its_wheel_is_named(tmp_path):
    """On a bare image the script installs what is missing from the carried wheels; none there: a clear error."""
    bare = tmp_path / "bare-python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")  # no site-packages: sam2 & co. are missing
    bare.chmod(0o755)
    (tmp_path / "wheels").mkdir()
    done = rehearse(tmp_path, python=bare, wheels=tmp_path / "wheels", timeout=120)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "sam2 is not importable here" in done.stderr and "bash bench/gpu_rehearsal.sh wheels" in done.stderr


def test_compile_sam2_replaces_and_restores_the_forward_of_the_parts_named(tiny):
    from model.compilation import SAM2_PARTS, compile_sam2, compiled_parts, uncompile_sam2

    model, _ = tiny
    eager = {name: type(getattr(model.sam, name)).forward for name in SAM2_PARTS}
    try:
        assert compile_sam2(model, ["image_encoder", "sam_mask_decoder"], backend="eager", mode=None) == [
            "image_encoder", "sam_mask_decoder"]  # fmt: skip
        assert compiled_parts(model) == ["image_encoder", "sam_mask_decoder"]
        assert "forward" in vars(model.sam.image_encoder)
        with pytest.raises(ValueError, match="unknown SAM-2 part 'trunk'"):
            compile_sam2(model, ["trunk"])
    finally:
        uncompile_sam2(model)
    assert compiled_parts(model) == []
    assert all(getattr(model.sam, name).forward.__func__ is eager[name] for name in SAM2_PARTS)
    assert "forward" not in model.sam.image_encoder.state_dict() and model.sam.image_encoder.state_dict()
