"""``mvot bench decode``: decoding throughput of :class:`mvot.generate.Decoder`, single-stream
and batched, against unbatched Hugging Face ``generate`` on the same model, in one run.

* **single-stream**: ``Decoder.decode(batch_size=1)`` over ``n`` test prompts of a task.
* **batched**: the same decoder with ``batch_size`` rows over ``n_batched`` test prompts
  (the same first ``n`` and more), as ``mvot evaluate`` runs it.
* **HF generate**: ``model.generate`` one prompt at a time (greedy, KV cache, no
  constraints), forced to emit exactly as many tokens as our decoder emitted for that
  prompt (``min_new_tokens = max_new_tokens``), so both produce the same token count.

Tokens per second counts new tokens only; prompt prefill is inside every timing. The
evaluation wall-time estimate scales the batched rate to the default test sets:
``instances x mean new tokens per instance / batched tokens per second``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from mvot.config import Params


def bench_decode(
    params: Params,
    run: str = "mvot",
    runs_root: str | Path = "models/runs",
    tokens_dir: str | Path = "data/tokens",
    task: str = "frozenlake",
    n: int = 8,
    n_batched: int = 64,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
) -> dict:
    from mvot.evaluate import prompt_of
    from mvot.generate import load_model
    from mvot.tokenize import load_split
    from mvot.train import TrainError

    model_dir = Path(runs_root) / run / "model"
    if not (model_dir / "config.json").is_file():
        raise TrainError(f"{model_dir}: no trained model; run `dvc repro train@{run}` first")
    lm = load_model(model_dir)
    ts = load_split(tokens_dir, task, "test", lm.variant)
    n_batched = min(n_batched, len(ts))
    n = min(n, n_batched)
    prompts = [prompt_of(*ts.sequence(i)[:2]) for i in range(n_batched)]
    dec = lm.decoder()
    bs = batch_size or params.evaluate.batch_size
    budget = max_new_tokens or params.evaluate.max_new_tokens or None
    torch.manual_seed(0)

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0

    dec.decode(prompts[:1], [task], draw=lm.draws, batch_size=1, max_new_tokens=budget)  # warm-up
    single, t_single = timed(lambda: dec.decode(prompts[:n], [task] * n, draw=lm.draws, batch_size=1, max_new_tokens=budget))
    batched, t_batched = timed(lambda: dec.decode(prompts, [task] * n_batched, draw=lm.draws, batch_size=bs, max_new_tokens=budget))
    tok_single = sum(len(o.tokens) for o in single)
    tok_batched = sum(len(o.tokens) for o in batched)

    model = lm.model
    pad = lm.vocab.pad_id

    def hf_generate():
        for p, o in zip(prompts[:n], single, strict=True):
            ids = torch.from_numpy(np.asarray(p, np.int64))[None]
            k = len(o.tokens)
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=k, min_new_tokens=k, do_sample=False,
                           pad_token_id=pad, eos_token_id=None)

    # HF generate cannot feed step positions token by token (train.model.step_pos): not measured then
    has_steps = bool(getattr(model.config, "step_pos", 0))
    t_hf = None if has_steps else timed(hf_generate)[1]
    mean_new = tok_batched / n_batched
    sizes = {t: len(load_split(tokens_dir, t, "test", lm.variant)) for t in lm.meta.get("tasks", [task])}
    rate_single, rate_batched = tok_single / t_single, tok_batched / t_batched
    rate_hf = tok_single / t_hf if t_hf else None

    def ratio(rate: float) -> float | None:
        return None if rate_hf is None else round(rate / rate_hf, 2)

    return {
        "run": run, "variant": lm.variant, "task": task, "threads": torch.get_num_threads(), "batch_size": bs,
        "single": {"instances": n, "new_tokens": tok_single, "seconds": round(t_single, 2), "tokens_per_s": round(rate_single, 1)},
        "batched": {"instances": n_batched, "new_tokens": tok_batched, "seconds": round(t_batched, 2),
                    "tokens_per_s": round(rate_batched, 1)},
        "hf_generate": None if t_hf is None else {"instances": n, "new_tokens": tok_single, "seconds": round(t_hf, 2),
                                                  "tokens_per_s": round(rate_hf, 1)},
        "batched_vs_single": round(rate_batched / rate_single, 2),
        "single_vs_hf_generate": ratio(rate_single),
        "batched_vs_hf_generate": ratio(rate_batched),
        "mean_new_tokens": round(mean_new, 1),
        "test_instances": sizes,
        "estimated_eval_seconds_all_tasks_this_run": round(sum(sizes.values()) * mean_new / rate_batched, 0),
    }


def format_table(r: dict) -> str:
    lines = [f"run {r['run']} (variant {r['variant']}), task {r['task']}, {r['threads']} threads, batch {r['batch_size']}",
             f"{'decoder':<14} {'inst':>5} {'new tok':>8} {'s':>8} {'tok/s':>9}"]
    for name in ("single", "batched", "hf_generate"):
        x = r[name]
        if x is None:
            lines.append(f"{name:<14} not measured: HF generate cannot feed this model's step positions")
            continue
        lines.append(f"{name:<14} {x['instances']:>5} {x['new_tokens']:>8} {x['seconds']:>8.2f} {x['tokens_per_s']:>9.1f}")
    lines += ["", f"batched / single-stream: {r['batched_vs_single']}x (target >= 8x)",
              f"single-stream / HF generate: {r['single_vs_hf_generate']}x; batched / HF generate: {r['batched_vs_hf_generate']}x",
              f"evaluating this run on the test sets {r['test_instances']}: ~{r['estimated_eval_seconds_all_tasks_this_run']:.0f} s "
              f"(at {r['mean_new_tokens']} new tokens an instance, extrapolated from {r['task']})"]
    return "\n".join(lines)
