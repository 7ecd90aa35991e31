from collections import Counter

import pytest

from mvot.worlds import minibehavior as mb
from mvot.worlds.base import InvalidInstance
from tests.conftest import draw

# a 7x7 room: table at (2,4)-(2,5), furniture at (4,2), printer at (4,4), agent at (3,3)
ROOM = mb.MiniBehaviorState(7, table=((2, 4), (2, 5)), furniture=((4, 2),), agent=(3, 3), printer=(4, 4))


def test_moves_blocked_by_walls_and_furniture():
    s, ev = mb.step(mb.MiniBehaviorState(7, ((2, 4), (2, 5)), ((4, 2),), (1, 1), (4, 4)), "up")
    assert ev == "bumped" and s.agent == (1, 1)  # wall
    s, ev = mb.step(mb.MiniBehaviorState(7, ((2, 4), (2, 5)), ((4, 2),), (3, 2), (4, 4)), "down")
    assert ev == "bumped" and s.agent == (3, 2)  # furniture
    s, ev = mb.step(mb.MiniBehaviorState(7, ((2, 4), (2, 5)), ((4, 2),), (3, 4), (4, 4)), "up")
    assert ev == "bumped"  # table
    s, ev = mb.step(ROOM, "right")
    assert ev == "moved" and s.agent == (3, 4)


def test_pickup_and_putdown_rules():
    far = mb.MiniBehaviorState(7, ROOM.table, ROOM.furniture, (1, 1), ROOM.printer)
    assert mb.step(far, "pickup")[1] == "pickup_failed"
    assert mb.step(ROOM, "putdown")[1] == "putdown_failed"  # not carrying
    s, ev = mb.step(mb.MiniBehaviorState(7, ROOM.table, ROOM.furniture, (3, 4), ROOM.printer), "pickup")
    assert ev == "picked" and s.carrying and s.inventory_text() == "Carrying objects: printer_0."
    assert mb.step(s, "pickup")[1] == "pickup_failed"  # already carrying
    s2, ev = mb.step(s, "putdown")  # (3,4) is below table cell (2,4)
    assert ev == "installed" and s2.printer == (2, 4) and s2.installed
    s3, _ = mb.step(s, "down")  # (4,4) is free now that the printer is carried
    assert s3.agent == (4, 4)
    assert mb.step(s3, "putdown")[1] == "putdown_failed"  # no table next to (4,4)


def test_run_stops_at_the_deciding_action():
    states, ans = mb.run(ROOM, ("right", "pickup", "putdown", "left", "left"))
    assert ans == "A" and len(states) == 4
    states, ans = mb.run(ROOM, ("up", "pickup", "right"))
    assert ans == "B" and len(states) == 3
    states, ans = mb.run(ROOM, ("putdown", "up"))
    assert ans == "C" and len(states) == 2
    states, ans = mb.run(ROOM, ("right", "pickup", "down"))
    assert ans == "D" and len(states) == 4


def test_generation_produces_all_four_outcomes(params):
    seen = Counter()
    for seed in range(400):
        inst = draw("minibehavior", params, seed)
        mb.check_state(inst.states[0])
        seen[inst.answer] += 1
        lo, hi = params.generate.minibehavior.steps
        assert lo <= inst.n_steps <= hi
        if inst.answer == "D":
            assert inst.extra_actions == ()
    assert set(seen) == set("ABCD") and min(seen.values()) >= 90


def test_overlapping_objects_are_invalid():
    with pytest.raises(InvalidInstance):
        mb.check_state(mb.MiniBehaviorState(7, ((2, 4),), (), (2, 4), (3, 3)))
