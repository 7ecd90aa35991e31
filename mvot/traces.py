"""Instances as the model's sequences, one per variant of DESIGN.md 2.2.

A :class:`Trace` is a list of parts, each text or an image (an index into the instance's
states); ``output`` parts are what the model must produce, the rest is its prompt.

* ``direct``: prompt (question + initial image) -> ``The answer is X.``
* ``cot``: prompt -> one text step per executed action with the agent's coordinates
  (optionally after a text description of the layout) -> final answer line.
* ``interleaved`` and ``mvot``: prompt -> ``Go a1.`` <image s1> ``Go a2.`` <image s2> ...
  -> final answer line. The two share their sequences; they differ in training only:
  ``interleaved`` puts no loss on image tokens, ``mvot`` does (plus L_D). "MVoT without
  L_D" is likewise a training setting of the ``mvot`` trace.

MAZE uses the paper's prompt verbatim; FROZENLAKE the paper's option texts and final line;
MINIBEHAVIOR one consistent wording of our own (see ``mvot/worlds/minibehavior.py``).
Answers are read back with :data:`ANSWER_RE`, the release's pattern.

*Index hints* (``tokenize.index_hints``, off by default, so the prompts stay the paper's):
the actions of the question are numbered (``1: Go up. 2: Go left.``) and so is each step
of the response (``2: Go left. <image>``). A model then finds the k-th action by matching
``k:`` in the question, an induction-head lookup, instead of counting steps; index hints
of this kind are known to help small transformers with algorithmic tasks (Zhou et al.,
2023, "What algorithms can transformers learn?").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mvot.worlds import Instance, world
from mvot.worlds.base import MOVE_TEXT
from mvot.worlds.minibehavior import ACTION_TEXT as MB_ACTION_TEXT

VARIANTS: tuple[str, ...] = ("direct", "cot", "interleaved", "mvot")
DRAWING_VARIANTS: tuple[str, ...] = ("interleaved", "mvot")  # the variants whose response has images
ANSWER_RE = re.compile(r"The answer is (\w)\.")
IMAGE = "<image>"  # placeholder for an image in the human-readable form of a trace

_ACTIONS_DEF = "* Go up/left/down/right: move one grid space in the absolute up/left/down/right direction. \n"

PROMPTS = {
    # verbatim from the paper's release
    "maze": (
        "Task: Maze Navigation Simulation\n"
        "Determine the final destination (A, B, C or D) from the starting point (red point) following the "
        "action sequence. The definitions of the actions are as below. \n" + _ACTIONS_DEF + "Full Action Sequence: {actions} \nInitial maze: "
    ),
    "frozenlake": (
        "Task: FrozenLake\n"
        "Determine whether the agent (red disc) can safely reach the goal (gift) following the action sequence "
        "without falling into the holes. The definitions of the actions are as below. \n" + _ACTIONS_DEF
        + "Options: {options}\nFull Action Sequence: {actions} \nInitial state: "
    ),
    "minibehavior": (
        "Task: Installing a Printer\n"
        "Determine the outcome of the action sequence for the agent (red triangle), who must pick up the printer "
        "and put it on the table. The definitions of the actions are as below. \n" + _ACTIONS_DEF.rstrip(" \n")
        + " A move into a wall or furniture leaves the agent in place. \n"
        "* Pick up printer_0: pick up the printer from a cell next to the agent. \n"
        "* Put down printer_0: put the carried printer on a table cell next to the agent. \n"
        "Options: {options}\nFull Action Sequence: {actions} \nInitial room: "
    ),
}
RESPONSE = "\nResponse: "
FINAL = {
    "maze": "Action sequence finished. The answer is {answer}.",
    "frozenlake": "Action sequence stopped. The answer is {answer}.",
    "minibehavior": "Action sequence finished. The answer is {answer}.",
}


@dataclass(frozen=True)
class Part:
    kind: str  # "text" or "image"
    text: str = ""  # the text of a text part
    state: int = -1  # for an image part: index into Instance.states
    output: bool = False  # produced (and supervised) by the model

    @property
    def is_image(self) -> bool:
        return self.kind == "image"


@dataclass(frozen=True)
class Trace:
    variant: str
    parts: tuple[Part, ...]

    @property
    def images(self) -> list[int]:
        """State indices of the trace's images, in order."""
        return [p.state for p in self.parts if p.is_image]

    def text(self) -> str:
        """Human-readable form, images as ``<image k>``."""
        return "".join(f"<image {p.state}>" if p.is_image else p.text for p in self.parts)


def action_text(task: str, action: str) -> str:
    return MB_ACTION_TEXT[action] if task == "minibehavior" else MOVE_TEXT[action]


def question(inst: Instance, index_hints: bool = False) -> str:
    """The question text up to (not including) the initial image."""
    return question_for(inst.task, inst.actions, index_hints)


def _hint(k: int, index_hints: bool) -> str:
    return f"{k}: " if index_hints else ""


