"""Prefect flow `pipeline`: the whole job, end to end, then registry promotion.

    python -m flows.pipeline                     # default profile, in this repository
    python -m flows.pipeline --profile smoke     # profiles/smoke.yaml, in work/smoke/
    python -m flows.pipeline --set train.steps=400 --no-promote
    python -m flows.pipeline --profile multitask --print-params > mt.yaml   # the merged params; nothing runs

DVC owns the data and artifact caching: the flow runs `dvc repro` (data, tokenizers,
training of every run, evaluation, combination; each stage skipped when its inputs did
not change), reads the metrics DVC declared, registers the candidate model and moves the
`challenger`/`champion` aliases (mvot/promote.py). Nothing is cached in Prefect.

A profile (`profiles/<name>.yaml`, or any YAML path) overrides params.yaml section by
section; it runs in its own workspace (`work/<name>/`: a copy of the code and dvc.yaml
with the merged params, its own DVC cache, MLflow store and registry unless
MLFLOW_TRACKING_URI points at a server), so the repository's params and results stay as
they are. Running the same profile again reuses that workspace, so unchanged stages are
skipped.

Retries are on the I/O steps only (preparing the workspace, reading the metrics): a
failed training or evaluation is a result to look at, not a flake to repeat.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from mvot.config import TASKS, merge_overrides, parse_params
from mvot.errors import MvotError
from mvot.promote import promote_run
from mvot.tracking import MlflowRegistry, check_reachable, default_uri

ROOT = Path(__file__).resolve().parents[1]
# absolute: stages and trials run from other directories, where a Python found through a
# relative PATH entry (PATH=.venv/bin:...) would not be found
PYTHON = Path(sys.executable).absolute()
WORKSPACE_FILES = ("mvot", "flows", "dvc.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore")
BOARD_KEYS = ("accuracy", "unparsed", "v_acc", "v_red", "v_steps", "v_ratio")


class PipelineError(MvotError, RuntimeError):
    """A pipeline step failed; the message names the step and how to see more."""


def _profile_overrides(profile: str, _chain: tuple[Path, ...] = ()) -> tuple[str, dict]:
    """A profile's name and its overrides. ``extends: <profile>`` (a name in the same folder,
    else in ``profiles/``; or a path relative to the profile) takes another profile's
    overrides first and merges this one's over them, so two profiles share a recipe
    without repeating it."""
    path = Path(profile)
    if not path.suffix:  # a name: the extending profile's folder first, then profiles/
        candidates = [f / f"{profile}.yaml" for f in ([_chain[-1].parent] if _chain else []) + [ROOT / "profiles"]]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    elif _chain and not path.is_absolute():
        path = _chain[-1].parent / path
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml")))
        where = f" (named by extends: in {_chain[-1]})" if _chain else ""
        raise PipelineError(f"profile {profile!r} not found{where} (looked for {path}); profiles: {known}")
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, resolved))
        raise PipelineError(f"{path}: extends: makes a cycle ({cycle}); remove one of the extends: lines")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: a profile is a mapping of params sections (train:, sweep:, ...), "
                            f"not a {type(data).__name__}")
    base = data.pop("extends", None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise PipelineError(f"{path}: extends: {base!r}: expected one profile name, e.g. extends: multitask")
        _, base_data = _profile_overrides(base, (*_chain, resolved))
        data = merge_overrides(base_data, data)
    return path.stem, data


def _set_overrides(items: list[str]) -> dict:
    """``["train.steps=400", "train.tasks=[maze]"]`` -> nested overrides (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PipelineError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.steps=400")
        *parents, leaf = key.split(".")
        if not all(key.split(".")):
            raise PipelineError(f"--set {item!r}: {key!r} has an empty part; keys are dotted names, e.g. train.steps")
        node = out
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise PipelineError(f"--set {item!r}: an earlier --set gave {'.'.join(parents[:i + 1])} a value, "
                                    "so it has no keys to set; set the section's keys one by one")
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise PipelineError(f"--set {item!r}: the value is not valid YAML ({' '.join(str(exc).split())}); "
                                "quote lists and mappings whole, e.g. --set \"sweep.grid.seed=[0,1]\"") from None
    return out


def resolve_params(params_path: str, profile: str | None, sets: list[str]) -> tuple[dict, str | None]:
    """The merged, validated raw params and the profile name (None: the default profile)."""
    try:
        raw = yaml.safe_load(Path(params_path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PipelineError(f"{params_path}: cannot read the params file ({exc})") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{params_path}: a params file is a mapping of sections (data:, train:, ...), not "
                            f"{'an empty file' if raw is None else 'a ' + type(raw).__name__}; "
                            "give the params file of the repository (params.yaml) or a copy of it")
    name = None
    if profile:
        name, overrides = _profile_overrides(profile)
        raw = merge_overrides(raw, overrides)
    raw = merge_overrides(raw, _set_overrides(sets))
    parse_params(raw, f"{params_path}" + (f" + profile {name}" if name else "") + (" + --set" if sets else ""))
    return raw, name


@task(name="prepare-workspace", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def prepare_workspace(raw: dict, workdir: str) -> str:
    """A DVC workspace with this repository's code and the merged params (created once,
    refreshed after), so a profile runs without touching the repository's params.yaml."""
    d = Path(workdir).resolve()
    fresh = not (d / ".dvc").is_dir()
    d.mkdir(parents=True, exist_ok=True)
    for name in WORKSPACE_FILES:
        src, dst = ROOT / name, d / name
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    tmp = d / "params.yaml.tmp"
    tmp.write_text(yaml.safe_dump(raw, sort_keys=False))
    tmp.replace(d / "params.yaml")
    if fresh and shutil.which("git"):  # git lets `dvc exp` and `dvc metrics diff` work there too
        git = ["git", "-c", "user.email=mvot@localhost", "-c", "user.name=mvot"]
        for cmd in (["git", "init", "-q"], [*git, "add", "-A"], [*git, "commit", "-qm", "mvot workspace"]):
            subprocess.run(cmd, cwd=d, check=True, capture_output=True)
    return str(d)


def _env(root: Path) -> dict:
    bin_dir = str(PYTHON.parent)
    env = os.environ | {"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    if root != ROOT:  # the workspace's copy of the code is the one its stages run
        env["PYTHONPATH"] = f"{root}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(root)
    return env


@task(name="dvc-repro", cache_policy=NO_CACHE)
def dvc_repro(root: str, targets: list[str] | None = None, force: bool = False) -> str:
    """``dvc repro`` in ``root``, its output streamed through; a failure raises with its tail."""
    dvc = shutil.which("dvc", path=str(PYTHON.parent)) or shutil.which("dvc")
    if not dvc:
        raise PipelineError("dvc not found; install the project first (`make setup`)")
    cmd = [dvc, "repro", *(["--force"] if force else []), *(targets or [])]
    tail: collections.deque[str] = collections.deque(maxlen=40)
    with subprocess.Popen(cmd, cwd=root, env=_env(Path(root)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            tail.append(line)
    if proc.returncode != 0:
        raise PipelineError(f"`dvc repro` failed in {root} (exit {proc.returncode}); its last lines:\n" + "".join(tail))
    return "".join(tail)


@task(name="read-metrics", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def leaderboard(root: str, raw: dict) -> tuple[list[dict], list[dict]]:
    """Per (task, run) test scores, and per task the upper bound and combined predictor, from
    the metrics files the DVC stages `evaluate` and `combine` declared."""
    rows, combined = [], []
    for t in TASKS:
        for run in raw["train"]["runs"]:
            p = Path(root) / "metrics" / t / f"{run}.json"
            if not p.is_file():
                continue
            m = json.loads(p.read_text())
            if m.get("evaluated") is False:
                continue
            rows.append({"task": t, "run": run, "n": m.get("n")} | {k: m.get(k) for k in BOARD_KEYS})
        p = Path(root) / "metrics" / t / "combined.json"
        if p.is_file() and (c := json.loads(p.read_text())).get("upper_bound") is not None:
            combined.append({"task": t, "runs": " + ".join(c["runs"]), "upper_bound": c["upper_bound"],
                             "combined": c["combined"], "agreement": c["agreement"]})
    return rows, combined


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))


def markdown_table(rows: list[dict], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


@task(name="promote", cache_policy=NO_CACHE)
def promote_candidate(root: str, raw: dict) -> dict:
    params = parse_params(raw)
    registry = MlflowRegistry(params.promote.model_name, default_uri(root))
    return promote_run(params, None, Path(root) / "models" / "runs", registry).summary()


@flow(name="pipeline")
def pipeline_flow(params_path: str = "params.yaml", profile: str | None = None, sets: list[str] | None = None,
                  workdir: str | None = None, promote: bool = True, force: bool = False) -> dict:
    raw, name = resolve_params(params_path, profile, sets or [])  # bad params stop here, before any work
    if name or sets:
        root = prepare_workspace(raw, workdir or str(ROOT / "work" / (name or "custom")))
    else:
        root = str(Path(params_path).resolve().parent)
    check_reachable(default_uri(root))  # an unreachable tracking server fails before training starts
    dvc_repro(root, force=force)
    rows, combined = leaderboard(root, raw)
    promotion = promote_candidate(root, raw) if promote else None
    create_table_artifact(key="leaderboard", table=rows or [{"note": "no evaluated runs"}],
                          description="Test-split scores per task and run")
    md = [f"# mvot pipeline ({name or 'default'} profile)", "", f"Workspace: `{root}`", "", "## Test scores", "",
          markdown_table(rows, ["task", "run", "n", *BOARD_KEYS])]
    if combined:
        md += ["", "## Upper bound and combined predictor", "",
               markdown_table(combined, ["task", "runs", "upper_bound", "combined", "agreement"])]
    if promotion:
        md += ["", "## Promotion", "", f"version {promotion['version']}: "
               f"{'champion' if promotion['promoted'] else 'challenger only'}; champion now "
               f"{promotion['champion_after']}", "", *[f"- {r}" for r in promotion["reasons"]]]
    create_markdown_artifact(key="pipeline-summary", markdown="\n".join(md), description="Pipeline results")
    return {"root": root, "profile": name or "default", "leaderboard": rows, "combined": combined, "promotion": promotion}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", help="profiles/<name>.yaml or a YAML path: overrides run in their own workspace")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override one params value (repeatable); runs in a workspace like a profile")
    ap.add_argument("--workdir", help="workspace of a profile (default: work/<profile>)")
    ap.add_argument("--no-promote", action="store_true")
    ap.add_argument("--force", action="store_true", help="rerun every stage (dvc repro --force)")
    ap.add_argument("--print-params", action="store_true",
                    help="print the merged, validated params (YAML) and exit; nothing runs (e.g. for `mvot --params`)")
    args = ap.parse_args(argv)
    try:  # the cheap checks before Prefect starts; the flow repeats them (deployments call it directly)
        raw, _ = resolve_params(args.params, args.profile, args.sets)
        if args.print_params:
            sys.stdout.write(yaml.safe_dump(raw, sort_keys=False))
            return 0
        check_reachable(default_uri(str(Path(args.params).resolve().parent)))
        r = pipeline_flow(args.params, args.profile, args.sets, args.workdir, not args.no_promote, args.force)
    except MvotError as exc:
        print(f"flows.pipeline: error: {exc}", file=sys.stderr)
        return 1
    print()
    print(markdown_table(r["leaderboard"], ["task", "run", "n", *BOARD_KEYS]))
    if r["combined"]:
        print()
        print(markdown_table(r["combined"], ["task", "runs", "upper_bound", "combined", "agreement"]))
    if p := r["promotion"]:
        print(f"\nregistry: version {p['version']} -> {'champion' if p['promoted'] else 'challenger only'} "
              f"(champion now {p['champion_after']}): {'; '.join(p['reasons'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
