"""Scoring: the V-metrics on hand-made drawings, the metric and combination arithmetic,
and evaluation end to end on a tiny model that memorised its test set."""

import json

import numpy as np
import pytest

from mvot.config import ConfigError, parse_params
from mvot.evaluate import (
    Record,
    _focus,
    check_step,
    check_steps,
    combine,
    evaluate_combined,
    evaluate_run,
    read_records,
    summarize,
    write_records,
)
from mvot.render import Renderer
from tests.conftest import OVERFIT_N, TASKS, draw, tiny_tokenizer_raw


def _instance_with_steps(task, params):
    for seed in range(50):
        inst = draw(task, params, seed)
        if inst.n_steps >= 1:
            return inst
    raise AssertionError("no instance with a step")


def _paint(r: Renderer, arr: np.ndarray, cell, key) -> np.ndarray:
    out = arr.copy()
    px = r.cell_px
    out[cell[0] * px : (cell[0] + 1) * px, cell[1] * px : (cell[1] + 1) * px] = r.patch(key)
    return out


@pytest.mark.parametrize("task", TASKS)
def test_v_metrics_on_hand_made_drawings(task, tiny_params):
    r = Renderer.from_params(tiny_params, task)
    inst = _instance_with_steps(task, tiny_params)
    before, after = inst.states[0], inst.states[1]
    prev, now = r.cells(before), r.cells(after)
    region = {c for c, k in now.items() if prev.get(c) != k} | {_focus(before), _focus(after)}
    truth = r.render_array(after)

    # a correct drawing: right region, nothing else changed
    assert check_step(r, before, after, truth) == (True, False)

    # an extra pattern: a cell far from the region drawn as another cell's content
    far = [c for c in now if min(abs(c[0] - a) + abs(c[1] - b) for a, b in region) >= 2]
    cell = far[len(far) // 2]
    other = next(k for c, k in sorted(now.items()) if k != now[cell] and c not in region)
    extra = _paint(r, truth, cell, other)
    assert r.read_cells(extra)[1][cell] == other  # the reader sees the extra pattern
    assert check_step(r, before, after, extra) == (True, True)

    # the wrong cell: the agent's (or path end's) new cell drawn as something else
    focus = _focus(after)
    wrong_key = next(k for c, k in sorted(now.items()) if k != now[focus])
    wrong = _paint(r, truth, focus, wrong_key)
    correct, redundant = check_step(r, before, after, wrong)
    assert not correct and not redundant

    # per trace: one image per true step, and a drawing past the last step is wrong
    drawn = [r.render_array(s) for s in inst.states[1:]]
    c, red = check_steps(r, inst, drawn + [drawn[-1]])
    assert c == [True] * inst.n_steps + [False] and red == [False] * inst.n_steps + [True]


def _rec(uid, gold, pred, correct=(), redundant=(), n_steps=0, size=3, logprob=None, task="frozenlake"):
    return Record(uid=uid, task=task, size=size, n_steps=n_steps, gold=gold, pred=pred, answer_logprob=logprob,
                  drawn=len(correct), step_correct=list(correct), step_redundant=list(redundant))


def test_summary_arithmetic():
    records = [
        _rec("a", "A", "A", [True, True, False], [False, False, True], n_steps=3, size=3),
        _rec("b", "B", None, [True, True], [False, False], n_steps=2, size=4),
        _rec("c", "A", "B", [False, False], [False, True], n_steps=1, size=4),  # drew one image too many
    ]
    s = summarize(records, visual=True)
    assert s["n"] == 3 and s["accuracy"] == 33.33 and s["unparsed"] == 1
    assert s["accuracy_by_size"] == {"3": 100.0, "4": 0.0}
    assert s["accuracy_by_answer"] == {"A": 50.0, "B": 0.0}
    assert s["confusion"]["A"] == {"A": 1, "B": 1, "C": 0, "none": 0}
    assert s["confusion"]["B"] == {"A": 0, "B": 0, "C": 0, "none": 1}
    assert s["drawn_steps"] == 7
    assert s["v_acc"] == 57.14  # 4 of 7 drawn steps right
    assert s["v_red"] == 28.57  # 2 of 7 with unintended patterns
    assert s["v_steps"] == pytest.approx(4 / 3, abs=1e-3)  # leading runs 2, 2, 0
    assert s["v_ratio"] == 55.56  # mean of 2/3, 2/2, 0/1
    assert s["drawn_vs_true_steps"] == pytest.approx(7 / 6, abs=1e-3)
    assert "v_acc" not in summarize(records, visual=False)


def test_written_actions_against_the_executed_ones(tiny_params):
    from types import SimpleNamespace

    from mvot.evaluate import score, written_actions

    assert written_actions("maze", "1: Go up. <image> 2: Go left. The agent moves to (0, 1).") == ["up", "left"]
    mb = written_actions("minibehavior", "Go up. Carrying objects: none. Pick up printer_0. Put down printer_0.")
    assert mb == ["up", "pickup", "putdown"]
    inst = draw("frozenlake", tiny_params, 3)
    executed = list(inst.actions[: inst.n_steps])
    text = " ".join(f"Go {a}." for a in executed) + " The answer is A."
    wrong_first = {"up": "down"}.get(executed[0], "up")
    outs = [SimpleNamespace(text=t, answer="A", answer_logprob=None, tokens=[], stopped="answer", images=[])
            for t in (text, f"Go {wrong_first}. " + text, "The answer is A.")]
    records, _ = score([inst] * 3, outs, None, None, 0, visual=False)
    assert [(r.actions_exact, r.actions_first) for r in records] == [(True, True), (False, False), (False, False)]
    s = summarize(records, visual=False)
    assert s["a_exact"] == 33.33 and s["a_first"] == 33.33
    direct, _ = score([inst], outs[:1], None, None, 0, visual=False, steps=False)
    assert direct[0].actions_exact is None and "a_exact" not in summarize(direct, visual=False)


def test_upper_bound_and_combined_predictor():
    a = [_rec("1", "A", "A", logprob=-0.5), _rec("2", "A", "B", logprob=-0.1), _rec("3", "A", None),
         _rec("4", "A", "B", logprob=-1.0), _rec("5", "A", "A", logprob=-0.2)]
    b = [_rec("1", "A", "B", logprob=-0.1), _rec("2", "A", "A", logprob=-0.9), _rec("3", "A", "A", logprob=-3.0),
         _rec("4", "A", "B", logprob=-1.0), _rec("5", "A", "C", logprob=-0.3)]
    r = combine(a, b)
    # upper bound: 1, 2, 3, 5 right; combined: the more confident answer -> B, B, A (only answer), B, A
    assert r == {"n": 5, "upper_bound": 80.0, "combined": 40.0, "agreement": 20.0, "accuracy_a": 40.0, "accuracy_b": 40.0}
    with pytest.raises(ValueError, match="different instances"):
        combine(a, b[:4])


def test_combined_files_and_a_bad_combine_setting(tmp_path, raw_params):
    raw = tiny_tokenizer_raw(raw_params)
    raw["train"]["tasks"] = ["frozenlake"]
    params = parse_params(raw)
    write_records(tmp_path / "eval" / "mvot" / "frozenlake" / "predictions.jsonl",
                  [_rec("1", "A", "A", size=3), _rec("2", "B", "A", size=4, logprob=-0.1)])
    write_records(tmp_path / "eval" / "direct" / "frozenlake" / "predictions.jsonl",
                  [_rec("1", "A", "C", size=3, logprob=-0.1), _rec("2", "B", "B", size=4, logprob=-0.01)])
    res = evaluate_combined(params, tmp_path / "eval", tmp_path / "metrics", tmp_path / "plots")
    assert res["frozenlake"]["upper_bound"] == 100.0 and res["frozenlake"]["combined"] == 50.0
    saved = json.loads((tmp_path / "metrics" / "frozenlake" / "combined.json").read_text())
    assert saved["runs"] == ["mvot", "direct"] and saved["upper_bound"] == 100.0
    assert json.loads((tmp_path / "metrics" / "maze" / "combined.json").read_text())["evaluated"] is False
    assert (tmp_path / "plots" / "accuracy_by_size_frozenlake.csv").read_text() == "size,direct,mvot\n3,0.0,100.0\n4,100.0,0.0\n"
    raw["evaluate"]["combine"] = ["mvot", "cot"]
    with pytest.raises(ConfigError, match="evaluate.combine"):
        evaluate_combined(parse_params(raw), tmp_path / "eval", tmp_path / "metrics", tmp_path / "plots")
    (tmp_path / "eval" / "direct" / "frozenlake" / "predictions.jsonl").write_text("{not json\n")
    with pytest.raises(Exception, match="corrupt predictions"):
        read_records(tmp_path / "eval" / "direct" / "frozenlake" / "predictions.jsonl")


def test_evaluate_a_model_that_memorised_its_test_set(tiny_overfit, tmp_path):
    params, model_dir, raw, tok, _ = tiny_overfit
    res = evaluate_run(params, "mvot", model_dir, tok, raw, tmp_path / "eval", tmp_path / "metrics", progress=False)
    m = res["frozenlake"]
    assert m["n"] == OVERFIT_N and m["unparsed"] == 0
    assert m["accuracy"] >= 75.0, m  # an untrained model answers by chance and draws noise
    assert m["v_acc"] >= 75.0 and m["v_red"] <= 50.0, m
    assert m["drawn_vs_true_steps"] == pytest.approx(1.0, abs=0.2)
    records = read_records(tmp_path / "eval" / "mvot" / "frozenlake" / "predictions.jsonl")
    assert len(records) == OVERFIT_N and all(r.drawn for r in records if r.n_steps)
    assert any((tmp_path / "eval" / "mvot" / "frozenlake" / "strips").glob("correct-*.png"))
    saved = json.loads((tmp_path / "metrics" / "frozenlake" / "mvot.json").read_text())
    assert saved["accuracy"] == m["accuracy"] and "confusion" in saved
    assert json.loads((tmp_path / "metrics" / "maze" / "mvot.json").read_text())["evaluated"] is False
    assert m["decode_budget"] <= params.evaluate.max_new_tokens


def test_decoding_budget_from_the_longest_train_output(tiny_tokens, raw_params):
    from mvot.evaluate import longest_output, prompt_of, task_budget
    from mvot.tokenize import load_split

    _, _, tokens_dir = tiny_tokens
    for task in TASKS:
        ts = load_split(tokens_dir, task, "train", "mvot")
        brute = max(len(ts.sequence(i)[0]) - len(prompt_of(*ts.sequence(i)[:2])) for i in range(len(ts)))
        assert longest_output(ts) == brute
    raw = tiny_tokenizer_raw(raw_params)
    longest = longest_output(load_split(tokens_dir, "maze", "train", "mvot"))
    cfg = lambda **kw: parse_params(raw | {"evaluate": raw["evaluate"] | kw}).evaluate  # noqa: E731
    assert task_budget(cfg(max_new_tokens=0, budget_factor=1.5), tokens_dir, "maze", "mvot") == int(np.ceil(1.5 * longest))
    assert task_budget(cfg(max_new_tokens=10, budget_factor=1.5), tokens_dir, "maze", "mvot") == 10
    assert task_budget(cfg(max_new_tokens=0, budget_factor=0), tokens_dir, "maze", "mvot") is None
    assert task_budget(cfg(max_new_tokens=0, budget_factor=2), tokens_dir / "missing", "maze", "mvot") is None
