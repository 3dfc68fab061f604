"""Tokenizer and prompt layout: the reference's legacy splitting rules and chunk-wise image tokenization."""

import pytest

from model.factory import tiny_tokenizer
from model.prompting import EmptyExpressionError, clean_expression, inference_prompt, training_prompt
from model.tokenizer import IMAGE_PLACEHOLDER_ID

# Fixed ids of the shipped glus-tiny tokenizer (model/assets/glus-tiny-tokenizer) for the reference templates.
OPEN_TWO_ROUNDS = [
    1,
    311,
    411,
    429,
    265,
    431,
    316,
    298,
    272,
    438,
    439,
    317,
    621,
    405,
    317,
    421,
    432,
    625,
    433,
    625,
    298,
    426,
    428,
    338,
    261,
    316,
    631,
    602,
    437,
    621,
    409,
    626,
    641,
    -200,
    642,
    641,
    -200,
    642,
    641,
    -200,
    642,
    641,
    -200,
    642,
    361,
    434,
    261,
    436,
    422,
    331,
    261,
    430,
    425,
    418,
    621,
    641,
    -200,
    642,
    575,
    262,
    554,
    525,
    261,
    261,
    452,
    326,
    350,
    523,
    474,
    637,
    435,
    626,
    537,
    625,
    261,
    538,
    552,
    594,
    513,
    640,
    518,
    2,
    409,
    626,
    641,
    -200,
    642,
    575,
    262,
    554,
    525,
    261,
    261,
    452,
    326,
    350,
    523,
    474,
    637,
    435,
    626,
    537,
    625,
    261,
    538,
    552,
    594,
    513,
    598,
]
ANSWERED_TWO_ROUNDS = [
    1,
    311,
    411,
    429,
    265,
    431,
    316,
    298,
    272,
    438,
    439,
    317,
    621,
    405,
    317,
    421,
    432,
    625,
    433,
    625,
    298,
    426,
    428,
    338,
    261,
    316,
    631,
    602,
    437,
    621,
    409,
    626,
    641,
    -200,
    642,
    641,
    -200,
    642,
    641,
    -200,
    642,
    641,
    -200,
    642,
    361,
    434,
    261,
    436,
    422,
    331,
    261,
    430,
    425,
    418,
    621,
    641,
    -200,
    642,
    575,
    262,
    554,
    525,
    261,
    261,
    297,
    328,
    330,
    350,
    523,
    474,
    637,
    435,
    626,
    537,
    625,
    261,
    538,
    552,
    594,
    513,
    640,
    518,
    2,
    409,
    626,
    641,
    -200,
    642,
    575,
    262,
    554,
    525,
    261,
    261,
    297,
    328,
    330,
    350,
    523,
    474,
    637,
    435,
    626,
    537,
    625,
    261,
    538,
    552,
    594,
    513,
    640,
    518,
    2,
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_reference_prompts_give_fixed_ids(tok):
    assert tok.encode_prompt(inference_prompt("The red square.", 4, 2)) == OPEN_TWO_ROUNDS
    assert tok.encode_prompt(inference_prompt("the circle moving left", 4, 2, open_last=False)) == ANSWERED_TWO_ROUNDS


def test_prompt_text_layout():
    text = inference_prompt("The red square.", 4, 2)
    assert text.startswith("A chat between a curious human")
    assert text.count("<image>") == 6 and text.count("<im_start><image><im_end>") == 6
    assert "Please finished the following tasks on the context frames above." in text
    assert text.count("Can you segment the the red square in this frame?") == 2
    assert "ASSISTANT: Sure, the segmentation result is [SEG].</s>USER:" in text
    assert text.endswith("ASSISTANT: Sure, the segmentation result is ")
    assert inference_prompt("x", 4, 1, open_last=False).endswith("[SEG].</s>")


def test_added_tokens_strip_neighbouring_whitespace_but_eos_does_not(tok):
    seg = tok.token_to_id("[SEG]")
    assert tok.encode("is [SEG] .", add_bos=False) == tok.encode("is[SEG].", add_bos=False)
    pieces = tok.tokenize("is [SEG] .</s>USER: hi")
    assert pieces[pieces.index("[SEG]") + 1] == "▁."  # '.' re-gets the dummy prefix as a chunk of its own
    assert pieces[pieces.index("</s>") + 1].startswith("▁")  # text after </s> is its own chunk too
    assert "</s>" in pieces and seg in tok.encode("a [SEG] b")


def test_chunkwise_image_tokenization(tok):
    ids = tok.encode_prompt("USER: <im_start><image><im_end><im_start><image><im_end>\nhello")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    start, end = tok.token_to_id("<im_start>"), tok.token_to_id("<im_end>")
    i = ids.index(IMAGE_PLACEHOLDER_ID)
    assert ids[i - 1 : i + 5] == [start, IMAGE_PLACEHOLDER_ID, end, start, IMAGE_PLACEHOLDER_ID, end]
    assert ids[i + 5 :] == tok.encode("hello", add_bos=False)


def test_expression_cleaning():
    assert clean_expression("  The Red Square. ") == "the red square"
    for bad in ("", "   ", ".", " . "):
        with pytest.raises(EmptyExpressionError):
            clean_expression(bad)


def test_training_prompt_has_one_seg_per_round(tok):
    import random

    ids = tok.encode_prompt(training_prompt("the dog", 4, 4, random.Random(0)))
    assert ids.count(tok.token_to_id("[SEG]")) == 4
    assert ids.count(IMAGE_PLACEHOLDER_ID) == 8


def test_save_and_reload(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = type(tok).from_pretrained(tmp_path)
    assert len(again) == len(tok) and again.added_tokens == tok.added_tokens
    assert again.encode_prompt(inference_prompt("a", 4, 3)) == tok.encode_prompt(inference_prompt("a", 4, 3))
