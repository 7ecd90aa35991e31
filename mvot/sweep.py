"""Ablation sweeps: the trial grid of ``params.yaml: sweep``, each trial's params, and the
comparison table (mean and spread over seeds). Orchestration is in ``flows/sweep.py``."""

from __future__ import annotations

import copy
import csv
import itertools
import math
from pathlib import Path

from mvot.config import TASKS, Params, parse_params

GRID_KEYS = ("variant", "ld_weight", "ld_distance", "ld_reduction", "patch_px", "seed")
CONFIG_KEYS = GRID_KEYS[:-1]  # a trial's configuration: everything but the seed
SCORES = ("accuracy", "v_acc", "v_red", "v_steps", "v_ratio", "a_exact", "a_first")


def trial_key(t: dict) -> str:
    return (f"{t['variant']}-w{t['ld_weight']:g}-{t['ld_distance']}-{t['ld_reduction']}-p{t['patch_px']}"
            f"-s{t['seed']}")


def trials(params: Params) -> tuple[list[dict], list[str]]:
    """Every valid combination of the grid, and a note for each one left out (L_D on a
    variant without images; an L_D distance or reduction that changes nothing without L_D
    is kept only once)."""
    g = params.sweep.grid
    out, skipped, seen = [], [], set()
    for combo in itertools.product(g.variant, g.ld_weight, g.ld_distance, g.ld_reduction, g.patch_px, g.seed):
        t = dict(zip(GRID_KEYS, combo, strict=True))
        if t["ld_weight"] > 0 and t["variant"] != "mvot":
            skipped.append(f"{trial_key(t)}: L_D needs image targets (variant mvot)")
            continue
        if t["ld_weight"] == 0:  # distance and reduction are irrelevant without L_D
            t["ld_distance"], t["ld_reduction"] = g.ld_distance[0], g.ld_reduction[0]
        if (k := trial_key(t)) in seen:
            continue
        seen.add(k)
        out.append(t)
    return out, skipped


def trial_raw(raw: dict, t: dict) -> dict:
    """The full params of one trial: the base params with the trial's values, one run named
    ``trial``, and the sweep's step and evaluation budgets. ``{seed}`` in
    ``train.model.pretrained`` becomes the trial's seed, so that a grid over seeds starts
    each trial from the model of its own seed (e.g. MVoT from the CoT model of that seed);
    ``{trial}`` becomes the trial's key (``mvot-w1-euclidean-mean-p16-s0``), so that a sweep
    trains every trial of an earlier sweep on from its own model
    (``.../sweeps/<earlier>/trials/{trial}/runs/trial/model``)."""
    raw = copy.deepcopy(raw)
    sweep = raw.get("sweep", {})
    raw["seed"] = t["seed"]
    model = raw["train"].get("model") or {}
    if isinstance(model.get("pretrained"), str):
        model["pretrained"] = model["pretrained"].replace("{seed}", str(t["seed"])).replace("{trial}", trial_key(t))
    raw["tokenizer"]["patch_px"] = t["patch_px"]
    raw["train"]["runs"] = {"trial": {"variant": t["variant"], "ld_weight": t["ld_weight"]}}
    raw["train"]["ld"] = dict(raw["train"].get("ld") or {}) | {"distance": t["ld_distance"], "reduction": t["ld_reduction"]}
    if sweep.get("train_steps"):
        raw["train"]["steps"] = sweep["train_steps"]
    if sweep.get("evaluate_limit"):
        raw["evaluate"]["limit"] = sweep["evaluate_limit"]
    raw["evaluate"]["combine"] = ["trial", "trial"]
    parse_params(raw, f"sweep trial {trial_key(t)}")
    return raw


def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return round(m, 2), round(sd, 2)


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (configuration, task): each score's mean and sample standard deviation
    over the seeds that finished, the number of seeds, mean training seconds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("status") == "ok":
            groups.setdefault(tuple(r[k] for k in CONFIG_KEYS), []).append(r)
    out = []
    for cfg, rs in groups.items():
        for task in TASKS:
            scored = [r["tasks"][task] for r in rs if task in r.get("tasks", {})]
            if not scored:
                continue
            row = dict(zip(CONFIG_KEYS, cfg, strict=True)) | {"task": task, "seeds": len(scored)}
            for s in SCORES:
                row[s], row[f"{s}_sd"] = _mean_std([m.get(s) for m in scored])
            row["train_seconds"], _ = _mean_std([r.get("train_seconds") for r in rs])
            out.append(row)
    return out


