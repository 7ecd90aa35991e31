"""Recursive interleaved decoding (DESIGN.md 2.2): write a step, draw the state, go on, answer.

:class:`Decoder` runs a trained causal LM over the unified vocabulary on a batch of
prompts with a KV cache (Hugging Face ``DynamicCache``, with layers that grow in place), one token per row per step, and
feeds every token it emits, the image codes it draws included, back as context: the
model reasons from its own pictures. The context policy is the training one: whole
traces, so every earlier image stays in context (``mvot/train.py``).

Decoding is *constrained* by the vocabulary's grammar, whatever the weights:

* inside an image exactly ``tokens_per_image[task]`` codes from the image range, then
  ``<eoi>``;
* outside images no image code and no ``<eoi>``; ``<boi>`` only for the variants that draw
  (``interleaved``, ``mvot``) and only while the length budget still holds a whole image;
* never ``<pad>`` or ``<bos>``.

A row stops at the answer line (``The answer is X.``), at ``<eos>``, or at its length
budget. Greedy by default; temperature / top-k sampling with a seeded generator. Rows that
finish leave the batch (their cache rows are dropped), so a batch costs what its live
rows cost. Prompts are left-padded with explicit position ids, so every row sees exactly
the positions it saw in training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mvot.errors import MvotError
from mvot.traces import ANSWER_RE, DRAWING_VARIANTS
from mvot.vocab import Vocab


class DecodeError(MvotError, RuntimeError):
    """A model cannot be loaded or decoding cannot start; the message says why."""


@dataclass
class Decoded:
    """One instance's generated output."""

    tokens: list[int] = field(default_factory=list)  # generated ids (no prompt)
    parts: list[tuple[str, object]] = field(default_factory=list)  # ("text", str) | ("image", codes)
    answer: str | None = None
    answer_logprob: float | None = None  # log-probability of the token carrying the answer letter
    stopped: str = ""  # "answer" | "eos" | "length"

    @property
    def text(self) -> str:
        """All generated text, images as ``<image>``."""
        return "".join(p if kind == "text" else "<image>" for kind, p in self.parts)

    @property
    def images(self) -> list[np.ndarray]:
        return [p for kind, p in self.parts if kind == "image"]


@dataclass
class _Row:
    index: int
    task: str
    budget: int
    out: Decoded
    image_left: int = -1  # codes still to draw in the open image; -1 outside images
    segment: list[int] = field(default_factory=list)  # ids of the open text part
    segment_lp: list[float] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)  # codes of the open image
    steps: object = None  # a mvot.steps.StepCounter for models with step positions
    step: int = 0  # step index of the last emitted token


TEXT, CODE, EOI = 0, 1, 2


