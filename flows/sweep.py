"""Prefect flow `sweep`: the ablation grid of params.yaml `sweep`, trials in parallel.

    python -m flows.sweep                                   # thread pool, sweep.max_workers at once
    python -m flows.sweep --set sweep.grid.seed=[0,1,2] --set sweep.train_steps=300
    python -m flows.sweep --dask                            # a local Dask cluster (prefect-dask)
    python -m flows.sweep --dask tcp://scheduler:8786       # an existing Dask cluster

Each trial (variant x L_D weight/distance/reduction x tokens per image x seed) trains one
model and scores it on the test splits, in its own process (`mvot train`, `mvot evaluate`)
so that trials are deterministic and isolated whatever runs beside them; Prefect's task
runner decides how many run at once and where. Inputs come from the DVC pipeline
(data/raw, data/tokens, models/tokenizer: run `dvc repro tokenize` first); a tokens-per-
image value other than `tokenizer.patch_px` gets its own tokenizer and token arrays under
sweeps/<name>/patch<px>/, made once per sweep.

MLflow: one parent run (experiment `sweep`, named after the sweep) with a child run per
trial (the parent's id is passed to each trial's process); the parent holds the
comparison table (mean and spread over seeds) and plots, also published as Prefect
artifacts. Outputs: sweeps/<name>/trials/<trial>/ and sweeps/<name>/summary/. A trial that
finished before with identical params (its row.json) is reused, not rerun, so widening a
sweep (say from one seed to three) runs only the new trials. Running the sweep again
continues its parent run (sweeps/<name>/tracking.json), so every trial of a sweep sits
under one parent however many processes it took: child runs a stopped process left
RUNNING are marked KILLED, and a trial cut off mid-training continues its own child run
from its checkpoint. One process at a time per sweep directory (sweeps/<name>/.lock): a
second stops at once. Delete sweeps/<name>/ to start over.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import yaml
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.pipeline import PYTHON, ROOT, PipelineError, markdown_table, resolve_params
from mvot.checkpoint import (
    CKPT,
    recover,
    remove,
)
from mvot.config import TASKS, parse_params
from mvot.data import write_atomically
from mvot.errors import MvotError
from mvot.sweep import (
    CONFIG_KEYS,
    GRID_KEYS,
    SCORES,
    aggregate,
    combine_trials,
    trial_key,
    trial_raw,
    trials,
    write_summary,
)
from mvot.tracking import (
    NullTracker,
    check_reachable,
    close_unfinished_children,
    default_uri,
    start_run,
)

# the columns of the summary's markdown tables (Prefect artifact and the command's output)
TABLE_COLS = [*CONFIG_KEYS, "task", "seeds", "accuracy", "accuracy_sd", "v_acc", "v_acc_sd", "v_red", "v_red_sd", "train_seconds"]
COMBINED_COLS = [*CONFIG_KEYS, "task", "seeds", "upper_bound", "upper_bound_sd", "combined", "combined_sd"]


def _mvot(args: list[str], cwd: Path, log: Path, env_extra: dict | None = None) -> str:
    """One ``mvot`` command in its own process; returns its stdout. Its stderr (progress bars,
    warnings) goes to ``log`` as it runs, so a running trial's ``log.txt`` shows how far it is
    (progress bars write a line every 30 s when not on a terminal). A failure raises with the
    command's stderr tail."""
    env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true", **(env_extra or {})}
    with log.open("a") as fh:
        fh.write(f"$ mvot {' '.join(args)}\n")
        fh.flush()
        start = fh.tell()
        res = subprocess.run([str(PYTHON), "-m", "mvot.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                             stderr=fh, text=True)
        fh.write(f"{res.stdout}\n")
    if res.returncode != 0:
        with log.open("rb") as fh:
            fh.seek(start)
            err = fh.read().decode(errors="replace")
        raise PipelineError(f"`mvot {args[2] if len(args) > 2 else args}` failed (exit {res.returncode}); "
                            f"see {log}:\n{err[-2000:]}")
    return res.stdout


def tokens_tag(raw: dict, patch_px: int, root: str) -> str | None:
    """Where a trial's token arrays come from: None for the pipeline's (``tokenizer.patch_px``
    and the ``tokenize`` section of the repository's params.yaml), else the name of a
    directory of the sweep's own, ``patch<px>`` plus a hash of a changed ``tokenize`` section."""
    import hashlib

    try:
        pipeline = parse_params(yaml.safe_load((Path(root) / "params.yaml").read_text()) or {}, "params.yaml")
        same_text = pipeline.tokenize == parse_params(raw, "sweep params").tokenize
    except (OSError, yaml.YAMLError, MvotError):
        same_text = True  # no readable pipeline params: compare patch sizes only
    if same_text:
        return None if patch_px == raw["tokenizer"]["patch_px"] else f"patch{patch_px}"
    digest = hashlib.sha1(json.dumps(raw["tokenize"], sort_keys=True).encode()).hexdigest()[:8]
    return f"patch{patch_px}-tok{digest}"


@task(name="sweep-tokens", task_run_name="tokens-patch{patch_px}", cache_policy=NO_CACHE)
def prepare_tokens(raw: dict, patch_px: int, root: str, sweep_dir: str, track: bool) -> tuple[str, str]:
    """Token arrays and tokenizer for ``patch_px``: the pipeline's when it is the default and
    the ``tokenize`` section is the pipeline's; else made once under the sweep directory (a
    tokenizer of its own for another patch size; the pipeline's tokenizer and new token
    arrays for other ``tokenize`` settings, e.g. index hints)."""
    r = Path(root)
    pipeline_tokenizer = patch_px == raw["tokenizer"]["patch_px"]
    if pipeline_tokenizer and not ((r / "data" / "tokens").is_dir() and (r / "models" / "tokenizer").is_dir()):
        raise PipelineError("data/tokens or models/tokenizer missing: run `dvc repro tokenize` first")
    tag = tokens_tag(raw, patch_px, root)
    if tag is None:
        return str(r / "data" / "tokens"), str(r / "models" / "tokenizer")
    d = Path(sweep_dir) / tag
    tokens = d / "tokens"
    tokenizer = r / "models" / "tokenizer" if pipeline_tokenizer else d / "tokenizer"
    if (tokens / "done").is_file():
        return str(tokens), str(tokenizer)
    d.mkdir(parents=True, exist_ok=True)
    pr = yaml.safe_load(yaml.safe_dump(raw))
    pr["tokenizer"]["patch_px"] = patch_px
    parse_params(pr, f"sweep tokenizer patch_px={patch_px}")
    (d / "params.yaml").write_text(yaml.safe_dump(pr, sort_keys=False))
    common = ["--params", str(d / "params.yaml")]
    if not pipeline_tokenizer:
        _mvot([*common, "train-tokenizer", "--raw", str(r / "data/raw"), "--out", str(tokenizer), "--metrics",
               str(d / "tokenizer.json"), *([] if track else ["--no-track"])], r, d / "log.txt")
    _mvot([*common, "tokenize", "--raw", str(r / "data/raw"), "--tokenizer", str(tokenizer), "--out", str(tokens),
           "--stats-dir", str(d / "stats")], r, d / "log.txt")
    (tokens / "done").write_text("ok\n")
    return str(tokens), str(tokenizer)


def _same_trial(path: Path, trial: dict, ignore: tuple[str, ...] = ("sweep",)) -> bool:
    """Whether the params a trial ran with (``path``) equal ``trial``'s as validated
    configs (defaults filled in, so a key added later with its default changes nothing),
    the ``ignore`` sections aside (by default the sweep's: the grid around a trial may grow
    without changing the trial; with ``evaluate`` too: the same trained model)."""
    try:
        before = yaml.safe_load(path.read_text())
        a, b = parse_params(before, str(path)).model_dump(), parse_params(trial, "trial").model_dump()
    except (OSError, yaml.YAMLError, MvotError, ValueError, TypeError):
        return False
    return {**a, **dict.fromkeys(ignore)} == {**b, **dict.fromkeys(ignore)}


def _finished(d: Path, raw: dict, t: dict) -> bool:
    """Whether trial directory ``d`` holds a finished trial ``t`` of the sweep params ``raw``
    with the same params (reused as is)."""
    try:
        return (d / "row.json").is_file() and _same_trial(d / "params.yaml", trial_raw(raw, t))
    except (MvotError, ValueError):  # invalid trial params: run_trial records the failure
        return False


def _task_scores(metrics_dir: Path) -> dict[str, dict]:
    """A trial's scores per evaluated task, from its ``metrics/<task>/trial.json``."""
    out = {}
    for task_name in TASKS:
        p = metrics_dir / task_name / "trial.json"
        if p.is_file() and (m := json.loads(p.read_text())).get("evaluated") is not False:
            out[task_name] = {k: m.get(k) for k in SCORES} | {"accuracy_by_size": m.get("accuracy_by_size")}
    return out


PARENT_FILE = "tracking.json"  # sweeps/<name>/tracking.json: the sweep's MLflow parent run, continued by a rerun


def _earlier_parent(sweep_dir: Path, uri: str) -> str | None:
    """The MLflow parent run an earlier process of this sweep started in the store at ``uri``
    (``None`` when there is none, it was another store's, or its record is unreadable; a run no
    longer in the store is replaced by ``start_run``)."""
    try:
        record = json.loads((sweep_dir / PARENT_FILE).read_text())
        run_id = record.get("parent_run_id") if record.get("tracking_uri") == uri else None
    except (OSError, ValueError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) and run_id else None


@contextmanager
def _one_process(sweep_dir: Path, name: str):
    """Held while a sweep runs: a second process on the same sweep directory (a scheduled run
    overlapping a long one) stops at once instead of training the same trials beside it."""
    import fcntl

    sweep_dir.mkdir(parents=True, exist_ok=True)
    with (sweep_dir / ".lock").open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise PipelineError(f"sweep {name}: another process is running it ({fh.read().strip() or 'pid unknown'}); "
                                f"wait for it to end, or stop it, then run the sweep again") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {platform.node()}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()


@task(name="sweep-trial", task_run_name="trial-{key}", cache_policy=NO_CACHE)
def run_trial(key: str, t: dict, raw: dict, tokens: str, tokenizer: str, root: str, sweep_dir: str,
              parent_run_id: str | None, tracking_uri: str | None, concurrent: int = 1) -> dict:
    """Train and score one trial in its own processes; a failure is recorded, not raised,
    so that one bad trial does not lose the others. A trial that finished before with the
    same params is reused; with only the ``evaluate`` section changed (e.g. scoring on the
    whole test split), its trained model is scored again; one cut off mid-training (no
    ``row.json``, a checkpoint) resumes from its checkpoint, exactly (``mvot train --resume``). The ``concurrent`` trials on a machine
    share its cores (torch threads = cores // concurrent, unless OMP_NUM_THREADS is set):
    oversubscribed, two 2-thread trials on 2 cores ran at half the total speed of one."""
    d = Path(sweep_dir) / "trials" / key
    d.mkdir(parents=True, exist_ok=True)
    row = {k: t[k] for k in GRID_KEYS} | {"trial": key, "status": "failed", "tasks": {}}
    done = d / "row.json"
    try:
        trial = trial_raw(raw, t)
        if _finished(d, raw, t):
            before = json.loads(done.read_text())  # finished before with the same params
            if any("accuracy_by_size" not in m for m in before.get("tasks", {}).values()):
                before["tasks"] = _task_scores(d / "metrics") or before["tasks"]  # a row from before by-size scores
            return before | {"reused": True}
        same_training = _same_trial(d / "params.yaml", trial, ("sweep", "evaluate"))
        rescore = same_training and done.is_file() and (d / "runs" / "trial" / "model").is_dir()
        before = json.loads(done.read_text()) if rescore else {}
        # a trial cut off mid-training (its machine stopped) with the same params goes on from its last checkpoint
        ckpt = d / "runs" / "trial" / CKPT
        recover(ckpt)
        resume = same_training and not rescore and ckpt.exists()
        if resume:  # only from a whole checkpoint of this training (one without a fingerprint, from before there were, as it is)
            from mvot.runs import resume_plan  # here: the flow's own process does not load torch

            state, _, why = resume_plan(parse_params(trial, "trial"), "trial", tokens, tokenizer, ckpt, legacy=True)
            if state is None:
                with (d / "log.txt").open("a") as fh:
                    fh.write(f"not resuming ({why}); starting afresh\n")
                resume = False
        if not resume and not rescore:  # a new training: no checkpoint of another one may be taken up later
            remove(ckpt)
        # a rescore keeps the finished trial's files until it succeeds; a new trial starts clean
        params_file = d / ("params.rescore.yaml" if rescore else "params.yaml")
        if not rescore:
            done.unlink(missing_ok=True)
        params_file.write_text(yaml.safe_dump(trial, sort_keys=False))
        common = ["--params", str(params_file)]
        env = {"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {}
        if "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, concurrent)))
        track = (["--experiment", "sweep", "--run-name", key, "--parent-run-id", parent_run_id]
                 if parent_run_id else ["--no-track"])
        t0 = time.perf_counter()
        if rescore:  # the same trained model: only the evaluation changed
            summary = {"seconds": before.get("train_seconds")}
            row["rescored"] = True
        else:
            out = _mvot([*common, "train", "--run", "trial", "--tokens", tokens, "--tokenizer", tokenizer, "--raw",
                         str(Path(root) / "data/raw"), "--out", str(d / "runs"), *(["--resume"] if resume else []), *track], Path(root), d / "log.txt", env)
            summary, _ = json.JSONDecoder().raw_decode(out, out.index("{\n"))  # what `mvot train` prints last
            if "resumed_from_step" in summary:
                row["resumed_from_step"] = summary["resumed_from_step"]
        _mvot([*common, "evaluate", "--run", "trial", "--runs", str(d / "runs"), "--tokens", tokens, "--raw",
               str(Path(root) / "data/raw"), "--out", str(d / "eval"), "--metrics", str(d / "metrics"),
               *([] if parent_run_id else ["--no-track"])], Path(root), d / "log.txt", env)
        row["tasks"] = _task_scores(d / "metrics")
        row |= {"status": "ok", "train_seconds": summary.get("seconds"), "parameters": summary.get("parameters", before.get("parameters")), "wall_seconds": round(time.perf_counter() - t0, 1),
                "threads": int(env.get("OMP_NUM_THREADS") or os.environ["OMP_NUM_THREADS"])}
        trained = summary if summary.get("hardware") else before  # the chip it trained on (a rescored trial keeps its row's)
        if trained.get("hardware"):
            row |= {"hardware": trained["hardware"], "torch": trained.get("torch")}
        if rescore:
            params_file.replace(d / "params.yaml")
        write_atomically(done, json.dumps(row, indent=1) + "\n")  # written last: a trial cut off midway is run again
    except (MvotError, ValueError, OSError) as exc:
        row["error"] = str(exc)[:2000]
    return row


@flow(name="sweep")
def sweep_flow(params_path: str = "params.yaml", sets: list[str] | None = None, track: bool = True,
               profile: str | None = None) -> dict:
    raw, _ = resolve_params(params_path, profile, sets or [])
    params = parse_params(raw)
    root = str(Path(params_path).resolve().parent)
    grid, skipped = trials(params)
    if not grid:
        raise PipelineError("the sweep grid has no valid trial; see params.yaml `sweep.grid`")
    sweep_dir = str(Path(root) / "sweeps" / params.sweep.name)
    uri = default_uri(root)
    if track:
        check_reachable(uri)  # before any training
    earlier = _earlier_parent(Path(sweep_dir), uri) if track else None
    with _one_process(Path(sweep_dir), params.sweep.name), \
            start_run("sweep", params.sweep.name, root, run_id=earlier) if track else nullcontext(NullTracker()) as parent:
        if track:
            write_atomically(Path(sweep_dir) / PARENT_FILE, json.dumps({"parent_run_id": parent.run_id, "tracking_uri": uri}) + "\n")
        if parent.continued:  # trials this sweep's last process left RUNNING; those that resume reopen theirs
            for run_id in close_unfinished_children(parent.run_id, uri):
                print(f"sweep {params.sweep.name}: MLflow run {run_id} of a trial cut off earlier marked KILLED",
                      file=sys.stderr)
        parent.set_tags({"sweep": params.sweep.name, "trials": str(len(grid))})
        parent.log_dict({"grid": params.sweep.grid.model_dump(mode="json"), "skipped": skipped}, "sweep/grid.json")
        token_futures = {px: prepare_tokens.submit(raw, px, root, sweep_dir, track)
                         for px in dict.fromkeys(t["patch_px"] for t in grid)}
        # at most sweep.max_workers trials at once, whatever the runner: a sliding window, so
        # a reused trial frees its slot at once and a slow trial holds up no other
        n = params.sweep.max_workers
        # the cores are split among the trials that will run, not those finished before
        to_run = [t for t in grid if not _finished(Path(sweep_dir) / "trials" / trial_key(t), raw, t)]
        results: dict[int, dict] = {}
        inflight: dict = {}
        queue = list(enumerate(grid))
        while queue or inflight:
            while queue and len(inflight) < n:
                i, t = queue.pop(0)
                tokens, tokenizer = token_futures[t["patch_px"]].result()
                inflight[run_trial.submit(trial_key(t), t, raw, tokens, tokenizer, root, sweep_dir, parent.run_id,
                                          uri if track else None, max(1, min(n, len(to_run))))] = i
            done = next(as_completed(list(inflight)))
            results[inflight.pop(done)] = done.result()
        rows = [results[i] for i in range(len(grid))]
        table = aggregate(rows)
        combined = combine_trials(rows, Path(sweep_dir) / "trials")
        files = write_summary(rows, table, Path(sweep_dir) / "summary",
                              {t: params.render.task(t).cell_px for t in TASKS}, combined)
        parent.log_artifacts(Path(sweep_dir) / "summary", "sweep")
        parent.log_metrics({f"{r['task']}/{'/'.join(str(r[k]) for k in CONFIG_KEYS)}/{s}": r[s]
                            for r in table for s in ("accuracy", "v_acc", "v_red") if r.get(s) is not None}
                           | {f"{r['task']}/{'/'.join(str(r[k]) for k in CONFIG_KEYS)}/+cot/{s}": r[s]
                              for r in combined for s in ("upper_bound", "combined") if r.get(s) is not None})
    failed = [r for r in rows if r["status"] != "ok"]
    create_table_artifact(key="sweep-comparison", table=table or [{"note": "no trial finished"}],
                          description=f"Sweep {params.sweep.name}: mean and spread over seeds")
    md = [f"# Sweep `{params.sweep.name}`: {len(rows) - len(failed)}/{len(rows)} trials finished", "",
          markdown_table(table, TABLE_COLS)]
    if combined:
        md += ["", "## MVoT + CoT: upper bound and combined predictor", "",
               markdown_table(combined, COMBINED_COLS)]
    if failed:
        md += ["", "## Failed trials", "", *[f"- `{r['trial']}`: {r.get('error', '')[:300]}" for r in failed]]
    if skipped:
        md += ["", "## Left out", "", *[f"- {s}" for s in skipped]]
    create_markdown_artifact(key="sweep-summary", markdown="\n".join(md), description="Sweep results")
    return {"rows": rows, "table": table, "combined": combined, "skipped": skipped, "files": [str(f) for f in files],
            "parent_run_id": parent.run_id, "sweep_dir": sweep_dir}


def run_sweep(params_path: str = "params.yaml", sets: list[str] | None = None, dask: str | None = None,
              track: bool = True, profile: str | None = None) -> dict:
    """The sweep flow on a thread pool (``sweep.max_workers``) or, with ``dask`` ("local" or a
    scheduler address), on a Dask cluster through prefect-dask. ``profile``: a YAML of
    overrides (``profiles/<name>.yaml`` or a path) applied before ``sets``."""
    raw, _ = resolve_params(params_path, profile, sets or [])
    n = parse_params(raw).sweep.max_workers
    if dask:
        from prefect_dask import DaskTaskRunner

        runner = (DaskTaskRunner(cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": False})
                  if dask == "local" else DaskTaskRunner(address=dask))
    else:
        runner = ThreadPoolTaskRunner(max_workers=n)
    return sweep_flow.with_options(task_runner=runner)(params_path, sets, track, profile)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.sweep", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--profile", help="a YAML of params overrides (profiles/<name>.yaml or a path), e.g. a sweep's settings")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params value for this sweep (after --profile), e.g. sweep.grid.seed=[0,1]")
    ap.add_argument("--dask", nargs="?", const="local", help="run trials on Dask: a local cluster, or a scheduler address")
    ap.add_argument("--no-track", action="store_true")
    args = ap.parse_args(argv)
    try:
        r = run_sweep(args.params, args.sets, args.dask, not args.no_track, args.profile)
    except MvotError as exc:
        print(f"flows.sweep: error: {exc}", file=sys.stderr)
        return 1
    print(markdown_table(r["table"], TABLE_COLS))
    if r["combined"]:
        print("\nMVoT + CoT (same seed): upper bound and combined predictor")
        print(markdown_table(r["combined"], COMBINED_COLS))
    for row in r["rows"]:
        if row["status"] != "ok":
            print(f"failed: {row['trial']}: {row.get('error', '')[:300]}", file=sys.stderr)
    print(f"\nsummary: {r['sweep_dir']}/summary  MLflow parent run: {r['parent_run_id']}")
    return 0 if all(row["status"] == "ok" for row in r["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
