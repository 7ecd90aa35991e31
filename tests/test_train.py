import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mvot.config import parse_params
from mvot.train import (
    TrainError,
    epoch_pool,
    load_token_data,
    make_batches,
    padding_share,
    train,
    training_fingerprint,
)
from tests.conftest import tiny_tokenizer_raw


def _params(raw_params, **train):
    """Tiny training params; the run to train is called "run"."""
    raw = tiny_tokenizer_raw(raw_params)
    spec = {"variant": train.pop("variant", "mvot"), "ld_weight": train.pop("ld_weight", 1.0)}
    raw["train"]["runs"] = {"run": spec}
    raw["train"] |= {"model": {"d_model": 64, "n_layer": 2, "n_head": 2, "d_ff": 128, "max_len": 2048},
                     "batch_tokens": 4096, "warmup": 5, "log_every": 5, "checkpoint_every": 1000} | train
    return parse_params(raw)


def test_bucketing_keeps_padding_low():
    rng = np.random.default_rng(0)
    lengths = rng.integers(100, 1800, size=3000)
    batches = make_batches(lengths, 8192, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(3000))
    assert all(len(b) * lengths[b].max() <= 8192 for b in batches)
    assert padding_share(lengths, batches) < 0.10


def test_tiny_model_overfits_a_handful_of_mvot_traces(tiny_tokens, raw_params, tmp_path):
    _, tok_dir, tokens_dir = tiny_tokens
    p = _params(raw_params, tasks=["frozenlake"], steps=150, lr=0.01, augment=False)
    # keep 6 traces: overwrite the train split by a view of the first 6 sequences
    data = load_token_data(tokens_dir, ["frozenlake"], "train", "mvot")
    few = tmp_path / "tokens"
    src = tokens_dir / "frozenlake"
    import shutil

    shutil.copytree(src, few / "frozenlake")
    d = few / "frozenlake" / "train" / "mvot"
    off = np.load(d / "offsets.npy")[:7]
    for name in ("tokens", "supervised", "image"):
        np.save(d / f"{name}.npy", np.load(d / f"{name}.npy")[: off[-1]])
    np.save(d / "offsets.npy", off)
    for name in ("initial_pos", "initial_codes"):
        f = few / "frozenlake" / "train" / f"{name}.npy"
        np.save(f, np.load(f)[:6])
    assert len(data.seqs) > 6
    losses = []
    train(p, "run", few, tok_dir, tmp_path / "run", log=lambda m, s: losses.append(m["loss/total"]), progress=False)
    assert losses[-1] < 0.1 * losses[0], losses


def test_progress_bar_into_a_log_file_draws_rarely(tiny_tokens, raw_params, tmp_path, capsys):
    """Not on a terminal (a sweep trial's log.txt) the bar draws at most every 30 s: a short
    run draws its start and its end, not a line per step."""
    _, tok_dir, tokens_dir = tiny_tokens
    p = _params(raw_params, tasks=["maze"], steps=6, lr=0.003)
    train(p, "run", tokens_dir, tok_dir, tmp_path / "run")
    err = capsys.readouterr().err
    draws = err.count("train run:")
    assert 1 <= draws <= 3 and "6/6" in err, err


def test_progress_bar_interval_is_not_undercut_by_tqdms_monitor(monkeypatch):
    """tqdm's monitor thread redraws a bar that has been quiet for ``maxinterval`` (10 s by
    default): into a log file that must not come before the 30 s interval; on a terminal
    the bar keeps its short one."""
    import io

    from mvot import progress

    monkeypatch.setattr(progress.sys, "stderr", io.StringIO())  # not a terminal
    with progress.progress_bar(10, "t", "step", 1.0, file=io.StringIO()) as bar:
        assert bar.mininterval == progress.LOG_INTERVAL <= bar.maxinterval
    tty = io.StringIO()
    tty.isatty = lambda: True
    monkeypatch.setattr(progress.sys, "stderr", tty)
    with progress.progress_bar(10, "t", "step", 1.0, file=io.StringIO()) as bar:
        assert bar.mininterval == 1.0 and bar.maxinterval >= 1.0


