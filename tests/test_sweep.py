"""Ablation sweeps: the grid, the seed statistics, and the flow on a thread pool and on a
local Dask cluster, with a parent MLflow run and a child per trial."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml

from mvot.config import parse_params
from mvot.sweep import aggregate, trial_raw, trials
from tests.conftest import TASKS, tiny_tokenizer_raw


def test_grid_leaves_out_invalid_and_duplicate_trials(raw_params):
    raw = dict(raw_params) | {"sweep": {"grid": {"variant": ["cot", "mvot"], "ld_weight": [0.0, 1.0],
                                                 "ld_distance": ["euclidean", "mse"], "seed": [0, 1]}}}
    grid, skipped = trials(parse_params(raw))
    # cot: L_D 0 only (distance irrelevant) x 2 seeds; mvot: L_D 0 once + L_D 1 x 2 distances, x 2 seeds
    assert len(grid) == 2 + 2 * 3
    assert len(skipped) == 4 and all("L_D needs image targets" in s for s in skipped)
    t = next(t for t in grid if t["ld_weight"] == 1.0 and t["ld_distance"] == "mse" and t["seed"] == 1)
    p = parse_params(trial_raw(raw, t))
    assert p.seed == 1 and p.train.ld.distance == "mse" and dict(p.train.runs)["trial"].ld_weight == 1.0
    raw["train"] = raw["train"] | {"ld": raw["train"]["ld"] | {"from_step": 3}}  # a schedule set for the sweep stays
    assert parse_params(trial_raw(raw, t)).train.ld.from_step == 3


def test_each_seed_starts_from_its_own_pretrained_model(raw_params):
    raw = copy.deepcopy(raw_params)
    raw["train"]["model"] = raw["train"]["model"] | {"pretrained": "/m/cot-s{seed}/model", "grid_pos": 0, "step_pos": 0}
    raw["sweep"] = {"grid": {"variant": ["mvot"], "ld_weight": [1.0], "seed": [0, 2]}}
    grid, _ = trials(parse_params(raw))
    assert [parse_params(trial_raw(raw, t)).train.model.pretrained for t in grid] == ["/m/cot-s0/model", "/m/cot-s2/model"]
    assert raw["train"]["model"]["pretrained"] == "/m/cot-s{seed}/model"  # the sweep's own params untouched


def test_each_trial_trains_on_from_its_own_model_of_an_earlier_sweep(raw_params):
    raw = copy.deepcopy(raw_params)
    raw["train"]["model"] = raw["train"]["model"] | {"pretrained": "/s/p8-s{seed}/trials/{trial}/model", "grid_pos": 0, "step_pos": 0}
    raw["sweep"] = {"grid": {"variant": ["mvot"], "ld_weight": [0.0, 1.0], "patch_px": [8], "seed": [3, 4]}}
    grid, _ = trials(parse_params(raw))
    assert sorted(parse_params(trial_raw(raw, t)).train.model.pretrained for t in grid) == [
        f"/s/p8-s{s}/trials/mvot-w{w}-euclidean-mean-p8-s{s}/model" for s in (3, 4) for w in (0, 1)]


def test_aggregate_mean_and_spread_over_seeds():
    base = {"variant": "mvot", "ld_weight": 1.0, "ld_distance": "euclidean", "ld_reduction": "mean", "patch_px": 16}
    rows = [base | {"seed": s, "status": "ok", "train_seconds": 10.0 * (s + 1),
                    "tasks": {"maze": {"accuracy": a, "v_acc": 90.0, "v_red": None}}}
            for s, a in enumerate([50.0, 60.0, 70.0])]
    rows.append(base | {"seed": 3, "status": "failed", "tasks": {}})
    (row,) = aggregate(rows)
    assert row["task"] == "maze" and row["seeds"] == 3
    assert row["accuracy"] == 60.0 and row["accuracy_sd"] == 10.0  # sample standard deviation
    assert row["v_acc"] == 90.0 and row["v_acc_sd"] == 0.0 and row["v_red"] is None
    assert row["train_seconds"] == 20.0



def test_upper_bound_and_combined_predictor_pair_mvot_with_cot_of_the_same_seed(tmp_path):
    from mvot.evaluate import Record, write_records
    from mvot.sweep import combine_trials, trial_key, write_summary

    base = {"ld_distance": "euclidean", "ld_reduction": "mean", "patch_px": 16, "status": "ok"}
    golds = ["A", "B", "C", "A"]
    preds = {  # per (variant, seed): predicted letter and its log-probability per instance
        ("mvot", 0): [("A", -0.1), ("C", -0.1), ("C", -2.0), ("B", -0.5)],
        ("cot", 0): [("B", -1.0), ("B", -2.0), ("A", -0.1), ("A", -0.2)],
        ("mvot", 1): [("A", -0.1), ("B", -0.1), ("C", -0.1), ("A", -0.1)],
        ("cot", 1): [("A", -0.1), ("B", -0.1), ("C", -0.1), (None, None)],
    }
    rows = []
    for (variant, seed), ps in preds.items():
        t = base | {"variant": variant, "ld_weight": 1.0 if variant == "mvot" else 0.0, "seed": seed}
        t["trial"] = trial_key(t)
        t["tasks"] = {"maze": {"accuracy": 0.0}}
        recs = [Record(uid=f"u{i}", task="maze", size=3, n_steps=1, gold=g, pred=p, answer_logprob=lp)
                for i, (g, (p, lp)) in enumerate(zip(golds, ps, strict=True))]
        write_records(tmp_path / "trials" / t["trial"] / "eval" / "trial" / "maze" / "predictions.jsonl", recs)
        rows.append(t)
    rows.append(base | {"variant": "mvot", "ld_weight": 0.0, "seed": 0, "trial": "no-predictions", "tasks": {"maze": {}}})
    (row,) = combine_trials(rows, tmp_path / "trials")
    assert row["task"] == "maze" and row["ld_weight"] == 1.0 and row["seeds"] == 2
    # seed 0: either is right on every instance (upper bound 4/4); the likelier answer is A, C, A, A -> 2/4
    # seed 1: mvot alone is right everywhere (cot's missing answer loses): 4/4 both
    assert row["upper_bound"] == 100.0 and row["combined"] == 75.0 and row["combined_sd"] == 35.36
    files = write_summary(rows, aggregate(rows), tmp_path / "summary", combined=[row])
    assert tmp_path / "summary" / "combined.csv" in files


def test_compactness_plot_against_tokens_per_cell(tmp_path):
    from mvot.sweep import tokens_per_cell, write_summary

    assert tokens_per_cell(16, 16) == 1 and tokens_per_cell(16, 8) == 4 and tokens_per_cell(16, 32) == 0.25
    base = {"variant": "mvot", "ld_weight": 1.0, "ld_distance": "euclidean", "ld_reduction": "mean", "seed": 0,
            "status": "ok"}
    rows = [base | {"patch_px": px, "train_seconds": t, "tasks": {"frozenlake": {"accuracy": a, "v_acc": v}}}
            for px, t, a, v in [(16, 100.0, 40.0, 50.0), (8, 300.0, 45.0, 70.0)]]
    files = write_summary(rows, aggregate(rows), tmp_path, {"frozenlake": 16})
    assert tmp_path / "compactness.png" in files and (tmp_path / "compactness.png").stat().st_size > 1000
    one = write_summary(rows[:1], aggregate(rows[:1]), tmp_path / "one", {"frozenlake": 16})
    assert not any(f.name == "compactness.png" for f in one)  # one setting: nothing to compare
    assert not any(f.name.startswith("by_size") for f in one)  # no per-size scores: no by-size plot


def test_accuracy_by_grid_size_over_seeds(tmp_path):
    from mvot.sweep import aggregate_by_size, write_summary

    base = {"variant": "mvot", "ld_weight": 1.0, "ld_distance": "euclidean", "ld_reduction": "mean", "patch_px": 16,
            "status": "ok"}
    rows = [base | {"seed": s, "tasks": {"frozenlake": {"accuracy": 50.0, "accuracy_by_size": {"3": a3, "6": a6}}}}
            for s, (a3, a6) in enumerate([(80.0, 40.0), (60.0, 40.0)])]
    rows.append(base | {"seed": 2, "status": "failed", "tasks": {}})
    rows.append(base | {"variant": "cot", "ld_weight": 0.0, "seed": 0,
                        "tasks": {"frozenlake": {"accuracy": 30.0, "accuracy_by_size": {"3": 50.0}}}})
    by = aggregate_by_size(rows)
    assert [(r["variant"], r["size"], r["seeds"], r["accuracy"], r["accuracy_sd"]) for r in by] == [
        ("cot", 3, 1, 50.0, 0.0), ("mvot", 3, 2, 70.0, 14.14), ("mvot", 6, 2, 40.0, 0.0)]
    files = write_summary(rows, aggregate(rows), tmp_path)
    assert tmp_path / "by_size.png" in files and (tmp_path / "by_size.png").stat().st_size > 1000
    lines = (tmp_path / "by_size.csv").read_text().splitlines()
    assert lines[0].endswith("task,size,seeds,accuracy,accuracy_sd") and len(lines) == 1 + 3

@pytest.fixture()
def sweep_root(tmp_path, tiny_tokens, tiny_generated, raw_params, monkeypatch):
    """A repository-like root holding the tiny pipeline's outputs and a 2x2 sweep."""
    _, tok_dir, tokens_dir = tiny_tokens
    gen_root, _ = tiny_generated
    (tmp_path / "data").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "data" / "raw").symlink_to(gen_root / "raw")
    (tmp_path / "data" / "tokens").symlink_to(tokens_dir)
    (tmp_path / "models" / "tokenizer").symlink_to(tok_dir)
    raw = tiny_tokenizer_raw(raw_params)
    raw["evaluate"] |= {"limit": 2, "max_new_tokens": 300}
    raw["sweep"] = {"name": "t", "max_workers": 2, "grid": {"variant": ["mvot"], "ld_weight": [0.0, 1.0], "seed": [0, 1]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.mark.slow
def test_sweep_flow_parent_and_child_runs(prefect_harness, sweep_root):
    from mlflow import MlflowClient

    from flows.sweep import run_sweep

    r = run_sweep(str(sweep_root / "params.yaml"), ["sweep.grid.ld_weight=[1.0]"])  # 2 seeds
    assert [row["status"] for row in r["rows"]] == ["ok"] * 2, [row.get("error") for row in r["rows"]]
    assert {(row["ld_weight"], row["task"]) for row in r["table"]} == {(1.0, t) for t in TASKS}
    assert all(row["seeds"] == 2 and row["accuracy_sd"] is not None for row in r["table"])
    summary = sweep_root / "sweeps" / "t" / "summary"
    assert (summary / "comparison.png").stat().st_size > 1000
    assert len((summary / "trials.csv").read_text().splitlines()) == 1 + 2 * 3
    client = MlflowClient(f"sqlite:///{sweep_root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sweep")
    runs = client.search_runs([exp.experiment_id])
    parent = next(x for x in runs if x.info.run_id == r["parent_run_id"])
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all("test/maze/accuracy" in c.data.metrics for c in children)
    assert any(k.endswith("/accuracy") for k in parent.data.metrics)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} >= {
        "sweep/comparison.csv", "sweep/comparison.png", "sweep/by_size.csv", "sweep/by_size.png"}
    sizes = {int(line.split(",")[6]) for line in (summary / "by_size.csv").read_text().splitlines()[1:]}
    assert sizes and sizes <= {3, 4, 5, 6, 7, 8, 9, 10}

    # the sweep run again after its process was stopped mid-trial: the same parent run goes on, child runs
    # the stopped process left RUNNING are marked KILLED, and the trial cut off in training continues its own run
    cut = next((sweep_root / "sweeps" / "t" / "trials").glob("*-s1"))
    state = json.loads((cut / "runs" / "trial" / "checkpoint" / "state.json").read_text())
    child = state["mlflow_run_id"]
    assert child in {c.info.run_id for c in children}
    (cut / "row.json").unlink()
    shutil.rmtree(cut / "runs" / "trial" / "model")
    client.update_run(child, status="RUNNING")
    orphan = client.create_run(exp.experiment_id, tags={"mlflow.parentRunId": parent.info.run_id}).info.run_id
    again = run_sweep(str(sweep_root / "params.yaml"), ["sweep.grid.ld_weight=[1.0]"])
    assert again["parent_run_id"] == r["parent_run_id"]
    assert [row.get("reused", False) for row in again["rows"]] == [True, False]
    assert again["rows"][1]["resumed_from_step"] == state["step"], again["rows"][1].get("error")
    assert client.get_run(orphan).info.status == "KILLED"
    resumed = client.get_run(child)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["mlflow.parentRunId"] == parent.info.run_id
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 4  # the parent, its two trials and the orphan: no new run
    assert {x.info.status for x in runs if x.info.run_id != orphan} == {"FINISHED"}

    # a trial finished before by-size scores existed: reuse fills them in from its metrics files
    old_row = next((sweep_root / "sweeps" / "t" / "trials").glob("*-s0")) / "row.json"
    legacy = json.loads(old_row.read_text())
    for m in legacy["tasks"].values():
        m.pop("accuracy_by_size")
    old_row.write_text(json.dumps(legacy))

    # widening the sweep by a seed reruns nothing that finished: only the new trial trains
    r2 = run_sweep(str(sweep_root / "params.yaml"), ["sweep.grid.ld_weight=[1.0]", "sweep.grid.seed=[0,1,2]"],
                   track=False)
    assert [row.get("reused", False) for row in r2["rows"]] == [True, True, False]
    import os

    if "OMP_NUM_THREADS" not in os.environ:  # the one trial that trains gets every core, not a third
        assert r2["rows"][2]["threads"] == os.cpu_count()
    assert all("accuracy_by_size" in m for row in r2["rows"] for m in row["tasks"].values())

    # scoring on more test instances reuses the trained models: only evaluation runs again
    r3 = run_sweep(str(sweep_root / "params.yaml"),
                   ["sweep.grid.ld_weight=[1.0]", "sweep.grid.seed=[0]", "evaluate.limit=3"], track=False)
    (row,) = r3["rows"]
    assert row["status"] == "ok" and row.get("rescored") and row["train_seconds"] == r2["rows"][0]["train_seconds"]
    import torch

    assert r2["rows"][2]["hardware"].endswith(torch.backends.cpu.get_cpu_capability())  # the chip each trial trained on
    assert row["hardware"] == r2["rows"][0]["hardware"]  # rescoring keeps the record of the training
    trial_dir = sweep_root / "sweeps" / "t" / "trials" / row["trial"]
    assert json.loads((trial_dir / "metrics" / "maze" / "trial.json").read_text())["n"] == 3
    assert yaml.safe_load((trial_dir / "params.yaml").read_text())["evaluate"]["limit"] == 3
    assert (trial_dir / "log.txt").read_text().count(" train --run trial") == 1  # trained once, in r
    assert [row["status"] for row in r2["rows"]] == ["ok"] * 3
    assert all(row["seeds"] == 3 for row in r2["table"])

    # a trial cut off in training (no row.json, no final model, a checkpoint) resumes from the checkpoint
    cut = sweep_root / "sweeps" / "t" / "trials" / r2["rows"][2]["trial"]
    state = json.loads((cut / "runs" / "trial" / "checkpoint" / "state.json").read_text())
    assert state["seconds"] > 0
    (cut / "row.json").unlink()
    shutil.rmtree(cut / "runs" / "trial" / "model")
    r4 = run_sweep(str(sweep_root / "params.yaml"), ["sweep.grid.ld_weight=[1.0]", "sweep.grid.seed=[2]"], track=False)
    (row,) = r4["rows"]
    assert row["status"] == "ok" and row["resumed_from_step"] == state["step"], row.get("error")
    assert row["train_seconds"] >= state["seconds"] and (cut / "runs" / "trial" / "model").is_dir()
    assert (cut / "log.txt").read_text().count(" --resume") == 1

    # ... but not from a checkpoint of another training (here: other training code): that trial starts afresh
    (cut / "row.json").unlink()
    shutil.rmtree(cut / "runs" / "trial" / "model")
    state = json.loads((cut / "runs" / "trial" / "checkpoint" / "state.json").read_text())
    state["fingerprint"]["code"] = "0" * 64
    (cut / "runs" / "trial" / "checkpoint" / "state.json").write_text(json.dumps(state))
    (row,) = run_sweep(str(sweep_root / "params.yaml"), ["sweep.grid.ld_weight=[1.0]", "sweep.grid.seed=[2]"], track=False)["rows"]
    assert row["status"] == "ok" and "resumed_from_step" not in row, row.get("error")
    log = (cut / "log.txt").read_text()
    assert "is of another training: its code changed since); starting afresh" in log and log.count(" --resume") == 1

    # a checkpoint written before checkpoints had fingerprints (and curves) is continued as it is
    (cut / "row.json").unlink()
    shutil.rmtree(cut / "runs" / "trial" / "model")
    state = json.loads((cut / "runs" / "trial" / "checkpoint" / "state.json").read_text())
    del state["fingerprint"], state["tokens"]
    (cut / "runs" / "trial" / "checkpoint" / "state.json").write_text(json.dumps(state))
    (cut / "runs" / "trial" / "checkpoint" / "curve.csv").unlink()
    (row,) = run_sweep(str(sweep_root / "params.yaml"), ["sweep.grid.ld_weight=[1.0]", "sweep.grid.seed=[2]"], track=False)["rows"]
    assert row["status"] == "ok" and row["resumed_from_step"] == state["step"], row.get("error")


@pytest.mark.slow
def test_sweep_on_a_local_dask_cluster(prefect_harness, sweep_root):
    from flows.sweep import run_sweep

    r = run_sweep(str(sweep_root / "params.yaml"), ["sweep.grid.seed=[0]", "sweep.name=dask"], dask="local", track=False)
    assert [row["status"] for row in r["rows"]] == ["ok", "ok"]
    assert (sweep_root / "sweeps" / "dask" / "summary" / "comparison.csv").is_file()


def test_index_hints_get_token_arrays_of_their_own(sweep_root):
    """A sweep that changes the ``tokenize`` section tokenizes again with the pipeline's
    tokenizer, under the sweep directory; the pipeline's own arrays serve the default."""
    from flows.sweep import prepare_tokens, tokens_tag
    from mvot.tokenize import load_split
    from mvot.tokenizers import load_text_tokenizer

    raw = yaml.safe_load((sweep_root / "params.yaml").read_text())
    assert tokens_tag(raw, 16, str(sweep_root)) is None
    assert tokens_tag(raw, 8, str(sweep_root)) == "patch8"
    hinted = yaml.safe_load(yaml.safe_dump(raw))
    hinted["tokenize"]["index_hints"] = True
    tag = tokens_tag(hinted, 16, str(sweep_root))
    assert tag.startswith("patch16-tok")
    tokens, tokenizer = prepare_tokens.fn(hinted, 16, str(sweep_root), str(sweep_root / "sweeps" / "t"), False)
    assert tokens == str(sweep_root / "sweeps" / "t" / tag / "tokens")
    assert tokenizer == str(sweep_root / "models" / "tokenizer")
    from mvot.vocab import Vocab

    text = load_text_tokenizer(sweep_root / "models" / "tokenizer")
    n_text = Vocab.load(sweep_root / "models" / "tokenizer" / "vocab.json").n_text
    seq = load_split(tokens, "maze", "test", "mvot").sequence(0)[0]
    words = text.decode([int(t) for t in seq if t < n_text], skip_special_tokens=True)
    assert "Full Action Sequence: 1: Go " in words and "Response: 1: Go " in words
    default = load_split(sweep_root / "data" / "tokens", "maze", "test", "mvot").sequence(0)[0]
    assert len(seq) > len(default)


def test_trial_reuse_compares_validated_params(raw_params, tmp_path):
    """A trial that ran before a params key was added (with its default) is the same trial;
    a changed value, a changed sweep-independent section or unreadable params are not."""
    import copy

    from flows.sweep import _same_trial

    before = copy.deepcopy(raw_params)
    before["evaluate"].pop("budget_factor", None)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(before))
    now = copy.deepcopy(raw_params) | {"sweep": {**raw_params["sweep"], "name": "wider"}}
    now["evaluate"]["budget_factor"] = 1.5
    assert _same_trial(path, now)
    now["evaluate"]["budget_factor"] = 1.0
    assert not _same_trial(path, now)
    path.write_text("evaluate: [unreadable")
    assert not _same_trial(path, raw_params)


