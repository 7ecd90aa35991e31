"""FROZENLAKE: Gymnasium's FrozenLake-v1 with ``is_slippery=False`` (DESIGN.md 2.1).

An n x n map of tiles ``S`` (start), ``F`` (frozen), ``H`` (hole) and ``G`` (goal), written
row-major as in Gymnasium's ``desc``. Start and goal are anywhere (as in the paper's data);
every map has a hole-free path from start to goal. A move into the border leaves the agent
in place. The episode ends when the agent enters a hole or the goal; actions listed after
that are part of the question but are not executed or visualised.

Answers (the paper's wording):

* A ``Action Success.`` the agent reaches the goal;
* B ``Action Failed: Fall into the Hole.``
* C ``Action Failed: Agent Safe but Fail to Reach Destination.``
"""

from __future__ import annotations

from dataclasses import dataclass
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

TASK = "frozenlake"
ACTIONS: tuple[str, ...] = ("left", "down", "right", "up")
"""Gymnasium's action ids: 0 left, 1 down, 2 right, 3 up."""
GYM_ACTION: dict[str, int] = {a: i for i, a in enumerate(ACTIONS)}
OPTIONS: dict[str, str] = {
    "A": "Action Success.",
    "B": "Action Failed: Fall into the Hole.",
    "C": "Action Failed: Agent Safe but Fail to Reach Destination.",
}
TILES = "SFHG"


@dataclass(frozen=True)
class FrozenLakeState:
    desc: tuple[str, ...]  # n rows of TILES
    agent: Cell

    @property
    def size(self) -> int:
        return len(self.desc)

    def tile(self, cell: Cell) -> str:
        """The tile at ``cell``; ``#`` outside the map."""
        return self.desc[cell[0]][cell[1]] if self.inside(cell) else "#"

    @property
    def done(self) -> bool:
        return self.tile(self.agent) in "HG"

    def inside(self, cell: Cell) -> bool:
        return 0 <= cell[0] < self.size and 0 <= cell[1] < self.size

    def to_json(self) -> dict[str, Any]:
        return {"desc": list(self.desc), "agent": list(self.agent)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FrozenLakeState:
        return cls(desc=tuple(d["desc"]), agent=(int(d["agent"][0]), int(d["agent"][1])))


def find(desc: tuple[str, ...], tile: str) -> Cell:
    for r, row in enumerate(desc):
        c = row.find(tile)
        if c >= 0:
            return (r, c)
    raise InvalidInstance(f"map has no {tile!r} tile: {desc}")


def initial_state(desc: tuple[str, ...]) -> FrozenLakeState:
    n = len(desc)
    if n < 2 or any(len(row) != n or set(row) - set(TILES) for row in desc):
        raise InvalidInstance(f"map must be square rows of {TILES}: {desc}")
    if sum(row.count("S") for row in desc) != 1 or sum(row.count("G") for row in desc) != 1:
        raise InvalidInstance(f"map needs exactly one S and one G: {desc}")
    return FrozenLakeState(desc=desc, agent=find(desc, "S"))


def step(state: FrozenLakeState, action: str) -> FrozenLakeState:
    """One non-slippery move; bumping the border keeps the agent in place."""
    if action not in MOVES:
        raise InvalidInstance(f"unknown FROZENLAKE action {action!r}; allowed: {', '.join(ACTIONS)}")
    nxt = add(state.agent, MOVES[action])
    return FrozenLakeState(state.desc, nxt if state.inside(nxt) else state.agent)


def run(initial: FrozenLakeState, actions: tuple[str, ...]) -> tuple[tuple[FrozenLakeState, ...], str]:
    """Execute actions until the episode ends; return the visited states and the answer."""
    states = [initial]
    for action in actions:
        if states[-1].done:
            break
        states.append(step(states[-1], action))
    tile = states[-1].tile(states[-1].agent)
    return tuple(states), {"G": "A", "H": "B"}.get(tile, "C")


def layout_key(state: FrozenLakeState) -> str:
    return "/".join(state.desc)


def _has_path(desc: tuple[str, ...]) -> bool:
    s0 = initial_state(desc)
    return bfs_path(s0.agent, lambda c: s0.tile(c) == "G", lambda c: s0.tile(c) in "SF") is not None


def random_map(rng: np.random.Generator, n: int, hole_prob: float) -> tuple[str, ...]:
    """A map with random start, goal and holes that has a path from start to goal."""
    for _ in range(1000):
        grid = np.where(rng.random((n, n)) < hole_prob, "H", "F")
        s, g = rng.choice(n * n, size=2, replace=False)
        grid[divmod(int(s), n)] = "S"
        grid[divmod(int(g), n)] = "G"
        desc = tuple("".join(row) for row in grid)
        if _has_path(desc):
            return desc
    raise GenerationRetry("no solvable map in 1000 draws; lower hole_prob")


def _safe_walk(rng: np.random.Generator, state: FrozenLakeState, k: int) -> list[str]:
    """``k`` random moves that never enter a hole or the goal (border bumps allowed)."""
    out: list[str] = []
    cell = state.agent
    for _ in range(k):
        ok = []
        for a in ACTIONS:
            nxt = add(cell, MOVES[a])
            nxt = nxt if state.inside(nxt) else cell
            if state.tile(nxt) in "SF":
                ok.append((a, nxt))
        if not ok:
            break
        a, cell = ok[int(rng.integers(len(ok)))]
        out.append(a)
    return out


def _walk_to(state: FrozenLakeState, start: Cell, is_goal) -> list[str] | None:
    return bfs_path(start, is_goal, lambda c: state.tile(c) in "SF")


def _end_of(state: FrozenLakeState, actions: list[str]) -> Cell:
    cell = state.agent
    for a in actions:
        nxt = add(cell, MOVES[a])
        cell = nxt if state.inside(nxt) else cell
    return cell


def draw_actions(rng: np.random.Generator, s0: FrozenLakeState, target: str, steps: tuple[int, int]) -> list[str]:
    """Visualised actions whose outcome is ``target`` (A, B or C) and whose count is in ``steps``."""
    lo, hi = steps
    length = int(rng.integers(lo, hi + 1))
    if target == "C":
        walk = _safe_walk(rng, s0, length)
        if len(walk) < lo:
            raise GenerationRetry("agent is boxed in")
        return walk
    lead = _safe_walk(rng, s0, int(rng.integers(0, length)))
    here = _end_of(s0, lead)
    if target == "A":
        tail = _walk_to(s0, here, lambda c: s0.tile(c) == "G")
    else:
        tail = _walk_to(s0, here, lambda c: s0.tile(c) == "H")
    if tail is None or not lo <= len(lead) + len(tail) <= hi:
        raise GenerationRetry("target outcome not reachable within the step range")
    return lead + tail


def generate(rng: np.random.Generator, size: int, target: str, cfg, uid: str = "") -> Instance:
    """One instance of side ``size`` whose answer is ``target``; ``cfg`` is a FrozenLakeGen."""
    s0 = initial_state(random_map(rng, size, cfg.hole_prob))
    actions = draw_actions(rng, s0, target, tuple(cfg.steps))
    if target in "AB":  # the episode ends early: the question may list more actions
        n_extra = int(rng.integers(cfg.extra_actions[0], cfg.extra_actions[1] + 1))
        actions += [ACTIONS[int(i)] for i in rng.integers(0, 4, size=n_extra)]
    states, answer = run(s0, tuple(actions))
    if answer != target:  # cannot happen by construction; a cheap guard against drift
        raise GenerationRetry(f"drew answer {answer} for target {target}")
    return Instance(TASK, uid, tuple(actions), states, answer)
