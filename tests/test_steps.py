"""Step positions (mvot/steps.py, train.model.step_pos): the index, its streaming form, the
model's embedding, training and decoding with it."""

import numpy as np
import pytest
import torch

from mvot.data import read_split
from mvot.evaluate import prompt_of
from mvot.generate import Decoder
from mvot.model import ModelError, from_scratch
from mvot.steps import StepIndexer
from mvot.tokenize import TraceEncoder, load_split
from mvot.tokenizers import load_text_tokenizer
from mvot.traces import build
from mvot.vocab import Vocab
from tests.conftest import TASKS


def _indexer(tok_dir, limit=16):
    vocab = Vocab.load(tok_dir / "vocab.json")
    return vocab, StepIndexer(load_text_tokenizer(tok_dir), vocab.n_text, limit)


def _words(ix, ids, index):
    """(text of each token, its index) for the text tokens of a sequence."""
    return [(ix.piece(int(t)), int(k)) for t, k in zip(ids, index, strict=True) if ix.piece(int(t))]


def _trace(tok_dir, root, variant):
    """A MINIBEHAVIOR trace (tokens, response start, instance) with steps and extra actions."""
    vocab = Vocab.load(tok_dir / "vocab.json")
    inst = next(i for i in read_split(root / "raw" / "minibehavior", "train")
                if 3 <= i.n_steps < len(i.actions) and {"pickup", "up"} <= set(i.actions[: i.n_steps]))
    enc = TraceEncoder(vocab, load_text_tokenizer(tok_dir))
    codes = [np.zeros(vocab.tokens_per_image["minibehavior"], np.int64)] * len(inst.states)
    seq = enc.encode(build(inst, variant), "minibehavior", codes)
    return seq.tokens, int(np.argmax(seq.supervised)), inst


def test_index_by_hand_on_a_minibehavior_trace(tiny_tokens, tiny_generated):
    from mvot.traces import action_text

    _, tok_dir, _ = tiny_tokens
    vocab, ix = _indexer(tok_dir)
    tokens, start, inst = _trace(tok_dir, tiny_generated[0], "mvot")
    index = ix.index(tokens, start, "minibehavior", draws=True)
    # the question: only the action list is indexed; all of action k's text carries k
    prompt = _words(ix, tokens[:start], index[:start])
    per_action: dict[int, str] = {}
    for w, k in prompt:
        per_action[k] = per_action.get(k, "") + w
    assert per_action[0].startswith("Task: Installing a Printer") and "Go up/left" in per_action[0]
    assert [per_action[k].strip() for k in range(1, len(inst.actions) + 1)] == [action_text("minibehavior", a) for a in inst.actions]
    assert index[start - 1] == 1  # the prompt's last token predicts step 1's first word
    # the response: step k (its text, <boi>, codes) carries k; its <eoi> predicts step k + 1, so carries k + 1
    toks, resp = tokens[start:], index[start:]
    assert [int(k) for t, k in zip(toks, resp, strict=True) if t == vocab.boi] == list(range(1, inst.n_steps + 1))
    assert [int(k) for t, k in zip(toks, resp, strict=True) if t == vocab.eoi] == list(range(2, inst.n_steps + 2))
    steps = "".join(w for w, _ in _words(ix, toks, resp))
    assert steps.startswith(action_text("minibehavior", inst.actions[0]))
    texts: dict[int, str] = {}
    for w, k in _words(ix, toks, resp):
        texts[k] = texts.get(k, "") + w
    for k in range(1, inst.n_steps + 1):
        assert texts[k].strip().startswith(action_text("minibehavior", inst.actions[k - 1])), (k, texts[k])
    assert texts[inst.n_steps + 1].strip() == f"Action sequence finished. The answer is {inst.answer}."
    assert StepIndexer(ix.text, vocab.n_text, 2).index(tokens, start, "minibehavior", True).max() == 2  # clamped


def test_cot_steps_end_with_their_last_sentence(tiny_tokens, tiny_generated):
    from mvot.traces import cot_step

    _, tok_dir, _ = tiny_tokens
    _, ix = _indexer(tok_dir)
    tokens, start, inst = _trace(tok_dir, tiny_generated[0], "cot")
    index = ix.index(tokens, start, "minibehavior", draws=False)
    texts: dict[int, str] = {}
    for w, k in _words(ix, tokens[start:], index[start:]):
        texts[k] = texts.get(k, "") + w
    # step k's text is cot_step(k) up to its final period; that period already predicts step k + 1
    for k in range(1, inst.n_steps + 1):
        want = cot_step(inst, k)
        assert texts[k].removeprefix(".").strip() == want[:-1] and texts[k + 1].startswith("."), (k, texts[k], want)
    # direct: no steps are written, the whole response is step 1
    tokens, start, _ = _trace(tok_dir, tiny_generated[0], "direct")
    assert set(ix.index(tokens, start, "minibehavior", draws=False)[start - 1 :].tolist()) == {1}


@pytest.mark.parametrize("task", TASKS)
def test_streaming_counter_equals_the_whole_sequence_index(tiny_tokens, task):
    _, tok_dir, tokens_dir = tiny_tokens
    _, ix = _indexer(tok_dir)
    for variant in ("direct", "cot", "interleaved", "mvot"):
        draws = variant in ("interleaved", "mvot")
        ts = load_split(tokens_dir, task, "train", variant)
        for i in range(len(ts)):
            t, s, _ = ts.sequence(i)
            start = int(np.argmax(s))
            full = ix.index(t, start, task, draws)
            c = ix.counter(t[:start], task, draws)
            assert [c.push(int(x)) for x in t[start:]] == full[start:].tolist()
            assert (full[: start - 1] > 0).any() and full[start - 1] == 1  # the question's actions; step 1
            if variant != "direct":
                assert full[-1] > 1  # steps were counted


