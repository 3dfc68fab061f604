"""The whole benchmark suite in one run: inference speed vs the reference-style loop, memory vs video length,
brush-RLE encoding vs the SDK, J&F speed, and the backend end to end through the queue.

    python bench/run_all.py            # everything (about 15 minutes on a 2-core CPU)
    python bench/run_all.py --quick    # shorter videos, fewer rounds

Each part is its own script (run them alone for their options); this runs them one after another in fresh
processes, so one part's memory does not count against the next, and prints their reports in order.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip", nargs="*", default=[], help="parts to skip: inference memory rle metrics backend")
    args = parser.parse_args()
    parts = {
        "inference": ["bench_inference.py"] + (["--frames", "16"] if args.quick else []),
        "memory": ["bench_memory.py"] + (["--lengths", "100", "1000"] if args.quick else []),
        "rle": ["bench_rle.py"] + (["--rounds", "2"] if args.quick else []),
        "metrics": ["bench_metrics.py"],
        "backend": ["bench_backend.py"],
    }
    failed = []
    for name, argv in parts.items():
        if name in args.skip:
            continue
        print(f"\n=== {name}: python bench/{' '.join(argv)}", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / argv[0]), *argv[1:]])
        print(f"=== {name}: exit {code}, {time.perf_counter() - started:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed parts: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
