"""One tracked training run: what the CLI, the DVC stage and the Prefect flow all call.

Wires :func:`mvot.train.train` to a tracker (``mvot.tracking``): the whole typed config
as params, the run's variant, L_D settings and data version (DVC's md5 of the token
arrays, read from ``dvc.lock``) as tags, the loop's metrics, the summary, and the final
model directory (safetensors weights, config, both tokenizers) as the artifact ``model``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from mvot.checkpoint import CKPT, read_state, remove, resumable, training_fingerprint
from mvot.config import Params
from mvot.tracking import NullTracker, TrackingError, dvc_out_hashes
from mvot.train import train


def resume_plan(params: Params, run: str, tokens_dir: str | Path, tokenizer_dir: str | Path,
                checkpoint_dir: str | Path, legacy: bool = False) -> tuple[dict | None, dict[str, str], str]:
    """Whether run ``run`` may continue from the checkpoint in ``checkpoint_dir``:
    ``(state or None, the run's fingerprint, why not)``. The state holds the step and, for a
    tracked run, the MLflow run to continue (``mlflow_run_id``). With ``legacy``, a whole
    checkpoint from before checkpoints had fingerprints is continued as it is."""
    fingerprint = training_fingerprint(params, run, tokens_dir, tokenizer_dir)
    state, why = resumable(checkpoint_dir, fingerprint, legacy=legacy)
    return state, fingerprint, why


def train_run(
    params: Params,
    run: str,
    tokens_dir: str | Path = "data/tokens",
    tokenizer_dir: str | Path = "models/tokenizer",
    out_root: str | Path = "models/runs",
    tracker=None,
    log_jsonl: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    raw_dir: str | Path = "data/raw",
    checkpoint_dir: str | Path | None = None,
    keep_checkpoint: bool = True,
    fingerprint: dict[str, str] | None = None,
    stop_after: int | None = None,
) -> dict:
    """Train ``run`` into ``out_root/run`` (model, ``curve.csv``, ``tracking.json``), logging to
    ``tracker``. Checkpoints go to ``checkpoint_dir`` (default: ``out_root/run/checkpoint``)
    with the curve so far and the tracking run's id, so a resumed run (``resume``) whose
    output folder was cleared (as ``dvc repro`` clears a stage's outputs) gets its whole
    curve back. Without ``keep_checkpoint`` the checkpoint is deleted once the final model
    is saved."""
    tracker = tracker or NullTracker()
    cfg = params.train
    spec = cfg.runs.get(run)
    tracker.log_params(params.model_dump(mode="json"))
    if spec is not None:
        versions = dvc_out_hashes([f"{Path(tokens_dir).as_posix()}/{t}" for t in cfg.tasks])
        tracker.set_tags(
            {"run": run, "variant": spec.variant, "ld_weight": str(spec.ld_weight), "ld_distance": cfg.ld.distance,
             "ld_reduction": cfg.ld.reduction, "ld_from_step": cfg.ld.from_step, "ld_through": cfg.ld.through} | {f"data_version.{k}": v for k, v in versions.items()}
        )

    out = Path(out_root) / run
    curve = out / "curve.csv"  # the training curve, for `dvc plots` (one row per logged step)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else out / CKPT
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun only the first process writes the curve
    if resume and rank0 and not curve.is_file() and (ckpt / "curve.csv").is_file():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ckpt / "curve.csv", curve)  # rows past the checkpoint's step are dropped as they come again
    stale = not resume  # a fresh run replaces the old curve at its first logged step, not before: a run that
    # fails on its inputs leaves the last run's curve as it was

    def log(metrics: dict, step: int) -> None:
        nonlocal stale
        if stale:
            curve.unlink(missing_ok=True)
            stale = False
        tracker.log_metrics(metrics, step=step)
        _append_curve(curve, step, metrics)
        if log_jsonl:
            with Path(log_jsonl).open("a") as fh:
                fh.write(json.dumps({"step": step} | {k: float(v) for k, v in metrics.items()}) + "\n")

    # the checkpoints name the MLflow run to continue; an untracked resume keeps the name it found
    run_id = tracker.run_id or (read_state(ckpt).get("mlflow_run_id") if resume else None)
    summary = train(params, run, tokens_dir, tokenizer_dir, out, log=log, resume=resume, progress=progress, raw_dir=raw_dir,
                    stop_after=stop_after, checkpoint_dir=ckpt, fingerprint=fingerprint, checkpoint_files={"curve.csv": curve},
                    checkpoint_meta={"mlflow_run_id": run_id} if run_id else None)
    tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    tracker.set_tags({k: str(summary[k]) for k in ("device", "hardware", "torch") if k in summary})
    if (out / "model").is_dir():  # the final model (weights, config, both tokenizers) as a pyfunc model
        model_uri = tracker.log_model(out / "model")
        if tracker.run_id:  # lets evaluation log into the same run, and promotion find the model
            (out / "tracking.json").write_text(json.dumps({"run_id": tracker.run_id, "model_uri": model_uri}, indent=2) + "\n")
        if not keep_checkpoint and summary["step"] >= cfg.steps:
            remove(ckpt)
    return summary


CURVE_COLUMNS = ("loss/total", "loss/text_ce", "loss/image_ce", "loss/ld", "train/lr", "train/tokens_per_s")


def _append_curve(path: Path, step: int, metrics: dict) -> None:
    """One CSV row per logged step; a resumed run drops rows past its checkpoint first."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    if path.exists():
        with path.open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) < step]
    rows.append({"step": step} | {k: f"{float(metrics[k]):.6g}" for k in CURVE_COLUMNS if k in metrics})
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["step", *CURVE_COLUMNS], restval="")
        w.writeheader()
        w.writerows(rows)


