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
import re
import time
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


def mlflow_key(key: str) -> str:
    """``key`` with each character MLflow refuses in a param or metric name (it allows
    letters, digits and ``_-. :/``) replaced by ``_``: ``train.oversample`` keys are outcome
    labels such as "B: pick-up, no printer adjacent"."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key)


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
    continued: bool = False

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def log_image(self, image, name: str) -> None: ...

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None: ...

    def log_dict(self, data: dict, name: str) -> None: ...

    def log_model(self, model_dir: str | Path) -> str | None:
        return None


CHANGED_ON_RESUME = "params_changed_on_resume.json"


class MlflowTracker(NullTracker):
    def __init__(self, run, continued: bool = False):
        import mlflow

        self._mlflow = mlflow
        self.run_id = run.info.run_id
        self.continued = continued  # an existing run, continued: its params are logged already

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The params, flattened. A continued run logs only the keys it lacks (MLflow keeps a
        param's first value); values that differ go to ``params_changed_on_resume.json``, which
        each resume rewrites (``{}`` once a later resume has the logged values again)."""
        flat = flatten(params)
        items = [(mlflow_key(k), v) for k, v in flat.items()]
        if self.continued:
            had = self._mlflow.get_run(self.run_id).data.params
            changed = {k: {"logged": had[k], "now": str(v)} for k, v in items if k in had and had[k] != str(v)}
            if changed or CHANGED_ON_RESUME in self._artifact_names():
                self._mlflow.log_dict(changed, CHANGED_ON_RESUME)
            items = [(k, v) for k, v in items if k not in had]
        for i in range(0, len(items), 100):  # one batched call per 100 params
            self._mlflow.log_params(dict(items[i : i + 100]))

    def _artifact_names(self) -> set[str]:
        from mlflow.tracking import MlflowClient

        try:
            return {a.path for a in MlflowClient().list_artifacts(self.run_id)}
        except Exception:  # an artifact store out of reach: a resume goes on; only a stale record could stay
            return set()

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

    def log_model(self, model_dir: str | Path) -> str | None:
        """The model directory as a pyfunc model answering instances; returns its URI."""
        return log_pyfunc_model(model_dir)


def _experiment_id(mlflow, name: str, location: str | None, uri: str) -> str:
    """The id of experiment ``name``, created if missing. Safe when several processes (sweep
    trials) race to create it: the loser of the race reads the winner's experiment."""
    last = None
    for attempt in range(5):
        try:
            exp = mlflow.get_experiment_by_name(name)
            if exp is not None:
                return exp.experiment_id
            return mlflow.create_experiment(name, artifact_location=location)
        except Exception as exc:  # a unique-name clash or a locked sqlite file: read again
            last = exc
            time.sleep(0.2 * (attempt + 1))
    raise TrackingError(f"cannot use MLflow store {uri}: {last}")


@contextmanager
def start_run(
    experiment: str, run_name: str, root: str | Path = ".", uri: str | None = None, run_id: str | None = None,
    parent_run_id: str | None = None,
) -> Iterator[MlflowTracker]:
    """An MLflow run in ``experiment`` (created with an artifact location under ``root``),
    a child of ``parent_run_id`` when given (a sweep trial, possibly in another thread or
    process); with ``run_id``, that existing run is continued instead."""
    import mlflow

    uri = uri or default_uri(root)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    if run_id:
        try:
            if mlflow.get_run(run_id).info.lifecycle_stage == "deleted":
                run_id = None  # deleted in the UI since: start a new one
        except mlflow.exceptions.MlflowException:
            run_id = None  # the run is not in this store (another machine's): start a new one
    if run_id:
        kwargs = {"run_id": run_id}
    else:
        location = None
        if uri.startswith("sqlite:"):
            location = (Path(root).resolve() / "mlartifacts" / experiment).as_uri()
        kwargs = {"experiment_id": _experiment_id(mlflow, experiment, location, uri), "run_name": run_name}
    if parent_run_id and not run_id:
        kwargs["tags"] = {"mlflow.parentRunId": parent_run_id}  # works from any thread or process
    with mlflow.start_run(**kwargs) as run:
        if parent_run_id and run_id and run.data.tags.get("mlflow.parentRunId") != parent_run_id:
            mlflow.set_tag("mlflow.parentRunId", parent_run_id)  # a continued child goes under today's parent
        yield MlflowTracker(run, continued=bool(run_id))


