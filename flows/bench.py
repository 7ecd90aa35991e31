"""Orchestration overhead: the pipeline through DVC, Prefect and MLflow against the same
library calls made directly in one process, both from scratch, in one run.

    python -m flows.bench [--profile smoke] [--keep DIR]

Prints both wall times, the overhead in seconds and as a share of the direct time. The
overhead is mostly fixed (one process start per DVC stage, Prefect's ephemeral API, MLflow
logging and model packaging, promotion), so its share shrinks as the profile grows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from flows.pipeline import pipeline_flow, resolve_params
from mvot.config import TASKS, parse_params
from mvot.errors import MvotError


def direct(raw: dict, root: Path) -> float:
    """Every stage as a plain library call, no tracking, no orchestration; wall seconds."""
    from mvot.data import generate_task
    from mvot.evaluate import evaluate_combined, evaluate_run
    from mvot.tokenize import tokenize_task
    from mvot.tokenizers import run_stage
    from mvot.train import train

    params = parse_params(raw)
    t0 = time.perf_counter()
    for t in TASKS:
        generate_task(params, t, root / "data/raw", root / "data/stats", root / "data/contact")
    run_stage(params, root / "data/raw", root / "models/tokenizer", root / "metrics/tokenizer.json")
    for t in TASKS:
        tokenize_task(params, t, root / "data/raw", root / "models/tokenizer", root / "data/tokens", root / "metrics/tokens")
    for run in params.train.runs:
        train(params, run, root / "data/tokens", root / "models/tokenizer", root / "models/runs" / run, progress=False)
    for run in params.train.runs:
        evaluate_run(params, run, root / "models/runs" / run / "model", root / "data/tokens", root / "data/raw",
                     root / "eval", root / "metrics", progress=False)
    evaluate_combined(params, root / "eval", root / "metrics", root / "plots")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--keep", help="work in this directory instead of a temporary one")
    args = ap.parse_args(argv)
    try:
        raw, name = resolve_params(args.params, args.profile, [])
        with tempfile.TemporaryDirectory(prefix="mvot-bench-") as tmp:
            base = Path(args.keep or tmp)
            t_direct = direct(raw, base / "direct")
            t0 = time.perf_counter()
            pipeline_flow(args.params, args.profile, None, str(base / "orchestrated"), True, False)
            t_flow = time.perf_counter() - t0
    except MvotError as exc:
        print(f"flows.bench: error: {exc}", file=sys.stderr)
        return 1
    over = t_flow - t_direct
    print(f"\nprofile {name}: direct library calls {t_direct:.1f} s; dvc repro + Prefect + MLflow + promotion "
          f"{t_flow:.1f} s; overhead {over:.1f} s = {100 * over / t_direct:.1f}% of the direct time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