@pytest.mark.parametrize("grid_pos", [0, 6])
def test_resume_continues_exactly(tiny_tokens, raw_params, tmp_path, grid_pos):
    _, tok_dir, tokens_dir = tiny_tokens
    p = _params(raw_params, tasks=["maze"], steps=8, lr=0.003,
                model={"d_model": 64, "n_layer": 2, "n_head": 2, "d_ff": 128, "max_len": 2048, "grid_pos": grid_pos})
    train(p, "run", tokens_dir, tok_dir, tmp_path / "full", progress=False)
    first = train(p, "run", tokens_dir, tok_dir, tmp_path / "cut", stop_after=3, progress=False)
    assert not (tmp_path / "cut" / "model").exists() and "resumed_from_step" not in first
    rest = train(p, "run", tokens_dir, tok_dir, tmp_path / "cut", resume=True, progress=False)
    # the summary counts the training seconds of both processes, and says where the second began
    assert rest["resumed_from_step"] == 3 and rest["step"] == 8 and rest["seconds"] >= first["seconds"]
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("grid_row") for k in a) == (grid_pos > 0)
    if grid_pos:  # the 2D positions were trained, and the saved model loads for decoding
        from mvot.generate import load_model

        assert a["grid_row.weight"][1:].abs().sum() > 0 and a["grid_row.weight"][0].abs().sum() == 0
        assert load_model(tmp_path / "full" / "model").model.config.grid_pos == 6


def test_loss_terms_follow_the_variant(tiny_tokens, raw_params, tmp_path):
    _, tok_dir, tokens_dir = tiny_tokens
    seen = {}
    for variant, w in (("mvot", 1.0), ("interleaved", 0.0), ("mvot", 0.0)):
        p = _params(raw_params, tasks=["maze"], steps=2, log_every=1, variant=variant, ld_weight=w)
        logs = []
        train(p, "run", tokens_dir, tok_dir, tmp_path / f"{variant}{w}", log=lambda m, s, logs=logs: logs.append(m), progress=False)
        seen[(variant, w)] = logs[-1]
    assert seen[("mvot", 1.0)]["loss/image_ce"] > 0 and seen[("mvot", 1.0)]["loss/ld"] > 0
    assert seen[("interleaved", 0.0)]["loss/image_ce"] == 0 and "loss/ld" not in seen[("interleaved", 0.0)]
    assert "loss/ld" not in seen[("mvot", 0.0)] and seen[("mvot", 0.0)]["loss/image_ce"] > 0


def test_ld_joins_from_its_step(tiny_tokens, raw_params, tmp_path):
    _, tok_dir, tokens_dir = tiny_tokens
    p = _params(raw_params, tasks=["maze"], steps=4, log_every=1, ld={"distance": "euclidean", "reduction": "mean", "from_step": 2})
    logs = []
    train(p, "run", tokens_dir, tok_dir, tmp_path / "late", log=lambda m, s: logs.append((s, m)), progress=False)
    assert [("loss/ld" in m) for _, m in logs] == [False, False, True, True]  # steps 1-2 without L_D, 3-4 with
    with pytest.raises(ValueError, match="ld.from_step = 4 is not below steps = 4"):
        _params(raw_params, steps=4, ld={"distance": "euclidean", "reduction": "mean", "from_step": 4})


