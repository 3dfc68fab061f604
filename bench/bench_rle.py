"""Brush RLE speed at 1080p: glus_backend.rle versus the Label Studio SDK (label_studio_sdk.converter.brush).

Encodes realistic object masks (one ellipse; 40 random discs) with ``mask_to_rle`` and with the SDK's
``mask2rle(mask * 255)``, checks the byte lists are identical, and decodes both ways (``rle_to_mask`` versus
``decode_rle(...)[..., 3] >= 128``), checking the masks agree. Prints ms per frame (best of several rounds) and ratios.

    python bench/bench_rle.py [--height 1080 --width 1920] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from label_studio_sdk.converter.brush import decode_rle, mask2rle  # noqa: E402

from glus_backend.rle import mask_to_rle, rle_to_mask  # noqa: E402


def one_ellipse(height: int, width: int) -> np.ndarray:
    m = np.zeros((height, width), np.uint8)
    cv2.ellipse(m, (width * 15 // 32, height * 12 // 27), (width * 5 // 24, height * 25 // 108), 15, 0, 360, 1, -1)
    return m.astype(bool)


def random_discs(height: int, width: int, count: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros((height, width), np.uint8)
    for _ in range(count):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(m, center, int(rng.integers(height // 40, height // 8)), 1, -1)
    return m.astype(bool)


def best_ms(fn: Callable[[], object], rounds: int, budget_s: float = 1.0) -> float:
    """Best time of ``rounds`` rounds, each repeating ``fn`` enough to take ~budget_s / rounds."""
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-6)
    reps = max(1, int(budget_s / rounds / once))
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    h, w = args.height, args.width

    rows = []
    for name, mask in (("one ellipse", one_ellipse(h, w)), ("40 random discs", random_discs(h, w))):
        as_uint8 = mask.astype(np.uint8) * 255
        ours = mask_to_rle(mask)
        sdk = mask2rle(as_uint8)
        identical = ours == sdk
        decoded_ours = rle_to_mask(sdk, h, w)
        decoded_sdk = decode_rle(sdk).reshape(h, w, 4)[..., 3] >= 128
        same_mask = bool(np.array_equal(decoded_ours, decoded_sdk) and np.array_equal(decoded_ours, mask))
        enc_ours = best_ms(lambda m=mask: mask_to_rle(m), args.rounds)
        enc_sdk = best_ms(lambda m=as_uint8: mask2rle(m), args.rounds)
        dec_ours = best_ms(lambda r=sdk: rle_to_mask(r, h, w), args.rounds)
        dec_sdk = best_ms(lambda r=sdk: decode_rle(r).reshape(h, w, 4)[..., 3] >= 128, args.rounds)
        rows.append((name, 100 * mask.mean(), len(sdk), enc_ours, enc_sdk, identical, dec_ours, dec_sdk, same_mask))

    print(f"brush RLE at {w}x{h}, ms per frame (best of {args.rounds} rounds)")
    header = (
        f"{'mask':<16} {'fg %':>5} {'bytes':>6} | {'encode':>7} {'SDK':>7} {'ratio':>6} {'same':>5} | "
        f"{'decode':>7} {'SDK':>7} {'ratio':>6} {'same':>5}"
    )
    print(header)
    print("-" * len(header))
    for name, fg, nbytes, eo, es, ident, do, ds, same in rows:
        print(
            f"{name:<16} {fg:5.1f} {nbytes:6d} | {eo:7.3f} {es:7.2f} {es / eo:5.1f}x {ident!s:>5} | "
            f"{do:7.3f} {ds:7.2f} {ds / do:5.1f}x {same!s:>5}"
        )
    if not all(r[5] and r[8] for r in rows):
        sys.exit("MISMATCH with the SDK")


if __name__ == "__main__":
    main()
