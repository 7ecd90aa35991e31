"""Experiment tracking: the only module of ``mvot`` that imports MLflow.

By default runs go to an embedded store in the repository: a sqlite database
``mlflow.db`` and artifacts under ``mlartifacts/`` (both git-ignored), addressed by
absolute paths. Set ``MLFLOW_TRACKING_URI`` (e.g. ``http://127.0.0.1:5000``) to use a
server instead; an unreachable server is a :class:`TrackingError` raised before any work.

Library code never branches on whether tracking is on: it receives a tracker object,
:class:`MlflowTracker` or :class:`NullTracker`, with the same small interface.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mvot.errors import MvotError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


class TrackingError(MvotError, RuntimeError):
    """The tracking backend cannot be used; the message says which and how to fix it."""


def default_uri(root: str | Path = ".") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the repository's embedded sqlite store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).read()
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({exc}); start it (see README, 'Servers') "
            "or unset MLFLOW_TRACKING_URI to use the local sqlite store"
        ) from None


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists become strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out |= flatten(v, key + ".")
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out


def dvc_out_hashes(paths: list[str], lock: str | Path = "dvc.lock") -> dict[str, str]:
    """The md5 DVC recorded in ``dvc.lock`` for each output path (the data version), read as
    YAML without importing DVC; paths DVC does not track are left out."""
    import yaml

    try:
        stages = (yaml.safe_load(Path(lock).read_text()) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        return {}
    found = {}
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") in paths:
                found[out["path"]] = out.get("md5", "")
    return found


class NullTracker:
    """Tracking switched off: every call does nothing."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def log_image(self, image, name: str) -> None: ...

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None: ...

    def log_dict(self, data: dict, name: str) -> None: ...


class MlflowTracker(NullTracker):
    def __init__(self, run):
        import mlflow

        self._mlflow = mlflow
        self.run_id = run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = flatten(params)
        items = list(flat.items())
        for i in range(0, len(items), 100):  # one batched call per 100 params
            self._mlflow.log_params(dict(items[i : i + 100]))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._mlflow.set_tags(dict(tags))

    def log_image(self, image, name: str) -> None:
        self._mlflow.log_image(image, name)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifacts(str(directory), artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        self._mlflow.log_dict(data, name)


@contextmanager
def start_run(experiment: str, run_name: str, root: str | Path = ".", uri: str | None = None) -> Iterator[MlflowTracker]:
    """An MLflow run in ``experiment`` (created with an artifact location under ``root``)."""
    import mlflow

    uri = uri or default_uri(root)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    try:
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if uri.startswith("sqlite:"):
                location = (Path(root).resolve() / "mlartifacts" / experiment).as_uri()
            exp_id = mlflow.create_experiment(experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"cannot use MLflow store {uri}: {exc}") from None
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
        yield MlflowTracker(run)

