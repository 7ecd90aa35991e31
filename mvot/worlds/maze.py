"""MAZE: where does an action sequence end in a perfect maze? (DESIGN.md 2.1)

An n x n perfect maze (exactly one path between any two cells) drawn by a randomised
depth-first search (recursive backtracker), as ``maze-dataset``'s ``gen_dfs``. Passages are
stored in maze-dataset's connection-list layout: a ``(2, n, n)`` boolean array where
``[0, r, c]`` says cell (r, c) connects DOWN to (r+1, c) and ``[1, r, c]`` says it connects
RIGHT to (r, c+1); flattened to a ``T``/``F`` string it is the ``maze_info`` of the paper's
release (first the n*n DOWN flags, then the n*n RIGHT flags, row-major).

An instance is a start cell (red dot), the unique path from it to an end cell, and four
labelled candidate cells A-D, one of which is the end. The actions are the moves of that
path, so they only follow open passages. The answer letter is balanced over a split by the
caller; the three distractors are drawn so that candidate positions alone do not reveal the
end: some lie on the path (cells the agent passes), the others are off the path at a maze
distance from the start close to the path's length.

Final text (the paper's): ``Action sequence finished. The answer is X.``
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from mvot.worlds.base import MOVES, Cell, GenerationRetry, Instance, InvalidInstance, add

TASK = "maze"
ACTIONS: tuple[str, ...] = ("up", "down", "left", "right")
LETTERS = "ABCD"
OPTIONS: dict[str, str] = {k: f"The agent ends at the cell labelled {k}." for k in LETTERS}


def _flags(n: int, bits: str) -> np.ndarray:
    return np.array([b == "T" for b in bits], dtype=bool).reshape(2, n, n)


@dataclass(frozen=True)
class MazeState:
    size: int
    connections: str  # 2*n*n 'T'/'F': maze-dataset connection list, flattened
    start: Cell
    candidates: tuple[Cell, ...]  # the cells labelled A, B, C, D
    path: tuple[Cell, ...]  # cells visited so far; path[0] == start

    @property
    def agent(self) -> Cell:
        return self.path[-1]

    def connection_list(self) -> np.ndarray:
        """``(2, n, n)`` bool array in maze-dataset's layout ([0]=down, [1]=right)."""
        return _flags(self.size, self.connections)

    def is_open(self, cell: Cell, move: str) -> bool:
        """Is there a passage from ``cell`` one step in direction ``move``?"""
        return is_open(self.size, self.connections, cell, move)

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "connections": self.connections,
            "start": list(self.start),
            "candidates": [list(c) for c in self.candidates],
            "path": [list(c) for c in self.path],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MazeState:
        return cls(
            size=int(d["size"]),
            connections=str(d["connections"]),
            start=(int(d["start"][0]), int(d["start"][1])),
            candidates=tuple((int(r), int(c)) for r, c in d["candidates"]),
            path=tuple((int(r), int(c)) for r, c in d["path"]),
        )


def is_open(n: int, connections: str, cell: Cell, move: str) -> bool:
    r, c = cell
    nr, nc = add(cell, MOVES[move])
    if not (0 <= r < n and 0 <= c < n and 0 <= nr < n and 0 <= nc < n):
        return False
    if move == "down":
        return connections[r * n + c] == "T"
    if move == "up":
        return connections[nr * n + nc] == "T"
    if move == "right":
        return connections[n * n + r * n + c] == "T"
    return connections[n * n + nr * n + nc] == "T"  # left


def check_connections(n: int, connections: str) -> None:
    if len(connections) != 2 * n * n or set(connections) - {"T", "F"}:
        raise InvalidInstance(f"connection list must be {2 * n * n} letters T/F for a {n}x{n} maze, got {connections!r}")
    flags = _flags(n, connections)
    if flags[0, n - 1].any() or flags[1, :, n - 1].any():
        raise InvalidInstance("connection list opens a passage through the outer border")


def step(state: MazeState, action: str) -> MazeState:
    """Move one cell along an open passage; moving into a wall is an invalid instance."""
    if action not in MOVES:
        raise InvalidInstance(f"unknown MAZE action {action!r}; allowed: {', '.join(ACTIONS)}")
    if not state.is_open(state.agent, action):
        raise InvalidInstance(f"action {action!r} from {state.agent} goes through a wall")
    return MazeState(state.size, state.connections, state.start, state.candidates, (*state.path, add(state.agent, MOVES[action])))


