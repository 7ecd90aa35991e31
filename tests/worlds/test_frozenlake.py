import gymnasium as gym
import numpy as np
import pytest

from mvot.worlds import frozenlake as fl
from mvot.worlds.base import InvalidInstance
from tests.conftest import draw


def _gym_run(desc, actions):
    """Step Gymnasium's FrozenLake-v1 (not slippery) until it terminates."""
    env = gym.make("FrozenLake-v1", desc=list(desc), is_slippery=False)
    obs, _ = env.reset(seed=0)
    visited, reward, terminated = [obs], 0.0, False
    for a in actions:
        obs, reward, terminated, _, _ = env.step(fl.GYM_ACTION[a])
        visited.append(obs)
        if terminated:
            break
    env.close()
    return visited, reward, terminated


@pytest.mark.slow
def test_agrees_with_gymnasium_on_thousands_of_instances(params):
    rng = np.random.default_rng(7)
    for i in range(2500):
        if i % 2:  # generated instances (balanced answers)
            inst = draw("frozenlake", params, i)
            s0, actions = inst.states[0], inst.actions
        else:  # random maps and random action strings, border bumps included
            n = int(rng.integers(3, 7))
            s0 = fl.initial_state(fl.random_map(rng, n, 0.3))
            actions = tuple(fl.ACTIONS[int(a)] for a in rng.integers(0, 4, size=int(rng.integers(1, 15))))
        states, answer = fl.run(s0, actions)
        visited, reward, terminated = _gym_run(s0.desc, actions)
        n = s0.size
        assert [r * n + c for r, c in (s.agent for s in states)] == visited
        expected = "A" if reward == 1.0 else ("B" if terminated else "C")
        assert answer == expected


def test_border_bump_keeps_agent_in_place():
    s = fl.initial_state(("SF", "FG"))
    assert fl.step(s, "up").agent == (0, 0)
    assert fl.step(s, "left").agent == (0, 0)
    assert fl.step(s, "right").agent == (0, 1)


def test_answers_and_actions_after_the_end():
    s0 = fl.initial_state(("SHF", "FFF", "FFG"))
    states, ans = fl.run(s0, ("right", "down", "down"))
    assert ans == "B" and len(states) == 2  # fell in; the rest is listed, not executed
    states, ans = fl.run(s0, ("down", "down", "right", "right", "up"))
    assert ans == "A" and len(states) == 5
    states, ans = fl.run(s0, ("down", "up"))
    assert ans == "C" and states[-1].agent == (0, 0)


def test_generated_maps_are_solvable_and_answers_as_targeted(params):
    for seed in range(300):
        inst = draw("frozenlake", params, seed)
        s0 = inst.states[0]
        assert fl._has_path(s0.desc)
        lo, hi = params.generate.frozenlake.steps
        assert lo <= inst.n_steps <= hi
        assert inst.answer == "ABC"[seed % 3]
        if inst.answer == "C":
            assert inst.extra_actions == ()


def test_malformed_maps_are_rejected():
    with pytest.raises(InvalidInstance):
        fl.initial_state(("SF", "FF"))  # no goal
    with pytest.raises(InvalidInstance):
        fl.initial_state(("SFG", "FF"))  # not square