def test_a_second_process_on_one_sweep_is_refused(prefect_harness, sweep_root):
    import fcntl

    from flows.pipeline import PipelineError
    from flows.sweep import run_sweep

    lock = sweep_root / "sweeps" / "t" / ".lock"
    lock.parent.mkdir(parents=True)
    with lock.open("a+") as fh:  # as the first process holds it
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write("pid 12345 on elsewhere\n")
        fh.flush()
        with pytest.raises(PipelineError, match=r"sweep t: another process is running it \(pid 12345 on elsewhere\)"):
            run_sweep(str(sweep_root / "params.yaml"), ["sweep.grid.seed=[0]"], track=False)
    assert not (sweep_root / "sweeps" / "t" / "trials").exists()


def test_failed_trial_is_reported_not_lost(prefect_harness, sweep_root):
    from flows.sweep import run_sweep

    (sweep_root / "data" / "tokens").unlink()
    (sweep_root / "data" / "tokens").mkdir()  # empty: every trial fails to find its token arrays
    r = run_sweep(str(sweep_root / "params.yaml"), ["sweep.grid.seed=[0]", "sweep.grid.ld_weight=[1.0]"], track=False)
    (row,) = r["rows"]
    assert row["status"] == "failed" and "train" in row["error"] and r["table"] == []
    assert "mvot train: error:" in row["error"]  # the command's own message, from the trial's log
    log = (Path(r["sweep_dir"]) / "trials" / row["trial"] / "log.txt").read_text()
    assert log.startswith("$ mvot ") and "mvot train: error:" in log  # stderr streamed into the trial's log


