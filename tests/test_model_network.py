"""Shapes, dtypes and rules through the whole glus-tiny path (random weights)."""

import torch

from model.modeling.glus import seg_state_positions
from model.modeling.memory_bank import MemoryBank, MemoryEntry, positions_to_read
from model.preprocessing import clip_pixel_values, sam_pixel_values
from model.prompting import inference_prompt
from model.tokenizer import IMAGE_PLACEHOLDER_ID


def test_shapes_and_dtypes_through_the_path(tiny, moving_square_video):
    model, tok = tiny
    cfg = model.config
    frames = list(moving_square_video[:5])
    with torch.no_grad():
        clip = clip_pixel_values(frames, cfg.clip_image_size, cfg.clip_mean, cfg.clip_std)
        assert clip.shape == (5, 3, 64, 64) and clip.dtype == torch.float32
        tokens = model.encode_images(clip)
        assert tokens.shape == (5, 16, 128) and tokens.dtype == torch.float32  # 64 patches pooled 4:1
        ids = torch.tensor(tok.encode_prompt(inference_prompt("the red square", 4, 1)))
        embeds = model.embed_prompt(ids, tokens)
        assert embeds.shape == (len(ids) + 5 * 15, 128)
        # image tokens land where the placeholders were, in order
        first = int((ids == IMAGE_PLACEHOLDER_ID).nonzero()[0])
        assert torch.equal(embeds[first : first + 16], tokens[0])
        hidden = model.language_hidden_states(embeds.unsqueeze(0))
        assert hidden.shape == (1, embeds.shape[0], 128)
        seg = model.project_seg(hidden[0, -1:])
        assert seg.shape == (1, model.sam.hidden_dim) == (1, 64)
        sam = sam_pixel_values(frames[:1], model.sam_image_size, cfg.sam_mean, cfg.sam_std)
        assert sam.shape == (1, 3, 128, 128)
        feats = model.encode_frame(sam)
        assert feats.top.shape == (64, 1, 64) and feats.top_size == (8, 8)
        assert [tuple(h.shape) for h in feats.high_res] == [(1, 8, 32, 32), (1, 16, 16, 16)]
        conditioned = model.condition_on_memory(feats, [])
        out = model.decode_masks(conditioned, feats, seg)
        assert out.lowres_logits.shape == (1, 1, 32, 32) and out.iou_prediction.shape == (1, 1)
        memory = model.encode_memory(conditioned, feats, out.lowres_logits)
        assert memory.features.shape == (1, 32, 8, 8) and memory.pos_enc.shape == (1, 32, 8, 8)
        with_memory = model.condition_on_memory(feats, [memory, memory])
        assert with_memory.shape == conditioned.shape and not torch.allclose(with_memory, conditioned)


def test_placeholder_count_mismatch_is_an_error(tiny):
    model, tok = tiny
    ids = torch.tensor(tok.encode_prompt(inference_prompt("x", 4, 1)))
    try:
        model.embed_prompt(ids, torch.zeros(4, 16, 128))
    except ValueError as exc:
        assert "5 image placeholders but 4 images" in str(exc)
    else:
        raise AssertionError("expected a ValueError")


def _reference_seg_mask_positions(ids: list[int], seg_id: int, num_context: int, extra: int) -> list[int]:
    """The reference's LISA-style rule (GLUS.py evaluate): shift by one, prepend the context images' width,
    then widen by one image before every [SEG]. Written as the loop the reference uses."""
    mask = [i == seg_id for i in ids[1:]]
    mask = [False] * (num_context * extra) + mask
    length = len(mask) + ids.count(seg_id) * extra
    out = [False] * length
    col = 0
    for value in mask:
        if value:
            col += extra
            out[col] = True
        col += 1
    assert col == length
    return [p for p, v in enumerate(out) if v]


