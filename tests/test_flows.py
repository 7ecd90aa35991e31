"""Prefect flows, run against one session-scoped test API."""

import pytest
import yaml

from tests.conftest import tiny_tokenizer_raw


def _params_file(tmp_path, raw_params):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(tiny_tokenizer_raw(raw_params)))
    return str(p)


def test_train_task_logic(tiny_tokens, raw_params, tmp_path):
    from flows.train import train_one

    _, tok_dir, tokens_dir = tiny_tokens
    out = train_one.fn(_params_file(tmp_path, raw_params), "direct", str(tokens_dir), str(tok_dir), str(tmp_path / "runs"), False)
    assert out["step"] == 3 and out["mlflow_run_id"] is None
    assert (tmp_path / "runs" / "direct" / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_train_task_continues_a_cut_run_in_its_mlflow_run(tiny_tokens, raw_params, tmp_path, monkeypatch, capsys):
    """The DVC stage's flow, run again after its run was killed between two checkpoints and
    its output folder cleared (as `dvc repro` clears it), continues from the last checkpoint:
    the same weights as an uninterrupted run, the whole curve, one MLflow run (the steps
    between the checkpoint and the kill logged twice there), a params change outside the
    training recorded; the checkpoint goes once the model is saved. A checkpoint of other
    params, or with --no-resume, is not continued."""
    import csv
    import json
    import shutil

    import mlflow
    import torch
    from safetensors.torch import load_file

    from flows.train import train_one
    from mvot.config import load_params
    from mvot.runs import train_run
    from mvot.tracking import start_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    _, tok_dir, tokens_dir = tiny_tokens
    raw = tiny_tokenizer_raw(raw_params)
    raw["train"] |= {"steps": 6, "checkpoint_every": 2, "log_every": 1}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    args = (str(params_file), "mvot", str(tokens_dir), str(tok_dir))

    whole = train_one.fn(*args, str(tmp_path / "whole"), False, str(tmp_path / "ck-whole"))
    assert "resumed_from_step" not in whole and not (tmp_path / "ck-whole" / "mvot").exists()

    ckpt = tmp_path / "ck" / "mvot"
    with pytest.raises(KeyboardInterrupt), start_run("train", "mvot") as tracker:  # the first flow run
        logged = tracker.log_metrics

        def killed_at_4(metrics, step=None):
            if step == 4:
                raise KeyboardInterrupt  # after step 3 was logged, with the last checkpoint at step 2
            logged(metrics, step)

        tracker.log_metrics = killed_at_4
        first_id = tracker.run_id
        train_run(load_params(params_file), "mvot", tokens_dir, tok_dir, tmp_path / "runs", tracker, progress=False,
                  checkpoint_dir=ckpt, keep_checkpoint=False)
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2
    shutil.rmtree(tmp_path / "runs" / "mvot")
    train_run(load_params(params_file), "mvot", tokens_dir, tok_dir, tmp_path / "runs", checkpoint_dir=ckpt, progress=False,
              resume=True, stop_after=2)  # an untracked resume in between: its checkpoint still names the MLflow run
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 4 and state["mlflow_run_id"] == first_id
    shutil.rmtree(tmp_path / "runs" / "mvot")
    limit = raw["evaluate"]["limit"]
    raw["evaluate"]["limit"] = limit + 3  # not part of the training: the run continues, and records the change
    params_file.write_text(yaml.safe_dump(raw))
    out = train_one.fn(*args, str(tmp_path / "runs"), True, str(tmp_path / "ck"))
    assert out["resumed_from_step"] == 4 and out["step"] == 6 and out["mlflow_run_id"] == first_id
    assert out["tokens"] == whole["tokens"]  # counted over both processes
    assert "train mvot: resuming from step 4 of 6" in capsys.readouterr().err
    assert not ckpt.exists()
    a = load_file(str(tmp_path / "whole" / "mvot" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "runs" / "mvot" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with (tmp_path / "runs" / "mvot" / "curve.csv").open() as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4, 5, 6]
    history = mlflow.MlflowClient().get_metric_history(first_id, "loss/total")
    assert sorted(m.step for m in history) == [1, 2, 3, 5, 6]  # steps 3 and 4 again untracked
    run = mlflow.get_run(first_id)
    assert run.info.status == "FINISHED" and run.data.params["evaluate.limit"] == str(limit)
    changed = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/params_changed_on_resume.json")
    assert changed == {"evaluate.limit": {"logged": str(limit), "now": str(limit + 3)}}

    train_run(load_params(params_file), "mvot", tokens_dir, tok_dir, tmp_path / "runs", checkpoint_dir=ckpt,
              progress=False, stop_after=2)  # cut off again, then the params change
    raw["train"]["lr"] = raw["train"]["lr"] / 2
    params_file.write_text(yaml.safe_dump(raw))
    fresh = train_one.fn(*args, str(tmp_path / "runs"), False, str(tmp_path / "ck"))
    assert "resumed_from_step" not in fresh and fresh["step"] == 6 and not ckpt.exists()
    assert "train mvot: not resuming (the checkpoint in" in capsys.readouterr().err
    train_run(load_params(params_file), "mvot", tokens_dir, tok_dir, tmp_path / "runs", checkpoint_dir=ckpt,
              progress=False, stop_after=2)
    again = train_one.fn(*args, str(tmp_path / "runs"), False, str(tmp_path / "ck"), False)
    assert "resumed_from_step" not in again and "not resuming (--no-resume)" in capsys.readouterr().err


@pytest.mark.slow
def test_train_flow_runs_every_run(prefect_harness, tiny_tokens, raw_params, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.train import train_flow

    _, tok_dir, tokens_dir = tiny_tokens
    results = train_flow(_params_file(tmp_path, raw_params), None, str(tokens_dir), str(tok_dir), str(tmp_path / "runs"), False)
    assert set(results) == {"direct", "mvot"}
    assert all((tmp_path / "runs" / r / "model" / "model.safetensors").is_file() for r in results)

    import asyncio

    async def artifact():
        async with get_client() as client:
            return await client.read_latest_artifacts()

    keys = {a.key for a in asyncio.run(artifact())}
    assert "train-runs" in keys


def test_train_flow_rejects_unknown_runs(prefect_harness, raw_params, tmp_path, capsys):
    from flows.train import main, train_flow

    with pytest.raises(ValueError, match="unknown run 'nope'"):
        train_flow(_params_file(tmp_path, raw_params), ["nope"], track=False)
    assert main(["--params", _params_file(tmp_path, raw_params), "--run", "nope", "--no-track"]) == 1  # no traceback
    assert "flows.train: error: unknown run 'nope'" in capsys.readouterr().err


def test_start_run_continues_a_run_unless_gone(tmp_path):
    """What a resumed training relies on: an existing MLflow run is continued (and says so);
    one deleted since, or from another store, gives way to a new run."""
    from mlflow.tracking import MlflowClient

    from mvot.tracking import start_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with start_run("train", "r", root=tmp_path, uri=uri) as first:
        assert not first.continued
    with start_run("train", "r", root=tmp_path, uri=uri, run_id=first.run_id) as again:
        assert again.continued and again.run_id == first.run_id

    import mlflow

    def changed_on_resume(params):  # a resume logs only new keys; differing values go to the artifact
        with start_run("train", "r", root=tmp_path, uri=uri, run_id=first.run_id) as t:
            t.log_params(params)
        names = {a.path for a in MlflowClient(uri).list_artifacts(first.run_id)}
        if "params_changed_on_resume.json" in names:
            uri_of = MlflowClient(uri).get_run(first.run_id).info.artifact_uri
            return mlflow.artifacts.load_dict(f"{uri_of}/params_changed_on_resume.json")
        return None

    with start_run("train", "r", root=tmp_path, uri=uri, run_id=first.run_id) as t:
        t.log_params({"evaluate": {"limit": 100}})
    assert changed_on_resume({"evaluate": {"limit": 100}}) is None  # nothing differs: no artifact
    assert changed_on_resume({"evaluate": {"limit": 7}, "new": 1}) == {"evaluate.limit": {"logged": "100", "now": "7"}}
    assert MlflowClient(uri).get_run(first.run_id).data.params == {"evaluate.limit": "100", "new": "1"}
    assert changed_on_resume({"evaluate": {"limit": 100}}) == {}  # reverted: the record says so
    MlflowClient(uri).delete_run(first.run_id)
    for gone in (first.run_id, "0" * 32):
        with start_run("train", "r", root=tmp_path, uri=uri, run_id=gone) as new:
            assert not new.continued and new.run_id not in (first.run_id, gone)
