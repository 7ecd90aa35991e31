"""``mvot bench train``: training throughput, MFU against a measured fp32 peak, and the
ratio against Hugging Face ``Trainer``, all measured side by side in one run.

Three measurements, one process, the machine's default torch thread count:

1. **Peak**: ``torch.matmul`` of square fp32 matrices (n = 1024, 2048, 3072), a warm-up
   product then several timed ones; FLOPs of one product ``2 n^3``; the best GFLOP/s over
   every size and repetition is "this machine's fp32 matrix-multiply peak".
2. **Our loop**: the step of :func:`mvot.train.train`, rebuilt from its own pieces
   (``build_model``, ``load_token_data``, ``make_batches``, ``collate`` with the same
   augmentation draws, ``compute_losses``, AdamW(betas 0.9/0.95) with the same
   weight decay, gradient clipping and LR schedule): ``warmup`` untimed steps, then
   ``steps`` timed ones (collation included, as in ``train``).
3. **Trainer**: ``transformers.Trainer`` on the same model config (fresh init, same
   seed), the same micro-batches in the same order (a dataset of batch numbers whose
   collator calls ``mvot.train.collate``), the same optimizer and schedule (passed in),
   ``max_grad_norm`` = ``train.clip``, fp32, no eval / saving / logging / reporting, and
   a ``compute_loss`` that calls ``compute_losses``: identical work, step for step.

The two are interleaved (ours, Trainer, ours, Trainer, ... ``rounds`` times, each on a
fresh model) and each side's best round is reported, which damps the noise of a shared
machine. Timing covers the steady state: from the end of the last warm-up step to the end
of the last step (optimizer and scheduler steps included, set-up excluded).

FLOPs (the usual "model FLOPs", PaLM appendix B): per sequence of ``t`` real (non-pad)
input tokens,

    6 * N * t  +  12 * n_layer * d_model * t^2

with ``N`` the parameters taking part in matrix products (every parameter except the
input embedding table, which is a lookup; the untied ``lm_head`` counts), ``6 N`` per
token being forward (2N) plus backward (4N), and ``12 L d t`` per token the attention
scores and weighted sum (QK^T and AV, 2 x 2 x d x t forward, x3 with backward), counted for
the full ``t`` context as PaLM does (no discount for the causal mask). Padding, L_D,
the softmax/cross-entropy and the optimizer are not counted. MFU = achieved FLOP/s / the
measured peak.

``mvot bench threads`` (:func:`bench_threads`) times our loop alone at several torch
thread counts (default 1 and every CPU it may use), interleaved the same way, and reports each
count's tokens/s, its speed-up over the first count and the parallel efficiency, with the
largest loss difference between counts (same batches, same init).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mvot import vq
from mvot.config import Params
from mvot.train import (
    TrainError,
    build_model,
    collate,
    compute_losses,
    load_token_data,
    make_batches,
    model_inputs,
    step_indexer,
)
from mvot.vocab import Vocab


def matmul_peak(sizes=(1024, 2048, 3072), reps: int = 5, budget_s: float = 20.0) -> dict:
    """Best fp32 ``torch.matmul`` GFLOP/s of square matrices (FLOPs = 2 n^3)."""
    best, per_size = 0.0, {}
    t_all = time.perf_counter()
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        a = torch.randn(n, n, generator=g, dtype=torch.float32)
        b = torch.randn(n, n, generator=g, dtype=torch.float32)
        out = torch.empty(n, n, dtype=torch.float32)
        torch.matmul(a, b, out=out)  # warm-up
        size_best = 0.0
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.matmul(a, b, out=out)
            dt = time.perf_counter() - t0
            size_best = max(size_best, 2 * n**3 / dt / 1e9)
            if time.perf_counter() - t_all > budget_s:
                break
        per_size[n] = round(size_best, 1)
        best = max(best, size_best)
    return {"peak_gflops": best, "peak_by_size": per_size, "threads": torch.get_num_threads()}


def _lr_lambda(cfg):
    """The LR multiplier of :func:`mvot.train.train` (linear warm-up, cosine to 10%)."""

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    return lr_at


def _optimizer(model, cfg):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))


def matmul_parameters(model) -> int:
    """Parameters that take part in matrix products: all but the input embedding table."""
    emb = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not emb)


class _Setup:
    """Data, vocabulary, L_D distances and the micro-batch schedule shared by both loops."""

    def __init__(self, params: Params, run: str, tokens_dir, tokenizer_dir, n_batches: int):
        cfg = params.train
        if run not in cfg.runs:
            raise TrainError(f"unknown run {run!r}; params.yaml train.runs has: {', '.join(cfg.runs)}")
        if cfg.grad_accum != 1:
            raise TrainError("mvot bench train/threads measures grad_accum = 1 (one micro-batch a step)")
        self.params, self.cfg, self.spec = params, cfg, cfg.runs[run]
        tokenizer_dir = Path(tokenizer_dir)
        self.vocab = Vocab.load(tokenizer_dir / "vocab.json")
        self.distance = vq.load_codebook(tokenizer_dir)[f"distance_{cfg.ld.distance}"]
        self.data = load_token_data(tokens_dir, cfg.tasks, "train", self.spec.variant,  # a pretrained model's step positions too
                                    step_indexer(tokenizer_dir, self.vocab, build_model(params, self.vocab)))
        # the first n_batches micro-batches of train(): epoch by epoch, same draws
        self.batches: list[tuple[np.ndarray, int, int]] = []
        epoch = 0
        while len(self.batches) < n_batches:
            order = make_batches(self.data.lengths, cfg.batch_tokens, np.random.default_rng([params.seed, epoch]))
            for m, idx in enumerate(order[: n_batches - len(self.batches)]):
                self.batches.append((idx, epoch, m))
            epoch += 1
        # real input tokens and model FLOPs of every micro-batch (from one collation)
        self.tokens, self.lengths = [], []
        for b in range(n_batches):
            t = self.batch(b)["attention_mask"].sum(1).numpy().astype(np.int64)
            self.tokens.append(int(t.sum()))
            self.lengths.append(t)

    def batch(self, b: int) -> dict[str, torch.Tensor]:
        """Micro-batch ``b`` exactly as ``train`` collates it (fresh augmentation draw)."""
        idx, epoch, m = self.batches[b]
        rng = np.random.default_rng([self.params.seed, epoch, m]) if self.cfg.augment else None
        return collate(self.data, idx, self.vocab, rng)

    def model(self):
        return build_model(self.params, self.vocab)

    def loss(self, model, batch):
        logits = model(**model_inputs(batch)).logits
        return compute_losses(
            logits.float(), batch, self.spec.variant, self.spec.ld_weight, self.distance, self.vocab,
            self.cfg.label_smoothing, self.cfg.ld.reduction, self.cfg.text_weight,
        )

    def flops(self, n_params: int, first: int, last: int) -> float:
        m = self.params.train.model
        return float(sum(6.0 * n_params * t.sum() + 12.0 * m.n_layer * m.d_model * (t.astype(np.float64) ** 2).sum()
                         for t in self.lengths[first:last]))


def run_ours(s: _Setup, warmup: int, steps: int) -> dict:
    """The step of ``mvot.train.train`` (single process, grad_accum 1), timed."""
    model = s.model()
    opt, sched = _optimizer(model, s.cfg)
    model.train()
    losses, t_start = [], None
    for b in range(warmup + steps):
        if b == warmup:
            t_start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        batch = s.batch(b)
        loss, terms = s.loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.cfg.clip)
        opt.step()
        sched.step()
        losses.append(terms["loss/total"])
    seconds = time.perf_counter() - t_start
    return {"seconds": seconds, "steps": warmup + steps, "losses": losses, "n_params": matmul_parameters(model)}


def run_trainer(s: _Setup, warmup: int, steps: int) -> dict:
    """The same steps through ``transformers.Trainer`` (same model, batches, optimizer, loss)."""
    from transformers import (
        PrinterCallback,
        ProgressCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    class Batches(torch.utils.data.Dataset):
        def __len__(self):
            return warmup + steps

        def __getitem__(self, b):
            return b

    losses: list[float] = []
    marks: dict[str, float] = {}

    class BenchTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, terms = s.loss(model, inputs)
            losses.append(terms["loss/total"])
            return loss

        def _get_train_sampler(self, *args, **kwargs):  # the batches in train()'s order
            return torch.utils.data.SequentialSampler(self.train_dataset)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                marks["start"] = time.perf_counter()
            if state.global_step == warmup + steps:
                marks["end"] = time.perf_counter()

    model = s.model()
    opt, sched = _optimizer(model, s.cfg)
    with tempfile.TemporaryDirectory(prefix="mvot-bench-trainer-") as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=warmup + steps,
            per_device_train_batch_size=1,
            gradient_accumulation_steps=1,
            max_grad_norm=s.cfg.clip,
            learning_rate=s.cfg.lr,  # informational: the optimizer and schedule are passed in
            weight_decay=s.cfg.weight_decay,
            seed=s.params.seed,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            remove_unused_columns=False,
            use_cpu=not torch.cuda.is_available(),
            bf16=False,
            fp16=False,
        )
        trainer = BenchTrainer(
            model=model, args=args, train_dataset=Batches(), data_collator=lambda items: s.batch(items[0]),
            optimizers=(opt, sched), callbacks=[Clock()],
        )
        for quiet in (PrinterCallback, ProgressCallback):  # no end-of-run print
            trainer.remove_callback(quiet)
        result = trainer.train()
    return {"seconds": marks["end"] - marks["start"], "steps": int(result.global_step), "losses": losses,
            "n_params": matmul_parameters(model)}


def _check_rounds(warmup: int, steps: int, rounds: int) -> None:
    if warmup < 1 or steps < 1 or rounds < 1:
        raise TrainError("bench: --warmup, --steps and --rounds must be at least 1")


def check_thread_counts(threads: list[int]) -> list[int]:
    """``threads`` if they are distinct counts of at least 1 (what ``--threads`` accepts)."""
    if not threads or min(threads) < 1 or len(set(threads)) != len(threads):
        raise TrainError(f"bench threads: --threads must be distinct counts of at least 1, e.g. 1,2; got {threads}")
    return threads


def _model_info(s: _Setup) -> dict:
    m = s.params.train.model
    return {"d_model": m.d_model, "n_layer": m.n_layer, "n_head": m.n_head, "d_ff": m.d_ff, "vocab": s.vocab.size}


def bench_train(params: Params, tokens_dir, tokenizer_dir, run: str = "mvot", steps: int = 20, warmup: int = 3,
                rounds: int = 2, peak: dict | None = None) -> dict:
    """Tokens/s and MFU of our loop and of ``Trainer`` on the same model and batches,
    interleaved ``rounds`` times (best round of each side), and the matmul peak."""
    _check_rounds(warmup, steps, rounds)
    peak = peak or matmul_peak()
    s = _Setup(params, run, tokens_dir, tokenizer_dir, warmup + steps)
    ours, hf = [], []
    for _ in range(rounds):
        ours.append(run_ours(s, warmup, steps))
        hf.append(run_trainer(s, warmup, steps))
    tokens = sum(s.tokens[warmup:])
    n_params = ours[0]["n_params"]
    flops = s.flops(n_params, warmup, warmup + steps)
    best_ours = min(r["seconds"] for r in ours)
    best_hf = min(r["seconds"] for r in hf)

    def side(best: float, runs: list[dict]) -> dict:
        return {
            "tokens_per_s": tokens / best,
            "achieved_gflops": flops / best / 1e9,
            "mfu": flops / best / 1e9 / peak["peak_gflops"],
            "seconds_best": best,
            "seconds_all": [round(r["seconds"], 3) for r in runs],
            "steps_run": runs[0]["steps"],
            "first_loss": runs[0]["losses"][0],
            "losses": runs[0]["losses"],
        }

    return {
        "run": run,
        "variant": s.spec.variant,
        "model": _model_info(s) | {"matmul_parameters": n_params},
        "warmup_steps": warmup,
        "timed_steps": steps,
        "rounds": rounds,
        "timed_tokens": tokens,
        "mean_tokens_per_step": tokens / steps,
        "model_gflop_per_token": flops / tokens / 1e9,
        "peak_gflops": peak["peak_gflops"],
        "peak_by_size": peak["peak_by_size"],
        "threads": peak["threads"],
        "ours": side(best_ours, ours),
        "trainer": side(best_hf, hf),
        "ratio_vs_trainer": best_hf / best_ours,
    }


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def bench_threads(params: Params, tokens_dir, tokenizer_dir, run: str = "mvot", steps: int = 20, warmup: int = 3,
                  rounds: int = 2, threads: list[int] | None = None) -> dict:
    """Tokens/s of our loop at each torch thread count (default: 1 and every CPU this
    process may use), the counts interleaved ``rounds`` times on a fresh model each, best
    round of each count; the speed-up against the first count and the losses' largest
    difference between counts (same batches and init: a thread count should not change
    what a run learns)."""
    threads = check_thread_counts(list(threads) if threads is not None else sorted({1, usable_cpus()}))
    _check_rounds(warmup, steps, rounds)
    s = _Setup(params, run, tokens_dir, tokenizer_dir, warmup + steps)
    before = torch.get_num_threads()
    runs: dict[int, list[dict]] = {t: [] for t in threads}
    try:
        for _ in range(rounds):
            for t in threads:
                torch.set_num_threads(t)
                runs[t].append(run_ours(s, warmup, steps) | {"threads_seen": torch.get_num_threads()})
    finally:
        torch.set_num_threads(before)
    tokens = sum(s.tokens[warmup:])
    base_t = threads[0]
    base = min(r["seconds"] for r in runs[base_t])
    rows = []
    for t in threads:
        best = min(r["seconds"] for r in runs[t])
        rows.append({
            "threads": t,
            "threads_seen": sorted({r["threads_seen"] for r in runs[t]}),
            "tokens_per_s": tokens / best,
            "steps_per_s": steps / best,
            "seconds_best": best,
            "seconds_all": [round(r["seconds"], 3) for r in runs[t]],
            "speedup": base / best,
            "efficiency": base / best / (t / base_t),  # 1.0 = the speed-up grows as the thread count does
            "losses": runs[t][0]["losses"],
        })
    ref = rows[0]["losses"]
    diff = max(abs(a - b) for row in rows for a, b in zip(row["losses"], ref, strict=True))
    return {
        "run": run,
        "variant": s.spec.variant,
        "model": _model_info(s),
        "cpu_count": usable_cpus(),
        "warmup_steps": warmup,
        "timed_steps": steps,
        "rounds": rounds,
        "timed_tokens": tokens,
        "mean_tokens_per_step": tokens / steps,
        "by_threads": rows,
        "loss_max_abs_diff": diff,
    }


def format_threads_table(r: dict) -> str:
    """The figures of :func:`bench_threads` as a small text table."""
    lines = [
        f"run {r['run']} (variant {r['variant']}), model {r['model']}, {r['cpu_count']} CPUs",
        f"{r['timed_steps']} timed steps after {r['warmup_steps']} warm-up steps, {r['timed_tokens']:,} real tokens "
        f"({r['mean_tokens_per_step']:.0f} a step); {r['rounds']} interleaved rounds, best of each thread count",
        "",
        f"{'threads':>7} {'tokens/s':>10} {'steps/s':>8} {'speed-up':>9} {'efficiency':>10} {'best s':>8}  all rounds s",
    ]
    for x in r["by_threads"]:
        lines.append(f"{x['threads']:>7} {x['tokens_per_s']:>10,.0f} {x['steps_per_s']:>8.2f} {x['speedup']:>8.2f}x "
                     f"{x['efficiency']:>10.0%} {x['seconds_best']:>8.2f}  {x['seconds_all']}")
    lines.append("")
    lines.append(f"losses, largest difference between thread counts over {r['warmup_steps'] + r['timed_steps']} steps: "
                 f"{r['loss_max_abs_diff']:.2e}")
    return "\n".join(lines)


def format_table(r: dict) -> str:
    """The figures of :func:`bench_train` as a small text table."""
    lines = [
        f"run {r['run']} (variant {r['variant']}), model {r['model']}, {r['threads']} threads",
        f"{r['timed_steps']} timed steps after {r['warmup_steps']} warm-up steps, {r['timed_tokens']:,} real tokens "
        f"({r['mean_tokens_per_step']:.0f} a step), {r['model_gflop_per_token'] * 1e3:.1f} MFLOP a token; "
        f"{r['rounds']} interleaved rounds, best of each side",
        f"fp32 matmul peak (measured): {r['peak_gflops']:.1f} GFLOP/s  (by size: {r['peak_by_size']})",
        "",
        f"{'loop':<10} {'tokens/s':>10} {'GFLOP/s':>9} {'MFU':>7} {'best s':>8}  all rounds s",
    ]
    for name in ("ours", "trainer"):
        x = r[name]
        lines.append(f"{name:<10} {x['tokens_per_s']:>10,.0f} {x['achieved_gflops']:>9.1f} {x['mfu']:>7.1%} "
                     f"{x['seconds_best']:>8.2f}  {x['seconds_all']}")
    lines.append("")
    lines.append(f"ours / Trainer: {r['ratio_vs_trainer']:.3f}x   (targets: MFU >= 60%, ratio >= 1.0x)")
    lines.append(f"first-step loss: ours {r['ours']['first_loss']:.6f}, Trainer {r['trainer']['first_loss']:.6f}")
    return "\n".join(lines)
