"""Scoring: task accuracy and the visual metrics of DESIGN.md 2.5, on all three tasks.

Every drawn image is decoded by the frozen VQ tokenizer into pixels and read back into a
grid by the renderer's inverse (:meth:`mvot.render.Renderer.read_cells`); the reading is
compared with the true state of the same step. For step k the *region that should
change* is every cell whose drawing differs between true states k-1 and k, plus the
agent's cell before and after (so a bump into a wall still has a region: the agent
must stay where it was).

* **V-Acc**: share of drawn steps whose region is drawn exactly as the true state k
  (and the grid has the true size). A drawn image beyond the true number of steps has no
  true state and counts as wrong.
* **V-Red**: share of drawn steps with any cell outside the region unlike the true state
  (or a grid of the wrong size): unintended patterns. Lower is better.
* **V-Steps**: mean over instances of the number of leading consecutive correct steps
  (the first run, counted from step 1).
* **V-Ratio**: V-Steps / true number of steps, averaged over instances with steps.

Written actions (the variants that write steps: CoT, interleaved, MVoT): the actions the
response names, in order, against the actions actually executed (the list up to where
the episode ended). **A-Exact**: share of instances whose written list equals the
executed one; **A-First**: share whose first written action is the first executed one.
They separate "cannot fetch the k-th action from the question" from "cannot track the
state" (not in the paper; a diagnostic of issue 7).

Accuracy: exact letter match, overall, per grid size and per true answer letter;
unparsed answers count as wrong and are counted. The MVoT+CoT upper bound counts an
instance correct when either model is; the *combined predictor* is a rule one can
actually deploy: when the two disagree (or one has no answer), take the answer whose
answer token the model gave the higher probability.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mvot.config import TASKS, ConfigError
from mvot.render import Renderer
from mvot.worlds import Instance, letters

NONE = "none"  # the confusion-matrix column of unparsed answers


@dataclass
class Record:
    """One scored instance (a line of ``predictions.jsonl``)."""

    uid: str
    task: str
    size: int
    n_steps: int
    gold: str
    pred: str | None
    answer_logprob: float | None = None
    new_tokens: int = 0
    stopped: str = ""
    drawn: int = 0  # images drawn
    step_correct: list[bool] = field(default_factory=list)
    step_redundant: list[bool] = field(default_factory=list)
    text: str = ""
    actions_exact: bool | None = None  # the written actions are the executed ones (None: none written by design)
    actions_first: bool | None = None  # the first written action is the first executed one

    @property
    def correct(self) -> bool:
        return self.pred == self.gold

    @property
    def v_steps(self) -> int:
        n = 0
        for ok in self.step_correct:
            if not ok:
                break
            n += 1
        return n


@functools.cache
def _action_pattern(task: str) -> tuple[re.Pattern, dict[str, str]]:
    from mvot.traces import action_text
    from mvot.worlds import world

    names = {action_text(task, a): a for a in world(task).ACTIONS}
    return re.compile("|".join(re.escape(t) for t in sorted(names, key=len, reverse=True))), names


def written_actions(task: str, text: str) -> list[str]:
    """The actions a generated response names, in order (``Go up.``, ``Pick up printer_0.``)."""
    pattern, names = _action_pattern(task)
    return [names[m] for m in pattern.findall(text)]


def _focus(state) -> tuple[int, int]:
    return state.agent if hasattr(state, "agent") else state.path[-1]


def check_step(renderer: Renderer, before, after, drawn: np.ndarray | Image.Image) -> tuple[bool, bool]:
    """``(correct, redundant)`` of one drawn image against true states ``before`` -> ``after``."""
    true_prev, true_now = renderer.cells(before), renderer.cells(after)
    region = {c for c, k in true_now.items() if true_prev.get(c) != k} | {_focus(before), _focus(after)}
    n, got = renderer.read_cells(drawn)
    if n != after.size:
        return False, True
    correct = all(got.get(c) == true_now[c] for c in region if c in true_now)
    redundant = any(got.get(c) != k for c, k in true_now.items() if c not in region)
    return correct, redundant


def check_steps(renderer: Renderer, inst: Instance, drawn: list) -> tuple[list[bool], list[bool]]:
    """Per drawn image: ``correct`` and ``redundant`` lists (drawn[j] shows step j + 1)."""
    correct, redundant = [], []
    for j, img in enumerate(drawn):
        k = j + 1
        if k > inst.n_steps:  # no such step: a drawing the trace should not have
            correct.append(False)
            redundant.append(True)
            continue
        c, r = check_step(renderer, inst.states[k - 1], inst.states[k], img)
        correct.append(c)
        redundant.append(r)
    return correct, redundant


def _share(num: float, den: float) -> float | None:
    return round(100.0 * num / den, 2) if den else None


def summarize(records: list[Record], visual: bool) -> dict:
    """Accuracy (overall, per size, per answer), confusion matrix and, if ``visual``, V-metrics."""
    n = len(records)
    out: dict = {
        "n": n,
        "accuracy": _share(sum(r.correct for r in records), n),
        "unparsed": sum(r.pred is None for r in records),
        "mean_new_tokens": round(sum(r.new_tokens for r in records) / n, 1) if n else None,
    }
    by_size, by_gold = defaultdict(list), defaultdict(list)
    for r in records:
        by_size[r.size].append(r.correct)
        by_gold[r.gold].append(r.correct)
    out["accuracy_by_size"] = {str(k): _share(sum(v), len(v)) for k, v in sorted(by_size.items())}
    out["accuracy_by_answer"] = {k: _share(sum(v), len(v)) for k, v in sorted(by_gold.items())}
    confusion: dict[str, dict[str, int]] = {}
    if records:
        cols = list(letters(records[0].task)) + [NONE]
        counts = Counter((r.gold, r.pred or NONE) for r in records)
        confusion = {g: {p: counts[(g, p)] for p in cols} for g in letters(records[0].task)}
    out["confusion"] = confusion
    written = [r for r in records if r.actions_exact is not None]
    if written:
        out["a_exact"] = _share(sum(r.actions_exact for r in written), len(written))
        out["a_first"] = _share(sum(bool(r.actions_first) for r in written), len(written))
    if visual:
        steps = [c for r in records for c in r.step_correct]
        red = [x for r in records for x in r.step_redundant]
        with_steps = [r for r in records if r.n_steps]
        out |= {
            "drawn_steps": len(steps),
            "v_acc": _share(sum(steps), len(steps)),
            "v_red": _share(sum(red), len(red)),
            "v_steps": round(sum(r.v_steps for r in records) / n, 3) if n else None,
            "v_ratio": _share(sum(r.v_steps / r.n_steps for r in with_steps), len(with_steps)),
            "drawn_vs_true_steps": round(sum(r.drawn for r in records) / max(1, sum(r.n_steps for r in records)), 3),
        }
    return out


def combine(a: list[Record], b: list[Record]) -> dict:
    """Upper bound (either correct) and the combined predictor of two runs on the same instances.

    Combined: the common answer when both agree; otherwise the answer with the higher
    answer-token log-probability (an answer beats no answer)."""
    by_uid = {r.uid: r for r in b}
    if set(by_uid) != {r.uid for r in a}:
        raise ValueError("the two runs were scored on different instances")
    upper = combined = agree = 0
    for ra in a:
        rb = by_uid[ra.uid]
        upper += ra.correct or rb.correct
        agree += ra.pred == rb.pred
        la = ra.answer_logprob if ra.pred is not None and ra.answer_logprob is not None else -math.inf
        lb = rb.answer_logprob if rb.pred is not None and rb.answer_logprob is not None else -math.inf
        pick = ra.pred if la >= lb else rb.pred
        combined += pick == ra.gold
    n = len(a)
    return {"n": n, "upper_bound": _share(upper, n), "combined": _share(combined, n), "agreement": _share(agree, n),
            "accuracy_a": _share(sum(r.correct for r in a), n), "accuracy_b": _share(sum(r.correct for r in b), n)}


# --------------------------------------------------------------------------------------
# Files


def write_records(path: Path, records: list[Record]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in records))


def read_records(path: Path) -> list[Record]:
    from mvot.data import DataError

    try:
        return [Record(**json.loads(line)) for line in Path(path).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise DataError(f"{path}: missing; run `dvc repro evaluate` first") from None
    except (json.JSONDecodeError, TypeError) as exc:
        raise DataError(f"{path}: corrupt predictions ({exc}); rerun `dvc repro -f evaluate`") from None


# --------------------------------------------------------------------------------------
# Pictures


def strip(renderer: Renderer, true_states: list, drawn: list[np.ndarray], title: str = "", scale: int = 1) -> Image.Image:
    """True state (top row) beside the drawn thought (bottom row) for every step."""
    side = renderer.image_size * scale
    n = max(len(true_states), len(drawn), 1)
    pad, head = 4, 14 if title else 0
    img = Image.new("RGB", (n * (side + pad) + pad, head + 2 * (side + pad) + pad), (255, 255, 255))
    d = ImageDraw.Draw(img)
    if title:
        d.text((pad, 1), title, fill=(0, 0, 0))
    for j in range(n):
        x = pad + j * (side + pad)
        if j < len(true_states):
            img.paste(renderer.render(true_states[j]).resize((side, side), Image.NEAREST), (x, head + pad))
        if j < len(drawn):
            img.paste(Image.fromarray(drawn[j]).resize((side, side), Image.NEAREST), (x, head + 2 * pad + side))
    return img


# --------------------------------------------------------------------------------------
# The evaluate stage


def prompt_of(tokens: np.ndarray, supervised: np.ndarray) -> np.ndarray:
    """The prompt of a tokenized trace: everything before its first supervised token."""
    first = int(np.argmax(supervised))
    if not supervised[first]:
        raise ValueError("a trace without output")
    return np.asarray(tokens[:first], dtype=np.int64)


def longest_output(ts) -> int:
    """The longest output (tokens after the prompt) of a split's tokenized traces."""
    first = np.flatnonzero(np.asarray(ts.supervised))
    if not len(first):
        return 0
    seq = np.searchsorted(np.asarray(ts.offsets), first, side="right") - 1
    starts = np.full(len(ts), -1, dtype=np.int64)
    starts[seq[::-1]] = first[::-1]  # the first supervised position of each sequence
    ok = starts >= 0
    return int((np.asarray(ts.offsets)[1:][ok] - starts[ok]).max())


