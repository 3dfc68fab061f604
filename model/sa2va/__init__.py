"""Sa2VA and Sa2VA-i: a second model family (InternVL-style MLLM + SAM-2.0 Hiera-L), reimplemented for inference.

Sa2VA (ByteDance, Apache-2.0 code) puts up to 5 video frames through an InternVL chat model (InternViT, pixel
shuffle, ``mlp1``, a Qwen2 LLM) whose answer holds a ``[SEG]`` token; the last-layer state of that token,
projected by ``text_hidden_fcs``, is one extra sparse prompt token of SAM-2's mask decoder on the key frames,
and SAM-2 propagates the masks through the video. Sa2VA-i (kumuji, inference only) spreads the key frames
uniformly and propagates with the original SAM-2 decoder. ``../shared/docs/sa2va-reference.md`` describes the
reference path this package follows; the parity fixtures are ``../shared/fixtures/sa2va*-reference-tiny-a``.

Modules:

* :mod:`.config` - :class:`~.config.Sa2VAConfig`, read from a released checkpoint's ``config.json``;
* :mod:`.intern_vit` - the InternViT vision encoder;
* :mod:`.modeling` - :class:`~.modeling.Sa2VAModel` (the checkpoint's module tree) and its MLLM steps;
* :mod:`.prompting` - the chat prompt with the frames' image tokens;
* :mod:`.preprocessing` - frames to the MLLM's 448 px and SAM-2's 1024 px inputs.
"""