def _growing_cache():
    """A Hugging Face ``DynamicCache`` whose layers grow by doubling a preallocated buffer.

    The stock layer concatenates every new token onto the whole cache, so a trace of n
    tokens copies O(n^2) keys and values; in profiles that copying was a third of the
    decoding time at toy size and dominated at default size. Here each token is written
    into place and the buffer is reallocated only when full (amortised O(n))."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def lazy_initialization(self, key_states, value_states):
            super().lazy_initialization(key_states, value_states)
            self._k = self._v = None
            self._n = 0

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, add = self._n, key_states.shape[-2]
            if self._k is None or n + add > self._k.shape[-2]:
                b, h, _, d = key_states.shape
                cap = max(256, 2 * (n + add))
                k = key_states.new_empty((b, h, cap, d))
                v = value_states.new_empty((b, h, cap, value_states.shape[-1]))
                if n:
                    k[..., :n, :] = self._k[..., :n, :]
                    v[..., :n, :] = self._v[..., :n, :]
                self._k, self._v = k, v
            self._k[..., n : n + add, :] = key_states
            self._v[..., n : n + add, :] = value_states
            self._n = n + add
            self.keys, self.values = self._k[..., : self._n, :], self._v[..., : self._n, :]
            return self.keys, self.values

        def batch_select_indices(self, indices):
            if self._k is not None:
                self._k, self._v = self._k[indices], self._v[indices]
                self.keys, self.values = self._k[..., : self._n, :], self._v[..., : self._n, :]

        def reset(self):
            self._k = self._v = None
            self._n = 0
            super().reset()

    cache = DynamicCache()
    if cache.layers:  # a transformers release that builds its layers up front
        raise RuntimeError("unexpected DynamicCache layout; pin transformers as in requirements.lock")
    cache.layer_class_to_replicate = GrowingLayer
    return cache


class Decoder:
    """Batched, constrained, KV-cached decoding for one model."""

    def __init__(self, model, vocab: Vocab, text_tokenizer, device: str | torch.device | None = None):
        self.model = model.eval()
        self.vocab = vocab
        self.text = text_tokenizer
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.max_len = int(getattr(model.config, "max_position_embeddings", 1 << 30))
        self.grid_pos = int(getattr(model.config, "grid_pos", 0) or 0)  # 2D image positions (mvot/model.py)
        step_pos = int(getattr(model.config, "step_pos", 0) or 0)  # step positions (mvot/steps.py)
        self.steps = None
        if step_pos:
            from mvot.steps import StepIndexer

            self.steps = StepIndexer(text_tokenizer, vocab.n_text, step_pos)
        v = vocab
        neg = torch.full((3, v.size), float("-inf"))
        neg[TEXT, : v.n_text] = 0.0
        neg[TEXT, [v.pad_id, v.bos_id]] = float("-inf")
        neg[CODE, v.image_offset : v.size] = 0.0
        neg[EOI, v.eoi] = 0.0
        self._masks = neg.to(self.device)

    # ------------------------------------------------------------------------------
    def decode(
        self,
        prompts: list[np.ndarray],
        tasks: list[str],
        draw: bool,
        max_new_tokens: int | None = None,
        batch_size: int = 32,
        temperature: float = 0.0,
        top_k: int = 0,
        seed: int = 0,
        on_batch=None,
    ) -> list[Decoded]:
        """Continue every prompt (token ids ending with ``\\nResponse: ``); results in input order.

        ``draw``: whether ``<boi>`` may be emitted (the interleaved variants).
        ``max_new_tokens``: per-row budget; default: up to the model's context length.
        ``temperature`` 0 is greedy. ``on_batch(done, total)`` reports progress."""
        if len(prompts) != len(tasks):
            raise ValueError("one task per prompt")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        for t in set(tasks):
            if t not in self.vocab.tokens_per_image:
                raise DecodeError(f"this model's vocabulary has no images of task {t!r}; it knows {sorted(self.vocab.tokens_per_image)}")
        gen = torch.Generator(device="cpu").manual_seed(seed)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths together
        results: list[Decoded | None] = [None] * len(prompts)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            outs = self._decode_batch([np.asarray(prompts[i], np.int64) for i in idx], [tasks[i] for i in idx], draw,
                                      max_new_tokens, temperature, top_k, gen)
            for i, o in zip(idx, outs, strict=True):
                results[i] = o
            if on_batch:
                on_batch(min(start + batch_size, len(order)), len(order))
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------------------
    @torch.inference_mode()
    def _decode_batch(self, prompts, tasks, draw, max_new_tokens, temperature, top_k, gen) -> list[Decoded]:
        v, dev = self.vocab, self.device
        n = len(prompts)
        longest = max(len(p) for p in prompts)
        if longest >= self.max_len:
            raise DecodeError(f"a prompt of {longest} tokens does not fit the model's context of {self.max_len}")
        ids = torch.full((n, longest), v.pad_id, dtype=torch.long)
        mask = torch.zeros((n, longest), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, longest - len(p) :] = torch.from_numpy(p)
            mask[r, longest - len(p) :] = 1
        rows = []
        step_ids = torch.zeros((n, longest), dtype=torch.long) if self.steps else None
        for r, (p, t) in enumerate(zip(prompts, tasks, strict=True)):
            room = self.max_len - len(p)
            rows.append(_Row(r, t, min(room, max_new_tokens) if max_new_tokens else room, Decoded()))
            if self.steps:
                step_ids[r, longest - len(p) :] = torch.from_numpy(self.steps.index(p, len(p), t, draw))
                rows[-1].steps = self.steps.counter(p, t, draw)
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = _growing_cache()
        logits = self._forward(ids, mask, pos, cache, steps=None if step_ids is None else step_ids.to(dev))
        last_pos = pos[:, -1]
        live = list(range(n))  # row index of each batch slot
        while live:
            modes = torch.tensor([self._mode(rows[r]) for r in live], device=dev)
            scores = logits.float() + self._masks[modes]
            for slot, r in enumerate(live):  # <boi> only where an image still fits the budget
                row = rows[r]
                room = row.budget - len(row.out.tokens)
                if draw and row.image_left < 0 and room >= v.tokens_per_image[row.task] + 2:
                    scores[slot, v.boi] = logits[slot, v.boi].float()
            logp = torch.log_softmax(scores, dim=-1)
            if temperature > 0:
                probs = torch.softmax(scores / temperature, dim=-1)
                if top_k > 0:
                    kth = torch.topk(probs, min(top_k, probs.shape[-1]), dim=-1).values[:, -1:]
                    probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
                nxt = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(1).to(dev)
            else:
                nxt = scores.argmax(-1)
            chosen_lp = logp.gather(1, nxt[:, None]).squeeze(1).tolist()
            keep = []
            for slot, r in enumerate(live):
                if not self._push(rows[r], int(nxt[slot]), chosen_lp[slot]):
                    keep.append(slot)
            if len(keep) < len(live):
                if not keep:
                    break
                sel = torch.tensor(keep, device=dev)
                cache.batch_select_indices(sel)
                mask, nxt, last_pos = mask[sel], nxt[sel], last_pos[sel]
                live = [live[s] for s in keep]
            mask = torch.cat([mask, torch.ones((len(live), 1), dtype=mask.dtype, device=dev)], dim=1)
            last_pos = last_pos + 1
            grid = self._grid_index([rows[r] for r in live]) if self.grid_pos else None
            steps = torch.tensor([[rows[r].step] for r in live], device=dev) if self.steps else None
            logits = self._forward(nxt[:, None], mask, last_pos[:, None], cache, grid, steps)
        return [r.out for r in rows]

    def _forward(self, ids, mask, pos, cache, grid=None, steps=None):
        extra = {} if grid is None else {"grid_index": grid}
        if steps is not None:
            extra["step_index"] = steps
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                         logits_to_keep=1, **extra)
        return out.logits[:, -1, :]

    def _grid_index(self, rows: list[_Row]) -> torch.Tensor:
        """(1 + row, 1 + column) of each row's last token if it is an image code, else (0, 0)."""
        out = torch.zeros((len(rows), 1, 2), dtype=torch.long)
        for slot, row in enumerate(rows):
            last = row.out.tokens[-1]
            if row.codes and last >= self.vocab.image_offset:
                k, width = len(row.codes) - 1, max(1, round(self.vocab.tokens_per_image[row.task] ** 0.5))
                out[slot, 0, 0] = min(k // width + 1, self.grid_pos)
                out[slot, 0, 1] = min(k % width + 1, self.grid_pos)
        return out.to(self.device)

    @staticmethod
    def _mode(row: _Row) -> int:
        if row.image_left > 0:
            return CODE
        if row.image_left == 0:
            return EOI
        return TEXT

    def _push(self, row: _Row, tok: int, lp: float) -> bool:
        """Record ``tok`` for ``row``; True when the row is finished."""
        v, out = self.vocab, row.out
        out.tokens.append(tok)
        if row.steps is not None:
            row.step = row.steps.push(tok)
        if row.image_left > 0:
            row.codes.append(tok - v.image_offset)
            row.image_left -= 1
        elif row.image_left == 0:  # the forced <eoi>
            out.parts.append(("image", np.array(row.codes, dtype=np.int64)))
            row.codes, row.image_left = [], -1
        elif tok == v.boi:
            self._close_text(row)
            row.image_left = v.tokens_per_image[row.task]
        elif tok == v.eos_id:
            self._close_text(row)
            out.stopped = "eos"
            return True
        else:
            row.segment.append(tok)
            row.segment_lp.append(lp)
            if self._find_answer(row):
                self._close_text(row)
                out.stopped = "answer"
                return True
        if len(out.tokens) >= row.budget:
            if row.image_left >= 0:  # cannot happen: <boi> needs room for the whole image
                raise AssertionError("image cut by the length budget")
            self._close_text(row)
            out.stopped = "length"
            return True
        return False

    def _close_text(self, row: _Row) -> None:
        if row.segment:
            row.out.parts.append(("text", self._decode_text(row.segment)))
            row.segment, row.segment_lp = [], []

    def _decode_text(self, ids: list[int]) -> str:
        return self.text.decode(ids, skip_special_tokens=False)

    def _find_answer(self, row: _Row) -> bool:
        """If the open text part now holds the answer line, record the letter and its log-prob."""
        if "." not in self.text.id_to_token(row.segment[-1]):
            return False
        text = self._decode_text(row.segment)
        m = ANSWER_RE.search(text)
        if not m:
            return False
        row.out.answer = m.group(1)
        letter_at = m.start(1)
        for j in range(1, len(row.segment) + 1):  # first token whose text reaches the letter
            if len(self._decode_text(row.segment[:j])) > letter_at:
                row.out.answer_logprob = float(row.segment_lp[j - 1])
                break
        return True


# --------------------------------------------------------------------------------------
# Loading a model directory (the train stage's ``models/runs/<run>/model``)


@dataclass
class LoadedModel:
    model: object
    vocab: Vocab
    text_tokenizer: object
    directory: Path
    meta: dict

    @property
    def variant(self) -> str:
        return self.meta.get("variant", "mvot")

    @property
    def draws(self) -> bool:
        return self.variant in DRAWING_VARIANTS

    def decoder(self, device=None) -> Decoder:
        return Decoder(self.model, self.vocab, self.text_tokenizer, device)


def load_model(directory: str | Path, device: str | None = None) -> LoadedModel:
    """A model directory: ``config.json``, ``model.safetensors``, ``mvot.json`` and ``tokenizer/``."""
    from transformers import AutoModelForCausalLM

    import mvot.model  # noqa: F401  (registers the 2D-position Llama with AutoModelForCausalLM)
    from mvot.tokenizers import load_text_tokenizer

    d = Path(directory)
    if not (d / "config.json").is_file():
        raise DecodeError(f"{d}: not a model directory (no config.json); give models/runs/<run>/model or an MLflow model URI")
    vocab = Vocab.load(d / "tokenizer" / "vocab.json")
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(str(d), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise DecodeError(f"{d}: cannot load the model weights ({exc}); retrain with `dvc repro -f train`") from None
    if model.config.vocab_size != vocab.size:
        raise DecodeError(f"{d}: the model has {model.config.vocab_size} tokens, its vocabulary {vocab.size}; the directory is inconsistent")
    meta = {}
    if (d / "mvot.json").is_file():
        try:
            meta = json.loads((d / "mvot.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DecodeError(f"{d}/mvot.json: unreadable ({exc})") from None
        if not isinstance(meta, dict):
            raise DecodeError(f"{d}/mvot.json: holds a {type(meta).__name__}, not an object of model settings; the directory is "
                              "inconsistent (retrain with `dvc repro -f train`)")
    try:
        dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError as exc:
        raise DecodeError(f"device {device!r}: not a torch device ({exc}); e.g. cpu or cuda:0") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DecodeError(f"device {device!r}: this torch has no usable CUDA device; leave the device out (the GPU when there is "
                          "one, else the CPU) or give --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DecodeError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    return LoadedModel(model.to(dev).eval(), vocab, load_text_tokenizer(d / "tokenizer"), d, meta)

