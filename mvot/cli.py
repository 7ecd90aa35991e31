"""``mvot`` command line: the entry points used by dvc.yaml, the flows and people.

Every command validates ``params.yaml`` first; any known problem (bad params, corrupt or
malformed data, a failed check) prints one clear message and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mvot.config import SPLITS, TASKS, load_params
from mvot.errors import MvotError


class CliError(MvotError, RuntimeError):
    """A user-facing failure: printed without a traceback, exit code 1."""


def _progress(total: int, desc: str):
    from mvot.progress import progress_bar

    return progress_bar(total, f"generate {desc}", "inst", 0.5, dynamic_ncols=True)


def cmd_generate(args: argparse.Namespace) -> int:
    from mvot.data import generate_task

    params = load_params(args.params)
    for task in args.task or TASKS:
        t0 = time.perf_counter()
        stats = generate_task(params, task, args.out, args.stats_dir, args.sheet_dir, progress_factory=_progress)
        dt = time.perf_counter() - t0
        print(f"{task}: wrote {args.out}/{task} in {dt:.1f}s")
        _print_stats(stats)
    return 0


def _print_stats(stats: dict) -> None:
    for split in SPLITS:
        s = stats["splits"][split]
        answers = " ".join(f"{k}:{v:.1%}" for k, v in s["answer_share"].items())
        sizes = " ".join(f"{k}:{v}" for k, v in s["sizes"].items())
        print(f"  {split:5s} n={s['instances']:6d} layouts={s['distinct_layouts']:6d} answers[{answers}] sizes[{sizes}] steps~{s['steps_mean']}")


def _first_process() -> bool:
    """Not a torchrun process other than the first (each of which trains but neither tracks nor checks)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def _tracked(args: argparse.Namespace, experiment: str, run_name: str, parent_run_id: str | None = None,
             run_id: str | None = None):
    """An MLflow run (embedded sqlite store unless MLFLOW_TRACKING_URI says otherwise; with
    ``run_id``, that run continued), or a null tracker with --no-track and in every torchrun
    process but the first."""
    from contextlib import nullcontext

    from mvot.tracking import NullTracker, start_run

    if args.no_track or not _first_process():
        return nullcontext(NullTracker())
    return start_run(experiment, run_name, parent_run_id=parent_run_id, run_id=run_id)


def _check_report_outputs(args: argparse.Namespace) -> None:
    """Before a report computes anything: its --plots folder can be written and its tracking server answers."""
    if args.plots and Path(args.plots).exists() and not Path(args.plots).is_dir():
        raise CliError(f"--plots {args.plots}: is a file, not a folder; give a folder for the plots and CSVs")
    if args.track:
        from mvot.tracking import check_reachable, default_uri

        check_reachable(default_uri())


def _all_or_nothing(folder: str | Path, make):
    """``make(tmp)`` -> (result, files written in tmp); the files then move into ``folder``,
    so a report that fails partway leaves the folder as it was."""
    import shutil
    import tempfile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".report-") as tmp:
        result, written = make(Path(tmp))
        moved = []
        for path in written:
            dest = folder / Path(path).relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), dest)
            moved.append(dest)
    return result, moved


