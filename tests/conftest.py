import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fixture_model import FIXTURE_DIR  # noqa: E402

SHARED_VIDEOS = ROOT.parent / "shared" / "data" / "videos"


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def require_fixture() -> Path:
    if not (FIXTURE_DIR / "weights.safetensors").is_file():
        pytest.fail(f"parity fixture missing at {FIXTURE_DIR} (shared/ must sit beside the checkout)")
    return FIXTURE_DIR
