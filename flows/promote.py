"""Prefect flow `promote`: register an evaluated model and move the registry's aliases.

    python -m flows.promote [--run NAME] [--params params.yaml]

The rule lives in mvot/promote.py: every evaluated model becomes `challenger`; it becomes
`champion` only when it beats the champion's mean test accuracy on the same test data
(DVC hash) with no V-metric regressing beyond `promote.v_margin`. The decision and its
reasons are tags on the model version and a markdown artifact here. Not retried: a
registration is not idempotent, and the alias moves roll back on their own.
"""

from __future__ import annotations

import argparse
import sys

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from mvot.config import load_params
from mvot.errors import MvotError
from mvot.promote import promote_run


@task(name="promote-run", task_run_name="promote-{run}")
def promote_one(params_path: str, run: str | None, runs_root: str) -> dict:
    params = load_params(params_path)
    return promote_run(params, run, runs_root).summary()


@flow(name="promote")
def promote_flow(params_path: str = "params.yaml", run: str | None = None, runs_root: str = "models/runs") -> dict:
    params = load_params(params_path)
    summary = promote_one(params_path, run, runs_root)
    name = params.promote.model_name
    verdict = ("not registered" if summary["version"] is None else
               f"version {summary['version']} -> {'champion' if summary['promoted'] else 'challenger only'}")
    md = [f"## Promotion of `{run or params.promote.run}` to `{name}`", "", f"**{verdict}** "
          f"(champion before: {summary['champion_before'] or 'none'}, after: {summary['champion_after'] or 'none'})", ""]
    md += [f"- {r}" for r in summary["reasons"]]
    create_markdown_artifact(key="promotion", markdown="\n".join(md), description="Registry promotion decision")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.promote", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--run", help="run of train.runs (default: promote.run)")
    ap.add_argument("--runs", default="models/runs")
    args = ap.parse_args(argv)
    try:
        s = promote_flow(args.params, args.run, args.runs)
    except MvotError as exc:
        print(f"flows.promote: error: {exc}", file=sys.stderr)
        return 1
    print(f"promoted={s['promoted']} version={s['version']} champion={s['champion_after']}: {'; '.join(s['reasons'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