def cmd_report(args: argparse.Namespace) -> int:
    from mvot.report import (
        CE_WINDOW_TOKENS,
        PLATEAU_EXIT_CE,
        SOLVED_CE,
        by_size_tables,
        ld_pairs,
        results_table,
        transitions,
    )

    _check_report_outputs(args)
    table = results_table(args.sweeps, args.patch_px)
    if args.ld_pairs:  # computed before anything is printed or written: no pair is an error, not half a report
        table += "\n\nL_D against MVoT without L_D, seed by seed:\n\n" + ld_pairs(args.sweeps, args.patch_px)
    if args.transitions:
        table += (f"\n\nWhen each trial's text cross-entropy left its plateau and was solved (trailing median over "
                  f"{CE_WINDOW_TOKENS / 1e6:.1f}M batch tokens below {PLATEAU_EXIT_CE} and {SOLVED_CE}):\n\n"
                  + transitions(args.sweeps, args.patch_px))
    _, written = _all_or_nothing(args.plots, lambda out: (None, by_size_tables(args.sweeps, out, args.patch_px))) if args.plots else (None, [])
    print(table)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    if args.track:  # one MLflow run holding the merged table and by-size plots, beside the sweeps' own runs
        import shutil
        import tempfile

        from mvot.tracking import start_run

        with tempfile.TemporaryDirectory() as tmp, start_run("report", "results-table") as tracker:
            out = Path(tmp)
            (out / "results.md").write_text(table + "\n")
            if not written:
                by_size_tables(args.sweeps, out, args.patch_px)
            else:
                for path in written:
                    shutil.copy(path, out)
            tracker.set_tags({"sweeps": " ".join(str(Path(d).resolve()) for d in args.sweeps),
                              "patch_px": str(args.patch_px)})
            tracker.log_artifacts(out)
            print(f"MLflow run {tracker.run_id} (experiment 'report'): results.md and the by-size plots", file=sys.stderr)
    return 0


