from mvot import traces
from mvot.worlds import maze
from mvot.worlds.base import Instance
from tests.conftest import TASKS, draw

MAZE_PROMPT_START = (
    "Task: Maze Navigation Simulation\nDetermine the final destination (A, B, C or D) from the starting point "
    "(red point) following the action sequence. The definitions of the actions are as below. \n* Go up/left/down/right: "
    "move one grid space in the absolute up/left/down/right direction. \nFull Action Sequence: "
)


def test_maze_prompt_is_the_papers():
    s = maze.MazeState(3, "TTTTFTFFFFFFFTFTTF", (1, 2), ((0, 0), (0, 2), (2, 1), (1, 1)), ((1, 2),))
    states, ans = maze.run(s, ("down", "left"))
    assert ans == "C"
    inst = Instance("maze", "m", ("down", "left"), states, ans)
    t = traces.build(inst, "mvot")
    assert t.text() == (
        MAZE_PROMPT_START + "Go down. Go left. \nInitial maze: <image 0>\nResponse: "
        "Go down. <image 1> Go left. <image 2> Action sequence finished. The answer is C."
    )
    assert traces.build(inst, "direct").text().endswith("<image 0>\nResponse: The answer is C.")


def test_variants_share_prompt_and_differ_in_output(params):
    for task in TASKS:
        inst = draw(task, params, 5)
        built = {v: traces.build(inst, v) for v in traces.VARIANTS}
        prompts = {v: [p for p in t.parts if not p.output] for v, t in built.items()}
        assert all(p == prompts["direct"] for p in prompts.values())
        assert built["direct"].images == [0]
        assert built["cot"].images == [0]
        assert built["mvot"].images == list(range(inst.n_steps + 1))
        assert built["interleaved"] == traces.Trace("interleaved", built["mvot"].parts)
        for t in built.values():
            assert traces.parse_answer(t.text()) == inst.answer
        # every listed action (also those after the end) is in the question
        assert traces.question(inst).count("Go ") + traces.question(inst).count("printer_0.") >= len(inst.actions)


def test_cot_steps_carry_coordinates_and_inventory(params):
    inst = draw("minibehavior", params, 2)
    text = traces.build(inst, "cot", layout_text=True).text()
    assert "The agent is at" in text and "Carrying objects:" in text
    assert traces.cot_step(inst, 1).startswith(traces.action_text("minibehavior", inst.actions[0]))


def test_parse_answer():
    assert traces.parse_answer("blah. The answer is C.") == "C"
    assert traces.parse_answer("The answer is") is None


def test_index_hints_number_the_actions_and_the_steps():
    s = maze.MazeState(3, "TTTTFTFFFFFFFTFTTF", (1, 2), ((0, 0), (0, 2), (2, 1), (1, 1)), ((1, 2),))
    states, ans = maze.run(s, ("down", "left"))
    inst = Instance("maze", "m", ("down", "left"), states, ans)
    assert traces.build(inst, "mvot", index_hints=True).text() == (
        MAZE_PROMPT_START + "1: Go down. 2: Go left. \nInitial maze: <image 0>\nResponse: "
        "1: Go down. <image 1> 2: Go left. <image 2> Action sequence finished. The answer is C."
    )
    cot = traces.build(inst, "cot", index_hints=True).text()
    assert "Response: 1: Go down. The agent moves to" in cot and " 2: Go left. The agent" in cot
    assert traces.build(inst, "direct", index_hints=True).text().endswith("<image 0>\nResponse: The answer is C.")
    assert traces.question_for("maze", ("down", "left")) == traces.question(inst)  # off by default: the paper's prompt


def test_minibehavior_inventory_after_the_image():
    """tokenize.inventory_after_image: the picture of a step comes before its inventory line,
    so a failed pick-up is drawn first and read off after; other tasks and CoT unchanged."""
    from mvot.worlds import minibehavior as mb

    room = mb.MiniBehaviorState(7, table=((3, 4),), furniture=(), agent=(2, 2), printer=(2, 3))
    states, ans = mb.run(room, ("pickup", "down", "pickup"))
    assert ans == "B"
    inst = Instance("minibehavior", "r", ("pickup", "down", "pickup"), states, ans)
    response = lambda t: t.text().split("\nResponse: ")[1]  # noqa: E731
    assert response(traces.build(inst, "mvot")) == (
        "Pick up printer_0. Carrying objects: printer_0. <image 1> Go down. Carrying objects: printer_0. <image 2> "
        "Pick up printer_0. Carrying objects: printer_0. <image 3> Action sequence finished. The answer is B."
    )
    assert response(traces.build(inst, "mvot", inventory_after_image=True)) == (
        "Pick up printer_0. <image 1> Carrying objects: printer_0. Go down. <image 2> Carrying objects: printer_0. "
        "Pick up printer_0. <image 3> Carrying objects: printer_0. Action sequence finished. The answer is B."
    )
    assert traces.build(inst, "cot", inventory_after_image=True) == traces.build(inst, "cot")
    s = maze.MazeState(3, "TTTTFTFFFFFFFTFTTF", (1, 2), ((0, 0), (0, 2), (2, 1), (1, 1)), ((1, 2),))
    m = Instance("maze", "m", ("down", "left"), *maze.run(s, ("down", "left")))
    assert traces.build(m, "mvot", inventory_after_image=True) == traces.build(m, "mvot")


def test_trace_settings_from_the_config_or_a_models_meta():
    """A model's meta written before a setting existed reads it as off; the config's values as set."""
    from mvot.config import load_params
    from mvot.worlds import minibehavior as mb

    cfg = load_params().tokenize
    assert traces.trace_settings(cfg) == {k: bool(getattr(cfg, k)) for k in traces.TRACE_SETTINGS}
    assert traces.trace_settings({"index_hints": 1}) == {"cot_layout_text": False, "index_hints": True,
                                                          "inventory_after_image": False}
    room = mb.MiniBehaviorState(7, table=((3, 4),), furniture=(), agent=(2, 2), printer=(2, 3))
    inst = Instance("minibehavior", "r", ("pickup",), *mb.run(room, ("pickup",)))
    meta = {"inventory_after_image": True, "cot_layout_text": True, "run": "x"}
    for variant in traces.VARIANTS:
        assert traces.build_with(inst, variant, meta) == traces.build(inst, variant, layout_text=True,
                                                                      inventory_after_image=True)
    assert traces.build_with(inst, "mvot", meta) != traces.build_with(inst, "mvot", {})
