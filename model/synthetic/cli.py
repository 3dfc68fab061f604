"""Command line of the synthetic benchmark: ``generate`` writes the fixed splits, ``baselines`` scores the trivial
answers on one of them.

    python -m model.synthetic.cli generate --root data/synthetic [--train N --valid N --test N] [--domain recoloured]
    python -m model.synthetic.cli baselines --root data/synthetic --split test
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from .dataset import SPLITS
from .world import DOMAINS

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model.synthetic.cli", description=__doc__.split("\n\n")[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write the train / valid / test splits in the MeViS layout")
    gen.add_argument("--root", required=True, help="output folder (one sub-folder per split)")
    for split, (n, seed) in SPLITS.items():
        gen.add_argument(
            f"--{split}",
            type=int,
            default=n,
            metavar="N",
            help=f"videos in the {split} split (default {n}, seed {seed}; 0 skips it)",
        )
    gen.add_argument(
        "--domain",
        default="default",
        choices=sorted(DOMAINS),
        help="default (the benchmark) or a shifted world, e.g. recoloured (colour words drawn in new colours)",
    )
    gen.add_argument("--workers", type=int, default=1, help="generator processes (same output for any number)")
    gen.add_argument("--overwrite", action="store_true", help="replace existing synthetic splits")
    base = sub.add_parser("baselines", help="J, F and J&F of the trivial answers, overall and per category")
    base.add_argument("--root", required=True, help="folder holding the split folders")
    base.add_argument("--split", default="test")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    if args.command == "generate":
        from .dataset import generate_benchmark

        start = time.perf_counter()
        sizes = {split: getattr(args, split) for split in SPLITS}
        try:
            paths = generate_benchmark(
                args.root,
                sizes,
                DOMAINS[args.domain],
                workers=args.workers,
                overwrite=args.overwrite,
                progress=not args.quiet,
            )
        except FileExistsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for split, path in paths.items():
            print(f"{split}: {sizes[split]} videos -> {path}")
        print(f"done in {time.perf_counter() - start:.1f} s")
        return 0
    from .baselines import evaluate_split, format_table

    try:
        results = evaluate_split(args.root, args.split, progress=not args.quiet)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
