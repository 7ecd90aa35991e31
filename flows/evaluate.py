"""Prefect flow `evaluate`: score trained runs on the test splits, then combine two of them.

    python -m flows.evaluate [--run NAME ...] [--params params.yaml] [--no-track]
    python -m flows.evaluate --combine

The DVC stage `evaluate` calls it once per run, the stage `combine` once with --combine.
Each run's figures, predictions and true-vs-drawn strips are logged into the MLflow run
that trained the model (found through models/runs/<run>/tracking.json), so one run in
the MLflow UI holds a model's training curves and its test scores.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.train import select_runs
from mvot.config import load_params
from mvot.errors import MvotError
from mvot.evaluate import evaluate_combined
from mvot.runs import evaluate_tracked, tracking_info
from mvot.tracking import NullTracker, check_reachable, default_uri, start_run

TABLE_KEYS = ("accuracy", "unparsed", "v_acc", "v_red", "v_steps", "v_ratio", "decode_seconds")


@task(name="evaluate-run", task_run_name="evaluate-{run}")
def evaluate_one(params_path: str, run: str, runs: str, tokens: str, raw: str, out: str, metrics: str, track: bool) -> dict:
    params = load_params(params_path)
    run_id = tracking_info(Path(runs) / run).get("run_id")
    with start_run("train", run, run_id=run_id) if track else nullcontext(NullTracker()) as tracker:
        return evaluate_tracked(params, run, runs, tokens, raw, out, metrics, tracker, progress=False)


@task(name="combine")
def combine_runs(params_path: str, out: str, metrics: str, plots: str, track: bool) -> dict:
    params = load_params(params_path)
    results = evaluate_combined(params, out, metrics, plots)
    a, b = params.evaluate.combine
    with start_run("evaluate", f"combined-{a}-{b}") if track else nullcontext(NullTracker()) as tracker:
        tracker.set_tags({"runs": f"{a},{b}"})
        tracker.log_metrics({f"test/{t}/{k}": float(v) for t, r in results.items()
                             for k in ("upper_bound", "combined", "agreement", "accuracy_a", "accuracy_b")
                             if isinstance(v := r.get(k), (int, float))})
        for t, r in results.items():
            tracker.log_dict(r, f"combined/{t}.json")
        if Path(plots).is_dir():
            tracker.log_artifacts(plots, "plots")
    return results


def _table(results: dict[str, dict]) -> list[dict]:
    return [{"run": run, "task": t} | {k: m.get(k) for k in TABLE_KEYS}
            for run, by_task in results.items() for t, m in by_task.items()]


@flow(name="evaluate")
def evaluate_flow(
    params_path: str = "params.yaml",
    runs: list[str] | None = None,
    runs_root: str = "models/runs",
    tokens: str = "data/tokens",
    raw: str = "data/raw",
    out: str = "eval",
    metrics: str = "metrics",
    track: bool = True,
) -> dict[str, dict]:
    names = select_runs(params_path, runs, track)
    results = {run: evaluate_one(params_path, run, runs_root, tokens, raw, out, metrics, track) for run in names}
    create_table_artifact(key="evaluate-runs", table=_table(results), description="Test-split scores of the evaluated runs")
    return results


@flow(name="combine")
def combine_flow(params_path: str = "params.yaml", out: str = "eval", metrics: str = "metrics", plots: str = "plots",
                 track: bool = True) -> dict:
    load_params(params_path)
    if track:
        check_reachable(default_uri())
    results = combine_runs(params_path, out, metrics, plots, track)
    lines = ["| task | runs | upper bound | combined | agreement |", "|---|---|---|---|---|"]
    lines += [f"| {t} | {' + '.join(r['runs'])} | {r['upper_bound']} | {r['combined']} | {r['agreement']} |" for t, r in results.items()]
    create_markdown_artifact(key="combined-predictor", markdown="\n".join(lines), description="Upper bound and combined predictor")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--run", action="append", help="run(s) of train.runs (default: all)")
    ap.add_argument("--combine", action="store_true", help="the upper bound and combined predictor of evaluate.combine")
    ap.add_argument("--no-track", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.combine:
            for t, r in combine_flow(args.params, track=not args.no_track).items():
                print(f"{t:12s} upper bound {r['upper_bound']}%  combined {r['combined']}%  agreement {r['agreement']}%")
        else:
            for run, by_task in evaluate_flow(args.params, args.run, track=not args.no_track).items():
                for t, m in by_task.items():
                    print(f"{run:12s} {t:12s} accuracy {m['accuracy']}%  V-Acc {m.get('v_acc', '-')}  V-Red {m.get('v_red', '-')}")
    except MvotError as exc:
        print(f"flows.evaluate: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
