"""The data stage: seeded instances of a task, rendered, split by layout, written, verified.

Layout of ``data/raw/<task>/`` (one set per split ``train``, ``val``, ``test``)::

    <split>.jsonl        one instance per line (mvot.worlds.base.Instance.to_json + split, layout)
    <split>.images.zip   <instance id>/<k>.png: the state after k actions (k = 0 initial)

plus ``data/stats/<task>.json`` (per split: answer-letter balance, grid-size mix, steps,
distinct layouts) and ``data/contact/<task>.png`` (a contact sheet to look at).

**Splits are by layout.** Every layout (FROZENLAKE map, MAZE maze, MINIBEHAVIOR room) is
assigned to one split by a stable hash of its key, ``test_share`` / ``val_share`` of the
hash space going to test / val; an instance is drawn until its layout falls in its split.
So no layout of test appears in train or val, and the test set does not change when only
the train size does.

**Determinism.** Instance ``i`` of a split is drawn from its own generator seeded by
``(seed, task, split, i)``; answer letter and grid size are assigned from ``i`` by
:func:`balanced_cell`, which balances both in every split. Workers only parallelise; the bytes written are the
same for the same params.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mvot.config import SPLITS, TASKS, Params
from mvot.errors import MvotError
from mvot.render import Renderer
from mvot.traces import action_text
from mvot.worlds import (
    GenerationRetry,
    Instance,
    InvalidInstance,
    instance_from_json,
    letters,
    world,
)
from mvot.worlds.base import stable_hash

MAX_DRAWS = 20_000  # per instance, before we give up and say the params ask for the impossible
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class DataError(MvotError, RuntimeError):
    """Data on disk is missing, corrupt or inconsistent; the message names the file and the fix."""


def split_of_layout(task: str, key: str, val_share: float, test_share: float) -> str:
    u = (stable_hash(f"{task}|{key}") % 1_000_000) / 1_000_000
    if u < test_share:
        return "test"
    if u < test_share + val_share:
        return "val"
    return "train"


def balanced_cell(index: int, answers: str, sizes: tuple[int, ...]) -> tuple[str, int]:
    """Answer letter and grid size of instance ``index``: every prefix of a split is balanced
    in both to within one instance, and every (letter, size) pair recurs equally often."""
    n_a, n_s = len(answers), len(sizes)
    shift = index // math.lcm(n_a, n_s)  # rotate sizes against letters after each joint cycle
    return answers[index % n_a], sizes[(index % n_s + shift) % n_s]


def draw_instance(params: Params, task: str, split: str, index: int) -> Instance:
    """Instance ``index`` of ``split``: deterministic in (seed, task, split, index)."""
    cfg = params.generate.task(task)
    mod = world(task)
    sizes, abc = cfg.sizes, letters(task)
    target, size = balanced_cell(index, abc, sizes)
    rng = np.random.default_rng([params.seed, TASKS.index(task), SPLITS.index(split), index])
    uid = f"{task}-{split}-{index:06d}"
    for _ in range(MAX_DRAWS):
        try:
            inst = mod.generate(rng, size, target, cfg, uid)
        except GenerationRetry:
            continue
        key = mod.layout_key(inst.states[0])
        if split_of_layout(task, key, params.generate.val_share, params.generate.test_share) == split:
            return inst
    raise DataError(
        f"{task}/{split}: no instance of size {size} with answer {target} in {MAX_DRAWS} draws; "
        f"the step range or shares in params.yaml (generate.{task}) are too tight for this grid size"
    )


@dataclass
class _Chunk:
    lines: list[str]
    images: list[tuple[str, bytes]]


def _make_chunk(params: Params, task: str, split: str, start: int, stop: int) -> _Chunk:
    renderer = Renderer.from_params(params, task)
    mod = world(task)
    lines, images = [], []
    for i in range(start, stop):
        inst = draw_instance(params, task, split, i)
        record = inst.to_json() | {"split": split, "layout": mod.layout_key(inst.states[0])}
        lines.append(json.dumps(record, separators=(",", ":"), sort_keys=True))
        images += [(f"{inst.uid}/{k}.png", renderer.png(s)) for k, s in enumerate(inst.states)]
    return _Chunk(lines, images)


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(n, a + size)) for a in range(0, n, size)]


def _workers(params: Params) -> int:
    return params.generate.workers or os.cpu_count() or 1


def generate_split(
    params: Params, task: str, split: str, out_dir: Path, progress: Callable[[int], None] | None = None
) -> list[str]:
    """Write ``<split>.jsonl`` and ``<split>.images.zip`` into ``out_dir``; return the JSON lines."""
    n = params.generate.task(task).splits.of(split)
    chunks = _chunks(n, 100)
    lines: list[str] = []
    with (
        zipfile.ZipFile(out_dir / f"{split}.images.zip", "w", zipfile.ZIP_STORED) as zf,
        _pool(_workers(params)) as pool,
    ):
        for chunk in pool.map(_make_chunk, *zip(*[(params, task, split, a, b) for a, b in chunks], strict=True)):
            for name, data in chunk.images:
                zf.writestr(zipfile.ZipInfo(name, date_time=_ZIP_DATE), data)
            lines += chunk.lines
            if progress:
                progress(len(chunk.lines))
    (out_dir / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return lines


class _Serial:
    """A stand-in pool for one worker (no processes to start)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, *iterables):
        return map(fn, *iterables)


