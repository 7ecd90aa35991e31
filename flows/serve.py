"""Scheduled runs: the nightly pipeline (with promotion) and the weekly ablation sweep.

    prefect server start --host 127.0.0.1 --port 4200          # terminal 1 (see README, "Servers")
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve                                      # terminal 2: registers both, runs them on schedule
    python -m flows.serve --register-only                      # only register (e.g. from CI)

`serve` keeps this process polling the server and runs each scheduled flow run in a
subprocess, in this checkout. For work pools and workers instead, `prefect deploy --all`
reads the same two deployments from prefect.yaml.
"""

from __future__ import annotations

import argparse
import os
import sys

import httpx

from flows.pipeline import pipeline_flow
from flows.sweep import sweep_flow

NIGHTLY_CRON = "0 2 * * *"  # every day at 02:00
WEEKLY_CRON = "0 3 * * 6"  # Saturdays at 03:00


def deployments(nightly_cron: str = NIGHTLY_CRON, weekly_cron: str = WEEKLY_CRON, timezone: str = "UTC") -> list:
    """The runner deployments `serve` registers (also what the tests register)."""
    from prefect.schedules import Cron

    return [
        pipeline_flow.to_deployment(
            name="nightly", schedules=[Cron(nightly_cron, timezone=timezone)], tags=["mvot", "pipeline"],
            parameters={"params_path": "params.yaml", "promote": True},
            description="dvc repro of the default profile, leaderboard, registry promotion"),
        sweep_flow.to_deployment(
            name="weekly", schedules=[Cron(weekly_cron, timezone=timezone)], tags=["mvot", "sweep"],
            parameters={"params_path": "params.yaml"},
            description="the ablation grid of params.yaml `sweep`, trials in parallel"),
    ]


def register(deps: list) -> dict[str, str]:
    """Register the deployments (:func:`deployments`) with the server at PREFECT_API_URL; {name: deployment id}."""
    return {d.name: str(d.apply()) for d in deps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    ap.add_argument("--nightly-cron", default=NIGHTLY_CRON)
    ap.add_argument("--weekly-cron", default=WEEKLY_CRON)
    ap.add_argument("--register-only", action="store_true", help="register the deployments and exit")
    args = ap.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        print("flows.serve: error: schedules need a Prefect server; start `prefect server start --host 127.0.0.1` "
              "and set PREFECT_API_URL=http://127.0.0.1:4200/api", file=sys.stderr)
        return 1
    try:
        deps = deployments(args.nightly_cron, args.weekly_cron)  # checks both cron strings before anything is registered
    except ValueError as exc:
        print(f"flows.serve: error: {exc}; a cron string has five fields, e.g. --nightly-cron '0 2 * * *'", file=sys.stderr)
        return 1
    url = os.environ["PREFECT_API_URL"].rstrip("/")
    try:  # one look before anything is registered or served
        httpx.get(f"{url}/health", timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        print(f"flows.serve: error: the Prefect server at {url} did not answer ({exc}); "
              "start it with `prefect server start --host 127.0.0.1` or fix PREFECT_API_URL", file=sys.stderr)
        return 1
    if args.register_only:
        for name, dep_id in register(deps).items():
            print(f"registered deployment {name}: {dep_id}")
        return 0
    from prefect import serve

    serve(*deps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
