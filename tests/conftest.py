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
    raw["tokenizer"] |= {"codebook_size": 512, "hidden": 64, "depth": 1, "steps": 250, "lr": 0.003,
                         "fidelity_frames": 40, "text_vocab": 400}
    raw["train"] |= {"runs": {"direct": {"variant": "direct", "ld_weight": 0.0}, "mvot": {"variant": "mvot", "ld_weight": 1.0}},
                     "model": {"d_model": 32, "n_layer": 1, "n_head": 2, "d_ff": 64, "max_len": 2048},
                     "steps": 3, "warmup": 1, "batch_tokens": 4096, "log_every": 1, "checkpoint_every": 2}
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
