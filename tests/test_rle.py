"""glus_backend.rle against the Label Studio SDK's brush encoder/decoder (label_studio_sdk.converter.brush)."""

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from label_studio_sdk.converter.brush import decode_rle, encode_rle, mask2rle

from glus_backend.rle import encode_flat, mask_to_rle, rle_to_mask

HYPOTHESIS = settings(max_examples=200, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sdk_encode(mask: np.ndarray) -> list[int]:
    """What the SDK produces for our input conventions (bool / 0-1 -> x255, other uint8 as is)."""
    if mask.dtype == bool or int(mask.max()) <= 1:
        return mask2rle(mask.astype(np.uint8) * 255)
    return mask2rle(mask.astype(np.uint8))


def sdk_decode(rle: list[int], h: int, w: int, threshold: int = 128) -> np.ndarray:
    return decode_rle(rle).reshape(h, w, 4)[..., 3] >= threshold


@st.composite
def masks(draw) -> np.ndarray:
    h = draw(st.integers(1, 64))
    w = draw(st.integers(1, 64))
    kind = draw(st.sampled_from(["noise", "blobs", "levels", "binary01", "stripes"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "noise":
        return rng.random((h, w)) < draw(st.floats(0.0, 1.0))
    if kind == "blobs":
        m = np.zeros((h, w), np.uint8)
        for _ in range(draw(st.integers(0, 6))):
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(0, w + 1)), int(rng.integers(0, h + 1)))
            cv2.ellipse(m, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        return m.astype(bool)
    if kind == "levels":  # uint8 0..255 masks are written as they are
        return rng.choice(np.array([0, 7, 128, 200, 255], np.uint8), size=(h, w), p=[0.5, 0.1, 0.1, 0.1, 0.2])
    if kind == "binary01":  # integer 0/1 masks count as binary
        return (rng.random((h, w)) < 0.3).astype(draw(st.sampled_from([np.uint8, np.int64])))
    m = np.zeros((h, w), bool)
    m[:, :: draw(st.integers(1, 9))] = True
    return m


@HYPOTHESIS
@given(masks())
def test_encoder_is_byte_identical_to_sdk(mask):
    assert mask_to_rle(mask) == sdk_encode(mask)


@HYPOTHESIS
@given(masks())
def test_decoder_matches_sdk_and_round_trips(mask):
    rle = sdk_encode(mask)
    h, w = mask.shape
    decoded = rle_to_mask(rle, h, w)
    np.testing.assert_array_equal(decoded, sdk_decode(rle, h, w))
    np.testing.assert_array_equal(decoded, mask.astype(np.uint8) * (255 if int(mask.max(initial=0)) <= 1 else 1) >= 128)


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((5, 7), bool),
        np.ones((5, 7), bool),
        np.ones((1, 1), bool),
        np.zeros((1, 1), bool),
        np.eye(1, 9, 4, dtype=bool),  # single pixel inside a row
        np.eye(6, 6, 0, dtype=bool)[::-1],
        np.ones((300, 300), bool),  # one run of 360000 stream values: split into 65536-value tokens
        np.pad(np.ones((1, 16385), bool), ((0, 0), (1, 1))),  # 65540-value run: a 4-value remainder token
        np.pad(np.ones((1, 16384), bool), ((0, 0), (1, 1))),  # exactly 65536 values
        np.pad(np.ones((1, 64), bool), ((0, 0), (3, 3))),  # 256-value run: the 8-bit size
        np.pad(np.ones((1, 65), bool), ((0, 0), (3, 3))),  # 260 values: the 16-bit size
    ],
    ids=["empty", "full", "pixel", "no-pixel", "row-pixel", "anti-diagonal", "long", "65540", "65536", "256", "260"],
)
def test_fixed_cases(mask):
    rle = mask_to_rle(mask)
    assert rle == sdk_encode(mask)
    np.testing.assert_array_equal(rle_to_mask(rle, *mask.shape), mask)


def test_1080p_ellipse():
    mask = np.zeros((1080, 1920), np.uint8)
    cv2.ellipse(mask, (900, 500), (400, 250), 15, 0, 360, 1, -1)
    mask = mask.astype(bool)
    rle = mask_to_rle(mask)
    assert rle == sdk_encode(mask)
    np.testing.assert_array_equal(rle_to_mask(rle, 1080, 1920), mask)


@settings(max_examples=100, derandomize=True, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 70000), st.integers(0, 255)), min_size=1, max_size=6))
def test_encode_flat_matches_sdk_encode_rle(runs):
    """Arbitrary streams, including runs of length 1 (written as literals) and runs past 65536."""
    values = np.repeat(np.array([v for _, v in runs], np.uint8), [n for n, _ in runs])
    assert encode_flat(values) == encode_rle(values)


