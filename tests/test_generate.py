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


@pytest.mark.parametrize("grid_pos,step_pos", [(0, 0), (12, 0), (12, 16)])
def test_batched_decoding_equals_one_at_a_time(tiny_tokens, grid_pos, step_pos):
    _, tok_dir, tokens_dir = tiny_tokens
    vocab = Vocab.load(tok_dir / "vocab.json")
    model = from_scratch(vocab, 32, 2, 2, 64, 1024, seed=5, grid_pos=grid_pos, step_pos=step_pos)
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


# --------------------------------------------------------------------------------------
# 2D image positions (train.model.grid_pos)


def test_image_grid_indexes_codes_by_row_and_column():
    from mvot.model import image_grid

    boi, eoi, t, c = 90, 91, 5, 100  # a text token and a code
    ids = torch.tensor([[t, boi, c, c, c, c, eoi, t, boi, *[c] * 9, eoi, t, boi, c, c]])
    rows, cols = image_grid(ids, boi, eoi, limit=8)[0].T.tolist()
    assert rows == [0, 0, 1, 1, 2, 2, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 0, 0, 0, 0, 0]  # 2x2, 3x3, unclosed
    assert cols == [0, 0, 1, 2, 1, 2, 0, 0, 0, 1, 2, 3, 1, 2, 3, 1, 2, 3, 0, 0, 0, 0, 0]
    assert image_grid(ids, boi, eoi, limit=2)[0, :, 0].max() == 2  # clamped


def test_grid_model_saves_loads_and_decodes_with_consistent_positions(tiny_tokens, tmp_path):
    from transformers import AutoModelForCausalLM

    from mvot.model import MvotLlamaForCausalLM, image_grid

    _, tok_dir, tokens_dir = tiny_tokens
    vocab = Vocab.load(tok_dir / "vocab.json")
    model = from_scratch(vocab, 32, 2, 2, 64, 1024, seed=3, grid_pos=12).eval()
    prompt = torch.from_numpy(_prompts(tokens_dir, "frozenlake", 1)[0])[None]
    grid = image_grid(prompt, vocab.boi, vocab.eoi, 12)
    assert grid[..., 0].max() > 0  # the initial image has positions
    with torch.no_grad():
        base = model(input_ids=prompt).logits
        model.grid_row.weight[1:] += 1.0  # positions matter for image tokens only
        moved = model(input_ids=prompt).logits
    first_code = int((grid[0, :, 0] > 0).nonzero()[0])
    assert torch.allclose(base[0, :first_code], moved[0, :first_code])
    assert not torch.allclose(base[0, first_code:], moved[0, first_code:])

    model.save_pretrained(str(tmp_path))
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path), local_files_only=True).eval()
    assert isinstance(again, MvotLlamaForCausalLM) and again.config.grid_pos == 12
    with torch.no_grad():
        assert torch.allclose(again(input_ids=prompt).logits, moved, atol=1e-5)

    seen = []

    class Spy(torch.nn.Module):  # records the index the decoder passes with each cached token
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, **kw):
            seen.append(kw.get("grid_index"))
            return self.inner(**kw)

    with torch.no_grad():  # make a random model draw: favour <boi>
        again.lm_head.weight[vocab.boi] += 1.0
    out = Decoder(Spy(again), vocab, load_text_tokenizer(tok_dir)).decode(
        [prompt[0].numpy()], ["frozenlake"], draw=True, max_new_tokens=120)[0]
    assert out.images, "the test needs a drawn image"
    full = torch.cat([prompt, torch.tensor([out.tokens])], dim=1)
    expect = image_grid(full, vocab.boi, vocab.eoi, 12)[0, prompt.shape[1] : prompt.shape[1] + len(seen) - 1]
    fed = torch.cat([g[0] for g in seen[1:]])  # seen[0] is the prompt (index computed inside)
    assert seen[0] is None and torch.equal(fed, expect)