def aggregate_by_size(rows: list[dict]) -> list[dict]:
    """One row per (configuration, task, grid size): accuracy's mean and sample standard
    deviation over the seeds whose metrics have ``accuracy_by_size``."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r.get("status") != "ok":
            continue
        for task, m in (r.get("tasks") or {}).items():
            for size, acc in (m.get("accuracy_by_size") or {}).items():
                groups.setdefault((*(r[k] for k in CONFIG_KEYS), task, int(size)), []).append(acc)
    out = []
    for key, accs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0][:-1]) + (kv[0][-1],)):
        mean, sd = _mean_std(accs)
        out.append(dict(zip([*CONFIG_KEYS, "task", "size"], key, strict=True))
                   | {"seeds": len(accs), "accuracy": mean, "accuracy_sd": sd})
    return out


def _trial_dir(row: dict, trials_dir: str | Path | None) -> Path:
    return Path(row["_dir"]) if row.get("_dir") else Path(trials_dir or ".") / row["trial"]


def combine_trials(rows: list[dict], trials_dir: str | Path | None) -> list[dict]:
    """The MVoT+CoT upper bound and the combined predictor (``mvot.evaluate.combine``) of
    every finished mvot trial with the cot trial of the same seed and tokens per image that
    scored the same task (the first one in ``rows``), per task; then their mean and sample
    standard deviation over seeds per mvot configuration.
    A trial lies in ``trials_dir / row["trial"]``, or in ``row["_dir"]`` where given (trials
    of several sweeps, ``mvot report``)."""
    from mvot.data import DataError
    from mvot.evaluate import combine, read_records

    ok = [r for r in rows if r.get("status") == "ok"]
    cot: dict[tuple, dict] = {}  # (seed, tokens per image, task) -> the first cot trial given that scored it
    for r in ok:
        if r["variant"] == "cot":
            for task in r.get("tasks") or {}:
                cot.setdefault((r["seed"], r["patch_px"], task), r)
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        if r["variant"] != "mvot":
            continue
        for task in r.get("tasks") or {}:
            if (c := cot.get((r["seed"], r["patch_px"], task))) is None:
                continue
            try:
                a = read_records(_trial_dir(r, trials_dir) / "eval" / "trial" / task / "predictions.jsonl")
                b = read_records(_trial_dir(c, trials_dir) / "eval" / "trial" / task / "predictions.jsonl")
                res = combine(a, b)
            except (DataError, ValueError):  # predictions missing, or scored on other instances
                continue
            groups.setdefault((*(r[k] for k in CONFIG_KEYS), task), []).append(res)
    out = []
    for key, rs in groups.items():
        row = dict(zip([*CONFIG_KEYS, "task"], key, strict=True)) | {"with": "cot", "seeds": len(rs)}
        for s in ("upper_bound", "combined", "agreement", "accuracy_a", "accuracy_b"):
            row[s], row[f"{s}_sd"] = _mean_std([x[s] for x in rs])
        out.append(row)
    return out


def config_label(row: dict) -> str:
    label = row["variant"]
    if row["variant"] == "mvot":
        label += f" L_D={row['ld_weight']:g}" + (f" {row['ld_distance']}/{row['ld_reduction']}" if row["ld_weight"] else "")
    return label + f" p{row['patch_px']}"


def write_summary(rows: list[dict], table: list[dict], out_dir: str | Path,
                  cell_px: dict[str, int] | None = None, combined: list[dict] | None = None) -> list[Path]:
    """``trials.csv``, ``comparison.csv`` and ``comparison.png`` (accuracy, V-Acc and V-Red
    per configuration and task, error bars = spread over seeds) under ``out_dir``; where the
    trials' metrics have accuracy per grid size, ``by_size.csv`` and ``by_size.png``; with more
    than one tokens-per-image setting and the tasks' ``cell_px``, also ``compactness.png``
    (accuracy, V-Acc and training time against image tokens per grid cell); with
    ``combined`` rows (:func:`combine_trials`), ``combined.csv``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "trials.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*GRID_KEYS, "status", "task", *SCORES, "train_seconds"])
        for r in rows:
            for task, m in (r.get("tasks") or {"-": {}}).items():
                w.writerow([*(r[k] for k in GRID_KEYS), r["status"], task, *(m.get(s) for s in SCORES), r.get("train_seconds")])
    keys = [*CONFIG_KEYS, "task", "seeds", *(x for s in SCORES for x in (s, f"{s}_sd")), "train_seconds"]
    with (out / "comparison.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(table)
    files = [out / "trials.csv", out / "comparison.csv"]
    if combined:  # MVoT+CoT upper bound and combined predictor (combine_trials)
        with (out / "combined.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(combined[0]))
            w.writeheader()
            w.writerows(combined)
        files.append(out / "combined.csv")
    if table:
        files.append(_plot(table, out / "comparison.png"))
        if cell_px and len({r["patch_px"] for r in table}) > 1:
            files.append(_plot_compactness(table, cell_px, out / "compactness.png"))
    if by_size := aggregate_by_size(rows):
        with (out / "by_size.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(by_size[0]))
            w.writeheader()
            w.writerows(by_size)
        files += [out / "by_size.csv", plot_by_size(by_size, out / "by_size.png")]
    return files


def plot_by_size(by_size: list[dict], path: Path, title: str = "") -> Path:
    """Accuracy against grid size, one line per configuration, one panel per task (error
    bars = spread over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in by_size)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        series: dict[str, list[dict]] = {}
        for r in by_size:
            if r["task"] == task:
                series.setdefault(r.get("label") or config_label(r), []).append(r)
        for label, rs in series.items():
            rs = sorted(rs, key=lambda r: r["size"])
            ax.errorbar([r["size"] for r in rs], [r["accuracy"] for r in rs], yerr=[r.get("accuracy_sd") or 0 for r in rs],
                        marker="o", capsize=3, label=f"{label} ({rs[0]['seeds']} seed{'s' if rs[0]['seeds'] > 1 else ''})")
        ax.set_xticks(sorted({r["size"] for r in by_size if r["task"] == task}))
        ax.set_xlabel("grid size (cells a side)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{task}{': ' + title if title else ''}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def tokens_per_cell(cell_px: int, patch_px: int) -> float:
    """Image tokens per grid cell: (cell_px / patch_px)^2 (1/4 when a token spans 2x2 cells)."""
    return (cell_px / patch_px) ** 2


def _plot_compactness(table: list[dict], cell_px: dict[str, int], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("accuracy", "accuracy (%)"), ("v_acc", "V-Acc (%)"), ("train_seconds", "training time (s)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    series: dict[tuple[str, str], list[dict]] = {}
    for r in table:
        if r["task"] in cell_px:
            key = (r["task"], config_label(r).rsplit(" p", 1)[0])
            series.setdefault(key, []).append(r)
    for (task, label), rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: tokens_per_cell(cell_px[task], r["patch_px"]))
        xs = [tokens_per_cell(cell_px[task], r["patch_px"]) for r in rs]
        for ax, (m, title) in zip(axes[0], panels, strict=True):
            ys = [r.get(m) for r in rs]
            if any(y is not None for y in ys):
                ax.errorbar(xs, [y if y is not None else float("nan") for y in ys], marker="o", capsize=3,
                            yerr=[r.get(f"{m}_sd") or 0 for r in rs], label=f"{task} {label}")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("image tokens per grid cell")
            ax.set_title(title, fontsize=9)
            if m != "train_seconds":
                ax.set_ylim(0, 100)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot(table: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in table)]
    labels = list(dict.fromkeys(config_label(r) for r in table))
    metrics = [("accuracy", "accuracy (%)"), ("v_acc", "V-Acc (%)"), ("v_red", "V-Red (%)")]
    fig, axes = plt.subplots(len(metrics), len(tasks), figsize=(4 * len(tasks), 3 * len(metrics)), squeeze=False)
    for j, task in enumerate(tasks):
        by_label = {config_label(r): r for r in table if r["task"] == task}
        for i, (m, title) in enumerate(metrics):
            ax = axes[i][j]
            ys = [by_label.get(lb, {}).get(m) for lb in labels]
            sds = [by_label.get(lb, {}).get(f"{m}_sd") or 0 for lb in labels]
            ax.bar(range(len(labels)), [y if y is not None else 0 for y in ys], yerr=sds, capsize=3,
                   color=["C0" if y is not None else "lightgrey" for y in ys])
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
            ax.set_title(f"{task}: {title}", fontsize=9)
            ax.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