def task_budget(cfg, tokens_dir, task: str, variant: str) -> int | None:
    """The decoding budget of a task: ``max_new_tokens`` (0 = none), capped at
    ``budget_factor`` x the longest output of the train split, when that is known. A model
    that has not answered by then is scored as not answering; without the cap such rows
    decode to the context limit, which was most of the evaluation time (README)."""
    from mvot.data import DataError
    from mvot.tokenize import load_split

    budget = cfg.max_new_tokens or None
    if cfg.budget_factor > 0:
        try:
            longest = longest_output(load_split(tokens_dir, task, "train", variant))
        except DataError:
            longest = 0
        if longest:
            cap = int(math.ceil(cfg.budget_factor * longest))
            budget = cap if budget is None else min(budget, cap)
    return budget


def decode_images(coder, codes: list[np.ndarray], side: int) -> list[np.ndarray]:
    """Drawn codes -> uint8 pixel images, through the frozen VQ decoder."""
    if not codes:
        return []
    return list(coder.decode(np.stack(codes), side))


def score(
    insts: list[Instance], decoded: list, renderer: Renderer, coder, side: int, visual: bool, steps: bool = True
) -> tuple[list[Record], list[list[np.ndarray]]]:
    """Records of decoded outputs against their instances, plus the drawn pictures.
    ``steps``: the variant writes its steps (all but ``direct``)."""
    records, pictures = [], []
    for inst, out in zip(insts, decoded, strict=True):
        drawn = decode_images(coder, out.images, side) if visual else []
        correct, redundant = check_steps(renderer, inst, drawn) if visual else ([], [])
        exact = first = None
        if steps:
            written, executed = written_actions(inst.task, out.text), list(inst.actions[: inst.n_steps])
            exact, first = written == executed, written[:1] == executed[:1]
        records.append(Record(
            uid=inst.uid, task=inst.task, size=inst.size, n_steps=inst.n_steps, gold=inst.answer, pred=out.answer,
            answer_logprob=out.answer_logprob, new_tokens=len(out.tokens), stopped=out.stopped, drawn=len(out.images),
            step_correct=correct, step_redundant=redundant, text=out.text, actions_exact=exact, actions_first=first,
        ))
        pictures.append(drawn)
    return records, pictures