def test_ld_through_the_head_trains_and_logs_it(tiny_tokens, raw_params, tmp_path):
    """train.ld.through = head: the first step's L_D is the same number as with the full
    gradient (same weights, same batch); the runs then differ; a bad value is refused by name."""
    from mvot.config import ConfigError

    _, tok_dir, tokens_dir = tiny_tokens
    logs = {}
    for through in ("model", "head"):
        p = _params(raw_params, tasks=["maze"], steps=3, log_every=1, ld={"distance": "euclidean", "reduction": "mean",
                                                                             "through": through})
        seen = []
        train(p, "run", tokens_dir, tok_dir, tmp_path / through, log=lambda m, s, seen=seen: seen.append(m), progress=False)
        logs[through] = seen
    assert logs["head"][0]["loss/ld"] == pytest.approx(logs["model"][0]["loss/ld"], rel=1e-5)
    assert logs["head"][-1]["loss/total"] != logs["model"][-1]["loss/total"]
    assert (tmp_path / "head" / "model" / "model.safetensors").is_file()
    bad = raw_params | {"train": raw_params["train"] | {"ld": raw_params["train"]["ld"] | {"through": "trunk"}}}
    with pytest.raises(ConfigError, match="train.ld.through"):
        parse_params(bad)


def test_oversample_repeats_the_named_outcomes(tiny_tokens, tiny_generated, raw_params, tmp_path):
    from mvot.data import read_split
    from mvot.worlds import outcome

    _, tok_dir, tokens_dir = tiny_tokens
    raw = tiny_generated[0] / "raw"
    data = load_token_data(tokens_dir, ["minibehavior", "maze"], "train", "cot")
    assert epoch_pool(data, tokens_dir, raw, {}).tolist() == list(range(len(data.seqs)))
    labels = [outcome(i) for i in read_split(raw / "minibehavior", "train")]
    kind = "B: pick-up, no printer adjacent"
    assert kind in labels
    pool = epoch_pool(data, tokens_dir, raw, {kind: 3, "A: put down on the table": 2})
    seen = np.bincount(pool, minlength=len(data.seqs))
    want = [{kind: 3, "A: put down on the table": 2}.get(lab, 1) for lab in labels] + [1] * (len(data.seqs) - len(labels))
    assert seen.tolist() == want and 3 in want and 2 in want
    with pytest.raises(TrainError, match="no training instance of minibehavior, maze ends with outcome 'B: pick-up'; the outcomes are: A, A: put down"):
        epoch_pool(data, tokens_dir, raw, {"B: pick-up": 2})
    # token arrays from other data than the raw split: named, with the fix
    other = tmp_path / "tokens"
    import shutil

    shutil.copytree(tokens_dir / "maze", other / "maze")
    (other / "maze" / "train" / "ids.txt").write_text("x\n" * len(load_token_data(other, ["maze"], "train", "cot").seqs))
    maze = load_token_data(other, ["maze"], "train", "cot")
    with pytest.raises(TrainError, match="instance 'x' is not in .*maze/train.jsonl"):
        epoch_pool(maze, other, raw, {"D": 2})
    (other / "maze" / "train" / "ids.txt").write_text("x\n")
    with pytest.raises(TrainError, match="lists 1 instances for .* token sequences; run `dvc repro -f tokenize`"):
        epoch_pool(maze, other, raw, {"D": 2})
    # training takes the repeats: an epoch has more batches, and a run trains
    p = _params(raw_params, tasks=["minibehavior"], steps=2, variant="cot", ld_weight=0.0, oversample={kind: 4})
    plain = train(_params(raw_params, tasks=["minibehavior"], steps=2, variant="cot", ld_weight=0.0), "run", tokens_dir, tok_dir,
                  tmp_path / "plain", progress=False, raw_dir=raw)
    more = train(p, "run", tokens_dir, tok_dir, tmp_path / "more", progress=False, raw_dir=raw)
    assert more["sequences_per_epoch"] == plain["sequences"] + 3 * labels.count(kind) == plain["sequences_per_epoch"] + 3 * labels.count(kind)
    assert more["batches_per_epoch"] > plain["batches_per_epoch"] and (tmp_path / "more" / "model").is_dir()


