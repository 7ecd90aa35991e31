"""Shared fixtures: the repository's params and a tiny profile for fast data tests."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from mvot.config import Params, load_params, parse_params
from mvot.worlds import GenerationRetry, Instance, letters, world

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "mvot-format-samples"
TASKS = ("frozenlake", "maze", "minibehavior")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a server a test starts."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc, log: Path, what: str, timeout: float = 240) -> None:
    """Poll ``url`` until it answers; fail the test with the server's log if ``proc`` exits
    or ``timeout`` seconds pass first."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"{what} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(1)


def stop(proc) -> None:
    """Terminate a server process, killing it if it does not exit within 30 s."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def raw_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture(scope="session")
def params() -> Params:
    return load_params(ROOT / "params.yaml")


def tiny_raw(raw: dict, train: int = 48, val: int = 12, test: int = 24) -> dict:
    raw = copy.deepcopy(raw)
    raw["generate"]["workers"] = 1
    raw["generate"]["contact_sheet"] = 3
    for task in TASKS:
        raw["generate"][task]["splits"] = {"train": train, "val": val, "test": test}
    return raw


@pytest.fixture(scope="session")
def tiny_params(raw_params) -> Params:
    return parse_params(tiny_raw(raw_params))


def draw(task: str, params: Params, seed: int, size: int | None = None, target: str | None = None) -> Instance:
    """One generated instance (any layout), for world and renderer tests."""
    cfg = params.generate.task(task)
    rng = np.random.default_rng([seed, 12345])
    size = size or cfg.sizes[seed % len(cfg.sizes)]
    target = target or letters(task)[seed % len(letters(task))]
    while True:
        try:
            return world(task).generate(rng, size, target, cfg, f"{task}-{seed}")
        except GenerationRetry:
            continue


def tiny_tokenizer_raw(raw: dict) -> dict:
    """A tokenizer that trains in seconds on the tiny profile's data."""
    raw = tiny_raw(raw)
    raw["tokenizer"] |= {"codebook_size": 512, "hidden": 64, "depth": 1, "steps": 400, "lr": 0.005,
                         "fidelity_frames": 40, "text_vocab": 400}
    raw["train"] |= {"runs": {"direct": {"variant": "direct", "ld_weight": 0.0}, "mvot": {"variant": "mvot", "ld_weight": 1.0}},
                     "model": {"d_model": 32, "n_layer": 1, "n_head": 2, "d_ff": 64, "max_len": 2048},
                     "steps": 3, "warmup": 1, "batch_tokens": 4096, "log_every": 1, "checkpoint_every": 2}
    raw["evaluate"] |= {"limit": 4, "batch_size": 4, "max_new_tokens": 400, "combine": ["mvot", "direct"]}
    return raw


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One Prefect test API for the whole session (generous start-up timeout, no analytics)."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect_home"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def tiny_generated(tmp_path_factory, tiny_params):
    """The tiny profile's data of every task, generated once per session."""
    from mvot import data

    root = tmp_path_factory.mktemp("gen")
    stats = {t: data.generate_task(tiny_params, t, root / "raw", root / "stats", root / "contact") for t in TASKS}
    return root, stats


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory, tiny_generated, raw_params):
    """Both tokenizers trained on the tiny data (no tracking): (params, tokenizer dir, metrics)."""
    from mvot.tokenizers import run_stage

    params = parse_params(tiny_tokenizer_raw(raw_params))
    root, _ = tiny_generated
    out = tmp_path_factory.mktemp("tok")
    metrics = run_stage(params, root / "raw", out / "tokenizer", out / "tokenizer.json")
    return params, out / "tokenizer", metrics


@pytest.fixture(scope="session")
def tiny_tokens(tmp_path_factory, tiny_tokenizer, tiny_generated):
    """Token arrays of every task of the tiny data: (params, tokenizer dir, tokens dir)."""
    from mvot.tokenize import tokenize_task

    params, tok_dir, _ = tiny_tokenizer
    root, _ = tiny_generated
    out = tmp_path_factory.mktemp("tokens")
    for t in TASKS:
        tokenize_task(params, t, root / "raw", tok_dir, out / "tokens", out / "stats")
    return params, tok_dir, out / "tokens"


