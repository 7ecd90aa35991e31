"""Prefect flow `train`: train the runs of params.yaml (all, or those named), one task each.

    python -m flows.train [--run NAME ...] [--params params.yaml]

The DVC stage `train` calls it once per run; a deployment can call it for all runs.
Runs go one after another: each one already uses every core (or its GPU).

A run cut off (Ctrl-C, a killed job, a machine whose disk survives) continues from its
last checkpoint when the flow (or `dvc repro`) runs again, in the same MLflow run, as long
as nothing it depends on changed (the checkpoint's fingerprint: params, token arrays,
tokenizer, backbone, training code); otherwise it starts afresh and says what changed.
Checkpoints live in `models/checkpoints/<run>/`, outside the DVC output, and go once the
run's model is saved. `--no-resume` starts afresh regardless.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from mvot.checkpoint import remove
from mvot.config import load_params
from mvot.errors import MvotError
from mvot.runs import resume_plan, train_run
from mvot.tracking import NullTracker, check_reachable, default_uri, start_run

CHECKPOINTS = "models/checkpoints"


@task(name="train-run", task_run_name="train-{run}")
def train_one(params_path: str, run: str, tokens: str, tokenizer: str, out: str, track: bool,
              checkpoints: str = CHECKPOINTS, resume: bool = True) -> dict:
    """Train one run, continuing it from ``checkpoints/<run>`` when that checkpoint is of the
    same training (and ``resume``)."""
    params = load_params(params_path)
    ckpt = Path(checkpoints) / run
    state, fingerprint, why = resume_plan(params, run, tokens, tokenizer, ckpt)
    if state is not None and not resume:
        state, why = None, "--no-resume"
    if state is not None:
        print(f"train {run}: resuming from step {state['step']} of {params.train.steps} ({ckpt})", file=sys.stderr)
    elif ckpt.exists():  # left as it is (the first new checkpoint replaces it), unless it would match
        print(f"train {run}: not resuming ({why}); starting afresh", file=sys.stderr)
        if not resume:
            remove(ckpt)
    run_id = (state or {}).get("mlflow_run_id") if track else None
    with start_run("train", run, run_id=run_id) if track else nullcontext(NullTracker()) as tracker:
        summary = train_run(params, run, tokens, tokenizer, out, tracker, progress=False, resume=state is not None,
                            checkpoint_dir=ckpt, keep_checkpoint=False, fingerprint=fingerprint)
        return summary | {"mlflow_run_id": tracker.run_id}


class UnknownRunError(MvotError, ValueError):
    """A run name that params.yaml `train.runs` does not have."""


def select_runs(params_path: str, runs: list[str] | None, track: bool) -> list[str]:
    """The runs a flow works on (default: all of train.runs), checked before any work: bad params, an
    unknown run name or an unreachable tracking server stop the flow here."""
    params = load_params(params_path)
    names = runs or list(params.train.runs)
    unknown = [r for r in names if r not in params.train.runs]
    if unknown:
        raise UnknownRunError(f"unknown run {unknown[0]!r}; params.yaml train.runs has: {', '.join(params.train.runs)}")
    if track:
        check_reachable(default_uri())
    return names


@flow(name="train")
def train_flow(
    params_path: str = "params.yaml",
    runs: list[str] | None = None,
    tokens: str = "data/tokens",
    tokenizer: str = "models/tokenizer",
    out: str = "models/runs",
    track: bool = True,
    checkpoints: str = CHECKPOINTS,
    resume: bool = True,
) -> dict[str, dict]:
    names = select_runs(params_path, runs, track)
    results = {run: train_one(params_path, run, tokens, tokenizer, out, track, checkpoints, resume) for run in names}
    create_table_artifact(
        key="train-runs",
        table=[{"run": r, **{k: v for k, v in s.items() if k in ("parameters", "step", "resumed_from_step", "seconds", "tokens",
                                                                   "padding_share")}}
               for r, s in results.items()],
        description="Runs trained by this flow",
    )
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.train", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--run", action="append", help="run(s) of train.runs (default: all)")
    ap.add_argument("--no-track", action="store_true")
    ap.add_argument("--no-resume", action="store_true", help=f"start afresh even where {CHECKPOINTS}/<run> could be continued")
    args = ap.parse_args(argv)
    try:
        train_flow(args.params, args.run, track=not args.no_track, resume=not args.no_resume)
    except MvotError as exc:
        print(f"flows.train: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
