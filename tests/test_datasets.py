"""Data set readers and writers on tiny synthetic data sets built in tmp_path.

MeViS layout (RLE via pycocotools, union of anno_ids), Ref-YouTube-VOS / Ref-DAVIS17 layout (palette PNGs),
errors that name the file and the entry, and the atomic prediction writer.
"""

import json
import pickle
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from model.datasets import (
    DatasetFormatError,
    MevisDataset,
    PredictionWriter,
    RefYtvosDataset,
    decode_rle,
    encode_rle,
    open_dataset,
    read_binary_png,
    read_palette_png,
    validate_rle,
    write_mask_png,
    write_palette_png,
)
from model.datasets.masks import _string_runs

H, W = 6, 8


def _masks(seed: int, frames: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((frames, H, W), bool)
    for t in range(frames):
        y, x = rng.integers(0, H - 2), rng.integers(0, W - 3)
        out[t, y : y + 2, x : x + 3] = True
    return out


def make_mevis(root: Path, split: str = "valid_u", frames: int = 4) -> dict:
    """One video, two objects (anno 10 and 11), expressions: both objects, one object, an all-null object."""
    split_dir = root / split
    names = [f"{i:05d}" for i in range(frames)]
    for name in names:
        path = split_dir / "JPEGImages" / "vid1" / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((H, W, 3), 128, np.uint8))
    a, b = _masks(1, frames), _masks(2, frames)
    a[2] = False  # object 10 absent in frame 2 -> null RLE
    mask_dict = {
        "10": [encode_rle(m) if m.any() else None for m in a],
        "11": [encode_rle(m) for m in b],
        "12": [None] * frames,
    }
    meta = {
        "videos": {
            "vid1": {
                "frames": names,
                "expressions": {
                    "0": {"exp": "the two cats", "obj_id": [0, 1], "anno_id": [10, 11]},
                    "1": {"exp": "the left cat", "obj_id": [1], "anno_id": [11]},
                    "2": {"exp": "a cat that is never visible", "obj_id": [2], "anno_id": [12]},
                },
            }
        }
    }
    (split_dir / "meta_expressions.json").write_text(json.dumps(meta))
    (split_dir / "mask_dict.json").write_text(json.dumps(mask_dict))
    return {"split_dir": split_dir, "a": a, "b": b, "names": names, "meta": meta, "mask_dict": mask_dict}


def make_refytvos(root: Path, split: str = "train", frames: int = 3) -> dict:
    names = [f"{5 * i:05d}" for i in range(frames)]
    labels = np.zeros((frames, H, W), np.uint8)
    labels[:, 1:3, 1:4] = 1
    labels[:, 3:5, 4:7] = 2
    labels[1, 3:5, 4:7] = 0  # object 2 absent in frame 1
    for t, name in enumerate(names):
        image = root / split / "JPEGImages" / "v" / f"{name}.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image), np.zeros((H, W, 3), np.uint8))
        write_palette_png(root / split / "Annotations" / "v" / f"{name}.png", labels[t])
    meta = {
        "videos": {
            "v": {
                "frames": names,
                "expressions": {
                    "0": {"exp": "a red box", "obj_id": "1"},
                    "1": {"exp": "a blue box", "obj_id": "2"},
                },
            }
        }
    }
    meta_path = root / "meta_expressions" / split / "meta_expressions.json"
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta))
    return {"labels": labels, "names": names, "meta_path": meta_path}


# ------------------------------------------------------------------------------------------------------------
# MeViS
# ------------------------------------------------------------------------------------------------------------


def test_mevis_entries_and_union_of_anno_ids(tmp_path):
    info = make_mevis(tmp_path)
    ds = open_dataset("mevis", tmp_path, "valid_u")
    assert isinstance(ds, MevisDataset) and ds.has_gt and len(ds) == 3
    video = ds.video("vid1")
    assert video.frame_names == tuple(info["names"])
    assert [e.exp_id for e in video.expressions] == ["0", "1", "2"]
    assert video.expression("0").anno_ids == (10, 11) and video.expression("0").text == "the two cats"
    both = ds.gt_masks("vid1", "0")
    assert both.shape == (4, H, W) and both.dtype == bool
    assert np.array_equal(both, info["a"] | info["b"])
    assert np.array_equal(ds.gt_masks("vid1", "1"), info["b"])
    # Every RLE null: the size comes from the first frame's image header.
    assert np.array_equal(ds.gt_masks("vid1", "2"), np.zeros((4, H, W), bool))
    assert [p.name for p in ds.frame_paths("vid1")] == [f"{n}.jpg" for n in info["names"]]
    # The source is self-contained and picklable (evaluation workers), and loads frame ranges.
    source = pickle.loads(pickle.dumps(ds.mask_source("vid1", "0")))
    assert np.array_equal(source.load(start=1, stop=3), both[1:3])
    # open_dataset also accepts the split folder itself.
    assert len(open_dataset("mevis", info["split_dir"], "valid_u")) == 3