def test_resume_only_from_a_checkpoint_of_the_same_training(tiny_tokens, raw_params, tmp_path):
    """A checkpoint carries the fingerprint of what the run's steps depend on, in parts: other
    params, token arrays or tokenizer change it (settings that do not change the steps do not),
    and an explicit resume from it is refused, naming what changed; a checkpoint written before
    fingerprints existed is taken as it is."""
    import json
    import shutil

    _, tok_dir, tokens_dir = tiny_tokens
    p = _params(raw_params, tasks=["maze"], steps=5, lr=0.003)
    fp = training_fingerprint(p, "run", tokens_dir, tok_dir)
    assert fp == training_fingerprint(p, "run", tokens_dir, tok_dir)
    assert fp == training_fingerprint(_params(raw_params, tasks=["maze"], steps=5, lr=0.003, checkpoint_every=7, log_every=3),
                                      "run", tokens_dir, tok_dir)

    def changed(other):
        return [k for k in fp if other[k] != fp[k]]

    assert changed(training_fingerprint(_params(raw_params, tasks=["maze"], steps=5, lr=0.002), "run", tokens_dir, tok_dir)) == ["params"]
    assert changed(training_fingerprint(_params(raw_params, tasks=["maze", "frozenlake"], steps=5, lr=0.003), "run", tokens_dir,
                                        tok_dir)) == ["params", "tokens"]
    other_tokens, other_tok = tmp_path / "tokens", tmp_path / "tok"
    shutil.copytree(tokens_dir / "maze", other_tokens / "maze")
    shutil.copytree(tok_dir, other_tok)
    assert fp == training_fingerprint(p, "run", other_tokens, other_tok)  # contents, not paths
    f = other_tokens / "maze" / "train" / "cot" / "offsets.npy"  # another variant's arrays: not what this run reads
    f.write_bytes(f.read_bytes() + b"\0")
    assert fp == training_fingerprint(p, "run", other_tokens, tok_dir)
    f = other_tokens / "maze" / "train" / "mvot" / "tokens.npy"
    f.write_bytes(f.read_bytes()[:-1] + bytes([f.read_bytes()[-1] ^ 1]))
    assert changed(training_fingerprint(p, "run", other_tokens, tok_dir)) == ["tokens"]
    (other_tok / "vocab.json").write_text((other_tok / "vocab.json").read_text() + " ")
    assert changed(training_fingerprint(p, "run", tokens_dir, other_tok)) == ["tokenizer"]

    train(p, "run", tokens_dir, tok_dir, tmp_path / "cut", stop_after=2, progress=False)
    state_file = tmp_path / "cut" / "checkpoint" / "state.json"
    assert json.loads(state_file.read_text())["fingerprint"] == fp
    with pytest.raises(TrainError, match=r"cannot resume: the checkpoint in .* \(step 2\) is of another training: its "
                                         r"tokenizer changed since; start afresh .*--no-resume"):
        train(p, "run", tokens_dir, other_tok, tmp_path / "cut", resume=True, progress=False)
    legacy = json.loads(state_file.read_text())
    del legacy["fingerprint"]
    state_file.write_text(json.dumps(legacy))
    assert train(p, "run", tokens_dir, tok_dir, tmp_path / "cut", resume=True, progress=False)["resumed_from_step"] == 2