def test_trials_racing_to_create_an_experiment_share_it(tmp_path):
    """Sweep trials are separate processes that may create the same experiment at once: the
    loser of the race (its insert fails on the unique name) must use the winner's experiment."""
    import mlflow

    from mvot.tracking import _experiment_id

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    real_get = mlflow.get_experiment_by_name
    calls = []

    class Racing:  # another process creates the experiment between our read and our insert
        @staticmethod
        def get_experiment_by_name(name):
            calls.append("get")
            return None if len(calls) == 1 else real_get(name)

        @staticmethod
        def create_experiment(name, artifact_location=None):
            winner = mlflow.create_experiment(name, artifact_location=artifact_location)
            calls.append(winner)
            return mlflow.create_experiment(name, artifact_location=artifact_location)  # raises

    exp_id = _experiment_id(Racing, "shared", None, uri)
    assert exp_id == calls[1] == mlflow.get_experiment_by_name("shared").experiment_id


def _report_trial(sweep_dir, raw_params, variant, ld, seed, acc, golds_preds, patch_px=16, task="maze", scores=None,
                  ld_distance="euclidean", **params_over):
    """A finished trial as the sweep flow leaves it: row.json, params.yaml, predictions
    (``scores`` overrides the task's metrics)."""
    import json

    from mvot.sweep import trial_key

    t = {"ld_distance": ld_distance, "ld_reduction": "mean", "patch_px": patch_px, "status": "ok", "train_seconds": 100.0,
         "parameters": 1_472_000, "variant": variant, "ld_weight": ld, "seed": seed}
    t["trial"] = trial_key(t)
    t["tasks"] = {task: {"accuracy": acc, "v_acc": 99.0 if variant == "mvot" else None,
                           "accuracy_by_size": {"3": acc + 2, "6": acc - 2}} | (scores or {})}
    d = sweep_dir / "trials" / t["trial"]
    (d / "eval" / "trial" / task).mkdir(parents=True)
    raw = copy.deepcopy(raw_params)
    raw["tokenizer"]["patch_px"] = patch_px
    for k, v in params_over.items():
        raw["train"]["model"][k] = v
    (d / "params.yaml").write_text(yaml.safe_dump(raw))
    (d / "row.json").write_text(json.dumps(t))
    (d / "eval" / "trial" / task / "predictions.jsonl").write_text("".join(
        json.dumps({"uid": f"u{i}", "task": task, "size": 3, "n_steps": 1, "gold": g, "pred": p, "answer_logprob": lp}) + "\n"
        for i, (g, p, lp) in enumerate(golds_preds)))
    return t


