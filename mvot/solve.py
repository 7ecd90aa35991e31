"""Watch a model think: one instance in, reasoning steps, answer and visual thoughts out.

What ``mvot solve`` and the MLflow pyfunc wrapper call. An instance comes from a file
(ours: one JSON object or JSON lines; the paper's: a MAZE ``gridN.json`` or a FROZENLAKE
``levelN/data.json``, see :mod:`mvot.importer`) or from an initial image plus an action
list. The prompt is built exactly as in training: the question, the initial image
encoded by the model's own frozen VQ tokenizer, then ``\\nResponse: ``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mvot.errors import MvotError
from mvot.generate import Decoded, LoadedModel
from mvot.render import Renderer
from mvot.traces import RESPONSE, question_for
from mvot.worlds import Instance, InvalidInstance, instance_from_json
from mvot.worlds.base import MOVES
from mvot.worlds.minibehavior import ACTIONS as MB_ACTIONS


class SolveError(MvotError, ValueError):
    """The input to ``mvot solve`` cannot be used; the message says why and how to fix it."""


@dataclass
class Problem:
    task: str
    actions: tuple[str, ...]
    image: np.ndarray  # the initial state, uint8 (S, S, 3)
    instance: Instance | None = None  # known when read from an instance file (ground truth)
    uid: str = "input"


@dataclass
class Solution:
    problem: Problem
    decoded: Decoded
    drawn: list[np.ndarray]  # pixels of every visual thought
    states: list  # each drawn image read back into a state

    @property
    def answer(self) -> str | None:
        return self.decoded.answer


def renderer_of(lm: LoadedModel, task: str) -> Renderer:
    geo = (lm.meta.get("render") or {}).get(task)
    if not geo:
        raise SolveError(f"{lm.directory}: the model was not trained on {task!r} (it knows {lm.meta.get('tasks')})")
    return Renderer(task, geo["cell_px"], geo["canvas_cells"], tuple(geo["sizes"]), reach=bool(geo.get("reach", False)))


def read_instances(path: str | Path) -> list[Instance]:
    """Every instance in a file of ours (JSON or JSON lines) or of the paper's release."""
    from mvot.importer import FormatError, find_sources, import_frozenlake_level, import_maze_file

    path = Path(path)
    if not path.exists():
        raise SolveError(f"{path}: no such instance file")
    if path.is_file() and path.suffix in (".json", ".jsonl") and path.name != "data.json" and not path.name.startswith("grid"):
        try:
            text = path.read_text()
        except UnicodeDecodeError as exc:
            raise SolveError(f"{path}: not a UTF-8 text file ({exc}); give one instance as written by `mvot generate`") from None
        try:
            records = [json.loads(text)] if path.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
        except json.JSONDecodeError as exc:
            raise SolveError(f"{path}: not valid JSON ({exc}); give one instance as written by `mvot generate` (data/raw/<task>/*.jsonl)") from None
        out = []
        for r in records:
            try:
                out.append(instance_from_json(r))
            except (InvalidInstance, TypeError, KeyError, AttributeError) as exc:
                raise SolveError(f"{path}: not a valid instance ({exc})") from None
        if not out:
            raise SolveError(f"{path}: holds no instance")
        return out
    try:
        insts: list[Instance] = []
        for task, src in find_sources(path):
            insts += import_maze_file(src, check_images=False) if task == "maze" else import_frozenlake_level(src, check_images=False)
        return insts
    except (FormatError, InvalidInstance) as exc:
        raise SolveError(f"{path}: {exc}") from None


def problem_from_instance(lm: LoadedModel, inst: Instance) -> Problem:
    r = renderer_of(lm, inst.task)
    if inst.size > r.canvas_cells:
        raise SolveError(f"{inst.uid}: a {inst.size}x{inst.size} grid is larger than the model's {inst.task} canvas ({r.canvas_cells})")
    return Problem(inst.task, tuple(inst.actions), r.render_array(inst.states[0]), inst, inst.uid)


def problem_from_image(lm: LoadedModel, task: str, image_path: str | Path, actions: list[str]) -> Problem:
    r = renderer_of(lm, task)
    try:
        img = Image.open(image_path)
        img.load()
    except (OSError, ValueError) as exc:
        raise SolveError(f"{image_path}: cannot read the image ({exc})") from None
    if img.size != (r.image_size, r.image_size):
        raise SolveError(f"{image_path}: the image is {img.size[0]}x{img.size[1]} px; this model's {task} images are "
                         f"{r.image_size}x{r.image_size} (render one with `mvot generate` settings or resize it)")
    allowed = MB_ACTIONS if task == "minibehavior" else tuple(MOVES)
    bad = [a for a in actions if a not in allowed]
    if bad or not actions:
        raise SolveError(f"actions {bad or '(none)'}: each action must be one of {', '.join(allowed)}")
    return Problem(task, tuple(actions), np.asarray(img.convert("RGB"), dtype=np.uint8))


def prompt_ids(lm: LoadedModel, coder, problem: Problem) -> np.ndarray:
    v = lm.vocab
    enc = lambda s: lm.text_tokenizer.encode(s, add_special_tokens=False).ids  # noqa: E731
    codes = coder.encode(problem.image[None])[0]
    return np.concatenate([[v.bos_id], enc(question_for(problem.task, problem.actions, bool(lm.meta.get("index_hints")))), v.image_span(codes, problem.task),
                           enc(RESPONSE)]).astype(np.int64)


def solve(lm: LoadedModel, problems: list[Problem], batch_size: int = 16, temperature: float = 0.0, seed: int = 0,
          max_new_tokens: int | None = None) -> list[Solution]:
    from mvot import vq
    from mvot.tokenizers import PatchCoder

    coder = PatchCoder(vq.load(lm.directory / "tokenizer"))
    prompts = [prompt_ids(lm, coder, p) for p in problems]
    decoded = lm.decoder().decode(prompts, [p.task for p in problems], draw=lm.draws, batch_size=batch_size,
                                  temperature=temperature, seed=seed, max_new_tokens=max_new_tokens)
    out = []
    for p, d in zip(problems, decoded, strict=True):
        r = renderer_of(lm, p.task)
        side = r.image_size // coder.patch
        drawn = list(coder.decode(np.stack(d.images), side)) if d.images else []
        out.append(Solution(p, d, drawn, [r.parse(x) for x in drawn]))
    return out


def write_visuals(sol: Solution, renderer: Renderer, out_dir: str | Path) -> dict[str, Path]:
    """``<uid>.strip.png`` (initial state, then each thought; the true states above when
    known) and ``<uid>.thoughts.gif`` (the thoughts as an animation)."""
    from mvot.evaluate import file_stem, strip

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    p = sol.problem
    truth = list(p.instance.states[1:]) if p.instance else []
    title = f"{p.uid}: answer {sol.answer or '?'}" + (f" (true {p.instance.answer})" if p.instance else "")
    title += "; top true, bottom drawn" if truth else ""
    name = file_stem(p.uid)  # an imported id may hold "/" or spaces: one file in out_dir whatever it is
    strip_png = out_dir / f"{name}.strip.png"
    if truth:
        strip(renderer, truth, sol.drawn, title).save(strip_png)
    else:
        frames = [p.image, *sol.drawn]
        strip(renderer, [], frames, title).save(strip_png)
    gif = out_dir / f"{name}.thoughts.gif"
    frames = [Image.fromarray(x).resize((renderer.image_size * 2,) * 2, Image.NEAREST) for x in [p.image, *sol.drawn]]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=700, loop=0)
    return {"strip": strip_png, "gif": gif}