def test_checkpoint_swaps_survive_a_kill_at_any_point(tmp_path):
    """A checkpoint is replaced by two renames and deleted by a rename first: a kill between
    them leaves the newer whole checkpoint to recover, a half-written one is never taken."""
    import json
    import shutil

    from mvot.checkpoint import install, recover, remove, resumable

    fp = {"params": "p"}

    def write(d, step, whole=True):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"w")
        (d / "optimizer.pt").write_bytes(b"o")
        if whole:
            (d / "state.json").write_text(json.dumps({"step": step, "fingerprint": fp}))

    ck = tmp_path / "checkpoint"
    tmp, old = tmp_path / "checkpoint.tmp", tmp_path / "checkpoint.old"
    write(ck, 2)
    write(tmp, 4)
    install(tmp, ck)
    assert resumable(ck, fp)[0]["step"] == 4 and not tmp.exists() and not old.exists()
    write(tmp, 6)
    ck.rename(old)  # killed between the two renames of the next install
    assert resumable(ck, fp)[0]["step"] == 6  # the new one, recovered
    shutil.rmtree(ck)
    shutil.rmtree(old)
    write(old, 6)
    write(tmp, 8, whole=False)  # killed while writing the next one, after the old was moved aside
    recover(ck)
    assert resumable(ck, fp)[0]["step"] == 6
    (ck / "optimizer.pt").unlink()
    assert resumable(ck, fp) == (None, f"the checkpoint in {ck} is incomplete (optimizer.pt missing)")
    assert resumable(ck, {"params": "q"})[0] is None
    write(tmp_path / "c2", 2)
    assert "its params changed since" in resumable(tmp_path / "c2", {"params": "q"})[1]
    shutil.rmtree(tmp)  # the half-written one
    write(tmp, 10)
    (ck / "model.safetensors").unlink()  # half deleted in place beside a whole new one (as swaps once were)
    assert resumable(ck, fp)[0]["step"] == 10
    write(tmp, 12)
    write(old, 8)
    remove(ck)
    assert not any(p.name.startswith("checkpoint") for p in tmp_path.iterdir())
    assert resumable(ck, fp) == (None, f"no checkpoint in {ck}")


def test_bad_resume_and_limits(tiny_tokens, raw_params, tmp_path):
    _, tok_dir, tokens_dir = tiny_tokens
    p = _params(raw_params, tasks=["maze"], steps=2)
    with pytest.raises(TrainError, match="no checkpoint to resume from"):
        train(p, "run", tokens_dir, tok_dir, tmp_path / "none", resume=True, progress=False)
    (tmp_path / "half" / "checkpoint").mkdir(parents=True)
    with pytest.raises(TrainError, match="incomplete checkpoint"):
        train(p, "run", tokens_dir, tok_dir, tmp_path / "half", resume=True, progress=False)
    with pytest.raises(TrainError, match="unknown run 'nope'; params.yaml train.runs has: run"):
        train(p, "nope", tokens_dir, tok_dir, tmp_path / "none", progress=False)
    small = _params(raw_params, tasks=["minibehavior"], steps=2, batch_tokens=256)
    with pytest.raises(TrainError, match="batch_tokens = 256 is below the longest sequence"):
        train(small, "run", tokens_dir, tok_dir, tmp_path / "x", progress=False)