def cmd_compactness(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from mvot.report import compactness_table

    _check_report_outputs(args)
    with tempfile.TemporaryDirectory() as tmp:
        if args.plots:
            md, written = _all_or_nothing(args.plots, lambda out: compactness_table(args.sweeps, out, args.variant, args.ld_weight))
        else:
            md, written = compactness_table(args.sweeps, tmp if args.track else None, args.variant, args.ld_weight)
        print(md)
        for path in written if args.plots else []:
            print(f"wrote {path}", file=sys.stderr)
        if args.track:
            from mvot.tracking import start_run

            with start_run("report", "compactness") as tracker:
                out = Path(tmp) / "log"
                out.mkdir()
                (out / "compactness.md").write_text(md + "\n")
                for path in written:
                    shutil.copy(path, out)
                tracker.set_tags({"sweeps": " ".join(str(Path(d).resolve()) for d in args.sweeps),
                                  "variant": args.variant, "ld_weight": str(args.ld_weight)})
                tracker.log_artifacts(out)
                print(f"MLflow run {tracker.run_id} (experiment 'report'): compactness.md and its plot", file=sys.stderr)
    return 0


def cmd_outcomes(args: argparse.Namespace) -> int:
    from mvot.report import outcome_table

    print(outcome_table(args.sweeps, args.data, args.task))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from mvot.probe import probe, probe_table

    rows = probe(args.model, args.raw, args.task, args.split or ["train", "test"], args.per_outcome, args.batch_size, args.device)
    print(probe_table(rows, args.errors))
    return 0


def cmd_grads(args: argparse.Namespace) -> int:
    from mvot.gradients import gradient_shares, gradient_table

    results = {m: gradient_shares(m, args.tokens, args.split, args.batches, args.batch_tokens, args.ld_weight, args.clip,
                                  args.distance, args.reduction, args.seed, args.device, through=args.through) for m in args.model}
    print(gradient_table(results))
    return 0


def cmd_codebook(args: argparse.Namespace) -> int:
    from mvot import vq

    cols = ["tokenizer", "patch px", "live codes", "codebook", "duplicate pairs", "nearest distance",
            "median distance", "spearman (embedding vs pixels)", "nearest agree"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for d in args.tokenizer:
        g = vq.codebook_geometry(vq.load(d))
        print(f"| {d} | {g['patch_px']} | {g['codes']} | {g['codebook_size']} | {g['duplicate_pairs']} | "
              f"{g['nearest_distance']:.2f} | {g['median_distance']:.2f} | {g['spearman']:.3f} | {g['nearest_agree']:.1%} |")
    return 0


def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from mvot.tokenizers import run_stage

    params = load_params(args.params)
    with _tracked(args, "tokenizer", "tokenizer") as tracker:
        m = run_stage(params, args.raw, args.out, args.metrics, tracker)
    f = m["fidelity"]
    for task, d in f.items():
        print(f"{task:12s} cell fidelity {d['cell_fidelity']:.4%}  image fidelity {d['image_fidelity']:.4%}  ({d['frames']} held-out frames)")
    cb = m["codebook"]
    print(f"codebook: {cb['used_codes']}/{cb['size']} codes used, perplexity {cb['perplexity']:.1f}; vocabulary {m['vocab_size']} ids")
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from mvot.tokenize import tokenize_task

    params = load_params(args.params)
    for task in args.task or TASKS:
        stats = tokenize_task(params, task, args.raw, args.tokenizer, args.out, args.stats_dir)
        for split, by_var in stats["splits"].items():
            line = "  ".join(f"{v}: mean {d['mean_len']:.0f} max {d['max_len']}" for v, d in by_var.items())
            print(f"{task} {split}: {line}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mvot.runs import train_run

    params = load_params(args.params)
    runs = [args.run] if args.run else list(params.train.runs)
    unknown = [r for r in runs if r not in params.train.runs]
    if unknown:
        raise CliError(f"unknown run {unknown[0]!r}; params.yaml train.runs has: {', '.join(params.train.runs)}")
    if args.log_jsonl:
        log = Path(args.log_jsonl)
        if log.is_dir() or not log.parent.is_dir():
            raise CliError(f"--log-jsonl {log}: " + ("a folder, not a file" if log.is_dir() else f"folder {log.parent} does not exist")
                           + "; name a file in an existing folder")
    plans = {run: _resume_plan(args, params, run) for run in runs} if args.resume else {}  # every run checked first
    for run in runs:
        fingerprint, run_id = plans.get(run, (None, None))
        with _tracked(args, args.experiment, args.run_name or run, args.parent_run_id, run_id) as tracker:
            summary = train_run(params, run, args.tokens, args.tokenizer, args.out, tracker, args.log_jsonl, args.resume,
                                raw_dir=args.raw, fingerprint=fingerprint)
        print(json.dumps({"run": run} | summary, indent=2))
    return 0


def _resume_plan(args: argparse.Namespace, params, run: str) -> tuple[dict | None, str | None]:
    """``(fingerprint, MLflow run id)`` of a run that ``--resume`` may continue from
    ``<out>/<run>/checkpoint``, checked before any training or tracking run starts; raises
    with what changed otherwise. Under torchrun only the first process looks (it alone
    repairs a checkpoint swap cut off midway; ``train`` makes the others wait for it)."""
    from mvot.checkpoint import CKPT
    from mvot.runs import resume_plan
    from mvot.train import TrainError

    if not _first_process():
        return None, None
    ckpt = Path(args.out) / run / CKPT
    state, fingerprint, why = resume_plan(params, run, args.tokens, args.tokenizer, ckpt, legacy=True)
    if state is None:
        raise TrainError(f"cannot resume {run}: {why}; start afresh without --resume, or delete {ckpt}")
    return fingerprint, state.get("mlflow_run_id")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from mvot.runs import evaluate_tracked, tracking_info
    from mvot.tracking import NullTracker, start_run

    params = load_params(args.params)
    if args.limit is not None or args.budget_factor is not None:  # one-off overrides, validated like the file
        from mvot.config import parse_params

        raw = params.model_dump(mode="json")
        raw["evaluate"] |= {k: v for k, v in (("limit", args.limit), ("budget_factor", args.budget_factor)) if v is not None}
        params = parse_params(raw, f"{args.params} with --limit/--budget-factor")
    runs = args.run or list(params.train.runs)
    unknown = [r for r in runs if r not in params.train.runs]
    if unknown:
        raise CliError(f"unknown run {unknown[0]!r}; params.yaml train.runs has: {', '.join(params.train.runs)}")
    for run in runs:
        if not (Path(args.runs) / run / "model" / "config.json").is_file():
            raise CliError(f"{args.runs}/{run}/model: no trained model; run `dvc repro train@{run}` first")
    for run in runs:
        track = not args.no_track and _first_process()
        # evaluation lands in the training run of the model, when there is one
        ctx = start_run("train", run, run_id=tracking_info(Path(args.runs) / run).get("run_id")) if track else nullcontext(NullTracker())
        with ctx as tracker:
            results = evaluate_tracked(params, run, args.runs, args.tokens, args.raw, args.out, args.metrics, tracker)
        for task, m in results.items():
            print(_result_line(run, task, m))
    return 0


def _result_line(run: str, task: str, m: dict) -> str:
    f = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    line = f"{run:12s} {task:12s} n={m['n']:4d} accuracy {f(m['accuracy'])}% (unparsed {m['unparsed']})"
    if "v_acc" in m:
        line += f"  V-Acc {f(m['v_acc'])}  V-Red {f(m['v_red'])}  V-Steps {m['v_steps']}  V-Ratio {f(m['v_ratio'])}"
    return line + f"  [{m['decode_seconds']}s, {m['decode_tokens_per_s']:.0f} tok/s]"


def cmd_combine(args: argparse.Namespace) -> int:
    from mvot.evaluate import evaluate_combined

    params = load_params(args.params)
    for task, r in evaluate_combined(params, args.out, args.metrics, args.plots).items():
        a, b = r["runs"]
        print(f"{task:12s} {a} {r['accuracy_a']}%  {b} {r['accuracy_b']}%  upper bound {r['upper_bound']}%  "
              f"combined {r['combined']}%  agreement {r['agreement']}%  (n={r['n']})")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from mvot.promote import promote_run

    params = load_params(args.params)
    outcome = promote_run(params, args.run, args.runs)
    print(_promotion_line(params.promote.model_name, outcome))
    return 0


def _promotion_line(name: str, outcome) -> str:
    if outcome.version is None:
        return f"{name}: not registered: {'; '.join(outcome.decision.reasons)}"
    verdict = "champion" if outcome.decision.promote else "challenger only"
    return (f"{name} version {outcome.version} -> {verdict} (champion before: {outcome.champion_before or 'none'}): "
            + "; ".join(outcome.decision.reasons))


def cmd_solve(args: argparse.Namespace) -> int:
    from mvot.generate import load_model
    from mvot.solve import (
        problem_from_image,
        problem_from_instance,
        read_instances,
        renderer_of,
        solve,
        write_visuals,
    )
    from mvot.tracking import resolve_model_dir

    if bool(args.instance) == bool(args.image):
        raise CliError("give an instance file, or --image PNG with --task and --actions (not both)")
    lm = load_model(resolve_model_dir(args.model))
    if args.instance:
        insts = read_instances(args.instance)
        if args.index is not None:
            if not 0 <= args.index < len(insts):
                raise CliError(f"{args.instance}: --index {args.index} is out of range (the file holds {len(insts)} instances)")
            insts = [insts[args.index]]
        problems = [problem_from_instance(lm, i) for i in insts[: args.limit]]
    else:
        if not args.task or not args.actions:
            raise CliError("--image needs --task and --actions (comma-separated, e.g. up,up,right)")
        problems = [problem_from_image(lm, args.task, args.image, [a.strip() for a in args.actions.split(",") if a.strip()])]
    sols = solve(lm, problems, temperature=args.temperature, seed=args.seed)
    for sol in sols:
        p = sol.problem
        print(f"== {p.uid} ({p.task}, actions: {', '.join(p.actions)})")
        k = 0
        for kind, part in sol.decoded.parts:
            if kind == "text":
                print(part.strip())
            else:
                k += 1
                state = sol.states[k - 1] if k <= len(sol.states) else None
                print(f"  [visual thought {k}: drawn state read back as {_describe(state)}]")
        truth = f" (true answer {p.instance.answer}: {'correct' if sol.answer == p.instance.answer else 'wrong'})" if p.instance else ""
        print(f"answer: {sol.answer or '(none)'}{truth}")
        files = write_visuals(sol, renderer_of(lm, p.task), args.out)
        print(f"visual thoughts: {files['strip']}  {files['gif']}")
    return 0


def _describe(state) -> str:
    if state is None:
        return "nothing"
    if hasattr(state, "agent"):
        return f"agent at {tuple(state.agent)}"
    if hasattr(state, "path"):
        return f"path ending at {tuple(state.path[-1])}"
    return type(state).__name__


def cmd_import(args: argparse.Namespace) -> int:
    from mvot.importer import import_mvot

    params = load_params(args.params)
    written = import_mvot(Path(args.path), Path(args.out), params)
    for path, n in written.items():
        print(f"{path}: {n} instances, every answer recomputed and confirmed")
    return 0


def _at_least_one(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1; got {value!r}")
    return n


def _thread_counts(value: str) -> list[int]:
    from mvot.bench_train import check_thread_counts

    try:
        return check_thread_counts([int(x) for x in value.split(",") if x.strip()])
    except (ValueError, MvotError):
        raise argparse.ArgumentTypeError(f"expected distinct thread counts of at least 1, e.g. 1,2; got {value!r}") from None


def cmd_bench(args: argparse.Namespace) -> int:
    from mvot.bench import bench_generate, bench_parse

    params = load_params(args.params)
    if args.what == "decode":
        from mvot.bench_decode import bench_decode
        from mvot.bench_decode import format_table as decode_table

        r = bench_decode(params, args.run, args.runs, args.tokens, (args.task or ["frozenlake"])[0], args.n_single,
                         args.n_batched, args.batch_size)
        print(json.dumps(r, indent=2))
        print(decode_table(r))
        return 0
    if args.what == "threads":
        from mvot.bench_train import bench_threads, format_threads_table

        r = bench_threads(params, args.tokens, args.tokenizer, run=args.run, steps=args.steps, warmup=args.warmup,
                          rounds=args.rounds, threads=args.threads)
        print(json.dumps(r | {"by_threads": [{k: v for k, v in x.items() if k != "losses"} for x in r["by_threads"]]},
                         indent=2))
        print(format_threads_table(r))
        return 0
    if args.what == "train":
        from mvot.bench_train import bench_train, format_table

        r = bench_train(params, args.tokens, args.tokenizer, run=args.run, steps=args.steps, warmup=args.warmup, rounds=args.rounds)
        print(json.dumps(r | {side: {k: v for k, v in r[side].items() if k != "losses"} for side in ("ours", "trainer")}, indent=2))
        print(format_table(r))
        return 0
    fn = {"generate": bench_generate, "parse": bench_parse}[args.what]
    rows = fn(params, args.n, args.task or TASKS)
    print(json.dumps(rows, indent=2))
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    print(json.dumps(params.model_dump(mode="json"), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mvot.traces import VARIANTS

    p = argparse.ArgumentParser(prog="mvot", description="Multimodal Visualization-of-Thought pipeline")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate, render, split and verify task data (DVC stage 'generate')")
    g.add_argument("--task", action="append", choices=TASKS, help="task(s) to generate (default: all)")
    g.add_argument("--out", default="data/raw", help="root of the raw data (default: data/raw)")
    g.add_argument("--stats-dir", default="data/stats")
    g.add_argument("--sheet-dir", default="data/contact")
    g.set_defaults(fn=cmd_generate)

    t = sub.add_parser("train-tokenizer", help="train and freeze the image and text tokenizers (DVC stage 'tokenizer')")
    t.add_argument("--raw", default="data/raw")
    t.add_argument("--out", default="models/tokenizer")
    t.add_argument("--metrics", default="metrics/tokenizer.json")
    t.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    t.set_defaults(fn=cmd_train_tokenizer)

    k = sub.add_parser("tokenize", help="traces of every variant -> token arrays (DVC stage 'tokenize')")
    k.add_argument("--task", action="append", choices=TASKS)
    k.add_argument("--raw", default="data/raw")
    k.add_argument("--tokenizer", default="models/tokenizer")
    k.add_argument("--out", default="data/tokens")
    k.add_argument("--stats-dir", default="metrics/tokens")
    k.set_defaults(fn=cmd_tokenize)

    r = sub.add_parser("train", help="train the runs of params.yaml train.runs on the token arrays (DVC stage 'train')")
    r.add_argument("--run", help="one run of train.runs (default: all, one after another)")
    r.add_argument("--tokens", default="data/tokens")
    r.add_argument("--tokenizer", default="models/tokenizer")
    r.add_argument("--raw", default="data/raw", help="the generated data, read for train.oversample's outcome labels (default: data/raw)")
    r.add_argument("--out", default="models/runs")
    r.add_argument("--resume", action="store_true", help="continue from <out>/<name>/checkpoint")
    r.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    r.add_argument("--log-jsonl", help="also append the logged metrics to this JSON-lines file")
    r.add_argument("--experiment", default="train", help="MLflow experiment (default: train)")
    r.add_argument("--run-name", help="MLflow run name (default: the run's name)")
    r.add_argument("--parent-run-id", help="log as a child of this MLflow run (sweep trials)")
    r.set_defaults(fn=cmd_train)

    i = sub.add_parser("import-mvot", help="import the MVoT paper's released data format")
    i.add_argument("path", help="a maze gridN.json, a frozenlake levelN directory, or a folder holding them")
    i.add_argument("--out", default="data/imported", help="where to write <task>/<name>.jsonl")
    i.set_defaults(fn=cmd_import)

    e = sub.add_parser("evaluate", help="decode and score the test splits of trained runs (DVC stage 'evaluate')")
    e.add_argument("--run", action="append", help="run(s) of train.runs (default: all)")
    e.add_argument("--runs", default="models/runs", help="trained runs (default: models/runs)")
    e.add_argument("--tokens", default="data/tokens")
    e.add_argument("--raw", default="data/raw")
    e.add_argument("--out", default="eval", help="predictions and strips (default: eval)")
    e.add_argument("--metrics", default="metrics", help="metrics/<task>/<run>.json (default: metrics)")
    e.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    e.add_argument("--limit", type=int, help="override evaluate.limit (0 = the whole test split)")
    e.add_argument("--budget-factor", type=float, help="override evaluate.budget_factor (0 = no per-task cap)")
    e.set_defaults(fn=cmd_evaluate)

    c = sub.add_parser("combine", help="MVoT+CoT upper bound, combined predictor, accuracy-by-size tables (DVC stage 'combine')")
    c.add_argument("--out", default="eval", help="where `mvot evaluate` wrote predictions (default: eval)")
    c.add_argument("--metrics", default="metrics")
    c.add_argument("--plots", default="plots")
    c.set_defaults(fn=cmd_combine)

    pr = sub.add_parser("promote", help="register a trained, evaluated run; move 'challenger', and 'champion' if it wins")
    pr.add_argument("--run", help="run of train.runs (default: params.yaml promote.run)")
    pr.add_argument("--runs", default="models/runs")
    pr.set_defaults(fn=cmd_promote)

    s = sub.add_parser("solve", help="watch a model think: reasoning steps, answer, and visual thoughts as PNG strip and GIF")
    s.add_argument("instance", nargs="?", help="an instance file: ours (.json/.jsonl) or the paper's (gridN.json, data.json)")
    s.add_argument("--model", required=True, help="models/runs/<run>/model, or an MLflow URI such as models:/mvot@champion")
    s.add_argument("--index", type=int, help="solve only the instance at this index of the file")
    s.add_argument("--limit", type=int, default=8, help="at most this many instances of the file (default: 8)")
    s.add_argument("--image", help="an initial-state image instead of an instance file")
    s.add_argument("--task", choices=TASKS, help="with --image: the task")
    s.add_argument("--actions", help="with --image: comma-separated actions, e.g. up,up,right")
    s.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="solve", help="where to write <uid>.strip.png and <uid>.thoughts.gif (default: solve)")
    s.set_defaults(fn=cmd_solve)

    rp = sub.add_parser("report", help="the results table (markdown) of finished sweeps: every row of the paper per task")
    rp.add_argument("sweeps", nargs="+", help="sweep directories, e.g. sweeps/table-frozenlake; A+B reads sweeps A and B as one (seeds run as separate sweeps)")
    rp.add_argument("--patch-px", type=int, default=16, help="the tokens-per-image setting to tabulate (default: 16)")
    rp.add_argument("--plots", help="also write accuracy-by-grid-size CSVs (DVC plots), their figure and the trials' training curves here, e.g. plots")
    rp.add_argument("--ld-pairs", action="store_true",
                    help="also compare each MVoT trial with L_D with the one without L_D of the same seed: "
                         "V-Acc, V-Red and accuracy differences, their mean and spread, seeds that went the paper's way")
    rp.add_argument("--transitions", action="store_true",
                    help="also list per trial when its text cross-entropy left the plateau and fell to ~0 "
                         "(step, tokens and minutes trained by then): compares recipes such as batch sizes")
    rp.add_argument("--track", action="store_true",
                    help="also log the table and the by-size plots as an MLflow run (experiment 'report')")
    rp.set_defaults(fn=cmd_report)

    cp = sub.add_parser("compactness", help="the compactness study (markdown + plot): accuracy, V-Acc and training time "
                                            "against image tokens per cell, from finished sweeps")
    cp.add_argument("sweeps", nargs="+", help="sweep directories, e.g. sweeps/table-frozenlake sweeps/table-fl-compact")
    cp.add_argument("--variant", default="mvot", choices=VARIANTS, help="row of the paper (default: mvot)")
    cp.add_argument("--ld-weight", type=float, default=1.0, help="its L_D weight (default: 1.0)")
    cp.add_argument("--plots", help="also write compactness_<task>.csv and compactness.png here, e.g. plots")
    cp.add_argument("--track", action="store_true", help="also log the table and plot as an MLflow run (experiment 'report')")
    cp.set_defaults(fn=cmd_compactness)

    oc = sub.add_parser("outcomes", help="accuracy by how the episode ended (which rule gave the answer), per finished trial")
    oc.add_argument("sweeps", nargs="+", help="sweep directories, e.g. sweeps/table-minibehavior-4800")
    oc.add_argument("--task", choices=TASKS, help="only this task (default: every task the trials scored)")
    oc.add_argument("--data", default="data/raw", help="the generated data the trials were scored on (default: data/raw)")
    oc.set_defaults(fn=cmd_outcomes)

    pb = sub.add_parser("probe", help="teacher-forced: per outcome, what a model gets right when shown the true trace "
                                      "(train against test tells memorisation from a rule never learned)")
    pb.add_argument("model", help="a model directory, e.g. sweeps/<sweep>/trials/<trial>/runs/trial/model")
    pb.add_argument("--task", choices=TASKS, help="the task (default: the model's, if it was trained on one)")
    pb.add_argument("--split", action="append", choices=list(SPLITS), help="split(s) to probe (default: train and test)")
    pb.add_argument("--per-outcome", type=int, default=60, help="instances per outcome and split (default: 60)")
    pb.add_argument("--errors", type=int, default=2, help="commonest first errors shown per line (default: 2)")
    pb.add_argument("--raw", default="data/raw", help="the generated data (default: data/raw)")
    pb.add_argument("--batch-size", type=_at_least_one, default=16)
    pb.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    pb.set_defaults(fn=cmd_probe)

    gr = sub.add_parser("grads", help="a training step's gradient split into text, image and L_D parts, and what the "
                                      "gradient clip and AdamW leave of the text's step when L_D is added")
    gr.add_argument("model", nargs="+", help="model directories (a CoT model: where an MVoT run from it starts)")
    gr.add_argument("--tokens", default="data/tokens", help="the token arrays (default: data/tokens); the MVoT sequences are used")
    gr.add_argument("--split", default="train", choices=list(SPLITS))
    gr.add_argument("--batches", type=int, default=8, help="length-bucketed batches measured (default: 8)")
    gr.add_argument("--batch-tokens", type=int, default=8192, help="tokens per batch (default: 8192, as train.batch_tokens)")
    gr.add_argument("--ld-weight", type=float, default=1.0, help="w of L_D (default: 1.0, the paper's)")
    gr.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip (default: 1.0, as train.clip)")
    gr.add_argument("--distance", default="euclidean", choices=["euclidean", "mse"])
    gr.add_argument("--reduction", default="mean", choices=["mean", "sum"])
    gr.add_argument("--through", default="model", choices=["model", "head"],
                    help="what L_D's gradient reaches, as train.ld.through: every parameter, or the output layer only")
    gr.add_argument("--seed", type=int, default=0, help="which batches (default: 0)")
    gr.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    gr.set_defaults(fn=cmd_grads)

    cb = sub.add_parser("codebook", help="what L_D sees: duplicate codes, and how code-embedding distance ranks "
                                         "against the distance of the decoded patches")
    cb.add_argument("tokenizer", nargs="*", default=["models/tokenizer"],
                    help="tokenizer directories (default: models/tokenizer)")
    cb.set_defaults(fn=cmd_codebook)

    b = sub.add_parser("bench", help="benchmarks that print figures")
    b.add_argument("what", choices=["generate", "parse", "train", "threads", "decode"],
                   help="generation speed, parse accuracy under perturbations, training throughput (MFU, vs Trainer), "
                        "training throughput by torch thread count, or decoding throughput (single vs batched vs HF generate)")
    b.add_argument("--n", type=int, default=300, help="instances per task")
    b.add_argument("--task", action="append", choices=TASKS)
    b.add_argument("--run", default="mvot", help="train, threads: the run of train.runs to measure (default: mvot)")
    b.add_argument("--steps", type=int, default=20, help="train, threads: timed steps per round (default: 20)")
    b.add_argument("--warmup", type=int, default=3, help="train, threads: untimed steps before them (default: 3)")
    b.add_argument("--rounds", type=int, default=2,
                   help="train, threads: interleaved rounds (ours and Trainer; or the thread counts), best kept (default: 2)")
    b.add_argument("--threads", type=_thread_counts, help="threads: torch thread counts to compare, e.g. 1,2 "
                   "(default: 1 and every CPU this process may use)")
    b.add_argument("--tokens", default="data/tokens", help="train, threads: token arrays (default: data/tokens)")
    b.add_argument("--tokenizer", default="models/tokenizer", help="train, threads: tokenizer directory (default: models/tokenizer)")
    b.add_argument("--runs", default="models/runs", help="decode: trained runs (default: models/runs)")
    b.add_argument("--n-single", type=int, default=8, help="decode: prompts decoded one at a time, and by HF generate (default: 8)")
    b.add_argument("--n-batched", type=int, default=64, help="decode: prompts decoded in batches (default: 64)")
    b.add_argument("--batch-size", type=int, help="decode: rows a batch (default: evaluate.batch_size)")
    b.set_defaults(fn=cmd_bench)

    v = sub.add_parser("params", help="validate params.yaml and print it with every default filled in")
    v.set_defaults(fn=cmd_params)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except MvotError as exc:
        print(f"mvot {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mvot {args.command}: interrupted; outputs were left as they were", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
