"""`mvot bench train` on the tiny fixtures: the figures exist and both loops did the same
work (same steps, same losses). No timing assertions: speed is a printed benchmark."""

from __future__ import annotations

import math

import pytest

from mvot.bench_train import bench_train, format_table, matmul_peak
from mvot.config import parse_params
from tests.conftest import tiny_tokenizer_raw


def test_bench_train_runs_both_loops_on_identical_work(tiny_tokens, raw_params):
    _, tok_dir, tokens_dir = tiny_tokens
    raw = tiny_tokenizer_raw(raw_params)
    raw["train"] |= {"tasks": ["frozenlake"], "batch_tokens": 2048, "warmup": 2, "steps": 10}
    params = parse_params(raw)
    peak = matmul_peak(sizes=(256,), reps=2)
    r = bench_train(params, tokens_dir, tok_dir, run="mvot", steps=2, warmup=1, rounds=1, peak=peak)

    figures = [r["peak_gflops"], r["ratio_vs_trainer"], r["model_gflop_per_token"]]
    for side in ("ours", "trainer"):
        figures += [r[side][k] for k in ("tokens_per_s", "achieved_gflops", "mfu", "seconds_best")]
    assert all(math.isfinite(x) and x > 0 for x in figures), figures
    assert r["timed_tokens"] > 0 and r["model"]["matmul_parameters"] > 0

    # the same steps, the same init and batches: the same losses, step by step (the second
    # step's loss also checks that optimizer, clipping and LR schedule agree)
    assert r["ours"]["steps_run"] == r["trainer"]["steps_run"] == 3
    assert len(r["ours"]["losses"]) == len(r["trainer"]["losses"]) == 3
    assert r["trainer"]["first_loss"] == pytest.approx(r["ours"]["first_loss"], rel=1e-5)
    assert r["trainer"]["losses"] == pytest.approx(r["ours"]["losses"], rel=1e-4)
    # different steps see different batches and weights: the losses are not all one number
    assert len({round(x, 6) for x in r["ours"]["losses"]}) > 1

    table = format_table(r)
    assert "ours / Trainer" in table and "MFU" in table
