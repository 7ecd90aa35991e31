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


def test_bench_threads_compares_thread_counts_on_identical_work(tiny_tokens, raw_params, tmp_path, capsys):
    """`mvot bench threads`: each thread count really runs (torch reports it), on the same
    batches and init, so the losses agree across counts; the caller's thread count is
    restored after; the CLI runs it and refuses bad counts before any work."""
    import torch
    import yaml

    from mvot.bench_train import bench_threads, format_threads_table
    from mvot.cli import main
    from mvot.train import TrainError

    _, tok_dir, tokens_dir = tiny_tokens
    raw = tiny_tokenizer_raw(raw_params)
    raw["train"] |= {"tasks": ["frozenlake"], "batch_tokens": 2048, "warmup": 2, "steps": 10}
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # neither count measured below, so a missing restore shows
    try:
        r = bench_threads(parse_params(raw), tokens_dir, tok_dir, run="mvot", steps=2, warmup=1, rounds=1,
                          threads=[1, 2])
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert [x["threads"] for x in r["by_threads"]] == [1, 2]
    assert [x["threads_seen"] for x in r["by_threads"]] == [[1], [2]]
    for x in r["by_threads"]:
        assert all(math.isfinite(v) and v > 0 for v in (x["tokens_per_s"], x["steps_per_s"], x["speedup"],
                                                        x["efficiency"], x["seconds_best"])), x
        assert len(x["losses"]) == 3 and len({round(v, 6) for v in x["losses"]}) > 1
    assert r["loss_max_abs_diff"] < 1e-3
    assert r["by_threads"][1]["losses"] == pytest.approx(r["by_threads"][0]["losses"], rel=1e-4)
    table = format_threads_table(r)
    assert "speed-up" in table and "largest difference" in table

    for bad in ([1, 1], []):
        with pytest.raises(TrainError, match="distinct"):
            bench_threads(parse_params(raw), tokens_dir, tok_dir, threads=bad)

    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    cli = ["--params", str(p), "bench", "threads", "--tokens", str(tokens_dir), "--tokenizer", str(tok_dir),
           "--steps", "1", "--warmup", "1", "--rounds", "1"]
    assert main([*cli, "--threads", "2,1"]) == 0
    out = capsys.readouterr().out
    assert "speed-up" in out and '"threads_seen": [\n        2\n      ]' in out
    assert main([*cli[:-1], "0"]) == 1  # --rounds 0: a clear error, no traceback
    assert "--rounds must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*cli, "--threads", "0,2"])
    assert "distinct thread counts" in capsys.readouterr().err
