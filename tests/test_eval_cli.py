"""The ``eval`` command end to end on tiny synthetic data sets: printed figures, CSV, warnings, errors."""

import argparse
import csv
import json
import logging
import re

import cv2
import numpy as np
import pytest

from model.datasets import PredictionWriter, encode_rle, write_palette_png
from model.evaluation.cli import add_eval_arguments, main, run_eval
from model.evaluation.metrics_reference import reference_scores

H, W = 40, 60


def _objects(seed: int, frames: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((frames, H, W), np.uint8)
    for t in range(frames):
        center = (int(rng.integers(15, W - 15)), int(rng.integers(10, H - 10)))
        cv2.ellipse(out[t], center, (int(rng.integers(4, 12)), int(rng.integers(3, 8))), 0, 0, 360, 1, -1)
    return out.astype(bool)


@pytest.fixture
def mevis(tmp_path):
    """vid1 (4 frames): exp 0 = anno 10 | 11, exp 1 = anno 11; vid2 (3 frames): exp 0 = anno 20, exp 1 = anno 21."""
    split = tmp_path / "mevis" / "valid_u"
    split.mkdir(parents=True)
    objects = {10: _objects(1, 4), 11: _objects(2, 4), 20: _objects(3, 3), 21: _objects(4, 3)}
    objects[11][3] = False  # absent in the last frame
    frames = {"vid1": [f"{i:05d}" for i in range(4)], "vid2": [f"{i:05d}" for i in range(0, 15, 5)]}
    meta = {
        "videos": {
            "vid1": {
                "frames": frames["vid1"],
                "expressions": {
                    "0": {"exp": "both", "obj_id": [0, 1], "anno_id": [10, 11]},
                    "1": {"exp": "one", "obj_id": [1], "anno_id": [11]},
                },
            },
            "vid2": {
                "frames": frames["vid2"],
                "expressions": {
                    "0": {"exp": "a", "obj_id": [0], "anno_id": [20]},
                    "1": {"exp": "b", "obj_id": [1], "anno_id": [21]},
                },
            },
        }
    }
    mask_dict = {str(k): [encode_rle(m) if m.any() else None for m in v] for k, v in objects.items()}
    (split / "meta_expressions.json").write_text(json.dumps(meta))
    (split / "mask_dict.json").write_text(json.dumps(mask_dict))
    gt = {
        ("vid1", "0"): objects[10] | objects[11],
        ("vid1", "1"): objects[11],
        ("vid2", "0"): objects[20],
        ("vid2", "1"): objects[21],
    }
    return {"root": tmp_path / "mevis", "frames": frames, "gt": gt}


def _write_predictions(pred_root, frames, gt):
    """vid1/0 perfect; vid1/1 shifted by 3 px; vid2/0 with frame 00005 missing; vid2/1 no folder at all."""
    writer = PredictionWriter(pred_root)
    preds = {
        ("vid1", "0"): gt[("vid1", "0")],
        ("vid1", "1"): np.roll(gt[("vid1", "1")], 3, axis=2),
        ("vid2", "0"): gt[("vid2", "0")].copy(),
    }
    for (video, exp), masks in preds.items():
        names = frames[video]
        keep = [i for i in range(len(names)) if (video, exp, names[i]) != ("vid2", "0", "00005")]
        writer.write_expression(video, exp, [names[i] for i in keep], masks[keep])
    preds[("vid2", "0")][1] = False  # what the evaluation must use for the missing frame
    return preds


def _expected(gt, preds):
    rows = {}
    for key, target in gt.items():
        if key in preds:
            j, f = reference_scores(preds[key], target)
            rows[key] = (float(np.mean(j)), float(np.mean(f)))
        else:
            rows[key] = (0.0, 0.0)
    j = float(np.mean([v[0] for v in rows.values()]))
    f = float(np.mean([v[1] for v in rows.values()]))
    return rows, j, f


def _printed(out: str) -> dict[str, tuple[float, float]]:
    values = {}
    for name in ("J", "F", "J&F"):
        match = re.search(rf"^{re.escape(name)}\s+([\d.]+)\s+(\S+)$", out, re.MULTILINE)
        assert match, out
        values[name] = (float(match.group(1)), float(match.group(2)))
    return values


@pytest.mark.parametrize("workers", [1, 2])
def test_eval_mevis_prints_figures_and_writes_csv(mevis, tmp_path, capsys, caplog, workers):
    pred_root = tmp_path / "pred"
    preds = _write_predictions(pred_root, mevis["frames"], mevis["gt"])
    rows, j, f = _expected(mevis["gt"], preds)
    csv_path = tmp_path / "scores.csv"
    with caplog.at_level(logging.WARNING):
        code = main(
            [
                "eval",
                "--dataset",
                "mevis",
                "--root",
                str(mevis["root"]),
                "--split",
                "valid_u",
                "--pred",
                str(pred_root),
                "--csv",
                str(csv_path),
                "--workers",
                str(workers),
            ]
        )
    assert code == 0
    printed = _printed(capsys.readouterr().out)
    for name, value in (("J", j), ("F", f), ("J&F", (j + f) / 2)):
        assert printed[name][1] == pytest.approx(value, abs=1e-12)
        assert printed[name][0] == round(100 * value, 1)
    assert 0 < j < 1 and 0 < f < 1
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "1 of 4 expressions have no prediction folder" in warnings and "vid2/1" in warnings
    assert "1 frame PNGs missing in 1 expressions" in warnings and "vid2/0/00005.png" in warnings

    with csv_path.open() as handle:
        table = list(csv.DictReader(handle))
    assert [(r["video"], r["exp_id"]) for r in table] == list(mevis["gt"])
    for row in table:
        key = (row["video"], row["exp_id"])
        assert float(row["J"]) == pytest.approx(rows[key][0], abs=1e-12)
        assert float(row["F"]) == pytest.approx(rows[key][1], abs=1e-12)
        assert float(row["J&F"]) == pytest.approx(sum(rows[key]) / 2, abs=1e-12)
        assert int(row["n_frames"]) == len(mevis["frames"][key[0]])
    by_key = {(r["video"], r["exp_id"]): r for r in table}
    assert (float(by_key[("vid1", "0")]["J"]), float(by_key[("vid1", "0")]["F"])) == (1.0, 1.0)
    assert by_key[("vid2", "1")]["pred_missing"] == "1" and by_key[("vid2", "0")]["missing_frames"] == "1"


def test_eval_default_csv_path_and_subcommand_registration(mevis, tmp_path, capsys):
    pred_root = tmp_path / "pred"
    _write_predictions(pred_root, mevis["frames"], mevis["gt"])
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser.add_subparsers(dest="cmd").add_parser("eval"))
    args = parser.parse_args(
        ["eval", "--dataset", "mevis", "--root", str(mevis["root"]), "--pred", str(pred_root), "--workers", "1"]
    )
    assert run_eval(args) == 0  # default split valid_u
    assert (tmp_path / "pred_mevis_valid_u_eval.csv").is_file()
    assert "mevis valid_u: 4 expressions" in capsys.readouterr().out