def evaluate_run(
    params,
    run: str,
    model_dir: str | Path,
    tokens_dir: str | Path = "data/tokens",
    raw_dir: str | Path = "data/raw",
    out_dir: str | Path = "eval",
    metrics_dir: str | Path = "metrics",
    progress: bool = True,
) -> dict:
    """Decode and score the test split of every task of a trained run.

    Writes ``<out_dir>/<run>/<task>/predictions.jsonl`` and strips (true vs drawn states),
    and ``<metrics_dir>/<task>/<run>.json``; returns ``{task: metrics}``. Outputs appear
    only when the whole run is scored."""
    import shutil
    import tempfile
    import time

    from mvot import vq
    from mvot.data import DataError, read_split
    from mvot.generate import load_model
    from mvot.tokenize import load_split
    from mvot.tokenizers import PatchCoder

    cfg = params.evaluate
    lm = load_model(model_dir)
    variant = lm.meta.get("variant") or params.train.runs[run].variant
    tasks = lm.meta.get("tasks") or list(params.train.tasks)
    coder = PatchCoder(vq.load(Path(model_dir) / "tokenizer"))
    decoder = lm.decoder()
    out_root = Path(out_dir)
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run}.", dir=out_root))
    results: dict = {}
    try:
        for task in tasks:
            insts = read_split(Path(raw_dir) / task, "test")
            ts = load_split(tokens_dir, task, "test", variant)
            ids = (Path(tokens_dir) / task / "test" / "ids.txt").read_text().split()
            if ids != [i.uid for i in insts]:
                raise DataError(f"{tokens_dir}/{task}/test does not match {raw_dir}/{task}/test.jsonl; run `dvc repro tokenize`")
            n = len(insts) if cfg.limit == 0 else min(cfg.limit, len(insts))
            insts = insts[:n]
            prompts = [prompt_of(*ts.sequence(i)[:2]) for i in range(n)]
            budget = task_budget(cfg, tokens_dir, task, variant)
            bar = None
            if progress:
                from mvot.progress import progress_bar

                bar = progress_bar(n, f"evaluate {run} {task}", "inst", 0.1)
            t0 = time.perf_counter()
            decoded = decoder.decode(
                prompts, [task] * n, draw=lm.draws, max_new_tokens=budget, batch_size=cfg.batch_size,
                temperature=cfg.temperature, top_k=cfg.top_k, seed=params.seed,
                on_batch=(lambda done, total, bar=bar: bar.update(done - bar.n)) if bar else None,
            )
            seconds = time.perf_counter() - t0
            if bar:
                bar.close()
            renderer = Renderer.from_params(params, task)
            side = int(round(math.sqrt(lm.vocab.tokens_per_image[task])))
            records, pictures = score(insts, decoded, renderer, coder, side, lm.draws, steps=variant != "direct")
            metrics = {"task": task, "run": run, "variant": variant} | summarize(records, lm.draws)
            new_tokens = sum(r.new_tokens for r in records)
            metrics |= {"decode_seconds": round(seconds, 1), "decode_tokens_per_s": round(new_tokens / max(seconds, 1e-9), 1),
                        "decode_budget": budget}
            d = tmp / task
            write_records(d / "predictions.jsonl", records)
            if lm.draws and cfg.strips:
                _write_strips(d / "strips", renderer, insts, records, pictures, cfg.strips)
            results[task] = metrics
        final = out_root / run
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for task in TASKS:  # a task the run was not trained on is marked, so every stage output exists
        results.setdefault(task, None)
    for task, metrics in list(results.items()):
        if metrics is None:
            metrics = _not_trained(task, run)
            del results[task]
        path = Path(metrics_dir) / task / f"{run}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return results


