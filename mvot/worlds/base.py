"""What the three worlds share: cells, absolute moves, the instance record, grid search."""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mvot.errors import MvotError

Cell = tuple[int, int]  # (row, col), row 0 at the top

MOVES: dict[str, Cell] = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
"""Absolute one-cell moves (DESIGN.md 2.1)."""

MOVE_TEXT: dict[str, str] = {m: f"Go {m}." for m in MOVES}


class GenerationRetry(Exception):
    """This random draw cannot produce the requested instance; draw again."""


class InvalidInstance(MvotError, ValueError):
    """An instance record contradicts its world's rules (wrong answer, impossible move...)."""


def add(cell: Cell, move: Cell) -> Cell:
    return (cell[0] + move[0], cell[1] + move[1])


def neighbours(cell: Cell) -> Iterable[tuple[str, Cell]]:
    for name, d in MOVES.items():
        yield name, add(cell, d)


def bfs_path(
    start: Cell,
    is_goal: Callable[[Cell], bool],
    passable: Callable[[Cell], bool],
    moves: Callable[[Cell], Iterable[tuple[str, Cell]]] = neighbours,
) -> list[str] | None:
    """Shortest list of move names from ``start`` to the first cell with ``is_goal``.

    A neighbour is entered if it is a goal or ``passable``; goals are never passed through.
    Ties are broken by the fixed order of :data:`MOVES`, so the result is deterministic.
    """
    if is_goal(start):
        return []
    prev: dict[Cell, tuple[Cell, str]] = {}
    seen = {start}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        for name, nxt in moves(cell):
            if nxt in seen:
                continue
            if is_goal(nxt):
                path = [name]
                while cell != start:
                    cell, step = prev[cell]
                    path.append(step)
                return path[::-1]
            if passable(nxt):
                seen.add(nxt)
                prev[nxt] = (cell, name)
                queue.append(nxt)
    return None


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same on every machine and Python run."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


@dataclass(frozen=True)
class Instance:
    """One multiple-choice question and its full trajectory.

    ``actions`` lists every action of the question; the first ``n_steps`` of them are
    executed and visualised, ``states[k]`` is the state after ``k`` of them (``states[0]``
    the initial one); the rest were listed after the episode had ended.
    """

    task: str
    uid: str
    actions: tuple[str, ...]
    states: tuple[Any, ...]
    answer: str

    @property
    def size(self) -> int:
        return self.states[0].size

    @property
    def n_steps(self) -> int:
        return len(self.states) - 1

    @property
    def extra_actions(self) -> tuple[str, ...]:
        return self.actions[self.n_steps :]

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "id": self.uid,
            "size": self.size,
            "answer": self.answer,
            "n_steps": self.n_steps,
            "actions": list(self.actions),
            "states": [s.to_json() for s in self.states],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)