def test_threshold_on_anti_aliased_alpha():
    """Editor strokes carry alpha 0..255; the mask is alpha >= threshold, as with the SDK's decode."""
    h, w = 16, 24
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 3] = np.arange(h * w).reshape(h, w) % 256
    rgba[..., :3] = np.where(rgba[..., 3:] > 0, 255, 0)
    rle = encode_rle(rgba.ravel())
    for threshold in (1, 64, 128, 200, 255):
        got = rle_to_mask(rle, h, w, threshold=threshold)
        np.testing.assert_array_equal(got, sdk_decode(rle, h, w, threshold))
        np.testing.assert_array_equal(got, rgba[..., 3] >= threshold)


def _bitstream(num: int, tokens: list[tuple[bool, int, list[int]]], sizes=(3, 4, 8, 16), wordsize=8) -> list[int]:
    """Hand-built rle-pack stream: tokens are (series, size index, values); a series repeats values[0] len times."""
    bits = f"{num:032b}{wordsize - 1:05b}" + "".join(f"{s - 1:04b}" for s in sizes)
    for series, idx, payload in tokens:
        if series:
            count, value = payload
            bits += "1" + f"{idx:02b}" + f"{count - 1:0{sizes[idx]}b}" + f"{value:0{wordsize}b}"
        else:
            bits += "0" + f"{idx:02b}" + f"{len(payload) - 1:0{sizes[idx]}b}"
            bits += "".join(f"{v:0{wordsize}b}" for v in payload)
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


@settings(max_examples=100, derandomize=True, deadline=None)
@given(st.data())
def test_decoder_reads_literal_runs_like_the_editor_writes(data):
    """The editor's encoder (thi-ng rle-pack) also writes literal tokens of many values; the SDK never does."""
    tokens = []
    total = 0
    for _ in range(data.draw(st.integers(1, 8))):
        idx = data.draw(st.integers(0, 3))
        cap = min(2 ** (3, 4, 8, 16)[idx], 300)
        if data.draw(st.booleans()):
            count = data.draw(st.integers(1, cap))
            tokens.append((True, idx, [count, data.draw(st.integers(0, 255))]))
        else:
            tokens.append((False, idx, data.draw(st.lists(st.integers(0, 255), min_size=1, max_size=min(cap, 40)))))
            count = len(tokens[-1][2])
        total += count
    if total % 4:
        tokens.append((True, 0, [4 - total % 4, data.draw(st.integers(0, 255))]))
        total += 4 - total % 4
    rle = _bitstream(total, tokens)
    w = total // 4
    threshold = data.draw(st.integers(1, 255))
    np.testing.assert_array_equal(rle_to_mask(rle, 1, w, threshold), sdk_decode(rle, 1, w, threshold))


def test_decoder_follows_header_sizes_and_wordsize():
    rle = _bitstream(8, [(True, 1, [5, 300]), (False, 0, [1, 2, 3])], sizes=(2, 5, 1, 1), wordsize=9)
    np.testing.assert_array_equal(rle_to_mask(rle, 1, 2, threshold=256), [[True, False]])


def test_errors():
    with pytest.raises(ValueError, match="expected 2x2x4"):
        rle_to_mask(mask_to_rle(np.zeros((3, 3), bool)), 2, 2)
    with pytest.raises(ValueError, match="ends after"):
        rle_to_mask(_bitstream(16, [(True, 0, [4, 255])]), 2, 2)
    with pytest.raises(ValueError):
        rle_to_mask([1, 2, 3], 1, 1)
    with pytest.raises(ValueError, match="2-D"):
        mask_to_rle(np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="0..255"):
        mask_to_rle(np.full((2, 2), 256, np.int64))
    with pytest.raises(TypeError):
        mask_to_rle(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="empty"):
        mask_to_rle(np.zeros((0, 4), bool))