def _pool(workers: int):
    return _Serial() if workers <= 1 else ProcessPoolExecutor(workers)


# --------------------------------------------------------------------------------------
# Reading and verification


def read_split(task_dir: str | Path, split: str) -> list[Instance]:
    """Instances of one split, each replayed and checked; a bad record is a :class:`DataError`."""
    path = Path(task_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: missing; run `dvc repro generate` (or `dvc pull`) first")
    out = []
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(instance_from_json(json.loads(line.decode("utf-8"))))
            except (json.JSONDecodeError, UnicodeDecodeError, InvalidInstance) as exc:
                raise DataError(f"{path}:{lineno}: corrupt record ({exc}); regenerate with `dvc repro -f generate`") from None
    return out


def split_outcomes(task_dir: str | Path, split: str) -> dict[str, str]:
    """Instance id -> how its episode ended (:func:`mvot.worlds.outcome`), for one split."""
    from mvot.worlds import outcome

    return {inst.uid: outcome(inst) for inst in read_split(task_dir, split)}


def iter_images(task_dir: str | Path, split: str) -> Iterator[tuple[str, Image.Image]]:
    """``(name, image)`` for every frame of a split, in file order."""
    path = Path(task_dir) / f"{split}.images.zip"
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                with zf.open(name) as fh:
                    img = Image.open(io.BytesIO(fh.read()))
                    img.load()
                yield name, img
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: unreadable image archive ({exc}); regenerate with `dvc repro -f generate`") from None


def load_image(task_dir: str | Path, split: str, uid: str, k: int) -> Image.Image:
    path = Path(task_dir) / f"{split}.images.zip"
    try:
        with zipfile.ZipFile(path) as zf:
            img = Image.open(io.BytesIO(zf.read(f"{uid}/{k}.png")))
            img.load()
            return img.convert("RGB")
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read {uid}/{k}.png ({exc}); regenerate with `dvc repro -f generate`") from None


def verify_task(
    params: Params, task: str, task_dir: Path, parse_every: int = 25
) -> tuple[dict[str, list[Instance]], dict[str, list[str]]]:
    """Check what was written: records replay to their states and answers, every state has
    its image, every ``parse_every``-th image parses back to its state, and layouts are
    disjoint across splits. Returns the instances and layout keys per split; raises
    :class:`DataError`."""
    renderer = Renderer.from_params(params, task)
    layouts: dict[str, list[str]] = {}
    splits: dict[str, list[Instance]] = {}
    for split in SPLITS:
        insts = splits[split] = read_split(task_dir, split)
        records = [json.loads(line) for line in (task_dir / f"{split}.jsonl").read_text().splitlines()]
        layouts[split] = [r["layout"] for r in records]
        with zipfile.ZipFile(task_dir / f"{split}.images.zip") as zf:
            names = set(zf.namelist())
            for i, inst in enumerate(insts):
                want = {f"{inst.uid}/{k}.png" for k in range(len(inst.states))}
                if not want <= names:
                    raise DataError(f"{task_dir}/{split}.images.zip lacks images of {inst.uid}")
                if i % parse_every == 0:
                    for k, state in enumerate(inst.states):
                        img = Image.open(io.BytesIO(zf.read(f"{inst.uid}/{k}.png")))
                        if renderer.parse(img) != state:
                            raise DataError(f"{task_dir}/{split}: image {inst.uid}/{k}.png does not parse back to its state")
    for a in SPLITS:
        for b in SPLITS:
            if a < b and set(layouts[a]) & set(layouts[b]):
                raise DataError(f"{task}: splits {a} and {b} share layouts; the split assignment is broken")
    return splits, layouts


def split_stats(insts: list[Instance], layouts: list[str]) -> dict:
    n = len(insts)
    answers = Counter(i.answer for i in insts)
    sizes = Counter(i.size for i in insts)
    steps = [i.n_steps for i in insts]
    return {
        "instances": n,
        "answers": {k: answers[k] for k in sorted(answers)},
        "answer_share": {k: round(answers[k] / n, 4) for k in sorted(answers)},
        "sizes": {str(k): sizes[k] for k in sorted(sizes)},
        "steps_mean": round(float(np.mean(steps)), 3),
        "steps_max": int(max(steps)),
        "extra_actions_mean": round(float(np.mean([len(i.extra_actions) for i in insts])), 3),
        "images": int(sum(len(i.states) for i in insts)),
        "distinct_layouts": len(set(layouts)),
    }


# --------------------------------------------------------------------------------------
# Contact sheet


def contact_sheet(insts: list[Instance], renderer: Renderer, scale: int = 2) -> Image.Image:
    """One row per instance: every state, captioned with the action that led to it."""
    side = renderer.image_size * scale
    cap = 14
    cols = max(len(i.states) for i in insts)
    pad = 6
    w = pad + cols * (side + pad)
    row_h = cap * 2 + side + pad
    sheet = Image.new("RGB", (w, pad + row_h * len(insts)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for r, inst in enumerate(insts):
        y = pad + r * row_h
        extra = " ".join(action_text(inst.task, a) for a in inst.extra_actions)
        head = f"{inst.uid}  size {inst.size}  answer {inst.answer}" + (f"  (listed after the end: {extra})" if extra else "")
        draw.text((pad, y), head, fill=(0, 0, 0), font=font)
        for k, state in enumerate(inst.states):
            x = pad + k * (side + pad)
            label = "start" if k == 0 else action_text(inst.task, inst.actions[k - 1])
            draw.text((x, y + cap), label, fill=(80, 80, 80), font=font)
            sheet.paste(renderer.render(state).resize((side, side), Image.Resampling.NEAREST), (x, y + 2 * cap))
    return sheet


# --------------------------------------------------------------------------------------
# The stage


def replace_atomically(tmp: Path, final: Path) -> None:
    """``tmp`` (a file or folder) becomes ``final``; an old ``final`` waits beside it as
    ``<final>.old`` until then (:func:`recover_replaced` puts it back after a kill between)."""
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    else:
        tmp.rename(final)


def write_atomically(path: Path, text: str) -> None:
    """``text`` into ``path`` (its folder made), written aside first: a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def recover_replaced(final: Path) -> None:
    """After a kill between the two renames of :func:`replace_atomically`: the old ``final`` back in place."""
    old = final.with_name(final.name + ".old")
    if not final.exists() and old.exists():
        old.rename(final)


def file_in_the_way(folder: Path) -> Path | None:
    """The file (if any) standing where ``folder`` or one of its parents should be."""
    return next((f for f in (folder, *folder.parents) if f.exists() and not f.is_dir()), None)


def generate_task(
    params: Params,
    task: str,
    raw_dir: str | Path = "data/raw",
    stats_dir: str | Path = "data/stats",
    sheet_dir: str | Path = "data/contact",
    progress_factory: Callable[[int, str], object] | None = None,
) -> dict:
    """Generate, write and verify all splits of ``task``; returns its stats.

    Outputs appear only when everything succeeded (written to temporary paths, verified,
    then moved into place)."""
    raw_dir, stats_dir, sheet_dir = Path(raw_dir), Path(stats_dir), Path(sheet_dir)
    for d in (raw_dir, stats_dir, sheet_dir):
        if d.exists() and not d.is_dir():
            raise DataError(f"{d}: is a file, not a folder; give a folder for the generated data")
    for d in (raw_dir, stats_dir, sheet_dir):
        d.mkdir(parents=True, exist_ok=True)
    final = raw_dir / task
    tmp = Path(tempfile.mkdtemp(prefix=f".{task}.", dir=raw_dir))
    tmp.chmod(0o755)
    try:
        total = sum(params.generate.task(task).splits.of(s) for s in SPLITS)
        bar = progress_factory(total, task) if progress_factory else None
        for split in SPLITS:
            generate_split(params, task, split, tmp, progress=(bar.update if bar else None))
        if bar:
            bar.close()
        insts, layouts = verify_task(params, task, tmp)
        stats = {"task": task, "image_size": params.image_size(task), "cell_px": params.render.task(task).cell_px}
        stats["splits"] = {s: split_stats(insts[s], layouts[s]) for s in SPLITS}
        sheet_insts = _sheet_instances(insts["train"], params.generate.contact_sheet, task)
        sheet = contact_sheet(sheet_insts, Renderer.from_params(params, task))
        sheet_tmp = sheet_dir / f".{task}.png.tmp"
        sheet.save(sheet_tmp, format="PNG")
        stats_tmp = stats_dir / f".{task}.json.tmp"
        stats_tmp.write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_atomically(tmp, final)
    os.replace(sheet_tmp, sheet_dir / f"{task}.png")
    os.replace(stats_tmp, stats_dir / f"{task}.json")
    return stats


def _sheet_instances(insts: list[Instance], k: int, task: str) -> list[Instance]:
    """``k`` instances covering every answer letter and size, shortest first within each."""
    picked: list[Instance] = []
    for letter in letters(task):
        pool = sorted((i for i in insts if i.answer == letter and 2 <= i.n_steps <= 6), key=lambda i: (i.size, i.uid))
        picked += pool[: max(1, k // len(letters(task)))]
    return picked[:k] if len(picked) >= k else picked + [i for i in insts if i not in picked][: k - len(picked)]
