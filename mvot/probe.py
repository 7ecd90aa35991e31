"""Teacher-forced probe: what a trained model gets right when it is shown the true trace.

Decoding (``mvot evaluate``) scores a model on its own earlier steps; this probe feeds it
the *true* trace of each instance (the sequence it was trained on, rebuilt from the raw
instance with the model's own tokenizer and trace settings) and takes the argmax at every
position it was trained to predict. Per split and per outcome (how the episode ended,
:func:`mvot.worlds.outcome`) it counts

* ``text whole``: instances whose every predicted text token is right (the actions, the
  inventory lines, the answer);
* ``steps whole``: for the variants that draw, step images whose every code is right;
* the commonest *first* wrong text token, with the text before it, what the model put
  there and its probability.

Run on a ``train`` and a ``test`` split side by side it tells memorisation (train right,
test wrong) from a rule that was never learned (both wrong), which decoding alone cannot.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mvot import vq
from mvot.data import read_split
from mvot.errors import MvotError
from mvot.tokenize import TraceEncoder, instance_codes
from mvot.tokenizers import PatchCoder
from mvot.traces import DRAWING_VARIANTS, build_with
from mvot.worlds import outcome


class ProbeError(MvotError, ValueError):
    """The probe cannot run; the message says why."""


@dataclass
class OutcomeProbe:
    split: str
    outcome: str
    instances: int = 0
    text_whole: int = 0
    text_tokens: int = 0
    text_right: int = 0
    steps: int = 0
    steps_whole: int = 0
    first_errors: Counter = field(default_factory=Counter)  # (context, predicted, true) -> count
    error_prob: dict = field(default_factory=lambda: defaultdict(float))  # same key -> summed p(predicted)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` of every run of True in a 1-D bool array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def rebuild(enc: TraceEncoder, meta: dict, variant: str, insts, codes) -> list:
    """The token sequences a model with ``meta`` (its ``mvot.json``) was trained on, for ``insts``."""
    return [enc.encode(build_with(i, variant, meta), i.task, codes[i.uid]) for i in insts]


def probe(model_dir: str | Path, raw_dir: str | Path, task: str | None = None, splits=("train", "test"),
          per_outcome: int = 60, batch_size: int = 16, device: str | None = "cpu") -> list[OutcomeProbe]:
    """Teacher-forced counts of ``model_dir`` on the first ``per_outcome`` instances of each
    outcome of each split of ``raw_dir/<task>``."""
    from mvot.generate import load_model
    from mvot.train import TokenData, collate, model_inputs, step_indexer

    lm = load_model(model_dir, device)
    tasks = lm.meta.get("tasks") or []
    if task is None:
        if len(tasks) != 1:
            raise ProbeError(f"{model_dir}: trained on {tasks or 'unknown tasks'}; name the task to probe (--task)")
        task = tasks[0]
    elif tasks and task not in tasks:
        raise ProbeError(f"{model_dir}: trained on {', '.join(tasks)}, not {task}")
    if per_outcome < 1:
        raise ProbeError(f"per_outcome must be at least 1, got {per_outcome}")
    variant = lm.variant
    if variant == "direct":
        raise ProbeError(f"{model_dir}: a Direct model writes only the answer; probe a CoT, Interleaved or MVoT model")
    draws = variant in DRAWING_VARIANTS
    tok_dir = Path(model_dir) / "tokenizer"
    coder = PatchCoder(vq.load(tok_dir))
    enc = TraceEncoder(lm.vocab, lm.text_tokenizer)
    indexer = step_indexer(tok_dir, lm.vocab, lm.model)
    text_tok = lm.text_tokenizer
    dev = next(lm.model.parameters()).device

    def piece(t: int) -> str:
        return text_tok.decode([t], skip_special_tokens=False) if t < lm.vocab.n_text else "<image>"

    out: list[OutcomeProbe] = []
    for split in splits:
        by_outcome: dict[str, list] = defaultdict(list)
        for inst in read_split(Path(raw_dir) / task, split):
            label = outcome(inst)
            if len(by_outcome[label]) < per_outcome:
                by_outcome[label].append(inst)
        chosen = [i for insts in by_outcome.values() for i in insts]
        codes = instance_codes(coder, Path(raw_dir) / task, split, chosen)
        for label in sorted(by_outcome):
            insts = by_outcome[label]
            row = OutcomeProbe(split, label)
            seqs = rebuild(enc, lm.meta, variant, insts, codes)
            triples = [(s.tokens.astype(np.int64), s.supervised, s.image) for s in seqs]
            steps = None
            if indexer is not None:
                steps = [indexer.index(t, int(np.argmax(s)), task, draws) for t, s, _ in triples]
            data = TokenData(triples, [(int(np.argmax(m)), None) for _, _, m in triples], [task] * len(triples), steps)
            for b in range(0, len(triples), batch_size):
                batch = collate(data, np.arange(b, min(b + batch_size, len(triples))), lm.vocab, None)
                with torch.no_grad():
                    logits = lm.model(**{k: v.to(dev) for k, v in model_inputs(batch).items()}).logits.float().cpu()
                pred = logits.argmax(-1)
                prob = logits.softmax(-1).gather(-1, pred[..., None])[..., 0]
                right = (pred == batch["targets"]).numpy()
                sup, img = batch["supervised"].numpy(), batch["image"].numpy()
                for r in range(len(pred)):
                    text = sup[r] & ~img[r]
                    row.instances += 1
                    row.text_tokens += int(text.sum())
                    row.text_right += int((right[r] & text).sum())
                    wrong = np.flatnonzero(text & ~right[r])
                    if len(wrong) == 0:
                        row.text_whole += 1
                    else:
                        p = int(wrong[0])
                        ids = batch["input_ids"][r, max(0, p - 15): p + 1].tolist()
                        ctx = "".join(piece(t) for t in ids).split("<image>")[-1].replace("\n", " ")[-48:]
                        key = (ctx, piece(int(pred[r, p])), piece(int(batch["targets"][r, p])))
                        row.first_errors[key] += 1
                        row.error_prob[key] += float(prob[r, p])
                    if draws:
                        for s, e in _runs(sup[r] & img[r]):
                            row.steps += 1
                            row.steps_whole += bool(right[r, s:e].all())
            out.append(row)
    return out


def probe_table(rows: list[OutcomeProbe], errors: int = 2) -> str:
    """Markdown: one line per split and outcome, then its commonest first errors."""
    lines = ["| split | outcome | text whole | text tokens right | steps whole | commonest first error (context -> predicted, p; true) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        errs = "; ".join(
            f"{n}x `{ctx.strip()!s}` -> `{pred.strip()}` ({r.error_prob[(ctx, pred, true)] / n:.2f}; true `{true.strip()}`)"
            for (ctx, pred, true), n in r.first_errors.most_common(errors)) or "-"
        steps = f"{r.steps_whole} / {r.steps}" if r.steps else "-"
        acc = 100 * r.text_right / max(r.text_tokens, 1)
        lines.append(f"| {r.split} | {r.outcome} | {r.text_whole} / {r.instances} | {acc:.2f}% | {steps} | {errs} |")
    return "\n".join(lines)