def test_cli_train_logs_to_mlflow(tiny_tokens, tiny_generated, raw_params, tmp_path, monkeypatch, capsys):
    import yaml
    from mlflow.tracking import MlflowClient

    from mvot.cli import main
    from tests.conftest import tiny_tokenizer_raw

    _, tok_dir, tokens_dir = tiny_tokens
    raw = tiny_tokenizer_raw(raw_params)
    raw["train"] |= {"tasks": ["maze"], "steps": 3, "log_every": 1, "warmup": 1, "batch_tokens": 4096,
                     "model": {"d_model": 32, "n_layer": 1, "n_head": 2, "d_ff": 64, "max_len": 2048}, "oversample": {"A": 2}}
    raw["train"]["runs"] = {"mvot": {"variant": "mvot", "ld_weight": 1.0}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code = main(["--params", str(tmp_path / "params.yaml"), "train", "--tokens", str(tokens_dir), "--tokenizer", str(tok_dir),
                 "--raw", str(tiny_generated[0] / "raw"), "--out", str(tmp_path / "runs")])
    assert code == 0
    assert (tmp_path / "runs" / "mvot" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "mvot" / "model" / "tokenizer" / "vocab.json").is_file()
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("train").experiment_id])[0]
    assert run.data.tags["variant"] == "mvot" and run.data.tags["ld_distance"] == "euclidean" and run.data.tags["run"] == "mvot"
    assert run.data.params["train.model.d_model"] == "32" and run.data.params["train.oversample.A"] == "2"
    # outcome labels as param keys: MLflow refuses the comma of MINIBEHAVIOR's
    from mvot.tracking import mlflow_key

    assert mlflow_key("train.oversample.B: pick-up, no printer adjacent") == "train.oversample.B: pick-up_ no printer adjacent"
    history = client.get_metric_history(run.info.run_id, "loss/total")
    assert [m.step for m in history] == [1, 2, 3]
    assert "loss/ld" in run.data.metrics and "padding_share" in run.data.metrics
    import torch as _torch

    assert run.data.tags["device"] == "cpu" and run.data.tags["torch"] == _torch.__version__
    assert run.data.tags["hardware"].endswith(_torch.backends.cpu.get_cpu_capability())  # the chip it trained on
    # the model is a pyfunc model that answers task instances
    import json

    import mlflow.pyfunc

    tracking = json.loads((tmp_path / "runs" / "mvot" / "tracking.json").read_text())
    assert tracking["run_id"] == run.info.run_id
    curve = (tmp_path / "runs" / "mvot" / "curve.csv").read_text().splitlines()
    assert curve[0].startswith("step,loss/total") and [r.split(",")[0] for r in curve[1:]] == ["1", "2", "3"]
    raw_dir = tiny_generated[0] / "raw"
    instance = json.loads((raw_dir / "maze" / "test.jsonl").read_text().splitlines()[0])
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = mlflow.pyfunc.load_model(tracking["model_uri"]).predict([instance])
    assert not [w for w in caught if "type hint" in str(w.message).lower()]  # predict checks its own inputs
    from mlflow.models import Model

    flavor = Model.load(tracking["model_uri"]).flavors["python_function"]
    assert flavor.get("model_code_path", "").endswith("mlflow_model.py") and "python_model" not in flavor  # from code, not pickled
    from mvot.worlds import instance_from_json

    assert list(out["uid"]) == [instance_from_json(instance).uid]
    assert set(out.columns) >= {"uid", "answer", "text", "thoughts"}

    # `--resume` (what a sweep runs for a trial cut off mid-training) continues the checkpoint's MLflow run
    args = ["--params", str(tmp_path / "params.yaml"), "train", "--tokens", str(tokens_dir), "--tokenizer", str(tok_dir),
            "--raw", str(raw_dir), "--out", str(tmp_path / "runs"), "--resume"]
    client.set_terminated(run.info.run_id, status="KILLED")  # as a stopped sweep leaves it
    capsys.readouterr()
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["resumed_from_step"] == 3
    runs = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id] and runs[0].info.status == "FINISHED"
    # ... and a checkpoint of another training is refused before any run opens
    raw["train"]["lr"] /= 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert main(args) == 1
    assert "cannot resume mvot: the checkpoint in" in capsys.readouterr().err
    assert len(client.search_runs([client.get_experiment_by_name("train").experiment_id])) == 1
    # every run is checked before the first trains: here the second has no checkpoint
    raw["train"]["lr"] *= 2
    raw["train"]["runs"]["other"] = {"variant": "cot", "ld_weight": 0.0}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert main(args) == 1
    out = capsys.readouterr()
    assert "cannot resume other: no checkpoint in" in out.err and out.out == ""


