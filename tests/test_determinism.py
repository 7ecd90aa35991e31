"""One determinism test over every world and the renderer."""

import pytest

from mvot.render import Renderer
from tests.conftest import TASKS, draw


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_instance_same_bytes(task, params):
    r1, r2 = Renderer.from_params(params, task), Renderer.from_params(params, task)
    for seed in range(40):
        a, b = draw(task, params, seed), draw(task, params, seed)
        assert a == b and a.dumps() == b.dumps()
        assert [r1.png(s) for s in a.states] == [r2.png(s) for s in b.states]
    assert draw(task, params, 1).dumps() != draw(task, params, 2).dumps()
