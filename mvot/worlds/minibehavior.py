"""MINIBEHAVIOR: our reconstruction of mini-behavior's InstallingAPrinter.

The paper released neither data nor option texts for this task; this module defines it.

**Room.** An n x n grid (n in 6..12, paper 7..10) whose outer ring of cells is wall, so the
floor is (n-2) x (n-2). On the floor stand a *table* (a 1x2, 2x1 or 2x2 rectangle), a few
other pieces of *furniture* (single cells, e.g. shelves) and a *printer* (one cell). The
agent occupies one floor cell. Walls, table, furniture and a printer standing on the floor
block movement.

**Actions.** ``up``/``down``/``left``/``right`` move one cell in that absolute direction; a
move into a blocked cell leaves the agent in place (like FrozenLake's border).
``pickup`` picks up the printer if the agent carries nothing and the printer is in one of
the four cells next to the agent (up, down, left, right); the printer then leaves the grid
and is carried (``Carrying objects: printer_0.``). ``putdown`` puts the carried printer on
a table cell next to the agent (the first free one in the order up, down, left, right).

**Episode and answers.** Actions run in order until one of these ends the episode:

* A ``Success: the printer is on the table.`` a put-down placed the printer on the table;
* B ``Failed: the pick-up failed.`` a pick-up found no adjacent printer, or the agent was
  already carrying it;
* C ``Failed: the put-down failed.`` a put-down while carrying nothing, or with no table
  cell next to the agent;
* D ``Failed: the printer is not on the table.`` every action ran without failure and the
  sequence ended with the printer still off the table.

The failing action of B and C is executed (it changes nothing) and visualised; actions
listed after the end of the episode are part of the question but are not executed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mvot.worlds.base import (
    MOVES,
    Cell,
    GenerationRetry,
    Instance,
    InvalidInstance,
    add,
    bfs_path,
)

TASK = "minibehavior"
ACTIONS: tuple[str, ...] = ("up", "down", "left", "right", "pickup", "putdown")
ACTION_TEXT: dict[str, str] = {
    "up": "Go up.",
    "down": "Go down.",
    "left": "Go left.",
    "right": "Go right.",
    "pickup": "Pick up printer_0.",
    "putdown": "Put down printer_0.",
}
LETTERS = "ABCD"
OPTIONS: dict[str, str] = {
    "A": "Success: the printer is on the table.",
    "B": "Failed: the pick-up failed.",
    "C": "Failed: the put-down failed.",
    "D": "Failed: the printer is not on the table.",
}
TABLE_SHAPES: tuple[Cell, ...] = ((1, 2), (2, 1), (2, 2))  # (rows, cols)


@dataclass(frozen=True)
class MiniBehaviorState:
    size: int  # room side including walls
    table: tuple[Cell, ...]  # sorted table cells
    furniture: tuple[Cell, ...]  # sorted blocking single-cell furniture
    agent: Cell
    printer: Cell | None  # None while carried

    @property
    def carrying(self) -> bool:
        return self.printer is None

    @property
    def installed(self) -> bool:
        return self.printer is not None and self.printer in self.table

    def is_wall(self, cell: Cell) -> bool:
        r, c = cell
        return r <= 0 or c <= 0 or r >= self.size - 1 or c >= self.size - 1

    def blocked(self, cell: Cell) -> bool:
        return self.is_wall(cell) or cell in self.table or cell in self.furniture or cell == self.printer

    def inventory_text(self) -> str:
        return f"Carrying objects: {'printer_0' if self.carrying else 'None'}."

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "table": [list(c) for c in self.table],
            "furniture": [list(c) for c in self.furniture],
            "agent": list(self.agent),
            "printer": None if self.printer is None else list(self.printer),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MiniBehaviorState:
        cells = lambda xs: tuple(sorted((int(r), int(c)) for r, c in xs))  # noqa: E731
        p = d["printer"]
        return cls(
            size=int(d["size"]),
            table=cells(d["table"]),
            furniture=cells(d["furniture"]),
            agent=(int(d["agent"][0]), int(d["agent"][1])),
            printer=None if p is None else (int(p[0]), int(p[1])),
        )


def step(state: MiniBehaviorState, action: str) -> tuple[MiniBehaviorState, str]:
    """Apply one action; returns the new state and an event:
    ``moved``, ``bumped``, ``picked``, ``installed``, ``pickup_failed`` or ``putdown_failed``."""
    if action in MOVES:
        nxt = add(state.agent, MOVES[action])
        if state.blocked(nxt):
            return state, "bumped"
        return replace(state, agent=nxt), "moved"
    around = [add(state.agent, d) for d in MOVES.values()]
    if action == "pickup":
        if state.carrying or state.printer not in around:
            return state, "pickup_failed"
        return replace(state, printer=None), "picked"
    if action == "putdown":
        free = [c for c in around if c in state.table]
        if not state.carrying or not free:
            return state, "putdown_failed"
        return replace(state, printer=free[0]), "installed"
    raise InvalidInstance(f"unknown MINIBEHAVIOR action {action!r}; allowed: {', '.join(ACTIONS)}")


_END = {"installed": "A", "pickup_failed": "B", "putdown_failed": "C"}


def outcome(inst: Instance) -> str:
    """How the episode ended, finer than the answer: which rule ended it (``mvot outcomes``).

    B and C each have two causes, one read off the inventory line ("already carrying",
    "carrying nothing") and one that needs the picture: whether the printer, or a table
    cell, is next to the agent."""
    last, answer = inst.states[-1], inst.answer
    if answer == "B":
        return "B: pick-up while carrying" if last.carrying else "B: pick-up, no printer adjacent"
    if answer == "C":
        return "C: put-down, no table adjacent" if last.carrying else "C: put-down carrying nothing"
    if answer == "D":
        return "D: ended carrying" if last.carrying else "D: never picked up"
    return "A: put down on the table"


def run(initial: MiniBehaviorState, actions: tuple[str, ...]) -> tuple[tuple[MiniBehaviorState, ...], str]:
    states = [initial]
    for action in actions:
        state, event = step(states[-1], action)
        states.append(state)
        if event in _END:
            return tuple(states), _END[event]
    return tuple(states), "D"


def layout_key(state: MiniBehaviorState) -> str:
    """The static room: size, table and furniture (agent and printer may differ)."""
    return f"{state.size}:{state.table}:{state.furniture}"


def check_state(state: MiniBehaviorState) -> None:
    n = state.size
    if n < 4:
        raise InvalidInstance(f"room side {n} too small")
    occupied = [*state.table, *state.furniture, state.agent] + ([state.printer] if state.printer and state.printer not in state.table else [])
    if any(state.is_wall(c) for c in occupied) or len(set(occupied)) != len(occupied):
        raise InvalidInstance(f"objects overlap each other or the walls: {state.to_json()}")


def random_room(rng: np.random.Generator, n: int, furniture: tuple[int, int]) -> MiniBehaviorState:
    """A room with table, furniture, printer and agent where the task can be solved."""
    floor = [(r, c) for r in range(1, n - 1) for c in range(1, n - 1)]
    h, w = TABLE_SHAPES[int(rng.integers(len(TABLE_SHAPES)))]
    r0, c0 = int(rng.integers(1, n - h)), int(rng.integers(1, n - w))
    table = tuple(sorted((r0 + i, c0 + j) for i in range(h) for j in range(w)))
    free = [c for c in floor if c not in table]
    k = int(rng.integers(furniture[0], furniture[1] + 1))
    picks = rng.choice(len(free), size=k + 2, replace=False)
    cells = [free[int(i)] for i in picks]
    state = MiniBehaviorState(n, table, tuple(sorted(cells[2:])), agent=cells[0], printer=cells[1])
    if _route(state, state.agent, lambda c: _next_to(c, state.printer)) is None:
        raise GenerationRetry("printer unreachable")
    carried = replace(state, printer=None)
    if not any(_route(carried, c, lambda x: _next_to_table(carried, x)) is not None for c in _free_around(carried, cells[1])):
        raise GenerationRetry("table unreachable with the printer")
    return state


def _next_to(cell: Cell, target: Cell | None) -> bool:
    return target is not None and abs(cell[0] - target[0]) + abs(cell[1] - target[1]) == 1


def _next_to_table(state: MiniBehaviorState, cell: Cell) -> bool:
    return not state.blocked(cell) and any(_next_to(cell, t) for t in state.table)


def _free_around(state: MiniBehaviorState, cell: Cell) -> list[Cell]:
    return [c for c in (add(cell, d) for d in MOVES.values()) if not state.blocked(c)]


def _route(state: MiniBehaviorState, start: Cell, is_goal) -> list[str] | None:
    return bfs_path(start, lambda c: not state.blocked(c) and is_goal(c), lambda c: not state.blocked(c))


def _walk(rng: np.random.Generator, k: int) -> list[str]:
    """``k`` uniformly random moves (bumps allowed: they leave the agent in place)."""
    moves = list(MOVES)
    return [moves[int(i)] for i in rng.integers(0, 4, size=k)]


def _apply(state: MiniBehaviorState, actions: list[str]) -> MiniBehaviorState:
    for a in actions:
        state, _ = step(state, a)
    return state


def draw_actions(rng: np.random.Generator, s0: MiniBehaviorState, target: str, steps: tuple[int, int]) -> list[str]:
    """Visualised actions whose outcome is ``target``; verified by :func:`run` by the caller."""
    lo, hi = steps
    length = int(rng.integers(lo, hi + 1))
    if target == "D" or (target == "C" and rng.random() < 0.5):
        # wander (D) or put down without carrying anything (C)
        wander = _walk(rng, length - (target == "C"))
        if target == "D" and rng.random() < 0.5:  # D by picking up and never putting down
            head = _pick_route(rng, s0, length)
            wander = head + _walk(rng, max(0, length - len(head)))
        return wander + (["putdown"] if target == "C" else [])
    if target == "B" and rng.random() < 0.5:
        lead = _walk(rng, length - 1)  # pick up where the printer is not adjacent
        if _next_to(_apply(s0, lead).agent, s0.printer):
            raise GenerationRetry("printer happened to be adjacent")
        return lead + ["pickup"]
    head = _pick_route(rng, s0, length)
    carrying = _apply(s0, head)
    middle = _walk(rng, int(rng.integers(0, max(1, length - len(head)))))
    here = _apply(carrying, middle)
    if target == "B":  # pick up a second time while already carrying
        return head + middle + ["pickup"]
    if target == "C":  # carrying, put down with no table cell adjacent
        if _next_to_table(here, here.agent):
            raise GenerationRetry("table happened to be adjacent")
        return head + middle + ["putdown"]
    tail = _route(here, here.agent, lambda c: _next_to_table(here, c))
    if tail is None:
        raise GenerationRetry("table unreachable")
    return head + middle + tail + ["putdown"]


def _pick_route(rng: np.random.Generator, s0: MiniBehaviorState, length: int) -> list[str]:
    lead = _walk(rng, int(rng.integers(0, max(1, length // 2))))
    here = _apply(s0, lead)
    route = _route(here, here.agent, lambda c: _next_to(c, s0.printer))
    if route is None:
        raise GenerationRetry("printer unreachable")
    return lead + route + ["pickup"]


def generate(rng: np.random.Generator, size: int, target: str, cfg, uid: str = "") -> Instance:
    """One instance in a fresh ``size`` x ``size`` room whose answer is ``target`` (A-D)."""
    s0 = random_room(rng, size, tuple(cfg.furniture))
    actions = draw_actions(rng, s0, target, tuple(cfg.steps))
    states, answer = run(s0, tuple(actions))
    lo, hi = cfg.steps
    if answer != target or len(states) - 1 != len(actions) or not lo <= len(actions) <= hi:
        raise GenerationRetry(f"drew answer {answer} for target {target}")
    if answer in "ABC":
        n_extra = int(rng.integers(cfg.extra_actions[0], cfg.extra_actions[1] + 1))
        actions += [ACTIONS[int(i)] for i in rng.integers(0, len(ACTIONS), size=n_extra)]
    return Instance(TASK, uid, tuple(actions), states, answer)
