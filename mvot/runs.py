"""One tracked training run: what the CLI, the DVC stage and the Prefect flow all call.

Wires :func:`mvot.train.train` to a tracker (``mvot.tracking``): the whole typed config
as params, the run's variant, L_D settings and data version (DVC's md5 of the token
arrays, read from ``dvc.lock``) as tags, the loop's metrics, the summary, and the final
model directory (safetensors weights, config, both tokenizers) as the artifact ``model``.
"""

from __future__ import annotations

import json
from pathlib import Path

from mvot.config import Params
from mvot.tracking import NullTracker, dvc_out_hashes
from mvot.train import train


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
) -> dict:
    tracker = tracker or NullTracker()
    cfg = params.train
    spec = cfg.runs.get(run)
    tracker.log_params(params.model_dump(mode="json"))
    if spec is not None:
        versions = dvc_out_hashes([f"{Path(tokens_dir).as_posix()}/{t}" for t in cfg.tasks])
        tracker.set_tags(
            {"run": run, "variant": spec.variant, "ld_weight": str(spec.ld_weight), "ld_distance": cfg.ld.distance,
             "ld_reduction": cfg.ld.reduction} | {f"data_version.{k}": v for k, v in versions.items()}
        )

    def log(metrics: dict, step: int) -> None:
        tracker.log_metrics(metrics, step=step)
        if log_jsonl:
            with Path(log_jsonl).open("a") as fh:
                fh.write(json.dumps({"step": step} | {k: float(v) for k, v in metrics.items()}) + "\n")

    out = Path(out_root) / run
    summary = train(params, run, tokens_dir, tokenizer_dir, out, log=log, resume=resume, progress=progress)
    tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    if (out / "model").is_dir():  # the final model: weights, config and both tokenizers
        tracker.log_artifacts(out / "model", "model")
    return summary