def test_mevis_missing_frame_names_file_and_index(tmp_path):
    info = make_mevis(tmp_path)
    (info["split_dir"] / "JPEGImages" / "vid1" / "00002.jpg").unlink()
    ds = MevisDataset(info["split_dir"])
    with pytest.raises(DatasetFormatError) as err:
        ds.frame_paths("vid1")
    message = str(err.value)
    assert "00002.jpg" in message and "'vid1'" in message and "frame 2" in message


def test_mevis_bad_rle_names_file_anno_and_frame(tmp_path):
    info = make_mevis(tmp_path)
    mask_dict = info["mask_dict"]
    mask_dict["11"][3] = {"size": [H, W], "counts": "5"}  # runs cover 5 pixels, not 48
    (info["split_dir"] / "mask_dict.json").write_text(json.dumps(mask_dict))
    ds = MevisDataset(info["split_dir"])
    with pytest.raises(DatasetFormatError) as err:
        ds.gt_masks("vid1", "1")
    message = str(err.value)
    assert "mask_dict.json" in message and "anno_id 11" in message and "frame 3" in message
    assert "exp '1'" in message and "bad RLE" in message


def test_mevis_mismatched_sizes(tmp_path):
    info = make_mevis(tmp_path)
    mask_dict = info["mask_dict"]
    mask_dict["11"][1] = encode_rle(np.ones((H + 1, W), bool))
    (info["split_dir"] / "mask_dict.json").write_text(json.dumps(mask_dict))
    with pytest.raises(DatasetFormatError) as err:
        MevisDataset(info["split_dir"]).gt_masks("vid1", "0")
    message = str(err.value)
    assert "mask_dict.json" in message and "anno_id 11" in message and "frame 1" in message
    assert f"{H + 1}x{W}" in message


def test_mevis_mask_list_length_and_missing_anno(tmp_path):
    info = make_mevis(tmp_path)
    mask_dict = info["mask_dict"]
    mask_dict["11"] = mask_dict["11"][:3]
    del mask_dict["10"]
    (info["split_dir"] / "mask_dict.json").write_text(json.dumps(mask_dict))
    ds = MevisDataset(info["split_dir"])
    with pytest.raises(DatasetFormatError, match=r"anno_id 11.*3 masks for 4 frames"):
        ds.mask_source("vid1", "1")
    with pytest.raises(DatasetFormatError, match=r"anno_id 10.*not in mask_dict.json"):
        ds.mask_source("vid1", "0")


def test_mevis_malformed_meta(tmp_path):
    split = tmp_path / "valid_u"
    split.mkdir()
    (split / "meta_expressions.json").write_text(json.dumps({"videos": {"v": {"frames": []}}}))
    with pytest.raises(DatasetFormatError, match=r"meta_expressions.json: video 'v': \"frames\""):
        MevisDataset(split)
    (split / "meta_expressions.json").write_text(
        json.dumps({"videos": {"v": {"frames": ["0"], "expressions": {"3": {"exp": "x", "anno_id": ["a"]}}}}})
    )
    with pytest.raises(DatasetFormatError, match=r"video 'v', exp '3': anno_id must be integers"):
        MevisDataset(split)
    (split / "meta_expressions.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="cannot parse"):
        MevisDataset(split)


def test_mevis_split_without_gt(tmp_path):
    info = make_mevis(tmp_path, split="valid")
    (info["split_dir"] / "mask_dict.json").unlink()
    ds = open_dataset("mevis", tmp_path, "valid")
    assert not ds.has_gt and len(ds) == 3
    with pytest.raises(DatasetFormatError, match="mask_dict.json not found"):
        ds.gt_masks("vid1", "0")


# ------------------------------------------------------------------------------------------------------------
# Ref-YouTube-VOS / Ref-DAVIS17
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["refytvos", "davis17"])
def test_refytvos_palette_ground_truth(tmp_path, name):
    info = make_refytvos(tmp_path)
    ds = open_dataset(name, tmp_path, "train")
    assert isinstance(ds, RefYtvosDataset) and ds.name == name and ds.has_gt
    video = ds.video("v")
    assert video.frame_names == tuple(info["names"])
    assert video.expression("0").obj_ids == (1,) and video.expression("1").text == "a blue box"
    assert np.array_equal(ds.gt_masks("v", "0"), info["labels"] == 1)
    gt2 = ds.gt_masks("v", "1")
    assert np.array_equal(gt2, info["labels"] == 2) and not gt2[1].any()
    assert read_palette_png(ds.annotation_path("v", info["names"][0])).dtype == np.uint8


