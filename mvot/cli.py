"""``mvot`` command line: the entry points used by dvc.yaml, the flows and people.

Every command validates ``params.yaml`` first; any known problem (bad params, corrupt or
malformed data, a failed check) prints one clear message and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mvot.config import SPLITS, TASKS, load_params
from mvot.errors import MvotError


class CliError(MvotError, RuntimeError):
    """A user-facing failure: printed without a traceback, exit code 1."""


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"generate {desc}", unit="inst", dynamic_ncols=True, mininterval=0.5)


def cmd_generate(args: argparse.Namespace) -> int:
    from mvot.data import generate_task

    params = load_params(args.params)
    for task in args.task or TASKS:
        t0 = time.perf_counter()
        stats = generate_task(params, task, args.out, args.stats_dir, args.sheet_dir, progress_factory=_progress)
        dt = time.perf_counter() - t0
        print(f"{task}: wrote {args.out}/{task} in {dt:.1f}s")
        _print_stats(stats)
    return 0


def _print_stats(stats: dict) -> None:
    for split in SPLITS:
        s = stats["splits"][split]
        answers = " ".join(f"{k}:{v:.1%}" for k, v in s["answer_share"].items())
        sizes = " ".join(f"{k}:{v}" for k, v in s["sizes"].items())
        print(f"  {split:5s} n={s['instances']:6d} layouts={s['distinct_layouts']:6d} answers[{answers}] sizes[{sizes}] steps~{s['steps_mean']}")


def _tracked(args: argparse.Namespace, experiment: str, run_name: str):
    """An MLflow run (embedded sqlite store unless MLFLOW_TRACKING_URI says otherwise),
    or a null tracker with --no-track and in every torchrun process but the first."""
    import os
    from contextlib import nullcontext

    from mvot.tracking import NullTracker, start_run

    if args.no_track or os.environ.get("RANK", "0") != "0":
        return nullcontext(NullTracker())
    return start_run(experiment, run_name)


def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from mvot.tokenizers import run_stage

    params = load_params(args.params)
    with _tracked(args, "tokenizer", "tokenizer") as tracker:
        m = run_stage(params, args.raw, args.out, args.metrics, tracker)
    f = m["fidelity"]
    for task, d in f.items():
        print(f"{task:12s} cell fidelity {d['cell_fidelity']:.4%}  image fidelity {d['image_fidelity']:.4%}  ({d['frames']} held-out frames)")
    cb = m["codebook"]
    print(f"codebook: {cb['used_codes']}/{cb['size']} codes used, perplexity {cb['perplexity']:.1f}; vocabulary {m['vocab_size']} ids")
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from mvot.tokenize import tokenize_task

    params = load_params(args.params)
    for task in args.task or TASKS:
        stats = tokenize_task(params, task, args.raw, args.tokenizer, args.out, args.stats_dir)
        for split, by_var in stats["splits"].items():
            line = "  ".join(f"{v}: mean {d['mean_len']:.0f} max {d['max_len']}" for v, d in by_var.items())
            print(f"{task} {split}: {line}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mvot.runs import train_run

    params = load_params(args.params)
    runs = [args.run] if args.run else list(params.train.runs)
    unknown = [r for r in runs if r not in params.train.runs]
    if unknown:
        raise CliError(f"unknown run {unknown[0]!r}; params.yaml train.runs has: {', '.join(params.train.runs)}")
    for run in runs:
        with _tracked(args, "train", run) as tracker:
            summary = train_run(params, run, args.tokens, args.tokenizer, args.out, tracker, args.log_jsonl, args.resume)
        print(json.dumps({"run": run} | summary, indent=2))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from mvot.importer import import_mvot

    params = load_params(args.params)
    written = import_mvot(Path(args.path), Path(args.out), params)
    for path, n in written.items():
        print(f"{path}: {n} instances, every answer recomputed and confirmed")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from mvot.bench import bench_generate, bench_parse

    params = load_params(args.params)
    if args.what == "train":
        from mvot.bench_train import bench_train, format_table

        r = bench_train(params, args.tokens, args.tokenizer, run=args.run, steps=args.steps, warmup=args.warmup, rounds=args.rounds)
        print(json.dumps(r | {side: {k: v for k, v in r[side].items() if k != "losses"} for side in ("ours", "trainer")}, indent=2))
        print(format_table(r))
        return 0
    fn = {"generate": bench_generate, "parse": bench_parse}[args.what]
    rows = fn(params, args.n, args.task or TASKS)
    print(json.dumps(rows, indent=2))
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    print(json.dumps(params.model_dump(mode="json"), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvot", description="Multimodal Visualization-of-Thought pipeline")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate, render, split and verify task data (DVC stage 'generate')")
    g.add_argument("--task", action="append", choices=TASKS, help="task(s) to generate (default: all)")
    g.add_argument("--out", default="data/raw", help="root of the raw data (default: data/raw)")
    g.add_argument("--stats-dir", default="data/stats")
    g.add_argument("--sheet-dir", default="data/contact")
    g.set_defaults(fn=cmd_generate)

    t = sub.add_parser("train-tokenizer", help="train and freeze the image and text tokenizers (DVC stage 'tokenizer')")
    t.add_argument("--raw", default="data/raw")
    t.add_argument("--out", default="models/tokenizer")
    t.add_argument("--metrics", default="metrics/tokenizer.json")
    t.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    t.set_defaults(fn=cmd_train_tokenizer)

    k = sub.add_parser("tokenize", help="traces of every variant -> token arrays (DVC stage 'tokenize')")
    k.add_argument("--task", action="append", choices=TASKS)
    k.add_argument("--raw", default="data/raw")
    k.add_argument("--tokenizer", default="models/tokenizer")
    k.add_argument("--out", default="data/tokens")
    k.add_argument("--stats-dir", default="metrics/tokens")
    k.set_defaults(fn=cmd_tokenize)

    r = sub.add_parser("train", help="train the runs of params.yaml train.runs on the token arrays (DVC stage 'train')")
    r.add_argument("--run", help="one run of train.runs (default: all, one after another)")
    r.add_argument("--tokens", default="data/tokens")
    r.add_argument("--tokenizer", default="models/tokenizer")
    r.add_argument("--out", default="models/runs")
    r.add_argument("--resume", action="store_true", help="continue from <out>/<name>/checkpoint")
    r.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    r.add_argument("--log-jsonl", help="also append the logged metrics to this JSON-lines file")
    r.set_defaults(fn=cmd_train)

    i = sub.add_parser("import-mvot", help="import the MVoT paper's released data format")
    i.add_argument("path", help="a maze gridN.json, a frozenlake levelN directory, or a folder holding them")
    i.add_argument("--out", default="data/imported", help="where to write <task>/<name>.jsonl")
    i.set_defaults(fn=cmd_import)

    b = sub.add_parser("bench", help="benchmarks that print figures")
    b.add_argument("what", choices=["generate", "parse", "train"],
                   help="generation speed, parse accuracy under perturbations, or training throughput (MFU, vs Trainer)")
    b.add_argument("--n", type=int, default=300, help="instances per task")
    b.add_argument("--task", action="append", choices=TASKS)
    b.add_argument("--run", default="mvot", help="train: the run of train.runs to measure (default: mvot)")
    b.add_argument("--steps", type=int, default=20, help="train: timed steps per round (default: 20)")
    b.add_argument("--warmup", type=int, default=3, help="train: untimed steps before them (default: 3)")
    b.add_argument("--rounds", type=int, default=2, help="train: interleaved rounds of ours and Trainer, best kept (default: 2)")
    b.add_argument("--tokens", default="data/tokens", help="train: token arrays (default: data/tokens)")
    b.add_argument("--tokenizer", default="models/tokenizer", help="train: tokenizer directory (default: models/tokenizer)")
    b.set_defaults(fn=cmd_bench)

    v = sub.add_parser("params", help="validate params.yaml and print it with every default filled in")
    v.set_defaults(fn=cmd_params)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except MvotError as exc:
        print(f"mvot {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mvot {args.command}: interrupted; outputs were left as they were", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