def test_report_tabulates_the_paper_rows_with_seed_spread(raw_params, tmp_path):
    from mvot.report import ReportError, by_size_tables, results_table

    d = tmp_path / "table-maze"
    # 4 instances, gold A B C D; cot right on 0 and 1 (sure of 0), mvot right on 1 and 2 (sure of 2)
    cot = [("A", "A", -0.1), ("B", "B", -2.0), ("C", "A", -3.0), ("D", "A", -3.0)]
    mvot = [("A", "B", -2.0), ("B", "B", -0.5), ("C", "C", -0.1), ("D", "B", -3.0)]
    for variant, ld, accs, preds in (("cot", 0.0, [40.0, 50.0], cot), ("mvot", 1.0, [90.0, 96.0], mvot)):
        for seed, acc in enumerate(accs):
            _report_trial(d, raw_params, variant, ld, seed, acc, preds)
    md = results_table([d])
    line = next(x for x in md.splitlines() if "| MVoT (L_D 1.0) |" in x)
    assert "| maze | MVoT (L_D 1.0) | table-maze | 2 | 93.0 ± 4.2 | 99.0 ± 0.0 |" in line and "92.95" in line  # the paper beside ours
    assert "| maze | CoT | table-maze | 2 | 45.0 ± 7.1 | - |" in md and "| maze | Direct | | 0 | not run |" in md
    # upper bound: 3 of 4 right; combined: 0 (cot surer), 1 (agree), 2 (mvot surer) right, 3 wrong -> 75
    assert "| maze | upper bound (MVoT + CoT) | table-maze | 2 | 75.0 ± 0.0 |" in md
    assert "| maze | combined predictor (MVoT + CoT) | table-maze | 2 | 75.0 ± 0.0 |" in md
    assert "1.47M parameters" in md and "tokens per image: frozenlake 36, maze 36, minibehavior 100" in md
    with pytest.raises(ReportError, match="no finished trial"):
        results_table([tmp_path / "nothing"])
    csv_file, png = by_size_tables([d], tmp_path / "plots")
    assert png.name == "table_by_size.png" and png.stat().st_size > 0
    assert csv_file.read_text().splitlines() == ["size,CoT,MVoT (L_D 1.0)", "3,47.0,95.0", "6,43.0,91.0"]

    # a second sweep of MVoT alone (here: from a checkpoint) gets its own rows, paired with the first sweep's CoT
    e = tmp_path / "table-maze-from-cot"
    _report_trial(e, raw_params, "mvot", 1.0, 0, 80.0, cot, pretrained="/ckpt/cot", grid_pos=0, step_pos=0)
    md = results_table([d, e])
    assert "| maze | MVoT (L_D 1.0) | table-maze-from-cot | 1 | 80.0 | 99.0 |" in md
    assert "| maze | upper bound (MVoT + CoT) | table-maze-from-cot | 1 | 50.0 |" in md  # its predictions are cot's
    assert "table-maze-from-cot: 1.47M parameters" in md and "initialised from /ckpt/cot" in md
    assert md.count("| maze | Direct |") == 1 and md.index("table-maze |") < md.index("table-maze-from-cot |")
    csv_file, _ = by_size_tables([d, e], tmp_path / "plots")
    # the last sweep of a row (a continuation, named after what it continues) has the plain label dvc.yaml's plots name
    assert csv_file.read_text().splitlines()[0] == "size,CoT,MVoT (L_D 1.0) [table-maze],MVoT (L_D 1.0)"
    assert csv_file.read_text().splitlines()[1] == "3,47.0,95.0,82.0"

    # seeds run as separate sweeps share one line when joined with '+'; a trial in both is refused
    f = tmp_path / "table-maze-cot-s2"
    _report_trial(f, raw_params, "cot", 0.0, 2, 60.0, cot)
    md = results_table([f"{d}+{f}"])
    assert "| maze | CoT | table-maze+table-maze-cot-s2 | 3 | 50.0 ± 10.0 | - |" in md
    assert md.count("| maze | CoT |") == 1
    with pytest.raises(ReportError, match="is in both"):
        results_table([f"{d}+{d}"])
    with pytest.raises(ReportError, match="no finished trial"):
        results_table([f"{d}+{tmp_path / 'nothing'}"])

    # another L_D weight (an ablation of w) gets its own row among the MVoT rows, and its own upper bound
    g = tmp_path / "table-maze-ld01"
    _report_trial(g, raw_params, "mvot", 0.1, 0, 85.0, mvot)
    md = results_table([d, g])
    assert "| maze | MVoT (L_D 0.1) | table-maze-ld01 | 1 | 85.0 | 99.0 |" in md
    assert md.index("| MVoT without L_D |") < md.index("| MVoT (L_D 0.1) |") < md.index("| MVoT (L_D 1.0) | table-maze |")
    assert "| maze | upper bound (MVoT (L_D 0.1) + CoT) | table-maze-ld01 | 1 | 75.0 |" in md
    assert "L_D 0.1" not in results_table([d])  # listed only where run
    h = tmp_path / "table-maze-ld-late"
    _report_trial(h, raw_params, "mvot", 1.0, 0, 88.0, mvot)
    late = yaml.safe_load((h / "trials" / "mvot-w1-euclidean-mean-p16-s0" / "params.yaml").read_text())
    late["train"]["ld"]["from_step"] = 60
    (h / "trials" / "mvot-w1-euclidean-mean-p16-s0" / "params.yaml").write_text(yaml.safe_dump(late))
    assert "table-maze-ld-late: 1.47M parameters, 120 steps x 8,192 tokens, tokens per image: frozenlake 36, maze 36, " \
           "minibehavior 100; L_D added from step 60" in results_table([d, h])
    csv_file, _ = by_size_tables([d, g], tmp_path / "plots")
    assert csv_file.read_text().splitlines()[0] == "size,CoT,MVoT (L_D 1.0),MVoT (L_D 0.1)"


