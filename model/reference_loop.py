"""The straightforward reference-style inference loop, kept as the baseline the fast path is measured against.

It does what the reference GLUS inference script does, with this project's model: it preloads every frame,
and for every expression and every frame it re-encodes all prompt images (4 context + up to 4 query) with
CLIP, prefills the whole prompt, calls ``generate`` to decode the answer (``[SEG]`` and what follows), and
encodes the frame with SAM-2's image encoder again for each expression. Masks come from the same network
pieces as :class:`model.inference.VideoSegmenter` (sliding schedule, key frame 0, memory bank), so the two
must agree: ``bench/bench_inference.py`` and the tests check that they do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .inference import context_frame_indices
from .modeling.glus import GlusModel
from .modeling.memory_bank import MemoryBank
from .modeling.sam2_memory import upsample_logits
from .preprocessing import clip_video_pixel_values, sam_pixel_values
from .prompting import inference_prompt
from .tokenizer import GlusTokenizer
from .video_io import FrameSource


@torch.inference_mode()
def reference_style_segment(
    model: GlusModel,
    tokenizer: GlusTokenizer,
    frames: FrameSource | Sequence[np.ndarray] | np.ndarray,
    expressions: Sequence[str],
    max_new_tokens: int = 3,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """Per expression ``{"masks": (N, H, W) bool, "logits": list of (H, W) float tensors or None}``."""
    model = model.eval()
    cfg = model.config
    device = torch.device(device)
    dtype = next(model.parameters()).dtype
    if isinstance(frames, FrameSource):
        all_frames = [np.asarray(frames.frame(i)) for i in range(len(frames))]
    else:
        all_frames = [np.asarray(f) for f in frames]
    n = len(all_frames)
    context = context_frame_indices(n, cfg.context_frames)
    seg_id = tokenizer.token_to_id(cfg.seg_token)
    eos = cfg.llm.get("eos_token_id", 2)
    out = []
    for expression in expressions:
        bank = MemoryBank(cfg.num_maskmem, cfg.mem_stride)
        masks, logits_per_frame = [], []
        for t in range(n):
            rounds = list(range(max(0, t - cfg.query_window + 1), t + 1))
            pixels = clip_video_pixel_values(cfg, all_frames.__getitem__, context + rounds, n)
            tokens = model.encode_images(pixels.to(device, dtype))
            ids = torch.tensor(
                tokenizer.encode_prompt(
                    inference_prompt(
                        expression, cfg.context_frames, len(rounds), trailing_space=cfg.open_prompt_trailing_space
                    )
                ),
                device=device,
            )
            embeds = model.embed_prompt(ids, tokens).unsqueeze(0)
            generated = model.language_model.generate(
                inputs_embeds=embeds,
                attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=cfg.llm.get("pad_token_id", 0),
                output_hidden_states=True,
                return_dict_in_generate=True,
            )
            first_token = int(generated.sequences[0, -len(generated.hidden_states)])
            height, width = all_frames[t].shape[:2]
            if first_token != seg_id:
                masks.append(np.zeros((height, width), dtype=bool))
                logits_per_frame.append(None)
                continue
            prompt_hidden = generated.hidden_states[0][-1][0]  # the whole prompt; its last state predicts [SEG]
            last = torch.tensor([prompt_hidden.shape[0] - 1], device=device)
            embedding = model.sam_prompts(ids, prompt_hidden, last)
            sam_in = sam_pixel_values([all_frames[t]], model.sam_image_size, cfg.sam_mean, cfg.sam_std)
            feats = model.encode_frame(sam_in.to(device, dtype))
            conditioned = model.condition_on_memory(feats, bank.read(t) if cfg.use_memory_bank else [])
            decoded = model.decode_masks(conditioned, feats, embedding)
            mask_logits = upsample_logits(decoded.lowres_logits, (height, width))[0, 0]
            masks.append((mask_logits > cfg.mask_threshold).cpu().numpy())
            logits_per_frame.append(mask_logits.float().cpu())
            if cfg.use_memory_bank:
                bank.write(t, model.encode_memory(conditioned, feats, decoded.lowres_logits))
        out.append({"masks": np.stack(masks), "logits": logits_per_frame})
    return out