def test_step_model_needs_the_index_and_uses_it(tiny_tokens, tmp_path):
    from transformers import AutoModelForCausalLM

    _, tok_dir, tokens_dir = tiny_tokens
    vocab, ix = _indexer(tok_dir, 16)
    model = from_scratch(vocab, 32, 2, 2, 64, 1024, seed=3, step_pos=16).eval()
    ts = load_split(tokens_dir, "frozenlake", "test", "mvot")
    t, s, _ = ts.sequence(0)
    ids = torch.from_numpy(np.asarray(t, np.int64))[None]
    steps = torch.from_numpy(ix.index(t, int(np.argmax(s)), "frozenlake", True))[None]
    with pytest.raises(ModelError, match="step_index"):
        model(input_ids=ids)
    import copy

    blind = copy.deepcopy(model)  # the same weights with no step information at all
    with torch.no_grad():
        blind.step_emb.weight.zero_()
        base = model(input_ids=ids, step_index=steps).logits
        zero = model(input_ids=ids, step_index=torch.zeros_like(steps)).logits
        none = blind(input_ids=ids, step_index=steps).logits
    assert torch.allclose(zero, none, atol=1e-6)  # index 0 adds nothing
    first = int((steps[0] > 0).nonzero()[0])
    assert not torch.allclose(base[0, first:], zero[0, first:])  # the indices reach the logits
    model.save_pretrained(str(tmp_path))
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path), local_files_only=True).eval()
    assert again.config.step_pos == 16
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids, step_index=steps).logits, base, atol=1e-5)


def test_decoder_feeds_the_index_training_computes(tiny_tokens):
    _, tok_dir, tokens_dir = tiny_tokens
    vocab, ix = _indexer(tok_dir, 16)
    model = from_scratch(vocab, 32, 2, 2, 64, 1024, seed=4, grid_pos=12, step_pos=16).eval()
    text = load_text_tokenizer(tok_dir)
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, **kw):
            seen.append(kw["step_index"].clone())
            return self.inner(**kw)

    # force a known response (the true mvot trace, images included) and compare the fed indices
    ts = load_split(tokens_dir, "maze", "test", "mvot")
    prompts = [prompt_of(*ts.sequence(0)[:2])]
    t, s, _ = ts.sequence(0)
    start = int(np.argmax(s))
    truth = np.asarray(t[start:], np.int64)

    class Forced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.config, self.k = Spy(model), model.config, 0

        def forward(self, **kw):
            out = self.inner(**kw)
            logits = torch.full_like(out.logits, -1e9)
            if self.k < len(truth):
                logits[:, -1, int(truth[self.k])] = 0.0
            self.k += 1
            out.logits = logits
            return out

    out = Decoder(Forced(), vocab, text).decode(prompts, ["maze"], draw=True, max_new_tokens=len(truth))[0]
    assert out.tokens == truth.tolist()[: len(out.tokens)] and out.answer is not None and out.images
    expect = ix.index(t, start, "maze", True)
    assert torch.equal(seen[0][0], torch.from_numpy(expect[:start]))  # the prompt
    fed = torch.cat([x[0] for x in seen[1:]]).tolist()  # one token at a time afterwards
    assert fed == expect[start : start + len(fed)].tolist() and max(fed) > 1


def test_training_with_step_positions_learns_the_embedding(tiny_tokens, raw_params, tmp_path):
    from safetensors.torch import load_file

    from mvot.generate import load_model
    from tests.test_train import _params

    _, tok_dir, tokens_dir = tiny_tokens
    p = _params(raw_params, tasks=["frozenlake"], steps=4, lr=0.003,
                model={"d_model": 64, "n_layer": 2, "n_head": 2, "d_ff": 128, "max_len": 2048, "step_pos": 8})
    from mvot.train import train

    train(p, "run", tokens_dir, tok_dir, tmp_path / "run", progress=False)
    w = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))["step_emb.weight"]
    init = from_scratch(Vocab.load(tok_dir / "vocab.json"), 64, 2, 2, 128, 2048, seed=p.seed, step_pos=8).step_emb.weight
    assert w.shape[0] == 9 and w[0].abs().sum() == 0  # the padding row stays zero
    assert not torch.allclose(w[1:], init[1:])  # the indices were trained
    lm = load_model(tmp_path / "run" / "model")
    prompts = [prompt_of(*load_split(tokens_dir, "frozenlake", "test", "mvot").sequence(0)[:2])]
    (out,) = lm.decoder().decode(prompts, ["frozenlake"], draw=True, max_new_tokens=60)
    assert out.tokens


def test_lora_on_a_step_checkpoint_trains_its_positions(tiny_tokens, tmp_path):
    from mvot.model import from_pretrained

    _, tok_dir, tokens_dir = tiny_tokens
    vocab, ix = _indexer(tok_dir, 8)
    from_scratch(vocab, 32, 1, 2, 64, 2048, seed=1, grid_pos=12, step_pos=8).save_pretrained(str(tmp_path))
    lora = from_pretrained(tmp_path, vocab, lora_r=2, lora_alpha=4)
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert any("step_emb" in n for n in names) and any("grid_row" in n for n in names)
    t, s, _ = load_split(tokens_dir, "maze", "test", "mvot").sequence(0)
    ids = torch.from_numpy(np.asarray(t, np.int64))[None]
    out = lora(input_ids=ids, step_index=torch.from_numpy(ix.index(t, int(np.argmax(s)), "maze", True))[None]).logits
    assert out.shape == (1, len(t), vocab.size)
