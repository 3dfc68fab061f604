"""The GLUS tokenizer: SentencePiece with the legacy slow-LlamaTokenizer rules GLUS was trained with.

The released checkpoints ship ``tokenizer.model`` (SentencePiece) and ``added_tokens.json`` (``[SEG]``,
``<im_start>``, ``<im_end>``). The reference tokenizes with transformers 4.31's slow ``LlamaTokenizer``
(``legacy=True``), whose behaviour is reproduced here exactly, without depending on which tokenizer classes
the installed transformers still has:

* ``<s>``, ``</s>``, ``<unk>`` and the added tokens are never split;
* the added tokens strip the whitespace on both sides of them (``"is [SEG] ."`` -> ``is``, ``[SEG]``, ``.``),
  the three SentencePiece specials do not;
* every text piece between those tokens is encoded by SentencePiece on its own (so each gets the dummy
  prefix ``▁``);
* a BOS is prepended.

:meth:`GlusTokenizer.encode_prompt` adds the reference's chunk-wise handling of ``<image>``: the prompt is cut
at every ``<image>``, each chunk tokenized separately, the BOS kept only on the first chunk and the
placeholder id ``IMAGE_PLACEHOLDER_ID`` (-200) put between chunks.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import sentencepiece as spm

IMAGE_TOKEN = "<image>"
IMAGE_PLACEHOLDER_ID = -200
SPECIAL_TOKENS_KEPT_WHOLE = ("<s>", "</s>", "<unk>")
DEFAULT_ADDED_TOKENS = ("[SEG]", "<im_start>", "<im_end>")
TOKENIZER_FILES = ("tokenizer.model", "added_tokens.json")


class GlusTokenizer:
    """SentencePiece + added tokens, with the reference's legacy splitting rules."""

    def __init__(self, sp_model_path: str | Path, added_tokens: dict[str, int] | None = None) -> None:
        self.sp_model_path = Path(sp_model_path)
        if not self.sp_model_path.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {self.sp_model_path}")
        self.sp = spm.SentencePieceProcessor(model_file=str(self.sp_model_path))
        base = self.sp.get_piece_size()
        if added_tokens is None:
            added_tokens = {tok: base + i for i, tok in enumerate(DEFAULT_ADDED_TOKENS)}
        expected = list(range(base, base + len(added_tokens)))
        if sorted(added_tokens.values()) != expected:
            raise ValueError(f"added token ids {sorted(added_tokens.values())} must continue the vocabulary at {base}")
        self.added_tokens = dict(added_tokens)
        self._id_to_added = {i: t for t, i in self.added_tokens.items()}
        self.bos_token_id = self.sp.bos_id()
        self.eos_token_id = self.sp.eos_id()
        self.unk_token_id = self.sp.unk_id()
        self.pad_token_id = self.unk_token_id  # the reference pads with unk
        whole = sorted(list(SPECIAL_TOKENS_KEPT_WHOLE) + list(self.added_tokens), key=len, reverse=True)
        self._split_re = re.compile("(" + "|".join(re.escape(t) for t in whole) + ")")

    # --- loading / saving ---
    @classmethod
    def from_pretrained(cls, directory: str | Path) -> GlusTokenizer:
        directory = Path(directory)
        added_path = directory / "added_tokens.json"
        added = json.loads(added_path.read_text()) if added_path.is_file() else None
        return cls(directory / "tokenizer.model", added)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.sp_model_path.resolve() != (directory / "tokenizer.model").resolve():
            shutil.copyfile(self.sp_model_path, directory / "tokenizer.model")
        (directory / "added_tokens.json").write_text(json.dumps(self.added_tokens, indent=2) + "\n")

    # --- vocabulary ---
    def __len__(self) -> int:
        return self.sp.get_piece_size() + len(self.added_tokens)

    def token_to_id(self, token: str) -> int:
        if token in self.added_tokens:
            return self.added_tokens[token]
        idx = self.sp.piece_to_id(token)
        if idx == self.unk_token_id and token != "<unk>":
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return idx

    # --- encoding ---
    def tokenize(self, text: str) -> list[str]:
        """Pieces of ``text`` as the legacy slow tokenizer splits it (no BOS)."""
        parts = [p for p in self._split_re.split(text)]
        # Added tokens strip whitespace on both neighbours (transformers 4.31 default for non-AddedToken specials).
        for i, part in enumerate(parts):
            if part in self.added_tokens:
                if i > 0:
                    parts[i - 1] = parts[i - 1].rstrip()
                if i + 1 < len(parts):
                    parts[i + 1] = parts[i + 1].lstrip()
        pieces: list[str] = []
        for part in parts:
            if not part:
                continue
            if part in self.added_tokens or part in SPECIAL_TOKENS_KEPT_WHOLE:
                pieces.append(part)
            else:
                pieces.extend(self.sp.encode(part, out_type=str))
        return pieces

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = [self.token_to_id(p) for p in self.tokenize(text)]
        return [self.bos_token_id, *ids] if add_bos else ids

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a prompt with ``<image>`` placeholders, chunk by chunk as the reference does."""
        ids: list[int] = [self.bos_token_id]
        for i, chunk in enumerate(prompt.split(IMAGE_TOKEN)):
            if i > 0:
                ids.append(IMAGE_PLACEHOLDER_ID)
            ids.extend(self.encode(chunk, add_bos=False))
        return ids

    def decode(self, ids: list[int]) -> str:
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in self._id_to_added or i == IMAGE_PLACEHOLDER_ID:
                if run:
                    out.append(self.sp.decode(run))
                    run = []
                out.append(IMAGE_TOKEN if i == IMAGE_PLACEHOLDER_ID else self._id_to_added[i])
            else:
                run.append(i)
        if run:
            out.append(self.sp.decode(run))
        return " ".join(out)


def train_tokenizer(corpus: list[str], directory: str | Path, vocab_size: int = 300) -> GlusTokenizer:
    """Train a small deterministic SentencePiece BPE tokenizer (for tiny models), with GLUS's added tokens.

    Settings mirror LLaMA's: byte fallback, unk/bos/eos = 0/1/2, identity normalisation, dummy prefix,
    extra whitespace kept.
    """
    import io

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    base = sp.get_piece_size()
    added = {tok: base + i for i, tok in enumerate(DEFAULT_ADDED_TOKENS)}
    (directory / "added_tokens.json").write_text(json.dumps(added, indent=2) + "\n")
    return GlusTokenizer(directory / "tokenizer.model", added)
