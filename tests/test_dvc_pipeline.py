"""The whole pipeline end to end: `python -m flows.pipeline --profile smoke` (dvc repro of
every stage through the Prefect flows, then promotion) in its own workspace, tracked by a
real `mlflow server` on 127.0.0.1; then DVC's status, push/pull and partial re-runs there."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, TASKS, free_port, stop, wait_healthy

pytestmark = pytest.mark.slow


def _env(cwd, **extra):
    return os.environ | {"DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                         "PYTHONPATH": str(cwd), "PREFECT_HOME": str(Path(cwd) / ".prefect")} | extra


def _run(cmd, cwd, **extra):
    res = subprocess.run(cmd, cwd=cwd, env=_env(cwd, **extra), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free local port, sqlite backend, temp artifact root; stopped after."""
    d = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}", "--artifacts-destination", str(d / "artifacts"),
         "--workers", "1"],
        stdout=(d / "server.log").open("w"), stderr=subprocess.STDOUT, env=os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true"})
    uri = f"http://127.0.0.1:{port}"
    wait_healthy(uri + "/health", proc, d / "server.log", "mlflow server", timeout=180)
    yield uri
    stop(proc)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mlflow_server):
    d = tmp_path_factory.mktemp("smoke") / "work"
    out = _run([sys.executable, "-m", "flows.pipeline", "--profile", "smoke", "--workdir", str(d)], ROOT,
               MLFLOW_TRACKING_URI=mlflow_server, PREFECT_HOME=str(d.parent / ".prefect"))
    assert "| frozenlake | mvot | 4 |" in out and "registry: version 1 -> champion" in out
    return d


def test_pipeline_status_push_pull(repo, mlflow_server):
    for task in TASKS:
        assert (repo / "data" / "raw" / task / "test.jsonl").is_file()
        assert (repo / "data" / "contact" / f"{task}.png").is_file()
        assert (repo / "data" / "tokens" / task / "train" / "mvot" / "tokens.npy").is_file()
    assert (repo / "models" / "tokenizer" / "vq.safetensors").is_file()
    for run in ("direct", "mvot"):  # the tiny profile's train.runs, each through the Prefect flow
        assert (repo / "models" / "runs" / run / "model" / "model.safetensors").is_file()
    assert "up to date" in _run(["dvc", "status"], repo).lower()
    again = _run(["dvc", "repro"], repo)
    assert "didn't change" in again and "Running stage" not in again
    shown = _run(["dvc", "metrics", "show"], repo)
    assert "data/stats/maze.json" in shown and "metrics/tokenizer.json" in shown
    # every trained run scored on every task, the combination of evaluate.combine beside them
    for task in TASKS:
        assert f"metrics/{task}/mvot.json" in shown and f"metrics/{task}/combined.json" in shown
        assert (repo / "plots" / f"accuracy_by_size_{task}.csv").read_text().startswith("size,direct,mvot")
    assert "v_acc" in (repo / "metrics" / "maze" / "mvot.json").read_text()
    assert "v_acc" not in (repo / "metrics" / "maze" / "direct.json").read_text()  # Direct draws nothing
    # every run went to the tracking server: tokenizer, training, evaluation, combination, registry
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("tokenizer").experiment_id])
    assert len(runs) == 1 and "fidelity/all/image_fidelity" in runs[0].data.metrics
    train_runs = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert {r.data.tags["run"] for r in train_runs} == {"direct", "mvot"}
    assert all(r.data.tags.get("data_version.data/tokens/maze") for r in train_runs)
    # evaluation logged into the training run of each model
    assert all("test/maze/accuracy" in r.data.metrics and r.data.tags.get("evaluated") == "true" for r in train_runs)
    mvot_run = next(r for r in train_runs if r.data.tags["run"] == "mvot")
    assert "test/minibehavior/drawn_steps" in mvot_run.data.metrics  # V-Acc too, once it draws
    assert client.get_experiment_by_name("evaluate") is not None  # the combined predictor's run
    # the candidate (promote.run = mvot) registered and, the registry being empty, champion
    mv = client.get_model_version_by_alias("mvot", "champion")
    assert mv.run_id == mvot_run.info.run_id and mv.tags["promotion.decision"] == "champion"
    assert client.get_model_version_by_alias("mvot", "challenger").version == mv.version
    # a second pipeline run reruns nothing and registers nothing new
    out = _run([sys.executable, "-m", "flows.pipeline", "--profile", "smoke", "--workdir", str(repo)], ROOT,
               MLFLOW_TRACKING_URI=mlflow_server, PREFECT_HOME=str(repo.parent / ".prefect"))
    assert "Running stage" not in out and "already the champion" in out
    assert client.get_model_version_by_alias("mvot", "champion").version == mv.version
    # the default remote is a folder inside the working tree, ignored by git
    _run(["dvc", "push"], repo)
    assert any((repo / ".dvcstore").rglob("*"))
    shutil.rmtree(repo / "data" / "raw")
    _run(["dvc", "pull"], repo)
    assert (repo / "data" / "raw" / "maze" / "train.jsonl").is_file()
    assert "up to date" in _run(["dvc", "status"], repo).lower()


def test_a_params_change_reruns_only_its_task(repo):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["generate"]["maze"]["steps"] = [1, 6]
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))
    out = _run(["dvc", "repro", "generate"], repo)
    assert "generate@maze" in out and "Running stage 'generate@frozenlake'" not in out
    status = _run(["dvc", "status"], repo)
    assert "tokenizer" in status and "tokenize@maze" in status and "generate" not in status


def test_unreachable_tracking_server_fails_before_training(tmp_path):
    d = tmp_path / "work"
    res = subprocess.run([sys.executable, "-m", "flows.pipeline", "--profile", "smoke", "--workdir", str(d)], cwd=ROOT,
                         env=_env(ROOT, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}",
                                  PREFECT_HOME=str(tmp_path / ".prefect")),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 1 and "unreachable" in res.stderr
    assert not (d / "data" / "raw").exists() and not (d / "models").exists()


def test_bad_profile_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: -5\n")
    res = subprocess.run([sys.executable, "-m", "flows.pipeline", "--profile", str(bad), "--workdir", str(tmp_path / "w")],
                         cwd=ROOT, env=_env(ROOT, PREFECT_HOME=str(tmp_path / ".prefect")), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 1 and "train.steps" in res.stderr and not (tmp_path / "w").exists()
