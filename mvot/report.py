"""The results table (issue 7) from finished sweeps: the paper's rows per task, with the
spread over seeds and the paper's numbers beside ours.

``mvot report sweeps/table-frozenlake sweeps/table-maze sweeps/table-minibehavior`` reads
each sweep's finished trials (``trials/*/row.json`` and ``params.yaml``), aggregates them
(mean and sample standard deviation over seeds, ``mvot.sweep.aggregate``), pairs MVoT with
CoT trials for the upper bound and the combined predictor (``mvot.sweep.combine_trials``)
and prints one markdown table, with model size, tokens per image and steps per sweep.
Reading trials rather than a sweep's summary lets one table merge sweeps that ran
different rows (a row that several sweeps ran is listed once per sweep); ``A+B`` reads
sweeps A and B as one, so seeds run as separate sweeps share a line and its spread. Nothing is typed
by hand: the README's table is this command's output. With ``--plots DIR`` it also writes
``DIR/table_by_size_<task>.csv`` (accuracy per grid size, one column per row of the
paper, mean over seeds): the DVC plots of the table (``dvc plots show``), the figure
``table_by_size.png``, and ``table_curves.png``, every trial's training curves.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from mvot.config import TASKS, load_params
from mvot.errors import MvotError


class ReportError(MvotError, ValueError):
    """A sweep directory lacks what the table needs; the message names it."""


# DESIGN.md 2.6: the paper's numbers as far as confirmed (accuracy %, "~" where approximate)
PAPER_ACCURACY = {
    ("frozenlake", "mvot"): "85.60", ("maze", "mvot"): "92.95", ("minibehavior", "mvot"): "~95",
    ("frozenlake", "cot"): "~61.5 (6x6: ~39)", ("frozenlake", "direct"): "~70",
    ("frozenlake", "upper"): "~92", ("maze", "upper"): "~100",
}
PAPER_VISUAL = {("maze", "mvot_no_ld"): "V-Acc ~64, V-Red ~49", ("maze", "mvot"): "V-Acc ~93, V-Red ~10"}
ROWS = (("direct", 0.0, "Direct", "direct"), ("cot", 0.0, "CoT", "cot"), ("interleaved", 0.0, "Interleaved", "interleaved"),
        ("mvot", 0.0, "MVoT without L_D", "mvot_no_ld"), ("mvot", 1.0, "MVoT (L_D 1.0)", "mvot"))
SCORES = ("accuracy", "v_acc", "v_red", "v_steps", "v_ratio", "a_exact")


def _label(variant: str, ld: float) -> str:
    """A trial's row: one of the paper's (``ROWS``), or MVoT at another L_D weight (an
    ablation of w, DESIGN.md 2.4), labelled with its weight."""
    known = next((lab for v, w, lab, _ in ROWS if v == variant and w == float(ld)), None)
    return known or (f"MVoT (L_D {float(ld):g})" if variant == "mvot" else variant)


def _row_specs(sweeps: list[tuple[Path, list[dict]]]) -> list[tuple[str, float, str, str]]:
    """``ROWS`` plus one row per other L_D weight the sweeps' trials ran, among the MVoT
    rows in order of weight (key ``mvot_ld``: the paper has no number for it)."""
    rows = list(ROWS)
    known = {w for v, w, *_ in ROWS if v == "mvot"}
    ran = {float(t["ld_weight"]) for _, trials in sweeps for t in trials if t["variant"] == "mvot"}
    for w in sorted(ran - known):
        at = next((i for i, r in enumerate(rows) if r[0] == "mvot" and r[1] > w), len(rows))
        rows.insert(at, ("mvot", w, _label("mvot", w), "mvot_ld"))
    return rows


def _num(x: str | None) -> float | None:
    return None if x in (None, "", "None") else float(x)


def _cell(row: dict, key: str, digits: int = 1) -> str:
    mean, sd = _num(row.get(key)), _num(row.get(f"{key}_sd"))
    if mean is None:
        return "-"
    seeds = int(float(row.get("seeds") or 1))
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if seeds > 1 and sd is not None else "")


def _paper(task: str, key: str) -> str:
    paper = PAPER_ACCURACY.get((task, key), "")
    if (task, key) in PAPER_VISUAL:
        paper = f"{paper}; {PAPER_VISUAL[(task, key)]}".strip("; ")
    return paper


def load_trials(sweep_dir: Path) -> list[dict]:
    """The finished trials of one sweep (``trials/*/row.json`` with status ok), each with its
    directory (``_dir``) and typed params (``_params``)."""
    out = []
    for row_file in sorted((sweep_dir / "trials").glob("*/row.json")):
        try:
            row = json.loads(row_file.read_text())
        except json.JSONDecodeError as exc:
            raise ReportError(f"{row_file}: not valid JSON ({exc}); rerun the sweep to rewrite it") from None
        if not isinstance(row, dict):
            raise ReportError(f"{row_file}: holds a {type(row).__name__}, not a trial's row; rerun the sweep to rewrite it")
        if row.get("status") != "ok":
            continue
        _check_row(row, row_file)
        row["_dir"] = str(row_file.parent)
        row["_params"] = load_params(row_file.parent / "params.yaml")
        out.append(row)
    return out


def _check_row(row: dict, row_file: Path) -> None:
    """A finished trial's row has its grid point and a dict of scores per task (what every report reads)."""
    number = (int, float)
    want = {"trial": (str, "text"), "variant": (str, "text"), "ld_weight": (number, "a number"), "seed": (int, "an integer"),
            "patch_px": (int, "an integer"), "tasks": (dict, "an object")}
    for key, (kind, what) in want.items():
        if key not in row or isinstance(row[key], bool) or not isinstance(row[key], kind):
            raise ReportError(f"{row_file}: {key} is {row.get(key, 'missing')!r}; want {what} (rerun the sweep to rewrite it)")
    for task, scores in row["tasks"].items():
        bad = scores if not isinstance(scores, dict) else next(
            (k for k in SCORES if (v := scores.get(k)) is not None and (isinstance(v, bool) or not isinstance(v, number))), None)
        if bad is not None:
            raise ReportError(f"{row_file}: the scores of {task} are not numbers ({bad!r}); rerun the sweep to rewrite it")


def _sweep_facts(trials: list[dict]) -> dict:
    """Model size, tokens per image, train steps and initialisation, from a sweep's finished trials."""
    facts: dict = {}
    for row in trials:
        params = row["_params"]
        facts.setdefault("parameters", row.get("parameters"))
        facts.setdefault("steps", params.train.steps)
        facts.setdefault("batch_tokens", params.train.batch_tokens)
        facts.setdefault("tokens_per_image", {t: params.tokens_per_image(t) for t in params.train.tasks})
        if params.train.model.pretrained:
            facts.setdefault("pretrained", {})[row["trial"]] = params.train.model.pretrained
        if params.train.ld.from_step:
            facts.setdefault("ld_from_step", params.train.ld.from_step)
        if params.train.ld.through != "model" and float(row.get("ld_weight") or 0) > 0:
            facts.setdefault("ld_through", params.train.ld.through)
    return facts


def _sweeps(sweep_dirs: list[str | Path]) -> list[tuple[Path, list[dict]]]:
    """(sweep, finished trials) per argument. ``A+B`` (directories joined by ``+``) reads
    sweeps A and B as one, named ``A+B``: seeds of one row run as separate sweeps (say
    ``table-minibehavior`` and ``table-minibehavior-cot-s1``) then share one line of the
    table with their spread. A trial found in two of them is an error, not counted twice."""
    out = []
    for arg in sweep_dirs:
        parts = [Path(arg)] if Path(arg).is_dir() or "+" not in str(arg) else [Path(p) for p in str(arg).split("+")]
        trials: list[dict] = []
        seen: dict[str, Path] = {}
        for d in parts:
            mine = load_trials(d)
            if not mine:
                raise ReportError(f"{d}: no finished trial (trials/*/row.json with status ok); run the sweep "
                                  "(python -m flows.sweep ...) first")
            for t in mine:
                if t["trial"] in seen:
                    raise ReportError(f"trial {t['trial']} is in both {seen[t['trial']]} and {d}; "
                                      "join sweeps with '+' only where they ran different seeds or rows")
                seen[t["trial"]] = d
            trials += mine
        out.append((Path("+".join(p.name for p in parts)) if len(parts) > 1 else parts[0], trials))
    return out


def results_table(sweep_dirs: list[str | Path], patch_px: int = 16) -> str:
    """One markdown table over the tasks of ``sweep_dirs`` (finished sweeps), read from
    their trials. A row of the paper that several sweeps ran is listed once per sweep
    (column "sweep"); the upper bound and combined predictor pair each sweep's MVoT trials
    with the CoT trial of the same seed, from the same sweep or, failing that, from the
    first sweep given that has one."""
    from mvot.sweep import aggregate, combine_trials

    sweeps = _sweeps(sweep_dirs)
    specs = _row_specs(sweeps)
    # CoT partners for MVoT trials: a sweep's own first, then those of the sweeps in the order given
    cots = [t for _, trials in sweeps for t in trials if t["variant"] == "cot"]
    lines = ["| task | row | sweep | seeds | accuracy | V-Acc | V-Red | V-Steps | V-Ratio | A-Exact | train s | paper accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    per_task: dict[str, dict[str, list[str]]] = {}  # task -> row label (or "~combined") -> lines
    notes = []
    for d, trials in sweeps:
        table = [r for r in aggregate(trials) if int(r["patch_px"]) == patch_px]
        combined = [c for c in combine_trials(trials + cots, None) if int(c["patch_px"]) == patch_px]
        for task in TASKS:
            rows = [r for r in table if r["task"] == task]
            if not rows:
                continue
            out = per_task.setdefault(task, {})
            for variant, ld, label, key in specs:
                r = next((r for r in rows if r["variant"] == variant and float(r["ld_weight"]) == ld), None)
                if r is None:
                    continue
                paper = _paper(task, key)
                train = _num(r.get("train_seconds"))
                scores = " | ".join(_cell(r, s, 2 if s == "v_steps" else 1) for s in SCORES)
                out.setdefault(label, []).append(f"| {task} | {label} | {d.name} | {int(float(r['seeds']))} | {scores} | "
                           f"{f'{train:,.0f}' if train else '-'} | {paper} |")
            for c in combined:
                if c["task"] != task:
                    continue
                ld = float(c["ld_weight"])
                which = "MVoT" if ld == 1.0 else _label("mvot", ld)
                seeds = int(float(c["seeds"]))
                out.setdefault("~combined", []).append(f"| {task} | upper bound ({which} + CoT) | {d.name} | {seeds} | {_cell(c, 'upper_bound')} | | | | | | | "
                           f"{PAPER_ACCURACY.get((task, 'upper'), '') if which == 'MVoT' else ''} |")
                out["~combined"].append(f"| {task} | combined predictor ({which} + CoT) | {d.name} | {seeds} | {_cell(c, 'combined')} | | | | | | | |")
        facts = _sweep_facts(trials)
        tpi = ", ".join(f"{t} {n}" for t, n in facts["tokens_per_image"].items())
        size = f"{facts['parameters'] / 1e6:.2f}M parameters" if facts.get("parameters") else "parameters not recorded"
        note = f"{d.name}: {size}, {facts['steps']:,} steps x {facts['batch_tokens']:,} tokens, tokens per image: {tpi}"
        if facts.get("pretrained"):
            note += "; initialised from " + ", ".join(f"{p} ({t})" for t, p in facts["pretrained"].items())
        if facts.get("ld_from_step"):
            note += f"; L_D added from step {facts['ld_from_step']:,}"
        if facts.get("ld_through"):
            note += f"; L_D through the {facts['ld_through']} only"
        notes.append(note)
    for task in TASKS:
        if task not in per_task:
            continue
        for _, _, label, key in specs:
            if label in per_task[task]:
                lines += per_task[task][label]
            elif key != "mvot_ld":  # the paper's rows are listed even where not run; other weights only where run
                lines.append(f"| {task} | {label} | | 0 | not run | | | | | | | {_paper(task, key)} |")
        lines += per_task[task].get("~combined", [])
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def _paired_t(diffs: list[float]) -> str:
    """`` (t 1.09, p 0.39)``: scipy's one-sample t test of the per-seed differences against
    no difference (the paired t), on n - 1 degrees of freedom, two-sided; empty below two
    seeds or when every seed differs by the same amount (no spread to test against)."""
    if len(set(diffs)) < 2:
        return ""
    from scipy import stats

    res = stats.ttest_1samp(diffs, 0.0)
    return f" (t {res.statistic:.2f}, p {res.pvalue:.2f})"


def ld_pairs(sweep_dirs: list[str | Path], patch_px: int = 16) -> str:
    """The paper's L_D claim seed by seed: each MVoT trial with L_D (weight > 0) beside the
    MVoT trial without it of the same seed, patch size and sweep (``A+B`` joins sweeps), with
    the difference in V-Acc, V-Red and accuracy. Per sweep, task and L_D configuration
    (weight; distance and reduction where not the default Euclidean mean) a summary line:
    the mean difference and its sample standard deviation over seeds, and on how many seeds
    L_D went the paper's way (V-Acc higher and V-Red lower), with each difference's paired t
    and two-sided p over the seeds. A seed with only one of the two
    rows is left out; a sweep with no pair at all is an error naming what to run."""
    from mvot.sweep import CONFIG_KEYS, _mean_std

    keys = (("v_acc", "V-Acc"), ("v_red", "V-Red"), ("accuracy", "accuracy"))
    lines = ["| task | sweep | L_D weight | seed | " + " | ".join(f"{n} with / without | {n} diff" for _, n in keys) + " |",
             "|---|---|---|---|" + "---|---|" * len(keys)]
    found = 0
    for d, trials in _sweeps(sweep_dirs):
        mine = sorted((t for t in trials if t["variant"] == "mvot" and int(t["patch_px"]) == patch_px),
                      key=lambda t: int(t["seed"]))
        base = {int(t["seed"]): t for t in mine if float(t["ld_weight"]) == 0.0}
        # (task, L_D configuration: weight, distance, reduction) -> [(with L_D, without)], seeds in order
        groups: dict[tuple, list[tuple[dict, dict]]] = {}
        for t in mine:
            if float(t["ld_weight"]) == 0.0 or (b := base.get(int(t["seed"]))) is None:
                continue
            for task in TASKS:
                if task in t.get("tasks", {}) and task in b.get("tasks", {}):
                    groups.setdefault((task, tuple(t[k] for k in CONFIG_KEYS)), []).append((t, b))
        for (task, cfg), pairs in sorted(groups.items(), key=lambda kv: (TASKS.index(kv[0][0]), kv[0][1][1:])):
            c = dict(zip(CONFIG_KEYS, cfg, strict=True))
            form = "" if (c["ld_distance"], c["ld_reduction"]) == ("euclidean", "mean") else \
                f" ({c['ld_distance']}, {c['ld_reduction']})"
            label = f"| {task} | {d.name} | {float(c['ld_weight']):g}{form} |"
            found += len(pairs)
            diffs: dict[str, list[float]] = {k: [] for k, _ in keys}
            papers_way = 0
            for with_ld, without in pairs:
                a, b = with_ld["tasks"][task], without["tasks"][task]
                cells = []
                for k, _ in keys:
                    x, y = a.get(k), b.get(k)
                    if x is None or y is None:
                        cells.append("- | -")
                        continue
                    diffs[k].append(x - y)
                    cells.append(f"{x:.1f} / {y:.1f} | {x - y:+.1f}")
                if None not in (a.get("v_acc"), b.get("v_acc"), a.get("v_red"), b.get("v_red")):
                    papers_way += a["v_acc"] > b["v_acc"] and a["v_red"] < b["v_red"]
                lines.append(f"{label} {int(with_ld['seed'])} | " + " | ".join(cells) + " |")
            summary = []
            for k, _ in keys:
                mean, sd = _mean_std(diffs[k])
                summary.append("| -" if mean is None else
                               f"| **{mean:+.1f}" + (f" ± {sd:.1f}" if len(diffs[k]) > 1 else "") + "**"
                               + _paired_t(diffs[k]))
            lines.append(f"{label} mean of {len(pairs)}; the paper's way on {papers_way} | " + " | ".join(summary) + " |")
    if not found:
        raise ReportError(f"{' '.join(str(s) for s in sweep_dirs)}: no seed with MVoT both with and without L_D at "
                          f"{patch_px}-pixel patches; run both rows (--set \"sweep.grid.ld_weight=[0.0,1.0]\") or "
                          "join the sweeps that hold them with '+'")
    return "\n".join(lines)


def by_size_tables(sweep_dirs: list[str | Path], out_dir: str | Path, patch_px: int = 16) -> list[Path]:
    """Accuracy by grid size per task, one column per row of the paper (mean over seeds), from
    the sweeps' trials, as ``table_by_size_<task>.csv`` and one figure, ``table_by_size.png``;
    returns the files written. Where several sweeps ran the same row, the last one named has the
    plain label and the others ``label [sweep]``: with the sweeps named in the order they ran (a
    continuation after what it continues, as ``make table`` does), the plain columns, which
    ``dvc.yaml``'s plots name, are each row's final recipe."""
    from mvot.sweep import aggregate_by_size, plot_by_size

    sweeps = _sweeps(sweep_dirs)
    specs = _row_specs(sweeps)
    found = []  # (position, sweep, task, label, rows), in the sweeps' order
    for i, (d, trials) in enumerate(sweeps):
        rows = [r for r in aggregate_by_size(trials) if int(r["patch_px"]) == patch_px]
        for task in TASKS:
            mine = [r for r in rows if r["task"] == task]
            for variant, ld, label, _ in specs:
                sel = [r for r in mine if r["variant"] == variant and float(r["ld_weight"]) == ld]
                if sel:
                    found.append((i, d, task, label, sel))
    last = {(task, label): i for i, _, task, label, _ in found}  # by position: one sweep may be named twice
    columns: dict[str, dict[str, dict[int, float]]] = {}
    points = []  # for the figure: one line per column
    for i, d, task, label, sel in found:
        name = label if last[(task, label)] == i else f"{label} [{d.name}]"
        columns.setdefault(task, {})[name] = {int(r["size"]): r["accuracy"] for r in sel}
        points += [r | {"label": name} for r in sel]
    written = []
    for task, cols in columns.items():
        path = Path(out_dir) / f"table_by_size_{task}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["size", *cols])
            for size in sorted({s for c in cols.values() for s in c}):
                w.writerow([size, *(c.get(size, "") for c in cols.values())])
        written.append(path)
    if points:
        written.append(plot_by_size(points, Path(out_dir) / "table_by_size.png", "results table"))
    curves = _plot_curves(sweeps, Path(out_dir) / "table_curves.png", patch_px)
    return written + ([curves] if curves else [])


def _read_curve(path: Path) -> dict[str, list[float]]:
    """``runs/trial/curve.csv`` as columns; empty cells (a loss a row does not have) are NaN."""
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        return {k: [float(r[k]) if r[k] not in ("", None) else float("nan") for r in rows] for k in (rows[0] if rows else {})}
    except (ValueError, TypeError, UnicodeDecodeError, csv.Error) as exc:
        raise ReportError(f"{path}: not a training curve ({type(exc).__name__}: {exc}); delete it or rerun the trial") from None


def _trial_curve(row: dict) -> dict[str, list[float]] | None:
    """A finished trial's curve (``None`` if it kept none), its steps counted from scratch:
    a trial initialised from another trial's model (``train.model.pretrained`` pointing at
    ``<trial>/runs/trial/model``) continues after that trial's last step."""
    curve = Path(row["_dir"]) / "runs" / "trial" / "curve.csv"
    if not curve.exists():
        return None
    c = _read_curve(curve)
    pretrained = row["_params"].train.model.pretrained
    if pretrained and (parent := Path(pretrained).parent / "curve.csv").exists():
        before = _read_curve(parent).get("step") or [0.0]
        c["step"] = [s + before[-1] for s in c.get("step", [])]
    return c


# A run's text cross-entropy sits on a plateau (FROZENLAKE ~0.25) until the model learns which
# action comes next, then falls by orders of magnitude. Where it "leaves the plateau" and where
# it is "solved", on the median over a trailing window of a fixed number of tokens (200 steps of
# 8,192), so runs of different batch sizes are compared on the same footing; the median, as
# small batches' losses spike now and then.
PLATEAU_EXIT_CE, SOLVED_CE, CE_WINDOW_TOKENS = 0.2, 0.01, 200 * 8192


def _trailing_median(steps: list[float], values: list[float], span: float) -> list[float]:
    """At each logged step, the median of the values logged within the ``span`` steps up to
    it (NaN where none is a number): a small batch's loss spikes now and then."""
    out, lo = [], 0
    for i, s in enumerate(steps):
        while steps[lo] <= s - span:
            lo += 1
        window = [v for v in values[lo:i + 1] if v == v]
        out.append(statistics.median(window) if window else float("nan"))
    return out


def _first_below(steps: list[float], median: list[float], span: float, level: float) -> int | None:
    """The index of the first logged step whose trailing median (``_trailing_median`` over
    ``span`` steps) is below ``level``, once a whole window has been trained; ``None`` if
    none is. Steps count from the curve's own first step."""
    start = steps[0] - (steps[1] - steps[0] if len(steps) > 1 else 0)
    return next((i for i, (s, m) in enumerate(zip(steps, median, strict=True)) if s - start >= span and m < level), None)


def _seconds_per_step(row: dict) -> float:
    """A trial's training seconds over its own steps (0 where it recorded no time)."""
    return (_num(row.get("train_seconds")) or 0.0) / row["_params"].train.steps


def _tokens_per_step(row: dict, curve: dict[str, list[float]]) -> list[float]:
    """Real (unpadded) tokens per step at each logged point of a trial's curve: its logged
    tokens per second (an average since the run started) times its seconds per step; the
    batch budget ``train.batch_tokens`` (padding included) where a curve lacks the rate."""
    params = row["_params"].train
    per_step = _seconds_per_step(row)
    rate = curve.get("train/tokens_per_s") or []
    return [r * per_step if i < len(rate) and (r := rate[i]) == r and per_step else float(params.batch_tokens)
            for i in range(len(curve.get("step", [])))]


def transitions(sweep_dirs: list[str | Path], patch_px: int = 16) -> str:
    """When each trial's text cross-entropy left its plateau (trailing median below
    ``PLATEAU_EXIT_CE``) and fell to ``SOLVED_CE``: the step, the real (unpadded) tokens
    trained by then (millions: the logged ``train/tokens_per_s`` times the training seconds
    by then; step x ``train.batch_tokens`` where a curve lacks it) and the training minutes
    by then (the trial's train seconds pro rata), beside its median text cross-entropy over
    the last window and its accuracy. A trial trained on several tasks is one line: its
    curve is the tasks' together (``task`` joins them, ``accuracy`` lists each task's). A
    batch holds up to ``batch_tokens`` with padding, so small batches of long sequences
    hold fewer real tokens: compare runs on the real ones.
    Steps of a trial trained on from another's model count from scratch (as in the curves
    figure); its tokens and minutes are its own part's. This compares recipes (batch size,
    learning rate) on what decides a run here: how soon it passes the transition."""
    lines = ["| task | sweep | row | seed | steps x tokens | leaves plateau: step / M tokens / min | "
             "solved: step / M tokens / min | last text CE | accuracy |", "|---|---|---|---|---|---|---|---|---|"]
    for d, trials in _sweeps(sweep_dirs):
        for row in sorted(trials, key=lambda t: (t["variant"], float(t["ld_weight"]), int(t["seed"]))):
            curve = _trial_curve(row) if int(row["patch_px"]) == patch_px else None
            if not curve or "loss/text_ce" not in curve or not curve.get("step"):
                continue
            params = row["_params"]
            batch, steps, own = params.train.batch_tokens, curve["step"], params.train.steps
            span = CE_WINDOW_TOKENS / batch
            median = _trailing_median(steps, curve["loss/text_ce"], span)
            offset = steps[-1] - own if steps[-1] > own else 0.0  # a continued trial's steps before its own
            minutes, real = _seconds_per_step(row) / 60, _tokens_per_step(row, curve)
            cells = []
            for level in (PLATEAU_EXIT_CE, SOLVED_CE):
                i = _first_below(steps, median, span, level)
                if i is None:
                    cells.append("not within the run")
                    continue
                n = steps[i] - offset  # this run's own steps by then
                cells.append(f"{steps[i]:,.0f} / {n * real[i] / 1e6:.1f} / {n * minutes:.1f}" + (" (of this run)" if offset else ""))
            last = "-" if median[-1] != median[-1] else f"{median[-1]:.3f}"
            # the curve is the trial's: a model trained on several tasks has one text CE for them all, so one
            # line, its tasks joined and their accuracies in the same order
            tasks = list(row["tasks"])
            accs = [row["tasks"][t].get("accuracy") for t in tasks]
            lines.append(f"| {' + '.join(tasks)} | {d.name} | {_label(row['variant'], row['ld_weight'])} | {row['seed']} | "
                         f"{own:,} x {batch:,} | {cells[0]} | {cells[1]} | {last} | "
                         f"{' / '.join('-' if a is None else f'{a:.1f}' for a in accs)} |")
    if len(lines) == 2:
        raise ReportError(f"{' '.join(str(s) for s in sweep_dirs)}: no finished trial kept a training curve with a text "
                          f"cross-entropy at {patch_px}-pixel patches (runs/trial/curve.csv); rerun the sweep")
    return "\n".join(lines)


def learning_curves(sweep_dirs: list[str | Path], path: str | Path, patch_px: int = 16) -> Path | None:
    """Training curves of the sweeps' finished trials: text and image cross-entropy (the
    trailing median over ``CE_WINDOW_TOKENS``, as ``transitions`` reads them) against
    step (a trial started from another's model continues after its last step; against
    real tokens trained where the trials' batch sizes differ), one line per
    trial (row and seed), one row of panels per task, log scale. Where a
    row's seeds end far apart, this shows whether the model learned the task at all (text
    cross-entropy falling to ~0) and when. ``None`` when no trial kept its curve."""
    return _plot_curves(_sweeps(sweep_dirs), path, patch_px)


def _plot_curves(sweeps: list[tuple[Path, list[dict]]], path: str | Path, patch_px: int) -> Path | None:
    series: dict[str, list[tuple[str, dict[str, list[float]]]]] = {}
    batches: set[int] = set()
    for d, trials in sweeps:
        for row in trials:
            curve = _trial_curve(row) if int(row["patch_px"]) == patch_px else None
            if curve is None:
                continue
            label = _label(row["variant"], row["ld_weight"])
            curve["tokens"] = [s * n / 1e6 for s, n in zip(curve.get("step", []), _tokens_per_step(row, curve), strict=True)]
            batch = row["_params"].train.batch_tokens
            batches.add(batch)
            for key in ("loss/text_ce", "loss/image_ce"):  # drawn as the transitions table reads them
                if key in curve:
                    curve[key] = _trailing_median(curve["step"], curve[key], CE_WINDOW_TOKENS / batch)
            for task in row.get("tasks", {}):
                series.setdefault(task, []).append((f"{label} s{row['seed']} [{d.name}]", curve))
    if not series:
        return None
    # runs of different batch sizes are compared on tokens trained, not steps
    x_key, x_name = ("tokens", "real tokens trained (millions)") if len(batches) > 1 else ("step", "step")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if t in series]
    losses = (("loss/text_ce", "text cross-entropy"), ("loss/image_ce", "image cross-entropy"))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 3.4 * len(tasks)), squeeze=False)
    for row_axes, task in zip(axes, tasks, strict=True):
        for ax, (key, name) in zip(row_axes, losses, strict=True):
            for i, (label, c) in enumerate(series[task]):  # one colour per trial in both panels
                if key in c and any(v == v and v > 0 for v in c[key]):
                    ax.plot(c[x_key], c[key], label=label, linewidth=1, color=f"C{i % 10}")
            ax.set_yscale("log")
            ax.set_xlabel(x_name)
            ax.set_ylabel(name)
            ax.set_title(f"{task}: {name} (trailing median over {CE_WINDOW_TOKENS / 1e6:.1f}M batch tokens)", fontsize=9)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def compactness_table(sweep_dirs: list[str | Path], out_dir: str | Path | None = None,
                      variant: str = "mvot", ld_weight: float = 1.0) -> tuple[str, list[Path]]:
    """The compactness study (issue 7): accuracy, V-Acc and training time against image
    tokens per grid cell, for one row of the paper (default MVoT with L_D 1.0), from the
    finished trials of ``sweep_dirs`` (mean and spread over seeds per sweep and patch size).
    Sweeps are merged so that a study can reuse the results table's own trial at the default
    patch size; a task needs at least two settings, and a setting that two sweeps ran is
    refused (say which one to use by leaving the other out). With ``out_dir``, also
    ``compactness_<task>.csv`` and ``compactness.png``. Returns the markdown and the files."""
    from mvot.sweep import _plot_compactness, aggregate, tokens_per_cell

    points: dict[tuple[str, int], dict] = {}  # (task, patch_px) -> aggregated row + facts
    for d, trials in _sweeps(sweep_dirs):
        mine = [t for t in trials if t["variant"] == variant and float(t["ld_weight"]) == ld_weight]
        first = {}  # (task, patch_px) -> one trial of that setting, for its params and model size
        for t in mine:
            for task in t["tasks"]:
                first.setdefault((task, int(t["patch_px"])), t)
        for r in aggregate(mine):
            key = (r["task"], int(r["patch_px"]))
            if key in points:
                raise ReportError(f"{r['task']} at {key[1]}-pixel patches was run by both {points[key]['sweep']} and "
                                  f"{d.name}; give only one of them")
            params = first[key]["_params"]
            cell = params.render.task(r["task"]).cell_px
            points[key] = r | {"sweep": d.name, "cell_px": cell, "tokens_per_cell": tokens_per_cell(cell, key[1]),
                               "tokens_per_image": params.tokens_per_image(r["task"]), "steps": params.train.steps,
                               "batch_tokens": params.train.batch_tokens, "parameters": first[key].get("parameters")}
    label = _label(variant, ld_weight)
    tasks = [t for t in TASKS if len({p for (task, p) in points if task == t}) > 1]
    if not tasks:
        found = ", ".join(f"{t} p{p}" for t, p in sorted(points)) or "none"
        raise ReportError(f"no task has {label} trials at two or more patch sizes in {', '.join(map(str, sweep_dirs))} "
                          f"(found: {found}); run the sweep with --set \"sweep.grid.patch_px=[...]\"")
    rows = sorted((r for (task, _), r in points.items() if task in tasks),
                  key=lambda r: (tasks.index(r["task"]), r["tokens_per_cell"]))
    lines = [f"Compactness study, {label}:", "",
             "| task | tokens per cell | tokens per image | patch px | sweep | seeds | accuracy | V-Acc | V-Red | V-Steps | A-Exact | train s | steps x tokens | parameters |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        train = _num(r.get("train_seconds"))
        size = f"{r['parameters'] / 1e6:.2f}M" if r.get("parameters") else "-"
        lines.append(f"| {r['task']} | {r['tokens_per_cell']:g} | {r['tokens_per_image']} | {r['patch_px']} | {r['sweep']} | "
                     f"{int(float(r['seeds']))} | "
                     + " | ".join(_cell(r, s, 2 if s == "v_steps" else 1) for s in ("accuracy", "v_acc", "v_red", "v_steps", "a_exact"))
                     + f" | {f'{train:,.0f}' if train else '-'} | {r['steps']:,} x {r['batch_tokens']:,} | {size} |")
    written: list[Path] = []
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        fields = ["tokens_per_cell", "tokens_per_image", "patch_px", "sweep", "seeds", "accuracy", "accuracy_sd",
                  "v_acc", "v_acc_sd", "v_red", "v_red_sd", "train_seconds"]
        for task in tasks:
            path = out / f"compactness_{task}.csv"
            with path.open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(r for r in rows if r["task"] == task)
            written.append(path)
        written.append(_plot_compactness(rows, {r["task"]: r["cell_px"] for r in rows}, out / "compactness.png"))
    return "\n".join(lines), written


def outcome_table(sweep_dirs: list[str | Path], data_dir: str | Path = "data/raw", task: str | None = None) -> str:
    """Accuracy by how the episode ended (``mvot.worlds.outcome``: the answer, split further
    where a world has several causes for one answer, as MINIBEHAVIOR's failed pick-up and
    put-down do), one line per finished trial of ``sweep_dirs``, from the trials' test
    predictions and the test split in ``data_dir`` they were scored on. Answers which rule
    the misses break: on MINIBEHAVIOR, those read off the inventory line or those that need
    the picture (is the printer, or a table cell, next to the agent?)."""
    from mvot.data import split_outcomes

    sweeps = _sweeps(sweep_dirs)
    rank = {lab: i for i, (_, _, lab, _) in enumerate(_row_specs(sweeps))}
    per_task: dict[str, list[tuple[str, str, int, dict[str, tuple[int, int]]]]] = {}
    tests: dict[str, dict[str, str]] = {}  # task -> uid -> outcome
    for d, trials in sweeps:
        for t in trials:
            for name in t["tasks"]:
                if task and name != task:
                    continue
                if name not in tests:
                    tests[name] = split_outcomes(Path(data_dir) / name, "test")
                preds = Path(t["_dir"]) / "eval" / "trial" / name / "predictions.jsonl"
                if not preds.is_file():
                    raise ReportError(f"{preds}: missing; the trial's evaluation did not finish (rerun its sweep)")
                counts: dict[str, list[int]] = {}
                for lineno, line in enumerate(preds.read_text().splitlines(), 1):
                    try:
                        p = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ReportError(f"{preds}:{lineno}: not valid JSON ({exc}); rerun the trial's evaluation") from None
                    if not isinstance(p, dict) or not {"uid", "pred", "gold"} <= p.keys() or not isinstance(p["uid"], str):
                        raise ReportError(f"{preds}:{lineno}: not a prediction record (an object with uid, pred and gold); "
                                          "rerun the trial's evaluation")
                    kind = tests[name].get(p["uid"])
                    if kind is None:
                        raise ReportError(f"{preds}:{lineno}: instance {line[:80]!r} is not in {Path(data_dir) / name}/test.jsonl; "
                                          "the data changed since this trial was scored (regenerate it, or rerun the sweep)")
                    c = counts.setdefault(kind, [0, 0])
                    c[0] += p["pred"] == p["gold"]
                    c[1] += 1
                label = _label(t["variant"], t["ld_weight"])
                per_task.setdefault(name, []).append((d.name, label, int(t["seed"]), {k: tuple(v) for k, v in counts.items()}))
    if not per_task:
        raise ReportError(f"no finished trial scored {task} in {', '.join(map(str, sweep_dirs))}")
    order = {Path(d).name: i for i, d in enumerate(sweep_dirs)}
    out = []
    for name in (t for t in TASKS if t in per_task):
        kinds = sorted({k for *_, counts in per_task[name] for k in counts})
        out += [f"Accuracy by outcome, {name} (right / instances):", "",
                "| sweep | row | seed | accuracy | " + " | ".join(kinds) + " |", "|---|---|---|---|" + "---|" * len(kinds)]
        for sweep, label, seed, counts in sorted(per_task[name], key=lambda r: (order[r[0]], rank.get(r[1], len(rank)), r[2])):
            right, n = sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
            cells = " | ".join(f"{counts[k][0]} / {counts[k][1]}" if k in counts else "-" for k in kinds)
            out.append(f"| {sweep} | {label} | {seed} | {100 * right / n:.1f} | {cells} |")
        out.append("")
    return "\n".join(out).rstrip()