def test_ld_pairs_compare_each_seed_with_and_without_ld(raw_params, tmp_path, capsys):
    from mvot.cli import main
    from mvot.report import ReportError, ld_pairs

    d, e = tmp_path / "fl-p8", tmp_path / "fl-p8-s1"
    # seed 0: L_D the paper's way (V-Acc up, V-Red down); seed 1: the other way; seed 2: no L_D row, left out
    for sweep, w, seed, acc, v_acc, v_red in ((d, 0.0, 0, 43.0, 40.0, 50.0), (d, 1.0, 0, 41.0, 56.0, 39.0),
                                              (e, 0.0, 1, 42.0, 34.0, 60.0), (e, 1.0, 1, 40.0, 24.0, 68.0),
                                              (e, 0.0, 2, 44.0, 30.0, 70.0)):
        _report_trial(sweep, raw_params, "mvot", w, seed, acc, [], patch_px=8, task="frozenlake",
                      scores={"v_acc": v_acc, "v_red": v_red})
    md = ld_pairs([f"{d}+{e}"], patch_px=8)
    rows = [x for x in md.splitlines() if x.startswith("| frozenlake |")]
    assert rows[0] == "| frozenlake | fl-p8+fl-p8-s1 | 1 | 0 | 56.0 / 40.0 | +16.0 | 39.0 / 50.0 | -11.0 | 41.0 / 43.0 | -2.0 |"
    assert rows[1] == "| frozenlake | fl-p8+fl-p8-s1 | 1 | 1 | 24.0 / 34.0 | -10.0 | 68.0 / 60.0 | +8.0 | 40.0 / 42.0 | -2.0 |"
    # mean of the differences and their sample standard deviation: (16 - 10) / 2 = 3, sd 18.38; paired t =
    # mean / (sd / sqrt 2) = 0.231 on 1 degree of freedom, where t is Cauchy: p = 1 - 2 atan(|t|) / pi = 0.856;
    # V-Red t = -1.5 / 9.5 = -0.158, p 0.900; accuracy differs by -2 on both seeds: no spread, no t
    assert rows[2] == ("| frozenlake | fl-p8+fl-p8-s1 | 1 | mean of 2; the paper's way on 1 | | **+3.0 ± 18.4** (t 0.23, p 0.86) | "
                       "| **-1.5 ± 13.4** (t -0.16, p 0.90) | | **-2.0 ± 0.0** |")
    assert len(rows) == 3 and all(x.count("|") == 11 for x in rows)
    with pytest.raises(ReportError, match="no seed with MVoT both with and without L_D at 16-pixel patches"):
        ld_pairs([f"{d}+{e}"])  # nothing at the default patch size
    assert "| 1 | mean of 1; the paper's way on 0 |" in ld_pairs([e], patch_px=8)  # seed 1 alone; seed 2 unpaired
    f = tmp_path / "fl-p8-ld-only"
    _report_trial(f, raw_params, "mvot", 1.0, 0, 41.0, [], patch_px=8, task="frozenlake")
    assert main(["report", str(f), "--patch-px", "8", "--ld-pairs"]) == 1  # one clear message, nothing printed
    out, err = capsys.readouterr()
    assert "no seed with MVoT both with and without L_D" in err and "'+'" in err and out == ""
    assert main(["report", f"{d}+{e}", "--patch-px", "8", "--ld-pairs"]) == 0
    assert "L_D against MVoT without L_D, seed by seed" in capsys.readouterr().out
    # two L_D distances at one weight are two configurations, each paired with the same run without L_D
    g = tmp_path / "fl-p8-distances"
    for w, dist, v_acc in ((0.0, "euclidean", 40.0), (1.0, "euclidean", 50.0), (1.0, "mse", 30.0)):
        _report_trial(g, raw_params, "mvot", w, 0, 40.0, [], patch_px=8, task="frozenlake", ld_distance=dist,
                      scores={"v_acc": v_acc, "v_red": 50.0})
    rows = [x for x in ld_pairs([g], patch_px=8).splitlines() if x.startswith("| frozenlake |")]
    cells = [[c.strip() for c in x.strip("|").split("|")][2:6] for x in rows]
    assert cells == [["1", "0", "50.0 / 40.0", "+10.0"], ["1", "mean of 1; the paper's way on 0", "", "**+10.0**"],
                     ["1 (mse, mean)", "0", "30.0 / 40.0", "-10.0"],
                     ["1 (mse, mean)", "mean of 1; the paper's way on 0", "", "**-10.0**"]]