def _not_trained(task: str, run: str) -> dict:
    return {"task": task, "run": run, "evaluated": False, "reason": "not in the run's train.tasks"}


def _write_strips(directory: Path, renderer: Renderer, insts, records, pictures, k: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    right = [i for i, r in enumerate(records) if r.correct and r.n_steps][:k]
    wrong = [i for i, r in enumerate(records) if not r.correct and r.n_steps][:k]
    for tag, picks in (("correct", right), ("wrong", wrong)):
        for i in picks:
            r = records[i]
            title = f"{r.uid}: true {r.gold}, answered {r.pred or '?'}; top true, bottom drawn"
            strip(renderer, list(insts[i].states[1:]), pictures[i], title, scale=1).save(directory / f"{tag}-{file_stem(r.uid)}.png")


def file_stem(uid: str) -> str:
    """A file name for instance ``uid`` inside one folder: ``uid`` itself when it is plain, else
    its unsafe characters (an imported id may hold "/" or spaces) replaced and a short hash
    added, so two ids never share a name."""
    import hashlib
    import re

    stem = re.sub(r"[^\w.-]", "_", uid).lstrip(".") or "_"
    return stem if stem == uid else f"{stem}-{hashlib.sha256(uid.encode()).hexdigest()[:8]}"


def evaluate_combined(params, out_dir: str | Path = "eval", metrics_dir: str | Path = "metrics", plots_dir: str | Path = "plots") -> dict:
    """Upper bound and combined predictor of ``evaluate.combine`` per task, and the
    accuracy-by-grid-size table of every run (``plots/accuracy_by_size_<task>.csv``)."""
    a, b = params.evaluate.combine
    missing = [r for r in (a, b) if r not in params.train.runs]
    if missing:
        raise ConfigError(f"evaluate.combine names {missing}, not runs of train.runs ({', '.join(params.train.runs)}); "
                          "fix evaluate.combine in params.yaml")
    results: dict[str, dict] = {}
    files: dict[Path, str] = {}  # everything is read and computed first, then written: a missing file writes nothing
    for task in TASKS:
        combined, csv = Path(metrics_dir) / task / "combined.json", Path(plots_dir) / f"accuracy_by_size_{task}.csv"
        if task not in params.train.tasks:
            files[combined] = json.dumps(_not_trained(task, f"{a}+{b}"), indent=2, sort_keys=True) + "\n"
            files[csv] = "size," + ",".join(params.train.runs) + "\n"
            continue
        ra = read_records(Path(out_dir) / a / task / "predictions.jsonl")
        rb = read_records(Path(out_dir) / b / task / "predictions.jsonl")
        res = {"task": task, "runs": [a, b]} | combine(ra, rb)
        files[combined] = json.dumps(res, indent=2, sort_keys=True) + "\n"
        results[task] = res
        table: dict[int, dict[str, float | None]] = defaultdict(dict)
        for run in params.train.runs:
            records = read_records(Path(out_dir) / run / task / "predictions.jsonl")
            for size, acc in summarize(records, False)["accuracy_by_size"].items():
                table[int(size)][run] = acc
        lines = ["size," + ",".join(params.train.runs)]
        for size in sorted(table):
            lines.append(f"{size}," + ",".join("" if table[size].get(r) is None else str(table[size][r]) for r in params.train.runs))
        files[csv] = "\n".join(lines) + "\n"
    from mvot.data import file_in_the_way

    folders = list(dict.fromkeys(path.parent for path in files))
    for folder in folders:  # every folder checked before any is made: a file in the way writes nothing
        if (blocker := file_in_the_way(folder)) is not None:
            raise ConfigError(f"{blocker}: a file is in the way of folder {folder}; give --metrics and --plots folders")
    if taken := [p for p in files if p.is_dir()]:
        raise ConfigError(f"{taken[0]}: a folder where a metrics or plot file goes; move it away")
    tmps = {path: path.with_name(f".{path.name}.tmp") for path in files}
    try:  # every file written aside first, then each renamed into place
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            tmps[path].write_text(text)
    except OSError:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
        raise
    for path, tmp in tmps.items():
        tmp.replace(path)
    return results
