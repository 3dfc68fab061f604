"""Label Studio brush RLE (the ``"format": "rle"`` of ``brushlabels`` results), vectorised with numpy.

Label Studio stores a brush mask as the thi-ng ``rle-pack`` bitstream of the flat RGBA image (H*W*4 bytes).
The SDK's ``label_studio_sdk.converter.brush.mask2rle``/``encode_rle`` builds that bitstream as a Python string
one run at a time (8-25 ms for a 1080p object mask) and ``decode_rle`` reads it bit by bit. This module produces
exactly the same bytes as the SDK encoder (its choice of size index, its 65536-value run splitting and its
always-present final padding included) and decodes any valid stream, including the anti-aliased ones the editor
writes.

Bitstream layout (big-endian bits):
  header  : 32-bit value count, 5-bit wordsize-1, four 4-bit (rle size - 1)   -> 53 bits
  per run : 1-bit flag (1 = series of one repeated value, 0 = literal values),
            2-bit index into the rle sizes, ``size`` bits holding count-1,
            then one ``wordsize`` value (series) or count values (literal)
The SDK encoder always uses wordsize 8 and sizes (3, 4, 8, 16); a run of length 1 is written as a literal of one
value; runs longer than 256 use the 16-bit size and are cut into chunks of 65536; the stream is padded with 1 to 8
zero bits (a full zero byte when it is already byte-aligned).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["encode_flat", "mask_to_rle", "rle_to_mask"]

_HEADER_BITS = 53
_SDK_WORDSIZE = 8
_SDK_SIZES = (3, 4, 8, 16)
_CHUNK = 65536  # longest run one 16-bit series token holds
_DECODE_BLOCK_BYTES = 1 << 17  # stream bytes whose bit positions are parsed per vectorised block while decoding
_WORD_OFFSETS = np.arange(4, dtype=np.int64)
_PART_SHIFTS = np.array([32, 24, 16, 8, 0], dtype=np.uint64)
_PART_INDEX = np.arange(5, dtype=np.int64)
_SDK_SIZE_NIBBLES = sum((s - 1) << 4 * (3 - i) for i, s in enumerate(_SDK_SIZES))  # 0x237F
_SIZE_EDGES = np.array([8, 16, 256], dtype=np.int64)
_TOKEN_WIDTHS = np.array([3 + s + _SDK_WORDSIZE for s in _SDK_SIZES], dtype=np.int64)  # flag, index, count-1, value
_SERIES_PREFIX = np.array(  # flag 1 and the size index, shifted to the top of each token
    [(1 << int(w) - 1) | (i << int(w) - 3) for i, w in enumerate(_TOKEN_WIDTHS)], dtype=np.uint64
)
_WINDOW_SHIFTS = np.arange(8, 0, -1, dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------------
# encoding
# ----------------------------------------------------------------------------------------------------------------


def _run_tokens(lengths: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token codes and bit widths for runs, exactly as the SDK's ``encode_rle`` chooses them."""
    lengths = lengths.astype(np.int64, copy=False)
    values = values.astype(np.uint64, copy=False)
    if int(lengths.max()) > _CHUNK:
        chunks = np.where(lengths > 256, (lengths - 1) // _CHUNK + 1, 1)
        # a run longer than 65536 becomes several 16-bit tokens: 65536, 65536, ..., remainder
        run_of_token = np.repeat(np.arange(lengths.size), chunks)
        first_token = np.cumsum(chunks) - chunks
        k = np.arange(run_of_token.size) - first_token[run_of_token]
        n_chunks = chunks[run_of_token]
        run_len = lengths[run_of_token]
        token_len = np.where(k == n_chunks - 1, run_len - _CHUNK * (n_chunks - 1), _CHUNK)
        values = values[run_of_token]
    else:
        run_len = token_len = lengths
    # size index by the *run* length (a remainder chunk of a long run keeps the 16-bit size)
    idx = np.searchsorted(_SIZE_EDGES, run_len)  # <= 8: 0, <= 16: 1, <= 256: 2, else 3
    prefix = _SERIES_PREFIX[idx]
    if int(run_len.min()) == 1:  # a lone value is a one-value literal: flag 0, size index 0
        prefix[run_len == 1] = 0
    codes = prefix | ((token_len - 1).astype(np.uint64) << np.uint64(_SDK_WORDSIZE)) | values
    return codes, _TOKEN_WIDTHS[idx]


def _pack(num_values: int, codes: np.ndarray, widths: np.ndarray) -> list[int]:
    """Header + tokens as the SDK's byte list (tokens are <= 27 bits, so each touches at most 5 bytes)."""
    offsets = np.cumsum(widths)
    total_bits = _HEADER_BITS + int(offsets[-1])
    offsets += _HEADER_BITS - widths
    n_bytes = total_bits // 8 + 1  # the SDK always pads with 1..8 zero bits
    aligned = codes << (40 - widths - (offsets & 7)).astype(np.uint64)  # each token placed in a 40-bit window
    parts = (aligned[:, None] >> _PART_SHIFTS) & np.uint64(0xFF)
    index = (offsets >> 3)[:, None] + _PART_INDEX
    # bit fields are disjoint, so summing byte contributions equals OR-ing them (exact in float64)
    out = np.bincount(index.ravel(), weights=parts.ravel().astype(np.float64), minlength=n_bytes + 5)[:n_bytes]
    header = (num_values << 21 | (_SDK_WORDSIZE - 1) << 16 | _SDK_SIZE_NIBBLES) << 3  # 53 bits in 7 bytes
    out[:7] += np.frombuffer(header.to_bytes(7, "big"), dtype=np.uint8)
    return out.astype(np.uint8).tolist()


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start indices and lengths of runs of equal values in a 1-D array.

    The change flags are scanned 4 at a time (as uint32 words): ``flatnonzero`` over 2M bools costs more than the
    compare itself, and object masks have few changes. (Not as float64 words, which would be faster: a process with
    denormals-are-zero set, as ``torch.set_flush_denormal(True)`` does, would see some nonzero words as 0.)
    """
    d = flat[1:] != flat[:-1]
    n4 = d.size // 4
    words = np.flatnonzero(d[: n4 * 4].view(np.uint32) != 0)
    change = (words[:, None] * 4 + _WORD_OFFSETS).ravel()
    change = change[d[change]]
    if d.size > n4 * 4:
        change = np.concatenate([change, np.flatnonzero(d[n4 * 4 :]) + n4 * 4])
    starts = np.concatenate([np.zeros(1, dtype=np.int64), change + 1])
    lengths = np.diff(np.concatenate([starts, np.array([flat.size], dtype=np.int64)]))
    return starts, lengths


def encode_flat(values: np.ndarray) -> list[int]:
    """Encode a flat uint8 stream; byte-identical to the SDK's ``encode_rle(values)`` with its default arguments.

    Useful to build RLEs of arbitrary RGBA arrays (e.g. anti-aliased alpha) without the SDK's slow encoder.
    """
    arr = np.asarray(values).ravel()
    if arr.size == 0:
        raise ValueError("cannot RLE-encode an empty array")
    if arr.dtype.kind not in "biu":
        raise TypeError(f"values must be integers in 0..255, got dtype {arr.dtype}")
    if arr.dtype.kind != "b" and (int(arr.min()) < 0 or int(arr.max()) > 255):
        raise ValueError("values must lie in 0..255")
    starts, lengths = _runs(arr)
    codes, widths = _run_tokens(lengths, arr[starts])
    return _pack(arr.size, codes, widths)


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Encode a 2-D mask as Label Studio brush RLE (all four RGBA channels = the pixel value).

    * bool masks, and integer masks whose values are only 0 and 1, are binary: foreground is written as 255, i.e. the
      result equals ``mask2rle(mask.astype(np.uint8) * 255)``;
    * other integer masks must hold 0..255 and are written as they are (``mask2rle(mask)``).
    Runs are found on the H*W pixels (each is 4x longer in the RGBA stream), so the cost is one pass over the mask plus
    work proportional to the number of runs.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    if m.size == 0:
        raise ValueError("cannot RLE-encode an empty mask")
    if m.dtype.kind == "b":
        flat = m.ravel().view(np.uint8)
        scale = 255
    elif m.dtype.kind in "iu":
        flat = m.ravel()
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"integer mask values must lie in 0..255, got {lo}..{hi}")
        scale = 255 if hi <= 1 else 1
    else:
        raise TypeError(f"mask must be bool or integer, got dtype {m.dtype}")
    starts, lengths = _runs(flat)
    values = flat[starts].astype(np.uint64) * np.uint64(scale)
    codes, widths = _run_tokens(lengths * 4, values)
    return _pack(m.size * 4, codes, widths)


# ----------------------------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------------------------


def _read_bits(padded: np.ndarray, pos: np.ndarray, nbits: np.ndarray | int) -> np.ndarray:
    """Read ``nbits`` (<= 33) big-endian bits at each bit position ``pos`` of a byte array padded by >= 5 bytes."""
    q = pos >> 3
    window = np.zeros(q.shape, dtype=np.int64)
    for k in range(5):
        window = (window << 8) | padded[q + k]
    nbits = np.asarray(nbits, dtype=np.int64)
    return (window >> (40 - (pos & 7) - nbits)) & ((1 << nbits) - 1)


def _bit_windows(padded: np.ndarray, q0: int, q1: int) -> np.ndarray:
    """The 32 bits starting at every bit position 8*q0 .. 8*q1-1, as one int64 array (padded by >= 5 bytes)."""
    b = padded[q0 : q1 + 4].astype(np.int64)
    n = q1 - q0
    w40 = (b[:n] << 32) | (b[1 : n + 1] << 24) | (b[2 : n + 2] << 16) | (b[3 : n + 3] << 8) | b[4 : n + 4]
    return ((w40[:, None] >> _WINDOW_SHIFTS) & 0xFFFFFFFF).ravel()


def rle_to_mask(rle: Sequence[int], height: int, width: int, threshold: int = 128) -> np.ndarray:
    """Decode a brush RLE to a bool (H, W) mask: alpha channel >= ``threshold``.

    Equal to ``decode_rle(rle).reshape(height, width, 4)[..., 3] >= threshold`` for every valid stream. Editor strokes
    are anti-aliased (alpha 0..255), hence the threshold. Token starts depend on the previous token, so they are found
    by parsing a token header at *every* bit position of a block with numpy and then following the chain of starts
    (two memoryview lookups per token); values and the mask are then expanded with numpy.
    """
    data = np.asarray(rle)
    if data.ndim != 1 or data.size < 7:
        raise ValueError("RLE must be a flat list of at least 7 byte values")
    if data.dtype.kind not in "iu" or int(data.min()) < 0 or int(data.max()) > 255:
        raise ValueError("RLE values must be integers in 0..255")
    padded = np.concatenate([data.astype(np.uint8), np.zeros(8, dtype=np.uint8)])
    n_bytes, total_bits = data.size, data.size * 8
    head_bits = int(_bit_windows(padded, 0, 1)[0]) << 32 | int(_bit_windows(padded, 4, 5)[0])  # first 64 bits
    num = head_bits >> 32
    wordsize = ((head_bits >> 27) & 31) + 1
    sizes = np.array([((head_bits >> (23 - 4 * k)) & 15) + 1 for k in range(4)], dtype=np.int64)
    if num != height * width * 4:
        raise ValueError(f"RLE holds {num} values, expected {height}x{width}x4 = {height * width * 4}")

    # 1. token starts: vectorised header parse per block of bit positions, then a scalar walk of the chain
    token_starts: list[int] = []
    token_counts: list[int] = []
    p, filled = _HEADER_BITS, 0
    while filled < num:
        if p >= total_bits:
            raise ValueError(f"RLE stream ends after {filled} of {num} values")
        q0 = p >> 3
        window = _bit_windows(padded, q0, min(q0 + _DECODE_BLOCK_BYTES, n_bytes))
        head = window >> 29
        size = sizes[head & 3]
        count = ((window >> (29 - size)) & ((1 << size) - 1)) + 1
        base = q0 * 8
        nxt = np.arange(base + 3, base + 3 + window.size, dtype=np.int64) + size
        nxt += np.where(head >> 2 == 1, wordsize, count * wordsize)
        nxt_view, count_view = memoryview(nxt), memoryview(count)
        hi = base + window.size
        while filled < num and p < hi:
            c = count_view[p - base]
            token_starts.append(p)
            token_counts.append(c)
            filled += c
            p = nxt_view[p - base]
    starts = np.array(token_starts, dtype=np.int64)
    counts = np.array(token_counts, dtype=np.int64)
    head = _read_bits(padded, starts, 3)
    series = (head >> 2) == 1
    value_pos = starts + 3 + sizes[head & 3]
    if filled > num:  # like the SDK: a series may overshoot (numpy slice clips), a literal may not
        if not series[-1]:
            raise ValueError("RLE literal run writes past the end of the image")
        counts[-1] -= filled - num

    # 2. entries: one (value, length) per series token, one (value, 1) per literal value
    per_token = np.where(series, 1, counts)
    token_of_entry = np.repeat(np.arange(starts.size), per_token)
    k = np.arange(token_of_entry.size) - (np.cumsum(per_token) - per_token)[token_of_entry]
    entry_pos = value_pos[token_of_entry] + k * wordsize
    if int(entry_pos[-1]) + wordsize > total_bits:
        raise ValueError("RLE stream is truncated inside a value")
    entry_values = _read_bits(padded, entry_pos, wordsize)
    entry_len = np.where(series, counts, 1)[token_of_entry]

    # 3. alpha = stream positions 4k+3; an entry covering [s, e) holds pixels s//4 .. e//4 - 1
    ends = np.cumsum(entry_len)
    pixels = ends // 4 - (ends - entry_len) // 4
    return np.repeat(entry_values >= threshold, pixels).reshape(height, width)