def test_outcomes_split_accuracy_by_the_rule_that_ended_the_episode(raw_params, tmp_path):
    import json

    from mvot.config import parse_params
    from mvot.data import draw_instance
    from mvot.report import ReportError, outcome_table
    from mvot.worlds import outcome

    params = parse_params(raw_params)
    insts = [draw_instance(params, "minibehavior", "test", i) for i in range(16)]
    kinds = [outcome(i) for i in insts]
    assert {k[0] for k in kinds} == set("ABCD") and all(k[0] == i.answer for k, i in zip(kinds, insts, strict=True))
    assert outcome(draw_instance(params, "maze", "test", 0)) in "ABCD"  # a world without finer labels: the answer
    data = tmp_path / "raw"
    (data / "minibehavior").mkdir(parents=True)
    (data / "minibehavior" / "test.jsonl").write_text("".join(json.dumps(i.to_json()) + "\n" for i in insts))
    sweep = tmp_path / "table-minibehavior"
    t = _report_trial(sweep, raw_params, "mvot", 1.0, 0, 0.0, [], task="minibehavior")
    # wrong exactly where a pick-up failed because no printer was next to the agent
    preds = sweep / "trials" / t["trial"] / "eval" / "trial" / "minibehavior" / "predictions.jsonl"
    wrong = "B: pick-up, no printer adjacent"
    preds.write_text("".join(json.dumps({"uid": i.uid, "gold": i.answer, "pred": "D" if k == wrong else i.answer}) + "\n"
                             for i, k in zip(insts, kinds, strict=True)))
    md = outcome_table([sweep], data)
    header = next(x for x in md.splitlines() if x.startswith("| sweep |"))
    line = next(x for x in md.splitlines() if x.startswith("| table-minibehavior |"))
    def split(x):
        return [c.strip() for c in x.strip("|").split("|")]

    cells = dict(zip(split(header), split(line), strict=True))
    n_wrong = kinds.count(wrong)
    assert 0 < n_wrong < len(insts)
    assert cells[wrong] == f"0 / {n_wrong}" and cells["row"] == "MVoT (L_D 1.0)"
    assert float(cells["accuracy"]) == round(100 * (len(insts) - n_wrong) / len(insts), 1)
    for k in set(kinds) - {wrong}:
        assert cells[k] == f"{kinds.count(k)} / {kinds.count(k)}"
    with pytest.raises(ReportError, match="no finished trial scored maze"):
        outcome_table([sweep], data, task="maze")
    preds.write_text(json.dumps({"uid": "minibehavior-test-999999", "gold": "A", "pred": "A"}) + "\n")
    with pytest.raises(ReportError, match="not in .*test.jsonl; the data changed"):
        outcome_table([sweep], data)