def close_unfinished_children(parent_run_id: str, uri: str | None = None, root: str | Path = ".") -> list[str]:
    """Mark the child runs of ``parent_run_id`` still RUNNING as KILLED, and return their ids:
    what a sweep process stopped mid-trial (its machine returned, a kill) leaves behind. Called
    by the one sweep process of a sweep directory as it continues that sweep's parent run; a
    trial that then resumes from its checkpoint reopens its own run (RUNNING, then FINISHED)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri or default_uri(root))
    parent = client.get_run(parent_run_id)
    stale = client.search_runs([parent.info.experiment_id],
                               filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'")
    for r in stale:
        client.set_terminated(r.info.run_id, status="KILLED")
    return [r.info.run_id for r in stale]



# --------------------------------------------------------------------------------------
# Models: a pyfunc wrapper around the model directory, and resolving model URIs

PYFUNC_ARTIFACT = "mvot_model"  # the model directory inside the logged pyfunc model


def _pyfunc_class():
    """The :class:`mlflow.pyfunc.PythonModel` answering task instances (built lazily so that
    importing this module does not import MLflow)."""
    import mlflow.pyfunc

    class MvotPyfunc(mlflow.pyfunc.PythonModel):
        """``predict`` takes instances (a DataFrame with an ``instance`` column of JSON
        strings or dicts as written by ``mvot generate``, or a list of such dicts) and
        returns one row per instance: uid, answer, the reasoning text, thoughts drawn."""

        # predict takes several input shapes and checks them itself; no type hints, and MLflow's
        # type-hint validation (and its "Add type hints" warning at class creation) skipped
        _skip_type_hint_validation = True

        def load_context(self, context):
            from mvot.generate import load_model

            self.lm = load_model(context.artifacts[PYFUNC_ARTIFACT])

        def predict(self, context, model_input, params=None):
            import json as _json

            import pandas as pd

            from mvot.solve import problem_from_instance, solve
            from mvot.worlds import instance_from_json

            if isinstance(model_input, pd.DataFrame):  # mlflow turns a list of dicts into one row per dict
                rows = (model_input["instance"].tolist() if "instance" in model_input.columns
                        else _json.loads(model_input.to_json(orient="records")))
            else:
                rows = [model_input] if isinstance(model_input, (str, dict)) else list(model_input)
            insts = [instance_from_json(_json.loads(r) if isinstance(r, str) else r) for r in rows]
            sols = solve(self.lm, [problem_from_instance(self.lm, i) for i in insts], **(params or {}))
            return pd.DataFrame({"uid": [i.uid for i in insts], "answer": [s.answer for s in sols],
                                 "text": [s.decoded.text for s in sols], "thoughts": [len(s.drawn) for s in sols]})

    return MvotPyfunc


def set_pyfunc_model() -> None:
    """Name the pyfunc model for MLflow's models from code (what ``mvot/mlflow_model.py`` runs)."""
    import mlflow.models

    mlflow.models.set_model(_pyfunc_class()())


def log_pyfunc_model(model_dir: str | Path, name: str = "model") -> str:
    """Log ``model_dir`` (weights, config, tokenizers) as a pyfunc model of the active run;
    returns its model URI."""
    import mlflow.pyfunc

    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).with_name("mlflow_model.py")),  # models from code: nothing pickled
        artifacts={PYFUNC_ARTIFACT: str(model_dir)},
        pip_requirements=["mvot", "torch==2.13.0", "transformers", "tokenizers", "safetensors", "vector-quantize-pytorch"],
    )
    return info.model_uri