def test_seg_position_rule_matches_the_reference(tiny):
    _, tok = tiny
    seg_id = tok.token_to_id("[SEG]")
    for rounds in (1, 2, 4):
        ids = tok.encode_prompt(inference_prompt("the dog", 4, rounds, open_last=False))
        ours = seg_state_positions(torch.tensor(ids), seg_id, 16).tolist()
        # the reference's shift trick needs the placeholder -200 gone (it indexes ids without images)
        assert ours == _reference_seg_mask_positions(ids, seg_id, 4, 15)
        expanded = []
        for i in ids:
            expanded.extend([IMAGE_PLACEHOLDER_ID] * 16 if i == IMAGE_PLACEHOLDER_ID else [i])
        assert all(expanded[p + 1] == seg_id for p in ours) and len(ours) == rounds


def test_memory_reads_the_right_frames():
    # stride 3 (inference): frame 20 reads 19 and 18, 15, 12, 9, 6, 3 (oldest first)
    assert positions_to_read(20, 7, 3) == [3, 6, 9, 12, 15, 18, 19]
    assert positions_to_read(0, 7, 3) == []
    assert positions_to_read(1, 7, 3) == [0]
    assert positions_to_read(4, 7, 3) == [0, 3]
    # stride 1 (training): frame 3 of a clip reads 0, 1, 2; frame 10 reads the 7 previous frames
    assert positions_to_read(3, 7, 1) == [0, 1, 2]
    assert positions_to_read(10, 7, 1) == [3, 4, 5, 6, 7, 8, 9]


def test_bank_keeps_only_what_can_still_be_read():
    for stride in (1, 3):
        bank = MemoryBank(7, stride)
        everything: dict[int, MemoryEntry] = {}
        for f in range(200):
            expected = [everything[p] for p in positions_to_read(f, 7, stride)]
            assert [id(e.features) for e in bank.read(f)] == [id(e.features) for e in expected]
            entry = MemoryEntry(torch.full((1,), float(f)), torch.zeros(1))
            bank.write(f, entry)
            everything[f] = bank.entries[f]
            assert len(bank) <= 7


def test_multimask_fallback_switch():
    """Eval-mode SAM-2 may replace token 0's mask by an untrained multimask token; the switch turns that off."""
    from model.config import get_config
    from model.modeling.glus import GlusModel

    config = get_config("glus-tiny")
    assert GlusModel(config).sam.sam_mask_decoder.dynamic_multimask_via_stability is True  # reference behaviour
    config.sam_multimask_fallback = False
    model = GlusModel(config).eval()
    decoder = model.sam.sam_mask_decoder
    assert decoder.dynamic_multimask_via_stability is False
    with torch.no_grad():
        feats = model.encode_frame(torch.randn(1, 3, 128, 128))
        conditioned = model.condition_on_memory(feats, [])
        seg = torch.randn(1, 64)
        out = model.decode_masks(conditioned, feats, seg)
        prompt = model.sam.sam_prompt_encoder
        all_masks, _, _, _ = decoder.predict_masks(
            conditioned.permute(1, 2, 0).reshape(1, 64, 8, 8),
            prompt.get_dense_pe(),
            seg.unsqueeze(1),
            prompt.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 8, 8),
            repeat_image=False,
            high_res_features=feats.high_res,
        )
    assert torch.allclose(out.lowres_logits, all_masks[:, 0:1])  # always the trained single-mask token