def run(initial: MazeState, actions: tuple[str, ...]) -> tuple[tuple[MazeState, ...], str]:
    states = [initial]
    for action in actions:
        states.append(step(states[-1], action))
    end = states[-1].agent
    if end not in initial.candidates:
        raise InvalidInstance(f"path ends at {end}, which is none of the candidates {initial.candidates}")
    return tuple(states), LETTERS[initial.candidates.index(end)]


def layout_key(state: MazeState) -> str:
    return f"{state.size}:{state.connections}"


def random_maze(rng: np.random.Generator, n: int) -> str:
    """A perfect maze by randomised depth-first search, as a flattened connection list."""
    conn = np.zeros((2, n, n), dtype=bool)
    start = (int(rng.integers(n)), int(rng.integers(n)))
    seen = {start}
    stack = [start]
    while stack:
        cell = stack[-1]
        options = [(m, add(cell, d)) for m, d in MOVES.items()]
        options = [(m, c) for m, c in options if 0 <= c[0] < n and 0 <= c[1] < n and c not in seen]
        if not options:
            stack.pop()
            continue
        move, nxt = options[int(rng.integers(len(options)))]
        lo = min(cell, nxt)  # the upper / left cell owns the connection flag
        conn[0 if move in ("up", "down") else 1][lo] = True
        seen.add(nxt)
        stack.append(nxt)
    return "".join("T" if b else "F" for b in conn.reshape(-1))


def distances(n: int, connections: str, start: Cell) -> dict[Cell, tuple[int, Cell | None, str | None]]:
    """BFS over passages: cell -> (distance, previous cell, move taken into it)."""
    out: dict[Cell, tuple[int, Cell | None, str | None]] = {start: (0, None, None)}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        for move, d in MOVES.items():
            nxt = add(cell, d)
            if nxt not in out and is_open(n, connections, cell, move):
                out[nxt] = (out[cell][0] + 1, cell, move)
                queue.append(nxt)
    return out


def _route(dist, end: Cell) -> list[str]:
    moves = []
    while dist[end][1] is not None:
        moves.append(dist[end][2])
        end = dist[end][1]
    return moves[::-1]


def pick_candidates(rng: np.random.Generator, n: int, dist, start: Cell, path: list[Cell], target: str) -> tuple[Cell, ...]:
    """Three distractors plus the end, with the end under letter ``target``."""
    end = path[-1]
    on_path = [c for c in path[1:-1]]
    off_path = sorted(c for c in dist if c not in path)
    n_on = min(len(on_path), int(rng.integers(0, 2)) if off_path else 3)
    picked = [on_path[int(i)] for i in rng.choice(len(on_path), size=n_on, replace=False)] if n_on else []
    need = 3 - len(picked)
    if len(off_path) < need:
        extra = [c for c in on_path if c not in picked]
        if len(off_path) + len(extra) < need:
            raise GenerationRetry("maze too small for four candidates")
        picked += extra[: need - len(off_path)]
        need = 3 - len(picked)
    if need:
        length = len(path) - 1
        w = np.array([1.0 / (1.0 + abs(dist[c][0] - length)) for c in off_path])
        idx = rng.choice(len(off_path), size=need, replace=False, p=w / w.sum())
        picked += [off_path[int(i)] for i in idx]
    order = [picked[int(i)] for i in rng.permutation(3)]
    slot = LETTERS.index(target)
    return tuple(order[:slot] + [end] + order[slot:])


def generate(rng: np.random.Generator, size: int, target: str, cfg, uid: str = "") -> Instance:
    """One instance on a fresh ``size`` x ``size`` maze whose answer is ``target`` (A-D)."""
    lo, hi = cfg.steps
    conn = random_maze(rng, size)
    start = (int(rng.integers(size)), int(rng.integers(size)))
    dist = distances(size, conn, start)
    ends = [c for c, (d, _, _) in sorted(dist.items()) if lo <= d <= hi]
    if not ends:
        raise GenerationRetry("no end cell within the step range")
    end = ends[int(rng.integers(len(ends)))]
    actions = _route(dist, end)
    path = [start]
    for a in actions:
        path.append(add(path[-1], MOVES[a]))
    candidates = pick_candidates(rng, size, dist, start, path, target)
    s0 = MazeState(size, conn, start, candidates, (start,))
    states, answer = run(s0, tuple(actions))
    if answer != target:
        raise GenerationRetry(f"drew answer {answer} for target {target}")
    return Instance(TASK, uid, tuple(actions), states, answer)
