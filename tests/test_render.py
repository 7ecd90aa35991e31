import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from mvot.render import OUTSIDE, Renderer
from mvot.worlds.frozenlake import FrozenLakeState
from tests.conftest import TASKS, draw


@pytest.fixture(scope="module")
def renderers(params):
    return {t: Renderer.from_params(params, t) for t in TASKS}


def test_geometry_comes_from_params(params, renderers):
    for task, r in renderers.items():
        img = r.render(draw(task, params, 0).states[0])
        assert img.size == (params.image_size(task),) * 2 and img.mode == "RGB"


def test_hand_checked_frozenlake_pixels(renderers):
    r = renderers["frozenlake"]
    s = FrozenLakeState(("SH", "FG"), (1, 0))
    arr = r.render_array(s)
    px = r.cell_px
    assert r.cells(s) == {(0, 0): ("S", False), (0, 1): ("H", False), (1, 0): ("F", True), (1, 1): ("G", False)}
    # canvas beyond the 2x2 grid is flat outside grey; the agent's centre pixel is red
    assert (arr[2 * px :, :] == r.patch(OUTSIDE)[0, 0]).all()
    assert tuple(arr[px + px // 2, px // 2]) == (220, 30, 30)


@pytest.mark.parametrize("task", TASKS)
def test_cell_drawings_are_distinct(task, renderers):
    """Legibility floor: any two different cell contents differ clearly in pixels."""
    r = renderers[task]
    if task == "maze":
        keys = [((False,) * 4, *k) for k in r.painter.content_keys()] + [((True, False, True, False), "", False, "", "")]
    else:
        keys = r.painter.all_keys()
    pats = np.stack([r.patch(k).astype(float) for k in [*keys, OUTSIDE]])
    d = ((pats[:, None] - pats[None]) ** 2).mean(axis=(2, 3, 4))
    np.fill_diagonal(d, np.inf)
    assert d.min() > 100.0  # mean squared difference, i.e. > 10 grey levels RMS


@pytest.mark.parametrize("task", TASKS)
def test_parse_inverts_render(task, params, renderers):
    r = renderers[task]
    n_states = 0
    for seed in range(150):
        inst = draw(task, params, seed)
        for s in inst.states:
            assert r.parse(r.render(s)) == s
            assert r.parse(r.render_array(s)) == s
            n_states += 1
    assert n_states > 500


@pytest.mark.parametrize("task", TASKS)
def test_parse_is_robust_to_noise_jpeg_and_resizing(task, params, renderers):
    r = renderers[task]
    rng = np.random.default_rng(0)
    ok = total = 0
    for seed in range(40):
        s = draw(task, params, seed).states[-1]
        arr = r.render_array(s).astype(float)
        noisy = np.clip(arr + rng.normal(0, 25, arr.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        r.render(s).save(buf, "JPEG", quality=85)
        big = r.render(s).resize((r.image_size * 3 // 2,) * 2, Image.Resampling.BILINEAR)
        for img in (noisy, Image.open(buf), big):
            ok += r.parse(img) == s
            total += 1
    assert ok / total >= 0.97


@pytest.mark.parametrize("task", TASKS)
def test_read_cells_sees_an_extra_pattern(task, params, renderers):
    """The per-cell reading (what V-metrics compare) reports a pasted foreign cell."""
    r = renderers[task]
    s = draw(task, params, 3).states[-1]
    n, keys = r.read_cells(r.render(s))
    assert n == s.size and keys == r.cells(s)
    truth = r.cells(s)
    cell, key = next((c, k) for c, k in truth.items() if k != truth[(0, 0)])
    arr = r.render_array(s).copy()
    px = r.cell_px
    arr[:px, :px] = r.patch(key)  # draw cell's content at (0, 0) too
    _, keys2 = r.read_cells(arr)
    assert keys2[(0, 0)] == key and all(keys2[c] == truth[c] for c in truth if c != (0, 0))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    task=st.sampled_from(TASKS),
    img=st.one_of(
        arrays(np.uint8, st.tuples(st.integers(1, 70), st.integers(1, 70), st.sampled_from([1, 3, 4]))),
        arrays(np.float32, st.tuples(st.integers(1, 40), st.integers(1, 40)), elements=st.floats(allow_nan=True, allow_infinity=True, width=32)),
        arrays(np.uint8, st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3))),
    ),
)
def test_parse_never_raises(task, img, params):
    r = Renderer.from_params(params, task)
    state = r.parse(img)
    assert state.size in r.sizes
    n, keys = r.read_cells(img)
    assert len(keys) == n * n


def test_reach_frames_exactly_the_four_cells_next_to_the_agent(params):
    """MINIBEHAVIOR's reach (render.minibehavior.reach): a cell is drawn framed iff it is
    up, down, left or right of the agent, whatever it holds; the frame is read back and
    the state parses the same."""
    from mvot.worlds.minibehavior import MiniBehaviorState

    plain = Renderer("minibehavior", 16, 10, (7, 8, 9, 10))
    framed = Renderer("minibehavior", 16, 10, (7, 8, 9, 10), reach=True)
    # agent at (2, 2); printer above it, table to its right (and below that), furniture below
    s = MiniBehaviorState(7, table=((2, 3), (3, 3)), furniture=((3, 2),), agent=(2, 2), printer=(1, 2))
    cells = framed.cells(s)
    assert {c for c, k in cells.items() if k.endswith("_reach")} == {(1, 2), (3, 2), (2, 1), (2, 3)}
    assert cells[(1, 2)] == "printer_reach" and cells[(2, 3)] == "table_reach" and cells[(3, 2)] == "furniture_reach"
    assert cells[(3, 3)] == "table" and cells[(2, 2)] == "agent"
    assert {c: framed.painter.kind(k) for c, k in cells.items()} == plain.cells(s)
    # against a wall: the wall cell is framed too
    edge = MiniBehaviorState(7, table=((4, 4), (4, 5)), furniture=(), agent=(1, 1), printer=None)
    assert framed.cells(edge)[(0, 1)] == "wall_reach" and framed.cells(edge)[(1, 1)] == "agent_carrying"
    for st_ in (s, edge):
        assert framed.read_cells(framed.render(st_))[1] == framed.cells(st_)
        assert framed.parse(framed.render(st_)) == st_
    # the frame is drawn: a framed floor cell's corner pixel is the frame's yellow
    assert tuple(framed.patch("floor_reach")[0, 0]) == framed.painter.REACH
    assert not (framed.render_array(s) == plain.render_array(s)).all()


def test_reach_is_only_for_minibehavior():
    with pytest.raises(ValueError, match="reach"):
        Renderer("maze", 16, 6, reach=True)