def question_for(task: str, actions, index_hints: bool = False) -> str:
    """The question of ``task`` about an action list (the instance's layout is in its image)."""
    options = " ".join(f"{k}. {v}" for k, v in world(task).OPTIONS.items())
    listed = " ".join(_hint(k, index_hints) + action_text(task, a) for k, a in enumerate(actions, 1))
    return PROMPTS[task].format(actions=listed, options=options)


def final_text(inst: Instance, answer: str | None = None) -> str:
    return FINAL[inst.task].format(answer=answer or inst.answer)


def describe_layout(inst: Instance) -> str:
    """The initial layout as text, for the CoT-with-layout variant."""
    s = inst.states[0]
    if inst.task == "frozenlake":
        rows = "; ".join(f"row {r}: {' '.join(row)}" for r, row in enumerate(s.desc))
        return f"Layout (S start, F frozen, H hole, G goal): {rows}. The agent starts at {s.agent}. "
    if inst.task == "maze":
        cands = ", ".join(f"{k} at {c}" for k, c in zip("ABCD", s.candidates, strict=True))
        return f"The start is at {s.start}. Candidates: {cands}. "
    table = ", ".join(map(str, s.table))
    furn = ", ".join(map(str, s.furniture)) or "none"
    return f"The agent is at {s.agent}, the printer at {s.printer}, the table at {table}, furniture at {furn}. "


def _agent(state) -> tuple[int, int]:
    return state.agent


def cot_step(inst: Instance, k: int) -> str:
    """Text of the k-th executed action (1-based) with the resulting coordinates."""
    before, after = inst.states[k - 1], inst.states[k]
    act = inst.actions[k - 1]
    text = action_text(inst.task, act)
    if act in MOVE_TEXT:
        where = _agent(after)
        text += f" The agent moves to {where}." if where != _agent(before) else f" The agent stays at {where}."
    if inst.task == "minibehavior":
        text += " " + after.inventory_text()
    return text


def mvot_step(inst: Instance, k: int, inventory: bool = True) -> str:
    """Text of the k-th drawn step: the action, and in MINIBEHAVIOR (unless ``inventory`` is
    false: it then follows the image) the inventory after it."""
    text = action_text(inst.task, inst.actions[k - 1])
    if inst.task == "minibehavior" and inventory:
        text += " " + inst.states[k].inventory_text()
    return text


#: The ``tokenize`` settings that shape a trace; a model records them in its meta (``mvot.json``).
TRACE_SETTINGS = ("cot_layout_text", "index_hints", "inventory_after_image")


def trace_settings(settings) -> dict:
    """:data:`TRACE_SETTINGS` of ``settings`` (a ``tokenize`` config section, or a model's meta,
    where a setting it lacks is off), as plain bools."""
    get = settings.get if isinstance(settings, dict) else (lambda k, d: getattr(settings, k, d))
    return {k: bool(get(k, False)) for k in TRACE_SETTINGS}


def build_with(inst: Instance, variant: str, settings) -> Trace:
    """:func:`build` under the trace settings of ``settings`` (see :func:`trace_settings`)."""
    s = trace_settings(settings)
    return build(inst, variant, layout_text=s["cot_layout_text"], index_hints=s["index_hints"],
                 inventory_after_image=s["inventory_after_image"])


def build(inst: Instance, variant: str, layout_text: bool = False, index_hints: bool = False,
          inventory_after_image: bool = False) -> Trace:
    """The sequence of ``variant`` for one instance. ``inventory_after_image``: MINIBEHAVIOR's
    drawn steps write the inventory after the step's image (``Pick up printer_0. <image>
    Carrying objects: printer_0.``), so that the picture shows the action's outcome first and
    the text reads it off the picture; by default it comes before the image."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    hint = lambda k: _hint(k, index_hints)  # noqa: E731
    parts = [Part("text", question(inst, index_hints)), Part("image", state=0), Part("text", RESPONSE)]
    out = lambda text: Part("text", text, output=True)  # noqa: E731
    if variant == "direct":
        parts.append(out(f"The answer is {inst.answer}."))
    elif variant == "cot":
        lead = describe_layout(inst) if layout_text else ""
        steps = " ".join(hint(k) + cot_step(inst, k) for k in range(1, inst.n_steps + 1))
        parts.append(out(f"{lead}{steps} {final_text(inst)}"))
    else:
        after = inventory_after_image and inst.task == "minibehavior"
        for k in range(1, inst.n_steps + 1):
            parts.append(out(("" if k == 1 else " ") + hint(k) + mvot_step(inst, k, inventory=not after) + " "))
            parts.append(Part("image", state=k, output=True))
            if after:
                parts.append(out(" " + inst.states[k].inventory_text()))
        parts.append(out(" " + final_text(inst)))
    return Trace(variant, tuple(parts))


def parse_answer(text: str) -> str | None:
    """The answer letter of a generated text, or None if there is none."""
    m = ANSWER_RE.search(text)
    return m.group(1) if m else None