def test_refytvos_missing_annotation_and_size_mismatch(tmp_path):
    info = make_refytvos(tmp_path)
    ds = RefYtvosDataset(tmp_path, "train")
    missing = ds.annotation_path("v", info["names"][2])
    missing.unlink()
    with pytest.raises(DatasetFormatError) as err:
        ds.gt_masks("v", "0")
    assert str(missing) in str(err.value) and "frame 2" in str(err.value) and "missing" in str(err.value)
    write_palette_png(missing, np.zeros((H + 2, W), np.uint8))
    with pytest.raises(DatasetFormatError, match=rf"frame 2.*{H + 2}x{W} differs"):
        ds.gt_masks("v", "0")
    Image.new("RGB", (W, H)).save(missing)
    with pytest.raises(DatasetFormatError, match="mode RGB"):
        ds.gt_masks("v", "0")


def test_refytvos_valid_split_has_no_ground_truth(tmp_path):
    make_refytvos(tmp_path, split="valid")
    import shutil

    shutil.rmtree(tmp_path / "valid" / "Annotations")
    ds = open_dataset("refytvos", tmp_path, "valid")
    assert not ds.has_gt
    with pytest.raises(DatasetFormatError, match="no ground truth"):
        ds.mask_source("v", "0")


# ------------------------------------------------------------------------------------------------------------
# Masks
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode under numpy 2
def test_rle_roundtrip_and_string_parser():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random((h, w)) < rng.uniform(0, 1)
        rle = encode_rle(mask)
        assert isinstance(rle["counts"], str)
        assert validate_rle(rle, "f", "e") == (h, w)
        assert np.array_equal(decode_rle(rle), mask)
        assert np.array_equal(decode_rle(rle), coco_mask.decode({"size": [h, w], "counts": rle["counts"].encode()}))
        runs = _string_runs(rle["counts"].encode())
        assert int(runs.sum()) == h * w and runs.min() >= 0
        uncompressed = {"size": [h, w], "counts": runs.tolist()}
        assert np.array_equal(decode_rle(uncompressed), mask)
        assert coco_mask.frPyObjects(uncompressed, h, w)["counts"].decode() == rle["counts"]


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {"counts": "5"},
        {"size": [4], "counts": "5"},
        {"size": [4, 5], "counts": "5"},
        {"size": [4, 5], "counts": "zz~"},
        {"size": [4, 5], "counts": [5, -3, 18]},
        {"size": [4, 5], "counts": 7},
    ],
)
def test_bad_rle_is_rejected_with_file_and_entry(bad):
    with pytest.raises(DatasetFormatError) as err:
        decode_rle(bad, "mask_dict.json", "video 'v', anno_id 3, frame 1")
    assert str(err.value).startswith("mask_dict.json: video 'v', anno_id 3, frame 1: ")


def test_dataset_format_error_pickles():
    err = pickle.loads(pickle.dumps(DatasetFormatError("a.json", "video 'v'", "broken")))
    assert (err.file, err.entry, err.problem) == ("a.json", "video 'v'", "broken")
    assert str(err) == "a.json: video 'v': broken"


# ------------------------------------------------------------------------------------------------------------
# Prediction writer
# ------------------------------------------------------------------------------------------------------------


def test_prediction_writer_layout_and_format(tmp_path):
    writer = PredictionWriter(tmp_path / "pred")
    masks = _masks(3, 3)
    names = ["00000", "00005", "00010"]
    assert writer.missing_frames("vid", "2", names) == names
    writer.write_expression("vid", "2", names[:2], masks[:2])
    assert not writer.is_complete("vid", "2", names)
    path = writer.write("vid", "2", names[2], masks[2])
    assert path == tmp_path / "pred" / "vid" / "2" / "00010.png"
    assert writer.is_complete("vid", "2", names)
    with Image.open(path) as image:
        assert image.mode == "L"
        values = np.array(image)
    assert set(np.unique(values)) <= {0, 255}
    assert np.array_equal(values == 255, masks[2])
    assert np.array_equal(read_binary_png(path), masks[2])
    assert not [p for p in (tmp_path / "pred").rglob("*") if p.name.startswith(".")]  # no temporary files left
    for bad in ["..", "a/b", ""]:
        with pytest.raises(ValueError):
            writer.frame_path(bad, "0", "00000")


def test_concurrent_writers_never_leave_partial_files(tmp_path):
    path = tmp_path / "v" / "0" / "00000.png"
    rng = np.random.default_rng(4)
    candidates = [np.zeros((64, 96), bool), np.ones((64, 96), bool), rng.random((64, 96)) < 0.5]
    stop = threading.Event()
    seen, errors = [], []

    def writer(index: int) -> None:
        for _ in range(40):
            write_mask_png(path, candidates[index])

    def reader() -> None:
        while not stop.is_set():
            if path.exists():
                image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
                if image is None:
                    errors.append("unreadable")
                else:
                    seen.append(any(np.array_equal(image != 0, c) for c in candidates))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    watcher.join()
    assert not errors and seen and all(seen)
    assert not [p for p in path.parent.iterdir() if p.name != "00000.png"]
