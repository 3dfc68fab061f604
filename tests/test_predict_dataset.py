"""`glus predict-dataset`: the server layout, resumability, sharding without overlap, then `glus eval` on it."""

import os

from test_datasets import make_mevis

from model.cli import main as glus_main


def _pngs(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))


def test_predict_dataset_is_sharded_resumable_and_evaluable(tmp_path, capsys):
    data = make_mevis(tmp_path / "mevis", "valid_u", frames=5)
    ckpt = tmp_path / "ckpt"
    assert glus_main(["init", "--out", str(ckpt)]) == 0
    out = tmp_path / "pred"
    base = ["predict-dataset", "--dataset", "mevis", "--root", str(tmp_path / "mevis"), "--split", "valid_u",
            "--out", str(out), "--checkpoint", str(ckpt), "--device", "cpu"]
    assert glus_main([*base, "--shard", "0/2"]) == 0
    first = _pngs(out)
    assert glus_main([*base, "--shard", "1/2"]) == 0
    everything = _pngs(out)
    expected = [f"vid1/{e}/{n}.png" for e in ("0", "1", "2") for n in data["names"]]
    assert everything == expected  # one video: one shard did it all, the other found nothing to do
    assert first in ([], expected)
    # resumable: complete expressions are not redone; a partial one is
    stamp = {p: (out / p).stat().st_mtime_ns for p in everything}
    os.remove(out / "vid1/1/00003.png")
    assert glus_main(base) == 0
    assert _pngs(out) == expected
    redone = [p for p in expected if p != "vid1/1/00003.png" and (out / p).stat().st_mtime_ns != stamp[p]]
    assert redone and all(p.startswith("vid1/1/") for p in redone)
    capsys.readouterr()
    assert glus_main(["eval", "--dataset", "mevis", "--root", str(tmp_path / "mevis"), "--split", "valid_u",
                      "--pred", str(out), "--workers", "1"]) == 0
    assert "J&F" in capsys.readouterr().out
