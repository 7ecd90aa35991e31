import numpy as np
import pytest

from mvot.worlds import maze
from mvot.worlds.base import InvalidInstance
from tests.conftest import draw


def test_connection_layout_matches_maze_dataset():
    # the first sample of the paper's grid3.json: flags DOWN then RIGHT, row-major
    conn = "TTTTFTFFFFFFFTFTTF"
    s = maze.MazeState(3, conn, (1, 2), ((0, 0), (0, 2), (1, 0), (1, 1)), ((1, 2),))
    flags = s.connection_list()
    assert flags.shape == (2, 3, 3)
    assert flags[0].tolist() == [[True, True, True], [True, False, True], [False, False, False]]
    assert flags[1].tolist() == [[False, False, False], [False, True, False], [True, True, False]]
    assert s.is_open((1, 2), "down") and s.is_open((2, 2), "up")
    assert s.is_open((1, 2), "left")  # right flag of (1, 1) is T
    assert not s.is_open((1, 0), "right") and not s.is_open((1, 1), "left")  # right flag of (1, 0) is F
    assert s.is_open((2, 1), "right") and s.is_open((2, 2), "left")
    states, answer = maze.run(s, ("down", "left", "left", "up", "up"))
    assert answer == "A" and states[-1].agent == (0, 0)


def _is_perfect(n, conn):
    flags = maze._flags(n, conn)
    if flags.sum() != n * n - 1:  # a spanning tree has n^2 - 1 edges
        return False
    return len(maze.distances(n, conn, (0, 0))) == n * n  # ... and reaches every cell


@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_random_mazes_are_perfect(n):
    rng = np.random.default_rng(n)
    for _ in range(50):
        conn = maze.random_maze(rng, n)
        maze.check_connections(n, conn)
        assert _is_perfect(n, conn)


def test_paths_never_cross_walls_and_candidates_are_fair(params):
    hits = {"A": 0, "B": 0, "C": 0, "D": 0}
    farthest = nearest = total = 0
    for seed in range(800):
        inst = draw("maze", params, seed)
        s = inst.states[-1]
        for a, b, act in zip(s.path, s.path[1:], inst.actions, strict=False):
            assert s.is_open(a, act)
            assert maze.add(a, maze.MOVES[act]) == b
        assert len(set(s.path)) == len(s.path)  # simple path
        assert len(set(s.candidates)) == 4 and s.start not in s.candidates
        assert s.candidates["ABCD".index(inst.answer)] == s.agent
        hits[inst.answer] += 1
        # position alone must not give the answer away: heuristics that ignore the actions
        dist = maze.distances(s.size, s.connections, s.start)
        d = [dist[c][0] for c in s.candidates]
        farthest += d.index(max(d)) == "ABCD".index(inst.answer)
        nearest += d.index(min(d)) == "ABCD".index(inst.answer)
        total += 1
    assert max(hits.values()) - min(hits.values()) <= 1
    assert farthest / total < 0.45 and nearest / total < 0.45, (farthest / total, nearest / total)


def test_moving_through_a_wall_is_invalid():
    s = maze.MazeState(2, "TFFFFFTF", (0, 0), ((0, 1), (1, 0), (1, 1), (0, 0)), ((0, 0),))
    assert s.is_open((0, 0), "down")
    with pytest.raises(InvalidInstance, match="through a wall"):
        maze.step(s, "right")