def test_combine_pairs_mvot_with_the_cot_trial_that_scored_the_same_task(raw_params, tmp_path):
    from mvot.sweep import combine_trials

    preds = [("A", "A", -0.1), ("B", "C", -1.0)]
    maze_cot = _report_trial(tmp_path / "a", raw_params, "cot", 0.0, 0, 50.0, preds)
    mvot = _report_trial(tmp_path / "b", raw_params, "mvot", 1.0, 0, 50.0, [("A", "C", -2.0), ("B", "B", -0.1)])
    for t, d in ((maze_cot, "a"), (mvot, "b")):
        t["_dir"] = str(tmp_path / d / "trials" / t["trial"])
    # a cot trial of the same seed that scored another task only: not a partner for maze, wherever it stands
    other = maze_cot | {"trial": "cot-frozenlake", "tasks": {"frozenlake": {"accuracy": 40.0}}, "_dir": str(tmp_path / "nowhere")}
    for rows in ([other, maze_cot, mvot], [maze_cot, other, mvot]):
        (row,) = combine_trials(rows, None)
        assert (row["task"], row["seeds"], row["upper_bound"], row["combined"]) == ("maze", 1, 100.0, 100.0)


def test_report_logs_the_merged_table_to_mlflow(raw_params, tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from mvot.cli import main

    d = tmp_path / "table-maze"
    preds = [("A", "A", -0.1), ("B", "C", -1.0)]
    _report_trial(d, raw_params, "cot", 0.0, 0, 50.0, preds)
    _report_trial(d, raw_params, "mvot", 1.0, 0, 100.0, [("A", "A", -0.1), ("B", "B", -0.1)])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # the store's artifacts go under the working directory
    assert main(["report", str(d), "--track"]) == 0
    assert "| maze | MVoT (L_D 1.0) | table-maze | 1 | 100.0 |" in capsys.readouterr().out
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("report").experiment_id])
    assert run.data.tags["sweeps"] == str(d.resolve())
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"results.md", "table_by_size_maze.csv", "table_by_size.png"}
    md = Path(client.download_artifacts(run.info.run_id, "results.md", str(tmp_path))).read_text()
    assert "| maze | upper bound (MVoT + CoT) | table-maze | 1 | 100.0 |" in md


def test_report_draws_the_trials_learning_curves(raw_params, tmp_path):
    from mvot.report import _read_curve, _trial_curve, by_size_tables, learning_curves, load_trials

    d = tmp_path / "table-maze"
    for seed in (0, 1):
        t = _report_trial(d, raw_params, "mvot", 1.0, seed, 90.0, [("A", "A", -0.1)])
        rows = ["step,loss/total,loss/text_ce,loss/image_ce,loss/ld"] + [
            f"{s},1.0,{0.3 / s if seed == 0 else 0.2},{0.1 / s},{'' if s == 10 else 0.05}" for s in (10, 20, 30)]
        (d / "trials" / t["trial"] / "runs" / "trial").mkdir(parents=True)
        (d / "trials" / t["trial"] / "runs" / "trial" / "curve.csv").write_text("\n".join(rows) + "\n")
    written = by_size_tables([d], tmp_path / "plots")
    assert [p.name for p in written] == ["table_by_size_maze.csv", "table_by_size.png", "table_curves.png"]
    assert written[-1].stat().st_size > 0
    c = _read_curve(d / "trials" / t["trial"] / "runs" / "trial" / "curve.csv")
    assert c["step"] == [10.0, 20.0, 30.0] and c["loss/ld"][0] != c["loss/ld"][0]  # empty cell -> NaN
    assert learning_curves([d], tmp_path / "x.png", patch_px=8) is None  # no trial at that setting
    # a trial trained on from seed 1's model continues its curve after seed 1's last step
    e = tmp_path / "table-maze-4800"
    model = d / "trials" / t["trial"] / "runs" / "trial" / "model"
    cont_run = _report_trial(e, raw_params, "mvot", 1.0, 1, 99.0, [("A", "A", -0.1)], pretrained=str(model),
                             grid_pos=0, step_pos=0)["trial"]
    (e / "trials" / cont_run / "runs" / "trial").mkdir(parents=True)
    (e / "trials" / cont_run / "runs" / "trial" / "curve.csv").write_text("step,loss/text_ce\n5,0.01\n15,0.001\n")
    (cont,) = load_trials(e)
    assert _trial_curve(cont)["step"] == [35.0, 45.0] and _trial_curve(load_trials(d)[0])["step"] == [10.0, 20.0, 30.0]
    assert learning_curves([d, e], tmp_path / "y.png").stat().st_size > 0