def test_visual_token_aids_pool_squares_normalise_and_say_where_each_token_is(tmp_path):
    """The from-scratch visual-token switches: "grid" pools 2x2 squares where GLUS pools 1x4 strips, the
    LayerNorm gives every token unit scale, and the fixed 2-D position embedding is each pooled cell's own
    (rebuilt from the config, not stored); glus-7b keeps the reference projector."""
    import pytest

    from model.checkpoint import from_pretrained, save_pretrained
    from model.config import GlusConfig, get_config
    from model.factory import random_model
    from model.modeling.projector import VisionProjector, pool_patch_tokens, sincos_2d

    patch_index = torch.arange(64.0).view(1, 64, 1)  # an 8x8 patch grid, raster order
    assert pool_patch_tokens(patch_index, 4, "raster").flatten().tolist()[:3] == [1.5, 5.5, 9.5]  # strips
    squares = pool_patch_tokens(patch_index, 4, "grid").view(4, 4)
    assert squares[0, 0] == (0 + 1 + 8 + 9) / 4 and squares[1, 2] == (20 + 21 + 28 + 29) / 4

    projector = VisionProjector(16, 32, 4, "mlp2x_gelu", "grid", "layernorm", "sincos2d", patch_grid=8)
    table = projector.position_embedding
    assert table.shape == (16, 32) and torch.equal(table[5], sincos_2d(torch.tensor([[2.5, 2.5]]), 32)[0])
    assert torch.cdist(table, table).add(torch.eye(16) * 9).min() > 0.1  # every cell's embedding differs
    assert "position_embedding" not in projector.state_dict()
    with torch.no_grad():
        tokens = projector(torch.randn(3, 64, 16) * 50)
        normalised = projector.output_norm(
            projector.linear_2(
                projector.act(projector.linear_1(pool_patch_tokens(torch.randn(3, 64, 16) * 50, 4, "grid")))
            )
        )
    assert tokens.shape == (3, 16, 32)
    assert normalised.pow(2).mean(-1).sqrt().sub(1).abs().max() < 1e-3  # unit scale, whatever the input

    config = get_config("glus-tiny")
    config.vision_token_pool_layout, config.projector_output_norm = "grid", "layernorm"
    config.vision_position_embedding = "sincos2d"
    model, tokenizer = random_model(config, seed=0)
    frames = torch.rand(2, 3, config.clip_image_size, config.clip_image_size)
    loaded, _, _ = from_pretrained(save_pretrained(model, tokenizer, tmp_path / "ckpt"))
    assert loaded.config.vision_position_embedding == "sincos2d"
    with torch.no_grad():
        assert torch.equal(model.encode_images(frames), loaded.encode_images(frames))
    for field, bad in (("vision_token_pool_layout", "hex"), ("projector_output_norm", "rms"),
                       ("vision_position_embedding", "learned")):  # fmt: skip
        with pytest.raises(ValueError, match=field):
            GlusConfig.from_dict({**config.to_dict(), field: bad})
    with pytest.raises(ValueError, match="square"):
        GlusConfig.from_dict({**config.to_dict(), "vision_token_pool": 2})
    reference = get_config("glus-7b")
    assert (reference.vision_token_pool_layout, reference.projector_output_norm,
            reference.vision_position_embedding) == ("raster", None, None)  # fmt: skip


def _assert_both_inference_paths_agree(model, tok, video, expressions):
    """The cached, lockstep path gives the reference-style loop's masks (a logit within float noise of 0 may
    flip); returns the fast path's results."""
    import numpy as np

    from model.inference import VideoSegmenter
    from model.reference_loop import reference_style_segment

    reference = reference_style_segment(model, tok, video, expressions)
    fast = VideoSegmenter(model, tok).segment(video, expressions)
    for ref, result in zip(reference, fast):
        decisive = torch.stack(ref["logits"]).abs().numpy() > 1e-4
        assert np.array_equal(ref["masks"][decisive], result.masks[decisive])
    return fast