# --------------------------------------------------------------------------------------
# Evaluation of a trained run, tracked in that run


def tracking_info(run_dir: str | Path) -> dict:
    """``{run_id, model_uri}`` written by a tracked training run (empty when untracked)."""
    p = Path(run_dir) / "tracking.json"
    if not p.is_file():
        return {}
    try:
        info = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        info = None
    if not isinstance(info, dict) or not isinstance(info.get("run_id"), str):
        raise TrackingError(f"{p}: corrupt (want an object with the MLflow run_id of this training run); retrain the run "
                            f"with tracking, or delete the file to evaluate it untracked")
    return info


SCALARS = ("accuracy", "unparsed", "drawn_steps", "v_acc", "v_red", "v_steps", "v_ratio", "drawn_vs_true_steps", "mean_new_tokens",
           "decode_seconds", "decode_tokens_per_s", "decode_budget", "a_exact", "a_first")


def evaluate_tracked(
    params: Params,
    run: str,
    runs_root: str | Path = "models/runs",
    tokens_dir: str | Path = "data/tokens",
    raw_dir: str | Path = "data/raw",
    out_dir: str | Path = "eval",
    metrics_dir: str | Path = "metrics",
    tracker=None,
    progress: bool = True,
) -> dict:
    """Score run ``run`` on every task's test split (:func:`mvot.evaluate.evaluate_run`)
    and log the figures (``test/<task>/<metric>``, accuracy per grid size), the metrics
    files, the predictions and the true-vs-drawn strips to ``tracker``."""
    from mvot.evaluate import evaluate_run

    tracker = tracker or NullTracker()
    model_dir = Path(runs_root) / run / "model"
    results = evaluate_run(params, run, model_dir, tokens_dir, raw_dir, out_dir, metrics_dir, progress=progress)
    flat: dict[str, float] = {}
    for task, m in results.items():
        flat |= {f"test/{task}/{k}": float(m[k]) for k in SCALARS if isinstance(m.get(k), (int, float))}
        flat |= {f"test/{task}/accuracy_size_{s}": float(v) for s, v in m["accuracy_by_size"].items() if v is not None}
        tracker.log_dict(m, f"eval/{task}/metrics.json")
    tracker.log_metrics(flat)
    tracker.set_tags({"evaluated": "true"} | {f"test_version.{k}": v for k, v in dvc_out_hashes(
        [f"{Path(tokens_dir).as_posix()}/{t}" for t in results]).items()})
    tracker.log_artifacts(Path(out_dir) / run, "eval")
    return results