def test_transitions_find_where_each_trial_left_the_plateau_on_tokens_trained(raw_params, tmp_path, capsys):
    from mvot.cli import main
    from mvot.report import (
        CE_WINDOW_TOKENS,
        ReportError,
        _trailing_median,
        learning_curves,
        transitions,
    )

    def trial(sweep, seed, batch, steps, ce_at, acc, tokens_per_s=None):
        """A finished MVoT trial of ``steps`` steps at ``batch`` tokens (100 s of training), its text CE logged every
        10 steps by ``ce_at`` and, if given, its real tokens per second."""
        t = _report_trial(sweep, raw_params, "mvot", 1.0, seed, acc, [], task="frozenlake")
        d = sweep / "trials" / t["trial"]
        params = yaml.safe_load((d / "params.yaml").read_text())
        params["train"].update(batch_tokens=batch, steps=steps)
        (d / "params.yaml").write_text(yaml.safe_dump(params))
        (d / "runs" / "trial").mkdir(parents=True)
        rate = "" if tokens_per_s is None else ",train/tokens_per_s"
        (d / "runs" / "trial" / "curve.csv").write_text(f"step,loss/text_ce{rate}\n" + "".join(
            f"{s},{ce_at(s)}{'' if tokens_per_s is None else f',{tokens_per_s}'}\n" for s in range(10, steps + 1, 10)))

    big, small = tmp_path / "fl-8k", tmp_path / "fl-2k"
    span = CE_WINDOW_TOKENS // 8192  # 200 steps at 8,192 tokens, 800 at 2,048
    # at 8,192 tokens: on the plateau (0.25) until step 1,000, then 0.1, then 0.001 from step 2,000
    trial(big, 0, 8192, 2400, lambda s: 0.25 if s <= 1000 else 0.1 if s <= 2000 else 0.001, 90.0)
    # at 2,048 tokens: leaves at step 2,000 (4.1M tokens), one spike inside each later window; never solved
    trial(small, 0, 2048, 4800, lambda s: 0.3 if s <= 2000 else 5.0 if s % 400 == 0 else 0.05, 40.0)
    rows = [x for x in transitions([big, small]).splitlines() if x.startswith("| frozenlake |")]
    # the median of the trailing window (20 points) is below 0.2 once half of it is past the drop: (0.1 + 0.25) / 2
    leave_8k = 1000 + span // 2
    assert rows[0] == (f"| frozenlake | fl-8k | MVoT (L_D 1.0) | 0 | 2,400 x 8,192 | {leave_8k:,} / {leave_8k * 8192 / 1e6:.1f} / "
                       f"{leave_8k * 100 / 2400 / 60:.1f} | 2,110 / 17.3 / 1.5 | 0.001 | 90.0 |")
    leave_2k = 2000 + 4 * span // 2 + 10  # one more point: the spike at step 2,400 sits in the upper half
    assert rows[1] == (f"| frozenlake | fl-2k | MVoT (L_D 1.0) | 0 | 4,800 x 2,048 | {leave_2k:,} / {leave_2k * 2048 / 1e6:.1f} / "
                       f"{leave_2k * 100 / 4800 / 60:.1f} | not within the run | 0.050 | 40.0 |")  # spikes do not move a median
    # a curve low from the start counts only once a whole window (200 steps here) has been trained
    early = tmp_path / "fl-early"
    trial(early, 1, 8192, 300, lambda s: 0.001, 99.0)
    assert "| 300 x 8,192 | 200 / 1.6 / 1.1 | 200 / 1.6 / 1.1 |" in transitions([early])
    # with the logged real tokens per second the tokens are real ones, not the padded budget: 5,000/s x 66.7 s
    real = tmp_path / "fl-real"
    trial(real, 1, 8192, 300, lambda s: 0.001, 99.0, tokens_per_s=5000.0)
    assert "| 300 x 8,192 | 200 / 0.3 / 1.1 | 200 / 0.3 / 1.1 |" in transitions([real])
    # a model trained on two tasks has one curve for both: one line, its tasks joined, each task's accuracy
    multi = tmp_path / "multitask"
    trial(multi, 0, 8192, 300, lambda s: 0.001, 97.0)
    row_file = next((multi / "trials").iterdir()) / "row.json"
    row = json.loads(row_file.read_text())
    row["tasks"]["maze"] = {"accuracy": 95.5}
    row_file.write_text(json.dumps(row))
    (line,) = [x for x in transitions([multi]).splitlines() if "multitask" in x]
    assert line.startswith("| frozenlake + maze | multitask |") and line.endswith("| 0.001 | 97.0 / 95.5 |")
    with pytest.raises(ReportError, match="no finished trial kept a training curve"):
        transitions([big], patch_px=8)
    assert main(["report", str(big), str(small), "--transitions", "--plots", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "left its plateau and was solved (trailing median over 1.6M batch tokens below 0.2 and 0.01)" in out and rows[1] in out
    assert learning_curves([big, small], tmp_path / "by-tokens.png").stat().st_size > 0  # two batch sizes: x is tokens
    # the curves are drawn as the table reads them: a trailing median, which one spike does not move
    assert _trailing_median([10, 20, 30, 40], [1.0, 100.0, 1.0, float("nan")], 25) == [1.0, 50.5, 1.0, 50.5]


def test_compactness_study_merges_the_table_sweep_with_other_patch_sizes(raw_params, tmp_path, monkeypatch, capsys):
    from mvot.cli import main
    from mvot.report import ReportError, compactness_table

    table, compact = tmp_path / "table-maze", tmp_path / "table-maze-compact"
    for seed, acc in enumerate((90.0, 96.0)):  # the results table's own MVoT trials, 1 token per cell
        _report_trial(table, raw_params, "mvot", 1.0, seed, acc, [("A", "A", -0.1)])
    _report_trial(table, raw_params, "cot", 0.0, 0, 40.0, [("A", "A", -0.1)])  # another row: not in the study
    _report_trial(compact, raw_params, "mvot", 1.0, 0, 50.0, [("A", "A", -0.1)], patch_px=8, grid_pos=12)
    _report_trial(compact, raw_params, "mvot", 1.0, 0, 30.0, [("A", "A", -0.1)], patch_px=32)
    with pytest.raises(ReportError, match="two or more patch sizes"):
        compactness_table([table])
    md, files = compactness_table([table, compact], tmp_path / "plots")
    lines = [x for x in md.splitlines() if x.startswith("| maze |")]
    assert [x.split(" | ")[1:4] for x in lines] == [["0.25", "9", "32"], ["1", "36", "16"], ["4", "144", "8"]]
    assert "| table-maze | 2 | 93.0 ± 4.2 | 99.0 ± 0.0 |" in lines[1] and "| table-maze-compact | 1 | 50.0 |" in lines[2]
    assert [f.name for f in files] == ["compactness_maze.csv", "compactness.png"] and files[1].stat().st_size > 0
    assert files[0].read_text().splitlines()[1].startswith("0.25,9,32,table-maze-compact,1,30.0")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    assert main(["compactness", str(table), str(compact), "--track"]) == 0
    assert "| maze | 4 | 144 | 8 |" in capsys.readouterr().out
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("report").experiment_id])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"compactness.md", "compactness_maze.csv", "compactness.png"}
    # the same setting in two sweeps is refused, naming both
    _report_trial(compact, raw_params, "mvot", 1.0, 1, 92.0, [("A", "A", -0.1)])
    with pytest.raises(ReportError, match="16-pixel patches was run by both table-maze and table-maze-compact"):
        compactness_table([table, compact])
    # the command: markdown on stdout, a clear error and exit code on bad input
    assert main(["compactness", str(table), str(tmp_path / "nothing")]) != 0
    assert "no finished trial" in capsys.readouterr().err
