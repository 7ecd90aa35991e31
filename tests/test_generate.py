"""The constrained, batched, KV-cached decoder (mvot/generate.py)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mvot.evaluate import prompt_of
from mvot.generate import DecodeError, Decoder, load_model
from mvot.model import from_scratch
from mvot.tokenize import load_split
from mvot.tokenizers import load_text_tokenizer
from mvot.vocab import Vocab
from tests.conftest import TASKS


def _prompts(tokens_dir, task, n, variant="mvot"):
    ts = load_split(tokens_dir, task, "test", variant)
    return [prompt_of(*ts.sequence(i)[:2]) for i in range(min(n, len(ts)))]


def _check_well_formed(vocab: Vocab, prompt, out, task):
    seq = np.concatenate([prompt, np.array(out.tokens, dtype=np.int64)])
    parts = vocab.split(seq[1:], task)  # raises on any malformed image span
    gen = np.array(out.tokens, dtype=np.int64)
    assert not np.isin(gen, [vocab.pad_id, vocab.bos_id]).any()
    images = [p for kind, p in parts if kind == "image"]
    assert len(images) == 1 + len(out.images)  # the prompt's initial image + the drawn ones
    assert all(len(c) == vocab.tokens_per_image[task] for c in out.images)


class _Scripted(torch.nn.Module):
    """A fake causal LM that emits a fixed script, for the stopping and answer logic."""

    def __init__(self, vocab_size, script):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=4096)
        self.script, self.v, self.start = script, vocab_size, None

    def forward(self, input_ids, attention_mask, **_):
        if input_ids.shape[1] > 1:  # the prompt: a new decode call
            self.start = attention_mask.shape[1]
        k = attention_mask.shape[1] - self.start
        logits = torch.zeros(input_ids.shape[0], 1, self.v)
        logits[:, 0, self.script[min(k, len(self.script) - 1)]] = 10.0
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_models_never_emit_malformed_images(tiny_tokens, seed):
    _, tok_dir, tokens_dir = tiny_tokens
    vocab = Vocab.load(tok_dir / "vocab.json")
    model = from_scratch(vocab, 32, 1, 2, 64, 1024, seed=seed)
    with torch.no_grad():  # adversarial weights: push mass onto the special tokens and codes
        model.lm_head.weight[vocab.eoi] += 0.5 * seed
        model.lm_head.weight[vocab.boi] += 0.3
    dec = Decoder(model, vocab, load_text_tokenizer(tok_dir))
    for task in TASKS:
        prompts = _prompts(tokens_dir, task, 3)
        for temperature in (0.0, 1.5):
            outs = dec.decode(prompts, [task] * len(prompts), draw=True, max_new_tokens=260, batch_size=2,
                              temperature=temperature, seed=seed)
            for p, o in zip(prompts, outs, strict=True):
                _check_well_formed(vocab, p, o, task)
                assert len(o.tokens) <= 260
                assert o.stopped in ("answer", "eos", "length")


def test_boi_is_forbidden_without_drawing_or_room(tiny_tokens):
    _, tok_dir, tokens_dir = tiny_tokens
    vocab = Vocab.load(tok_dir / "vocab.json")
    dec = Decoder(_Scripted(vocab.size, [vocab.boi]), vocab, load_text_tokenizer(tok_dir))  # always wants to draw
    prompts = _prompts(tokens_dir, "maze", 2)
    t = vocab.tokens_per_image["maze"]
    assert all(not o.images for o in dec.decode(prompts, ["maze"] * 2, draw=False, max_new_tokens=50))
    drawn = dec.decode(prompts, ["maze"] * 2, draw=True, max_new_tokens=2 * (t + 2) + 1)
    assert [len(o.images) for o in drawn] == [2, 2]
    assert all(o.stopped == "eos" for o in drawn)  # no room for a third image; <eos> wins the tie
    assert all(not o.images for o in dec.decode(prompts, ["maze"] * 2, draw=True, max_new_tokens=t + 1))


def test_batched_decoding_equals_one_at_a_time(tiny_tokens):
    _, tok_dir, tokens_dir = tiny_tokens
    vocab = Vocab.load(tok_dir / "vocab.json")
    model = from_scratch(vocab, 32, 2, 2, 64, 1024, seed=5)
    dec = Decoder(model, vocab, load_text_tokenizer(tok_dir))
    prompts = _prompts(tokens_dir, "frozenlake", 2) + _prompts(tokens_dir, "minibehavior", 2)
    tasks = ["frozenlake"] * 2 + ["minibehavior"] * 2
    one = dec.decode(prompts, tasks, draw=True, max_new_tokens=150, batch_size=1)
    many = dec.decode(prompts, tasks, draw=True, max_new_tokens=150, batch_size=4)
    for a, b in zip(one, many, strict=True):
        assert a.tokens == b.tokens


def test_stops_at_the_answer_line_and_reads_the_letter(tiny_tokens):
    _, tok_dir, tokens_dir = tiny_tokens
    vocab = Vocab.load(tok_dir / "vocab.json")
    text = load_text_tokenizer(tok_dir)
    t = vocab.tokens_per_image["frozenlake"]
    ids = lambda s: text.encode(s, add_special_tokens=False).ids  # noqa: E731
    script = ids("Go up. ") + [vocab.boi] + [vocab.image_offset + 3] * t + [vocab.eoi] + ids(" Action sequence stopped. The answer is B.") + ids(" more text") + [vocab.eos_id]
    dec = Decoder(_Scripted(vocab.size, script), vocab, text)
    (out,) = dec.decode(_prompts(tokens_dir, "frozenlake", 1), ["frozenlake"], draw=True)
    assert out.stopped == "answer" and out.answer == "B"
    assert out.text == "Go up. <image> Action sequence stopped. The answer is B."
    assert np.array_equal(out.images[0], np.full(t, 3))
    assert out.answer_logprob is not None and -0.1 < out.answer_logprob <= 0.0


def test_load_model_refuses_a_bad_directory(tmp_path):
    with pytest.raises(DecodeError, match="not a model directory"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(Exception, match="vocab.json: missing"):
        load_model(tmp_path)