def few_instances(raw_dir: Path, tokens_dir: Path, task: str, n: int, dest: Path, max_steps: int = 99) -> tuple[Path, Path]:
    """Raw data and token arrays whose train *and* test splits are the first ``n`` train
    instances with at most ``max_steps`` steps (short traces train fast)."""
    import json
    import shutil

    from mvot.worlds import instance_from_json

    raw, tok = dest / "raw", dest / "tokens"
    shutil.copytree(raw_dir / task, raw / task)
    lines = (raw / task / "train.jsonl").read_text().splitlines(keepends=True)
    keep = [i for i, line in enumerate(lines) if instance_from_json(json.loads(line)).n_steps <= max_steps][:n]
    (raw / task / "train.jsonl").write_text("".join(lines[i] for i in keep))
    (raw / task / "test.jsonl").write_text("".join(lines[i] for i in keep))
    shutil.copy2(raw / task / "train.images.zip", raw / task / "test.images.zip")
    src = tokens_dir / task / "train"
    ids = (src / "ids.txt").read_text().splitlines(keepends=True)
    for split in ("train", "test"):
        d = tok / task / split
        d.mkdir(parents=True)
        (d / "ids.txt").write_text("".join(ids[i] for i in keep))
        for name in ("initial_pos", "initial_codes"):
            np.save(d / f"{name}.npy", np.load(src / f"{name}.npy")[keep])
        for variant in [p.name for p in src.iterdir() if p.is_dir()]:
            (d / variant).mkdir()
            off = np.load(src / variant / "offsets.npy")
            spans = [np.arange(off[i], off[i + 1]) for i in keep]
            np.save(d / variant / "offsets.npy", np.concatenate([[0], np.cumsum([len(x) for x in spans])]).astype(off.dtype))
            at = np.concatenate(spans)
            for name in ("tokens", "supervised", "image"):
                np.save(d / variant / f"{name}.npy", np.load(src / variant / f"{name}.npy")[at])
    return raw, tok


OVERFIT_N = 4  # instances the overfit model memorises


def overfit_raw(raw: dict, steps: int = 250) -> dict:
    """Params of a tiny MVoT model that memorises a handful of FROZENLAKE traces."""
    raw = tiny_tokenizer_raw(raw)
    raw["train"] |= {"runs": {"mvot": {"variant": "mvot", "ld_weight": 1.0}, "direct": {"variant": "direct", "ld_weight": 0.0}},
                     "tasks": ["frozenlake"], "steps": steps, "lr": 0.01, "warmup": 5, "augment": False,
                     "model": {"d_model": 64, "n_layer": 2, "n_head": 2, "d_ff": 128, "max_len": 1024},
                     "log_every": 50, "checkpoint_every": 1000}
    raw["evaluate"] |= {"combine": ["mvot", "direct"], "batch_size": 4, "strips": 2, "limit": 0}
    return raw


@pytest.fixture(scope="session")
def tiny_overfit(tmp_path_factory, tiny_tokens, tiny_generated, raw_params):
    """A tiny MVoT model trained to memorise OVERFIT_N short FROZENLAKE traces, whose test
    split is those same instances: (params, model dir, raw dir, tokens dir, tokenizer dir)."""
    from mvot.train import train

    _, tok_dir, tokens_dir = tiny_tokens
    root, _ = tiny_generated
    dest = tmp_path_factory.mktemp("overfit")
    raw, tok = few_instances(root / "raw", tokens_dir, "frozenlake", OVERFIT_N, dest, max_steps=4)
    params = parse_params(overfit_raw(raw_params))
    train(params, "mvot", tok, tok_dir, dest / "runs" / "mvot", progress=False)
    return params, dest / "runs" / "mvot" / "model", raw, tok, tok_dir