def _model_configs(root: Path) -> tuple[list[Path], list[Path]]:
    """The ``config.json`` files under ``root``: those of models, and those in a folder left aside
    by a save cut off midway (``<dir>.tmp`` being written, ``<dir>.old`` being replaced:
    :func:`mvot.data.replace_atomically`), which are never taken for a model."""
    found, aside = [], []
    for f in sorted(root.rglob("config.json")):
        (aside if any(part.endswith((".tmp", ".old")) for part in f.relative_to(root).parts) else found).append(f)
    return found, aside


def resolve_model_dir(uri: str, tracking_uri: str | None = None) -> Path:
    """A local model directory for a path or an MLflow URI (``models:/<name>@<alias>``,
    ``models:/<name>/<version>``, ``runs:/<run id>/model``, ``models:/<model id>``)."""
    p = Path(uri)
    if p.is_dir():
        if (p / "config.json").is_file():
            return p
        found, aside = _model_configs(p)
        if found:
            return found[0].parent
        hint = f" (only {aside[0].parent}: a save cut off midway; train the run again)" if aside else ""
        raise TrackingError(f"{uri}: a directory without a model (no config.json){hint}; give models/runs/<run>/model")
    if not uri.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        raise TrackingError(f"{uri}: neither a model directory nor an MLflow model URI (models:/<name>@champion)")
    import mlflow

    tracking_uri = tracking_uri or default_uri()
    check_reachable(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as exc:  # MlflowException, or a store error for a bad URI
        raise TrackingError(f"{uri}: cannot fetch the model from {tracking_uri} ({str(exc).splitlines()[0]})") from None
    found, _ = _model_configs(local)
    if not found:
        raise TrackingError(f"{uri}: the MLflow model holds no mvot model directory")
    return found[0].parent


class MlflowRegistry:
    """The MLflow model registry behind :func:`mvot.promote.promote` (one registered model)."""

    def __init__(self, name: str, uri: str | None = None):
        import mlflow
        from mlflow import MlflowClient

        uri = uri or default_uri()
        check_reachable(uri)
        mlflow.set_tracking_uri(uri)
        self.name = name
        self.client = MlflowClient(tracking_uri=uri)
        self._error = mlflow.exceptions.MlflowException

    def run_scores(self, run_id: str):
        from mvot.promote import PromotionError, Scores

        try:
            run = self.client.get_run(run_id)
        except self._error as exc:
            raise PromotionError(f"MLflow run {run_id} not found ({str(exc).splitlines()[0]}); "
                                 "was it trained against another tracking store?") from None
        return Scores.from_run(run_id, dict(run.data.metrics), dict(run.data.tags))

    def alias_run(self, alias: str) -> tuple[str, str] | None:
        try:
            mv = self.client.get_model_version_by_alias(self.name, alias)
        except self._error:  # no such model or alias
            return None
        return str(mv.version), mv.run_id

    def aliases(self) -> dict[str, str]:
        try:
            return {a: str(v) for a, v in self.client.get_registered_model(self.name).aliases.items()}
        except self._error:
            return {}

    def register(self, model_uri: str, run_id: str | None = None) -> str:
        import mlflow

        try:
            return str(mlflow.register_model(model_uri, self.name).version)
        except self._error as exc:
            raise TrackingError(f"cannot register {model_uri} as {self.name!r}: {str(exc).splitlines()[0]}") from None

    def move_aliases(self, moves: dict[str, str]) -> None:
        """Point each alias at its version; on any failure the aliases moved so far are put
        back (or deleted, if they did not exist), then the error is raised."""
        before = self.aliases()
        done = []
        try:
            for alias, version in moves.items():
                self.client.set_registered_model_alias(self.name, alias, version)
                done.append(alias)
        except Exception:
            for alias in reversed(done):
                if alias in before:
                    self.client.set_registered_model_alias(self.name, alias, before[alias])
                else:
                    self.client.delete_registered_model_alias(self.name, alias)
            raise

    def tag_version(self, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, value)