def test_point_prompt_is_a_soft_sam2_click_at_the_cell_the_seg_state_points_to(moving_square_video):
    """The from-scratch pointer switch: each visual token's cell centre is where SAM-2 would place a click; a
    pointer sure of one cell gives exactly SAM-2's own encoding of a positive click there; both inference
    paths (the cached, lockstep one and the reference-style loop) hand SAM-2 the [SEG] token and the point;
    glus-7b has no pointer and strips (raster pooling) cannot be pointed at."""
    import numpy as np
    import pytest

    from model.config import GlusConfig, get_config
    from model.factory import random_model
    from model.inference import VideoSegmenter
    from model.modeling.glus import image_token_positions

    config = get_config("glus-tiny")
    config.vision_token_pool_layout, config.seg_point_prompt = "grid", "pointer"
    model, tok = random_model(config, seed=0, seg_logit_bias=20.0)
    model.eval()
    centres = model.token_cell_centres
    assert centres.shape == (16, 2)
    assert torch.allclose(centres[6], torch.tensor([0.625, 0.375]))  # row 1, column 2 of the 4x4 cells: (x, y)

    class SureOfCell(torch.nn.Module):
        def __init__(self, cell):
            super().__init__()
            self.cell = cell

        def forward(self, seg_hidden, frame_hidden):
            return torch.nn.functional.one_hot(torch.tensor([self.cell]), 16).float().expand(len(seg_hidden), -1) * 1e4

    pointer, model.seg_pointer = model.seg_pointer, SureOfCell(6)
    size = model.sam_image_size
    with torch.no_grad():
        point, logits = model.point_prompt(torch.randn(2, 128), torch.randn(2, 16, 128))
        click = model.sam.sam_prompt_encoder._embed_points(
            (centres[6] * size - 0.5).view(1, 1, 2), torch.ones(1, 1, dtype=torch.int), pad=False
        )[0, 0]
    assert logits.shape == (2, 16) and torch.allclose(point[0], click, atol=1e-5)
    model.seg_pointer = pointer

    ids = torch.tensor([5, IMAGE_PLACEHOLDER_ID, 7, IMAGE_PLACEHOLDER_ID, 9])
    assert image_token_positions(ids, 16).tolist() == [list(range(1, 17)), list(range(18, 34))]
    hidden = torch.randn(35, 128)
    with torch.no_grad():
        prompts = model.sam_prompts(ids, hidden, torch.tensor([34]))
        expected, _ = model.point_prompt(hidden[34:35], hidden[18:34].unsqueeze(0))  # the last image's tokens
    assert prompts.shape == (1, 2, model.sam.hidden_dim)
    assert torch.allclose(prompts[0, 0], model.project_seg(hidden[34:35])[0])
    assert torch.allclose(prompts[0, 1], expected[0])

    video, expressions = moving_square_video[:6], ["the red square", "the ramp"]
    fast = _assert_both_inference_paths_agree(model, tok, video, expressions)
    without = get_config("glus-tiny")
    without.vision_token_pool_layout = "grid"
    plain, _ = random_model(without, seed=0, seg_logit_bias=20.0)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("seg_pointer.")})
    plain_masks = VideoSegmenter(plain.eval(), tok).segment(video, expressions)
    assert any(not np.array_equal(a.masks, b.masks) for a, b in zip(plain_masks, fast))  # the point is used

    assert get_config("glus-7b").seg_point_prompt is None
    with pytest.raises(ValueError, match="grid"):
        GlusConfig.from_dict({**get_config("glus-tiny").to_dict(), "seg_point_prompt": "pointer"})
    with pytest.raises(ValueError, match="seg_point_prompt"):
        GlusConfig.from_dict({**config.to_dict(), "seg_point_prompt": "box"})


