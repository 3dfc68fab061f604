"""The real-scale rehearsal (bench/rehearse_7b.py) runs end to end at tiny size, so that it cannot rot: the same
phases and code as at glus-7b shapes (writers, loader, `glus segment`, a worker, one fine-tuning step)."""

import re
import subprocess
import sys

from conftest import ROOT, test_redis_url


def test_rehearsal_runs_every_phase_at_tiny_size(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "rehearse_7b.py"), "--config", "glus-tiny", "--workdir",
         str(tmp_path / "rehearsal"), "--frames", "2", "--threads", "2", "--redis-url", test_redis_url()],
        capture_output=True, text=True, timeout=1200, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = done.stdout[done.stdout.index("## Rehearsal"):]
    assert re.search(r"load \(bf16, CPU\): [\d.]+ s for 0\.04 B parameters", report), report
    assert "glus segment: 2 frames of dog.mp4" in report and "[SEG] on 2/2 frames" in report
    version = re.search(r"worker: prediction (glus-7b-[0-9a-f]{8}) \(2 results, 2 frames; /setup says (\S+)\)", report)
    assert version and version.group(1) == version.group(2), report
    assert re.search(r"longest gap between the worker's heartbeats during the job [\d.]+ s", report), report
    assert re.search(r"fine-tuning step .*: \d+ s, loss [\d.]+;", report), report
    assert re.search(r"stored version glus-7b-[0-9a-f]{8}: [\d.]+ GB = [\d.]+ % of the base", report), report
