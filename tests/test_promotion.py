"""The promotion gate scores both checkpoints on held-out data and promotes only if J&F does not drop."""

from model.checkpoint import save_pretrained
from model.config import get_config, with_sam_image_size
from model.factory import random_model
from model.promotion import GateResult, promotion_gate, score_checkpoint
from model.synthetic.dataset import write_split


def test_gate_compares_candidate_and_current_on_the_same_held_out_split(tmp_path):
    write_split(tmp_path / "data", "heldout", 2, 3, progress=False)
    config = with_sam_image_size(get_config("glus-tiny"), 64)
    segmenting = save_pretrained(*random_model(config, seed=0, seg_logit_bias=20.0), tmp_path / "a")
    silent = save_pretrained(*random_model(config, seed=0, seg_logit_bias=-20.0), tmp_path / "b")  # never [SEG]
    jf_a, n = score_checkpoint(segmenting, tmp_path / "data", "heldout")
    jf_b, _ = score_checkpoint(silent, tmp_path / "data", "heldout")
    assert n >= 2 and jf_a != jf_b
    better, worse = (segmenting, silent) if jf_a > jf_b else (silent, segmenting)
    assert promotion_gate(better, worse, tmp_path / "data", "heldout").promoted
    refused = promotion_gate(worse, better, tmp_path / "data", "heldout")
    assert not refused.promoted and refused.to_dict()["promoted"] is False
    assert refused.candidate_jf == min(jf_a, jf_b) and refused.current_jf == max(jf_a, jf_b)
    assert GateResult(0.50, 0.51, 3, tolerance=0.02).promoted  # within the tolerance


def test_gate_refuses_an_empty_held_out_split(tmp_path):
    import json

    import pytest

    split = tmp_path / "data" / "heldout"
    split.mkdir(parents=True)
    (split / "meta_expressions.json").write_text(json.dumps({"videos": {}}))
    (split / "mask_dict.json").write_text("{}")
    config = with_sam_image_size(get_config("glus-tiny"), 64)
    ckpt = save_pretrained(*random_model(config, seed=0), tmp_path / "a")
    with pytest.raises(ValueError, match="no expression"):
        score_checkpoint(ckpt, tmp_path / "data", "heldout")