def test_pointer_map_puts_the_pointers_cell_probabilities_into_sams_dense_prompt(moving_square_video):
    """The pointer-map switch: the prompt carries the pointer's cell probabilities as a third row, SAM-2 gets
    them as a dense prompt on its image-embedding grid (one learned embedding scaled by each cell's probability),
    so where the pointer points changes the mask; both inference paths agree; the map trains with the decoder."""
    import pytest

    from model.config import GlusConfig, get_config
    from model.factory import random_model
    from model.trainer import trainable_parameters

    config = get_config("glus-tiny")
    config.vision_token_pool_layout, config.seg_point_prompt = "grid", "pointer_map"
    model, tok = random_model(config, seed=0, seg_logit_bias=20.0)
    model.eval()
    sam_dim = model.sam.hidden_dim

    with torch.no_grad():
        cells = torch.nn.functional.one_hot(torch.tensor([6]), 16).float()
        dense = model.point_map(cells, (4, 4))
    assert dense.shape == (1, sam_dim, 4, 4)
    assert torch.allclose(dense[0, :, 1, 2], model.point_map.embedding) and dense[0, :, 0, 0].abs().sum() == 0

    seg_hidden, frame_hidden = torch.randn(2, 128), torch.randn(2, 16, 128)
    with torch.no_grad():
        prompts, logits = model.compose_prompts(model.project_seg(seg_hidden), seg_hidden, frame_hidden)
        point, _ = model.point_prompt(seg_hidden, frame_hidden)
    assert prompts.shape == (2, 3, sam_dim)
    assert torch.allclose(prompts[:, 1], point)
    assert torch.allclose(prompts[:, 2, :16], logits.softmax(-1)) and not prompts[:, 2, 16:].any()

    video = moving_square_video[:6]
    with torch.no_grad():
        feats = model.encode_frame(torch.randn(1, 3, model.sam_image_size, model.sam_image_size))
        conditioned = model.condition_on_memory(feats, [])
        at = []
        for cell in (0, 15):
            prompt = prompts[:1].clone()
            prompt[0, 2, :16] = torch.nn.functional.one_hot(torch.tensor(cell), 16).float()
            at.append(model.decode_masks(conditioned, feats, prompt).lowres_logits)
    assert (at[0] - at[1]).abs().max() > 1e-3  # the map alone moves the mask

    expressions = ["the red square", "the ramp"]
    _assert_both_inference_paths_agree(model, tok, video, expressions)
    assert any(p is model.point_map.embedding for p in trainable_parameters(model, "glus"))

    with pytest.raises(ValueError, match="pointer_map"):
        GlusConfig.from_dict({**get_config("glus-tiny").to_dict(), "seg_point_prompt": "pointer_map"})


def test_motion_channels_show_clip_each_frames_neighbours_on_both_inference_paths(moving_square_video):
    """The from-scratch motion switch: CLIP's input for frame t is the frame, t minus t-1 and t+1 minus t (zero
    past the video's ends), so a frame's visual tokens change with its neighbours; the cached, lockstep path and
    the reference-style loop give the same masks; the configuration must match the vision tower's channels."""
    import pytest

    from model.config import GlusConfig, get_config
    from model.factory import random_model
    from model.preprocessing import clip_video_pixel_values

    video = moving_square_video[:6]
    config = get_config("glus-tiny")
    plain = clip_pixel_values(list(video), config.clip_image_size, config.clip_mean, config.clip_std)
    assert torch.equal(clip_video_pixel_values(config, video.__getitem__, [4, 0], 6), plain[[4, 0]])
    config.vision_motion_channels, config.vision["num_channels"] = "frame_difference", 9
    motion = clip_video_pixel_values(config, video.__getitem__, [0, 3, 5], 6)
    assert motion.shape == (3, 9, 64, 64)
    assert torch.equal(motion[:, :3], plain[[0, 3, 5]])
    assert torch.equal(motion[1, 3:6], plain[3] - plain[2]) and torch.equal(motion[1, 6:], plain[4] - plain[3])
    assert not motion[0, 3:6].any() and torch.equal(motion[0, 6:], plain[1] - plain[0])  # no frame before 0
    assert not motion[2, 6:].any() and motion[2, 3:6].abs().sum() > 0  # no frame after the last

    model, tok = random_model(config, seed=0, seg_logit_bias=20.0)
    model.eval()
    still = video.copy()
    still[2] = video[3]  # frame 3 now has the same picture before it: no backward motion
    with torch.no_grad():
        moving = model.encode_images(clip_video_pixel_values(config, video.__getitem__, [3], 6))
        stopped = model.encode_images(clip_video_pixel_values(config, still.__getitem__, [3], 6))
    assert (moving - stopped).abs().max() > 1e-3  # same frame, different motion, different tokens

    expressions = ["the red square", "the ramp"]
    _assert_both_inference_paths_agree(model, tok, video, expressions)

    assert get_config("glus-7b").vision_motion_channels is None
    with pytest.raises(ValueError, match="num_channels 9"):
        GlusConfig.from_dict({**get_config("glus-tiny").to_dict(), "vision_motion_channels": "frame_difference"})
    with pytest.raises(ValueError, match="vision_motion_channels"):
        GlusConfig.from_dict({**config.to_dict(), "vision_motion_channels": "flow"})