def test_unreachable_tracking_server_fails_fast(tiny_tokens, monkeypatch, capsys):
    from mvot.cli import main

    _, tok_dir, tokens_dir = tiny_tokens
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    code = main(["train", "--run", "mvot", "--tokens", str(tokens_dir), "--tokenizer", str(tok_dir), "--out", "/nonexistent/runs"])
    assert code == 1
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tiny_tokens, raw_params, tmp_path):
    """2 processes x grad_accum 1 (gloo, DDP) = 1 process x grad_accum 2: same losses, same weights."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    from tests.conftest import ROOT

    _, tok_dir, tokens_dir = tiny_tokens
    runs = {}
    for name, accum, launcher in (
        ("one", 2, [sys.executable, "-m", "mvot.cli"]),
        ("two", 1, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mvot.cli"]),
    ):
        raw = yaml.safe_load(yaml.safe_dump(raw_params))
        from tests.conftest import tiny_tokenizer_raw

        raw = tiny_tokenizer_raw(raw)
        raw["train"] |= {"tasks": ["maze", "frozenlake"], "steps": 4, "log_every": 1, "warmup": 1, "grad_accum": accum,
                         "batch_tokens": 2048, "model": {"d_model": 32, "n_layer": 1, "n_head": 2, "d_ff": 64, "max_len": 2048},
                         "runs": {"mvot": {"variant": "mvot", "ld_weight": 1.0}}}
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(raw))
        cmd = [*launcher, "--params", str(p), "train", "--tokens", str(tokens_dir), "--tokenizer", str(tok_dir),
               "--out", str(tmp_path / name), "--no-track", "--log-jsonl", str(tmp_path / f"{name}.jsonl")]
        env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        runs[name] = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    one, two = runs["one"], runs["two"]
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two, strict=True):
        for key in ("loss/total", "loss/text_ce", "loss/image_ce", "loss/ld"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (key, a, b)
    wa = load_file(str(tmp_path / "one" / "mvot" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "mvot" / "model" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_training_on_refuses_a_model_of_other_tokenizers(tiny_tokens, raw_params, tmp_path):
    """An mvot model trains on under its own tokenizers; under another codebook its image ids
    would mean other pictures, so training stops before it starts, naming the file."""
    import shutil

    from safetensors.torch import save_file

    _, tok_dir, tokens_dir = tiny_tokens
    model = {"d_model": 32, "n_layer": 1, "n_head": 2, "d_ff": 64, "max_len": 2048}
    train(_params(raw_params, tasks=["frozenlake"], steps=2, model=model), "run", tokens_dir, tok_dir, tmp_path / "first", progress=False)
    first = tmp_path / "first" / "model"
    on = model | {"pretrained": str(first), "grid_pos": 0, "step_pos": 0}
    again = train(_params(raw_params, tasks=["frozenlake"], steps=2, model=on), "run", tokens_dir, tok_dir, tmp_path / "again", progress=False)
    assert again["step"] == 2
    other = tmp_path / "other-tokenizer"
    shutil.copytree(tok_dir, other)
    book = load_file(str(other / "codebook.safetensors"))
    save_file({k: v.flip(0).contiguous() for k, v in book.items()}, str(other / "codebook.safetensors"))
    with pytest.raises(TrainError, match=r"other tokenizers .*codebook\.safetensors differ.*--tokenizer"):
        train(_params(raw_params, tasks=["frozenlake"], steps=2, model=on), "run", tokens_dir, other, tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()


def test_pretrained_backbone_resized_with_lora(tmp_path):
    """A tiny 'pretrained' model the test builds and saves, loaded back for MVoT."""
    from mvot.model import ModelError, count_parameters, from_pretrained, from_scratch
    from mvot.vocab import Vocab

    small = Vocab(n_text=40, n_codes=8, tokens_per_image={"maze": 4})
    base = from_scratch(small, d_model=32, n_layer=1, n_head=2, d_ff=64, max_len=128)
    base.save_pretrained(tmp_path / "base")
    big = Vocab(n_text=40, n_codes=24, tokens_per_image={"maze": 4})
    full = from_pretrained(tmp_path / "base", big)
    assert full.get_input_embeddings().weight.shape[0] == big.size
    assert torch.equal(full.get_input_embeddings().weight[: small.size], base.get_input_embeddings().weight)
    lora = from_pretrained(tmp_path / "base", big, lora_r=2, lora_alpha=4)
    counts = count_parameters(lora)
    assert 0 < counts["trainable_parameters"] < counts["parameters"]
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert any("lora_A" in n and "q_proj" in n for n in names) and any("lm_head" in n for n in names)
    out = lora(input_ids=torch.tensor([[1, big.boi, big.image_offset + 20, big.eoi]])).logits
    assert out.shape == (1, 4, big.size)
    with pytest.raises(ModelError, match="no config.json"):
        from_pretrained(tmp_path / "missing", big)


def test_bad_input_image_arrays_and_a_failed_run_keeps_the_last_curve(tiny_tokens, raw_params, tmp_path):
    import shutil

    from mvot.runs import train_run

    _, tok_dir, tokens_dir = tiny_tokens
    p = _params(raw_params, tasks=["maze"], steps=2)
    bad = tmp_path / "tokens"
    shutil.copytree(tokens_dir / "maze", bad / "maze")
    (bad / "maze" / "train" / "initial_pos.npy").unlink()
    with pytest.raises(TrainError, match=r"maze/train: missing input-image arrays \(.*initial_pos\.npy\); run `dvc repro tokenize`"):
        load_token_data(bad, ["maze"], "train", "mvot")
    shutil.copy(tokens_dir / "maze" / "train" / "initial_pos.npy", bad / "maze" / "train")
    (bad / "maze" / "train" / "initial_codes.npy").write_bytes(b"not an array")
    with pytest.raises(TrainError, match="corrupt input-image arrays"):
        load_token_data(bad, ["maze"], "train", "mvot")
    np.save(bad / "maze" / "train" / "initial_pos.npy", np.zeros(3, np.int64))
    shutil.copy(tokens_dir / "maze" / "train" / "initial_codes.npy", bad / "maze" / "train")
    with pytest.raises(TrainError, match=r"hold 3 and \d+ rows for \d+ sequences"):
        load_token_data(bad, ["maze"], "train", "mvot")
    # a run that fails on its inputs leaves the last run's training curve in place
    curve = tmp_path / "runs" / "run" / "curve.csv"
    curve.parent.mkdir(parents=True)
    curve.write_text("step,loss/total\n5,1.0\n")
    with pytest.raises(TrainError):
        train_run(p, "run", bad, tok_dir, tmp_path / "runs", progress=False)
    assert curve.read_text() == "step,loss/total\n5,1.0\n"


def test_final_model_is_swapped_in_whole(tmp_path):
    """save_model writes aside and swaps: a save that fails midway (here: a tokenizer file
    missing) leaves the previous model loadable, and a good save replaces it with no leftovers."""
    import json
    import shutil

    from mvot.model import from_scratch
    from mvot.train import TOKENIZER_FILES, save_model
    from mvot.vocab import Vocab

    vocab = Vocab(n_text=40, n_codes=8, tokens_per_image={"maze": 4})
    model = from_scratch(vocab, d_model=32, n_layer=1, n_head=2, d_ff=64, max_len=128)
    tok = tmp_path / "tok"
    tok.mkdir()
    for name in TOKENIZER_FILES:
        (tok / name).write_text(name)
    out = tmp_path / "run" / "model"
    save_model(model, vocab, tok, out, {"steps": 1})
    (tok / TOKENIZER_FILES[-1]).unlink()
    with pytest.raises(FileNotFoundError):
        save_model(model, vocab, tok, out, {"steps": 2})
    assert json.loads((out / "mvot.json").read_text()) == {"steps": 1}  # the old model, whole
    assert sorted(p.name for p in (out / "tokenizer").iterdir()) == sorted(TOKENIZER_FILES)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    shutil.copy2(out / "tokenizer" / TOKENIZER_FILES[-1], tok / TOKENIZER_FILES[-1])
    save_model(model, vocab, tok, out, {"steps": 3})  # the cut-off save's folder is cleared first
    assert json.loads((out / "mvot.json").read_text()) == {"steps": 3}
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]
