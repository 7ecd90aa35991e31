"""The three worlds of the paper, one module each, behind one registry.

Every world module offers the same functions on its own plain, frozen state type:
``generate(rng, size, target, cfg, uid) -> Instance``, ``step``, ``run(initial, actions)
-> (states, answer)``, ``layout_key(state)``, plus ``ACTIONS``, ``OPTIONS`` (answer letter
-> option text) and the state class with ``to_json``/``from_json``. A world may add
``outcome(inst) -> str``, a finer label than the answer (which rule ended the episode);
:func:`outcome` falls back to the answer letter.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from mvot.worlds import frozenlake, maze, minibehavior
from mvot.worlds.base import GenerationRetry, Instance, InvalidInstance

WORLDS: dict[str, ModuleType] = {"frozenlake": frozenlake, "maze": maze, "minibehavior": minibehavior}
STATE_TYPES: dict[str, type] = {
    "frozenlake": frozenlake.FrozenLakeState,
    "maze": maze.MazeState,
    "minibehavior": minibehavior.MiniBehaviorState,
}


def world(task: str) -> ModuleType:
    try:
        return WORLDS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(WORLDS)}") from None


def letters(task: str) -> str:
    """Answer letters of ``task`` in order (FROZENLAKE has three options, the others four)."""
    return "".join(world(task).OPTIONS)


def outcome(inst: Instance) -> str:
    """How ``inst``'s episode ended: the world's own ``outcome`` label, else its answer letter."""
    label = getattr(world(inst.task), "outcome", None)
    return label(inst) if label else inst.answer


def instance_from_json(d: dict[str, Any]) -> Instance:
    """Rebuild an :class:`Instance` from its JSON record, replaying it to check the record.

    Raises :class:`InvalidInstance` when states or answer disagree with the world's rules.
    """
    try:
        task = d["task"]
        mod = world(task)
        state_cls = STATE_TYPES[task]
        states = tuple(state_cls.from_json(s) for s in d["states"])
        actions = tuple(str(a) for a in d["actions"])
        inst = Instance(task, str(d["id"]), actions, states, str(d["answer"]))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise InvalidInstance(f"malformed instance record ({type(exc).__name__}: {exc})") from None
    if not states:
        raise InvalidInstance(f"instance {inst.uid}: malformed record (no states)")
    try:
        replayed, answer = mod.run(states[0], actions)
    except InvalidInstance:  # the world's own verdict on a move, as it is
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise InvalidInstance(f"instance {inst.uid}: malformed record, replaying it failed ({type(exc).__name__}: {exc})") from None
    if replayed != states:
        raise InvalidInstance(f"instance {inst.uid}: stored states differ from replaying its actions")
    if answer != inst.answer:
        raise InvalidInstance(f"instance {inst.uid}: stored answer {inst.answer} but the actions give {answer}")
    return inst


__all__ = ["WORLDS", "GenerationRetry", "Instance", "InvalidInstance", "instance_from_json", "letters", "outcome", "world"]
