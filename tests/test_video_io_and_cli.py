"""Lazy frame decoding from real videos and folders, bad media, and the `glus` CLI end to end."""

import json

import cv2
import numpy as np
import pytest
from conftest import SHARED_VIDEOS

from model.cli import main as glus_main
from model.outputs import read_mask_png
from model.video_io import FrameFolder, VideoFile, VideoReadError, open_frames


def _video(name: str):
    path = SHARED_VIDEOS / name
    if not path.is_file():
        pytest.fail(f"shared test video missing: {path}")
    return path


def test_video_file_random_access_equals_sequential_decoding():
    with VideoFile(_video("bedroom.mp4")) as video:
        assert len(video) == 200 and (video.height, video.width) == (540, 960)
        sequential = [video.frame(i).copy() for i in range(30)]
        assert sequential[0].shape == (540, 960, 3) and sequential[0].dtype == np.uint8
    with VideoFile(_video("bedroom.mp4"), cache_size=2) as video:
        assert np.array_equal(video.frame(25), sequential[25])  # forward seek
        assert np.array_equal(video.frame(3), sequential[3])  # backward seek
        assert np.array_equal(video.frame(4), sequential[4])
    with pytest.raises(IndexError):
        VideoFile(_video("bedroom.mp4"), max_frames=10).frame(10)


def test_frame_folder_in_natural_order(tmp_path):
    for i in (10, 2, 1):
        cv2.imwrite(str(tmp_path / f"frame{i}.png"), np.full((8, 8, 3), i, np.uint8))
    folder = open_frames(tmp_path)
    assert isinstance(folder, FrameFolder) and folder.frame_names == ["frame1", "frame2", "frame10"]
    assert folder.frame(2)[0, 0, 0] == 10


def test_bad_media_gives_clear_errors(tmp_path):
    garbage = tmp_path / "corrupt.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(VideoReadError, match="corrupt.mp4"):
        VideoFile(garbage)
    with pytest.raises(VideoReadError, match="not found"):
        VideoFile(tmp_path / "missing.mp4")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(_video("dog.mp4").read_bytes()[:200_000])
    try:
        video = VideoFile(truncated)
    except VideoReadError as exc:  # some builds refuse to open it at all: also a clear error
        assert "truncated.mp4" in str(exc)
    else:
        with pytest.raises(VideoReadError, match="truncated.mp4"):
            for i in range(len(video)):
                video.frame(i)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoReadError, match="no image files"):
        FrameFolder(tmp_path / "empty")


def test_cli_init_and_segment_a_real_video(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert glus_main(["init", "--out", str(ckpt), "--seed", "0"]) == 0
    out = tmp_path / "out"
    code = glus_main(
        [
            "segment",
            str(_video("cups.mp4")),
            "-e",
            "the red cup",
            "-e",
            "the table",
            "--checkpoint",
            str(ckpt),
            "--out",
            str(out),
            "--max-frames",
            "6",
            "--key-frames",
            "confidence",
            "--quiet",
        ]
    )
    assert code == 0
    for exp_id in ("0", "1"):
        pngs = sorted((out / "cups" / exp_id).glob("*.png"))
        assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(6)]
        mask = read_mask_png(pngs[0])
        assert mask.shape == (720, 1280)
        raw = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
        assert raw.ndim == 2 and set(np.unique(raw)) <= {0, 255}
    summary = json.loads((out / "cups" / "expressions.json").read_text())
    assert summary["1"]["expression"] == "the table" and summary["1"]["frames"] == 6
    overlay = cv2.VideoCapture(str(out / "cups" / "overlay.mp4"))
    assert int(overlay.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    assert glus_main(["info", "--checkpoint", str(ckpt)]) == 0
    assert json.loads(capsys.readouterr().out)["config"] == "glus-tiny"


def test_cli_reports_bad_input(tmp_path):
    ckpt = tmp_path / "ckpt"
    glus_main(["init", "--out", str(ckpt)])
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"nope")
    assert glus_main(["segment", str(bad), "-e", "x", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")]) == 2
    assert (
        glus_main(
            [
                "segment",
                str(_video("dog.mp4")),
                "-e",
                " ",
                "--checkpoint",
                str(ckpt),
                "--out",
                str(tmp_path / "o"),
                "--max-frames",
                "2",
            ]
        )
        == 2
    )
