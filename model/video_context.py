"""Per-video state shared by every expression of one ``segment`` call: the exact-mode speedups.

The reference recomputes everything for every expression and every step: it re-encodes all prompt images
with CLIP, re-prefills the whole prompt, re-encodes each frame with SAM-2's image encoder once per expression,
and preloads every frame. :class:`VideoContext` computes each of these once and shares it:

* **prompt prefix KV cache** - the system prompt, the 4 context frames and the context instruction are the
  same for every step of every expression of a video (the expression comes after them). Their keys/values
  are computed once; each step prefills only its own suffix;
* **frame feature caches** - CLIP visual tokens and SAM-2 image features, keyed by frame index, bounded
  (least recently used out), filled in batches of ``encode_batch`` upcoming frames (batched encoders);
* **frame prefetch** - upcoming frames are decoded on a background thread (pinned memory on CUDA).

Everything here is bounded by ``cache_frames`` + ``encode_batch``, never by the video's length, and it is
dropped when the call returns. Nothing is global: one context per call.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from .modeling.glus import GlusModel
from .modeling.sam2_memory import FrameFeatures
from .preprocessing import clip_video_pixel_values, sam_pixel_values
from .tokenizer import IMAGE_PLACEHOLDER_ID
from .video_io import FrameSource

logger = logging.getLogger(__name__)


class _LruCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.items: OrderedDict[int, object] = OrderedDict()

    def get(self, key: int):
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: int, value: object) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.capacity:
            self.items.popitem(last=False)

    def __contains__(self, key: int) -> bool:
        return key in self.items


class FramePrefetcher:
    """Decodes frames ahead of use on one background thread (the only thread that reads the source); holds at
    most ``depth`` decoded frames."""

    def __init__(self, source: FrameSource, depth: int = 8) -> None:
        self.source = source
        self.depth = max(1, depth)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="glus-decode")
        self._pending: OrderedDict[int, Future] = OrderedDict()

    def _decode(self, index: int) -> np.ndarray:
        return np.ascontiguousarray(self.source.frame(index))

    def schedule(self, indices: Sequence[int]) -> None:
        """Start decoding ``indices`` (in order) unless already pending; keeps at most ``depth`` pending."""
        for index in indices:
            if len(self._pending) >= self.depth:
                break
            if index not in self._pending:
                self._pending[index] = self._executor.submit(self._decode, index)

    def frame(self, index: int) -> np.ndarray:
        """The decoded frame. Every decode runs on the one background thread, so a source that is not
        thread-safe (a seeking video reader, a frame cache) is never used from two threads at once."""
        future = self._pending.pop(index, None)
        if future is None:
            future = self._executor.submit(self._decode, index)
        return future.result()

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


class VideoContext:
    """Caches for one video and one model; see the module docstring. Use as a context manager."""

    def __init__(
        self,
        model: GlusModel,
        source: FrameSource,
        context_frames: list[int],
        device: torch.device,
        dtype: torch.dtype,
        cache_frames: int = 16,
        encode_batch: int = 4,
        use_prefix_cache: bool = True,
        im_start_id: int | None = None,
    ) -> None:
        self.model = model
        self.config = model.config
        self.source = source
        self.context_frames = list(context_frames)
        self.device = device
        self.dtype = dtype
        self.encode_batch = max(1, encode_batch)
        self.use_prefix_cache = use_prefix_cache
        self.im_start_id = im_start_id
        # the context frames stay cached for the whole video (every prompt holds them)
        self._clip = _LruCache(cache_frames + len(set(context_frames)) + model.config.query_window + self.encode_batch)
        self._sam = _LruCache(cache_frames + self.encode_batch)
        self._sizes: dict[int, tuple[int, int]] = {}
        self._prefetch = FramePrefetcher(source, depth=2 * self.encode_batch)
        self._prefix_ids: torch.Tensor | None = None
        self._prefix_hidden: torch.Tensor | None = None
        self._prefix_cache = None
        self._prefix_width = 0
        self.stats = {
            "clip_frames_encoded": 0,
            "sam_frames_encoded": 0,
            "llm_positions": 0,
            "llm_batches": 0,
            "prefix_fills": 0,
        }

    def __enter__(self) -> VideoContext:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._prefetch.close()
        self._prefix_cache = None

    # --- frames ---
    def frame_size(self, index: int) -> tuple[int, int]:
        if index not in self._sizes:
            frame = self._prefetch.frame(index)
            self._sizes[index] = frame.shape[:2]
        return self._sizes[index]

    def _frames(self, indices: list[int]) -> list[np.ndarray]:
        frames = [self._prefetch.frame(i) for i in indices]
        for i, f in zip(indices, frames):
            self._sizes.setdefault(i, f.shape[:2])
        return frames

    def prefetch(self, upcoming: Sequence[int]) -> None:
        """Hint: these frames will be needed next, in this order."""
        self._prefetch.schedule([i for i in upcoming if i not in self._sam])

    def _to_device(self, pixels: torch.Tensor) -> torch.Tensor:
        """Host -> device copy; from pinned memory and asynchronous on CUDA."""
        if self.device.type == "cuda":
            return pixels.pin_memory().to(self.device, self.dtype, non_blocking=True)
        return pixels.to(self.device, self.dtype)

    # --- CLIP visual tokens ---
    def visual_tokens(self, indices: list[int], upcoming: Sequence[int] = ()) -> torch.Tensor:
        """``(len(indices), T, C_llm)`` visual tokens; missing frames (plus up to ``encode_batch`` upcoming
        ones) are encoded in one batch."""
        found = {i: self._clip.get(i) for i in dict.fromkeys(indices)}
        missing = [i for i, t in found.items() if t is None]
        if missing:
            extra = [i for i in dict.fromkeys(upcoming) if i not in self._clip and i not in missing]
            batch = missing + extra[: max(0, self.encode_batch - len(missing))]
            cfg = self.config
            pixels = clip_video_pixel_values(cfg, lambda i: self._frames([i])[0], batch, len(self.source))
            tokens = self.model.encode_images(self._to_device(pixels))
            self.stats["clip_frames_encoded"] += len(batch)
            for i, t in zip(batch, tokens):
                self._clip.put(i, t)
                if i in found:
                    found[i] = t
        return torch.stack([found[i] for i in indices])

    # --- SAM-2 image features ---
    def sam_features(self, index: int, upcoming: Sequence[int] = ()) -> FrameFeatures:
        """SAM-2 features of frame ``index`` (batch of one); encodes it with up to ``encode_batch - 1``
        upcoming frames in one batch when it is not cached."""
        feats = self._sam.get(index)
        if feats is None:
            extra = [i for i in dict.fromkeys(upcoming) if i != index and i not in self._sam]
            batch = [index] + extra[: self.encode_batch - 1]
            cfg = self.config
            pixels = sam_pixel_values(self._frames(batch), self.model.sam_image_size, cfg.sam_mean, cfg.sam_std)
            encoded = self.model.encode_frame(self._to_device(pixels))
            self.stats["sam_frames_encoded"] += len(batch)
            for row, i in enumerate(batch):
                self._sam.put(i, encoded.select([row]))
            feats = encoded.select([0])
        return feats

    # --- LLM with the prompt-prefix KV cache ---
    def _prefix_length(self, ids: torch.Tensor) -> int:
        """Token index where the first query frame's slot starts (everything before it is shared)."""
        image_positions = (ids == IMAGE_PLACEHOLDER_ID).nonzero().flatten()
        n_context = len(self.context_frames)
        if len(image_positions) <= n_context:
            return 0
        cut = int(image_positions[n_context])
        return cut - 1 if self.im_start_id is not None and int(ids[cut - 1]) == self.im_start_id else cut

    def _fill_prefix(self, ids: torch.Tensor, cut: int, tokens: torch.Tensor) -> int:
        """Make sure the KV cache holds ``ids[:cut]``; returns the number of images in the prefix."""
        n_prefix_images = int((ids[:cut] == IMAGE_PLACEHOLDER_ID).sum())
        if self._prefix_ids is None or not torch.equal(self._prefix_ids, ids[:cut]):
            model = self.model
            embeds = model.embed_prompt(ids[:cut], tokens[:n_prefix_images])
            out = model.language_model.model(inputs_embeds=embeds.unsqueeze(0), use_cache=True)
            self._prefix_ids = ids[:cut].clone()
            self._prefix_hidden = out.last_hidden_state[0]
            self._prefix_cache = out.past_key_values
            self._prefix_width = embeds.shape[0]
            self.stats["prefix_fills"] += 1
        return n_prefix_images

    def hidden_states_batch(
        self, ids_list: list[torch.Tensor], frames_in_prompt: list[int], upcoming: Sequence[int] = ()
    ) -> list[torch.Tensor]:
        """:meth:`hidden_states` of several prompts that share the prefix and the images (the expressions of a
        lockstep step) in one forward: their suffixes are right-padded into a batch over the cached prefix.
        Causal attention never lets a real position see the padding after it, so every prompt's states are
        those of its own forward (up to floating-point summation order)."""
        if len(ids_list) == 1 or not self.use_prefix_cache:
            return [self.hidden_states(ids, frames_in_prompt, upcoming) for ids in ids_list]
        cuts = {self._prefix_length(ids) for ids in ids_list}
        cut = cuts.pop() if len(cuts) == 1 else 0
        if cut == 0 or any(not torch.equal(ids_list[0][:cut], ids[:cut]) for ids in ids_list[1:]):
            return [self.hidden_states(ids, frames_in_prompt, upcoming) for ids in ids_list]
        model = self.model
        tokens = self.visual_tokens(frames_in_prompt, upcoming)
        n_prefix_images = self._fill_prefix(ids_list[0], cut, tokens)
        suffixes = [model.embed_prompt(ids[cut:], tokens[n_prefix_images:]) for ids in ids_list]
        lengths = [s.shape[0] for s in suffixes]
        batch = torch.zeros(len(suffixes), max(lengths), suffixes[0].shape[-1], device=suffixes[0].device,
                            dtype=suffixes[0].dtype)  # fmt: skip
        for row, suffix in enumerate(suffixes):
            batch[row, : suffix.shape[0]] = suffix
        cache = self._prefix_cache
        cache.batch_repeat_interleave(len(suffixes))
        try:
            out = model.language_model.model(inputs_embeds=batch, past_key_values=cache, use_cache=True)
        finally:  # back to the shared prefix, batch of one
            cache.crop(-batch.shape[1])
            cache.batch_select_indices(torch.tensor([0], device=batch.device))
        self.stats["llm_positions"] += len(suffixes)
        self.stats["llm_batches"] += 1
        return [torch.cat([self._prefix_hidden, out.last_hidden_state[row, :n]]) for row, n in enumerate(lengths)]

    def hidden_states(
        self, ids: torch.Tensor, frames_in_prompt: list[int], upcoming: Sequence[int] = ()
    ) -> torch.Tensor:
        """Last-layer hidden states ``(E, C)`` of the whole image-expanded prompt ``ids`` whose images are
        ``frames_in_prompt`` (context frames first). The shared prefix comes from the KV cache."""
        model = self.model
        tokens = self.visual_tokens(frames_in_prompt, upcoming)
        cut = self._prefix_length(ids) if self.use_prefix_cache else 0
        self.stats["llm_positions"] += 1
        if cut == 0:
            return model.language_hidden_states(model.embed_prompt(ids, tokens).unsqueeze(0))[0]
        n_prefix_images = self._fill_prefix(ids, cut, tokens)
        suffix = model.embed_prompt(ids[cut:], tokens[n_prefix_images:])
        out = model.language_model.model(
            inputs_embeds=suffix.unsqueeze(0), past_key_values=self._prefix_cache, use_cache=True
        )
        self._prefix_cache.crop(-suffix.shape[0])  # back to the shared prefix for the next step
        return torch.cat([self._prefix_hidden, out.last_hidden_state[0]])
