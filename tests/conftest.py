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
