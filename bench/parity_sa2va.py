"""Parity of the Sa2VA family with the reference: every recorded quantity of both fixtures, as markdown tables.

    .venv/bin/python bench/parity_sa2va.py            # the tables of docs/models.md#parity-with-the-reference
    .venv/bin/python bench/parity_sa2va.py --summary  # the README's table: the largest difference per group

Each fixture (``../shared/fixtures/sa2va*-reference-tiny-a``) is the reference's own ``predict_forward`` on a tiny
random configuration with every intermediate kept. It is laid out as a released folder, loaded through
:func:`model.sa2va.checkpoint.load_sa2va` and run through :class:`model.sa2va.inference.Sa2VASegmenter` in the
fixture's mode (``tests/sa2va_fixture.py``); ``tests/test_sa2va.py`` asserts the same tolerances.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


GROUPS = [  # (README row, quantity prefixes)
    ("prompt token ids", ("llm.input_ids",)),
    ("MLLM and SAM-2 inputs (Pillow resizes)", ("mllm.pixel", "sam.state0.images", "keyframes.sam_input")),
    ("InternViT, pixel shuffle + mlp1, spliced embeddings", ("vit.", "mllm.vit_embeds", "llm.inputs_embeds")),
    ("LLM last-layer states and logits", ("llm.final_hidden", "llm.step_logits", "seg.hidden")),
    ("[SEG] prompt token (text_hidden_fcs)", ("seg.embedding",)),
    ("SAM-2 image features (3 levels)", ("sam.state0.frame", "keyframes.vision_feat")),
    ("SAM-2 decoder calls: masks, IoUs, object scores, pointers, image embeddings", ("sam.call",)),
    ("memory features, bf16 places (1e-6 floor)", ("sam.state0.maskmem_features",)),
    ("memory position encoding, object pointers", ("sam.state0.maskmem_pos_enc", "sam.state0.obj_ptr")),
    ("mask logits: low-res, 1024 px, frame size", ("sam.state0.pred_masks", "sam.state0.video_res", "final.mask",
                                                  "keyframes.mask_logits")),
    ("binary masks: pixels differing", ("final.masks", "keyframes.binary_masks")),
]


def main() -> int:
    import torch
    from sa2va_fixture import FIXTURE_MODES, released_folder, run_and_compare

    torch.set_num_threads(2)  # the fixtures were recorded with 2 threads
    failed = 0
    results = {}
    for name, mode in FIXTURE_MODES.items():
        with tempfile.TemporaryDirectory() as scratch:
            rows, _ = run_and_compare(name, released_folder(name, Path(scratch) / name))
        results[name] = rows
        failed += sum(not row.ok for row in rows)
        if "--summary" in sys.argv:
            continue
        print(f"\n`{name}` (mode `{mode}`): {len(rows)} quantities\n")
        print("| quantity | max abs difference | tolerance | |")
        print("|---|---|---|---|")
        for row in rows:
            value = "0" if row.max_abs_diff == 0 else f"{row.max_abs_diff:.2g}"
            print(f"| `{row.quantity}` | {value} | {row.tolerance:g} | {'ok' if row.ok else 'OVER'}"
                  f"{' - ' + row.note if row.note else ''} |")  # fmt: skip
    if "--summary" in sys.argv:
        names = list(FIXTURE_MODES)
        print("| recorded quantities | " + " | ".join(f"`{FIXTURE_MODES[n]}` fixture" for n in names) + " |")
        print("|---|" + "---|" * len(names))
        for label, prefixes in GROUPS:
            cells = []
            for name in names:
                rows = [r for r in results[name] if r.quantity.startswith(prefixes)]
                worst = max((r.max_abs_diff for r in rows), default=None)
                cells.append("–" if worst is None else ("0" if worst == 0 else f"{worst:.2g}") + f" ({len(rows)})")
            print(f"| {label} | " + " | ".join(cells) + " |")
        covered = {r.quantity for rows in results.values() for r in rows}
        grouped = {q for q in covered if any(q.startswith(p) for _, ps in GROUPS for p in ps)}
        assert covered == grouped, sorted(covered - grouped)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
