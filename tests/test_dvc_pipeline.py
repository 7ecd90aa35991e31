"""`dvc repro` end to end in a throwaway git repository with a tiny profile."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, TASKS, tiny_tokenizer_raw

pytestmark = pytest.mark.slow


def _run(cmd, cwd):
    env = os.environ | {"DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                        "PYTHONPATH": str(cwd), "PREFECT_HOME": str(Path(cwd) / ".prefect")}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory, raw_params):
    d = tmp_path_factory.mktemp("repo")
    for name in ("mvot", "flows", "dvc.yaml", ".dvcignore", ".gitignore"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, d / name)
    (d / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", d / ".dvc" / "config")
    shutil.copy(ROOT / ".dvc" / ".gitignore", d / ".dvc" / ".gitignore")
    raw = tiny_tokenizer_raw(raw_params)
    for task in TASKS:
        raw["generate"][task]["splits"] = {"train": 16, "val": 4, "test": 8}
    (d / "params.yaml").write_text(yaml.safe_dump(raw))
    _run(["git", "init", "-q"], d)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], d)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], d)
    return d


def test_repro_status_push_pull(repo):
    _run(["dvc", "repro"], repo)
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
    # the tokenizer run went to the repository's embedded MLflow store
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tokenizer")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and "fidelity/all/image_fidelity" in runs[0].data.metrics
    train_runs = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert {r.data.tags["run"] for r in train_runs} == {"direct", "mvot"}
    assert all(r.data.tags.get("data_version.data/tokens/maze") for r in train_runs)
    # evaluation logged into the training run of each model
    assert all("test/maze/accuracy" in r.data.metrics and r.data.tags.get("evaluated") == "true" for r in train_runs)
    mvot_run = next(r for r in train_runs if r.data.tags["run"] == "mvot")
    assert "test/minibehavior/drawn_steps" in mvot_run.data.metrics  # V-Acc too, once it draws
    assert client.get_experiment_by_name("evaluate") is not None  # the combined predictor's run
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