def test_eval_refytvos_perfect_predictions(tmp_path, capsys):
    root = tmp_path / "ytvos"
    names = ["00000", "00005"]
    labels = np.zeros((2, H, W), np.uint8)
    labels[:, 5:20, 10:30] = 1
    labels[0, 25:35, 35:50] = 2
    meta = {
        "videos": {
            "v": {"frames": names, "expressions": {"0": {"exp": "x", "obj_id": "1"}, "1": {"exp": "y", "obj_id": "2"}}}
        }
    }
    (root / "meta_expressions" / "train").mkdir(parents=True)
    (root / "meta_expressions" / "train" / "meta_expressions.json").write_text(json.dumps(meta))
    for t, name in enumerate(names):
        write_palette_png(root / "train" / "Annotations" / "v" / f"{name}.png", labels[t])
    writer = PredictionWriter(tmp_path / "pred")
    writer.write_expression("v", "0", names, labels == 1)
    writer.write_expression("v", "1", names, labels == 2)
    code = main(
        [
            "eval",
            "--dataset",
            "refytvos",
            "--root",
            str(root),
            "--split",
            "train",
            "--pred",
            str(tmp_path / "pred"),
            "--csv",
            str(tmp_path / "s.csv"),
            "--workers",
            "1",
        ]
    )
    assert code == 0
    printed = _printed(capsys.readouterr().out)
    assert printed["J"] == (100.0, 1.0) and printed["F"] == (100.0, 1.0) and printed["J&F"] == (100.0, 1.0)


def test_eval_errors_name_the_file(mevis, tmp_path, caplog):
    pred_root = tmp_path / "pred"
    _write_predictions(pred_root, mevis["frames"], mevis["gt"])
    bad = pred_root / "vid1" / "1" / "00002.png"
    cv2.imwrite(str(bad), np.zeros((H + 4, W), np.uint8))
    base = [
        "eval",
        "--dataset",
        "mevis",
        "--root",
        str(mevis["root"]),
        "--split",
        "valid_u",
        "--csv",
        str(tmp_path / "s.csv"),
    ]
    for workers in ("1", "2"):  # the error also crosses the process pool intact
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main([*base, "--workers", workers, "--pred", str(pred_root)]) == 2
        message = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
        assert str(bad) in message and "exp '1'" in message and "frame 2" in message and f"{H + 4}x{W}" in message

    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main([*base, "--workers", "1", "--pred", str(tmp_path / "nowhere")]) == 2
    assert "not found" in caplog.text

    (mevis["root"] / "valid_u" / "mask_dict.json").unlink()
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main([*base, "--workers", "1", "--pred", str(pred_root)]) == 2
    assert "no ground truth" in caplog.text
