import copy

import pytest

from mvot.cli import main
from mvot.config import ConfigError, load_params, parse_params
from tests.conftest import ROOT


def _bad(raw, path, value):
    raw = copy.deepcopy(raw)
    node = raw
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    return str(err.value)


def test_repository_params_are_valid(params):
    assert params.image_size("frozenlake") == params.render.frozenlake.cell_px * max(params.generate.frozenlake.sizes)
    assert params.canvas_cells("minibehavior") == 10


def test_unknown_key_is_named_with_allowed_keys(raw_params):
    msg = _bad(raw_params, ["generate", "maze", "stepz"], [1, 4])
    assert "generate.maze.stepz: unknown key" in msg
    assert "allowed keys here: sizes, splits, steps" in msg


def test_out_of_range_names_key_value_and_bound(raw_params):
    msg = _bad(raw_params, ["generate", "frozenlake", "sizes"], [3, 9])
    assert "generate.frozenlake.sizes[1] = 9: must be <= 8" in msg
    msg = _bad(raw_params, ["render", "maze", "cell_px"], 10)
    assert "render.maze.cell_px = 10: must be a multiple of 4" in msg
    msg = _bad(raw_params, ["generate", "frozenlake", "hole_prob"], 0.9)
    assert "generate.frozenlake.hole_prob = 0.9: must be <= 0.6" in msg


def test_wrong_type_is_named(raw_params):
    msg = _bad(raw_params, ["generate", "maze", "splits", "train"], "100")
    assert "generate.maze.splits.train = '100': wrong type str" in msg
    msg = _bad(raw_params, ["seed"], 1.5)
    assert "seed = 1.5: wrong type float" in msg


def test_cross_field_rules(raw_params):
    assert "steps = [5, 2]: min must not exceed max" in _bad(raw_params, ["generate", "maze", "steps"], [5, 2])
    assert "sizes = [3, 3]: sizes must be distinct" in _bad(raw_params, ["generate", "maze", "sizes"], [3, 3])
    raw = copy.deepcopy(raw_params)
    raw["generate"]["test_share"] = 0.45
    assert "val_share + test_share = 0.9: must stay below 0.9" in _bad(raw, ["generate", "val_share"], 0.45)
    assert "required key is missing" in _bad(raw_params, ["render", "maze"], KeyError)
    raw = copy.deepcopy(raw_params)
    raw["train"]["model"]["pretrained"] = "some/checkpoint"
    assert "grid_pos applies to a model built from scratch" in _bad(raw, ["train", "model", "grid_pos"], 6)


def test_train_runs_are_checked(raw_params):
    msg = _bad(raw_params, ["train", "runs", "cot"], {"variant": "cot", "ld_weight": 1.0})
    assert "train.runs.cot: ld_weight = 1.0: L_D applies to image targets, which only the mvot variant has" in msg
    msg = _bad(raw_params, ["train", "runs", "Bad-Name"], {"variant": "mvot", "ld_weight": 1.0})
    assert "train.runs.Bad-Name" in msg
    assert "train.model: d_model = 250 must be a multiple of n_head = 4" in _bad(raw_params, ["train", "model", "d_model"], 250)


def test_every_problem_is_reported_at_once(raw_params):
    raw = copy.deepcopy(raw_params)
    raw["seed"] = -1
    raw["generate"]["maze"]["sizes"] = [2]
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert "seed = -1" in str(err.value) and "generate.maze.sizes[0] = 2" in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(bad)


def test_cli_stops_before_any_work(tmp_path, raw_params, capsys):
    import yaml

    raw = copy.deepcopy(raw_params)
    raw["generate"]["maze"]["steps"] = [0, 5]
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    out = tmp_path / "raw"
    code = main(["--params", str(p), "generate", "--task", "maze", "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert "generate.maze.steps[0] = 0: must be >= 1" in err
    assert not out.exists()


def test_evaluate_overrides_are_validated(tmp_path, raw_params, capsys):
    import yaml

    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw_params))
    assert main(["--params", str(p), "evaluate", "--limit", "-1", "--runs", str(tmp_path), "--no-track"]) == 1
    assert "evaluate.limit = -1: must be >= 0" in capsys.readouterr().err
    assert main(["--params", str(p), "evaluate", "--limit", "0", "--budget-factor", "2", "--runs", str(tmp_path),
                 "--no-track"]) == 1  # valid overrides; then the missing model is the error
    assert "no trained model" in capsys.readouterr().err


@pytest.mark.parametrize("profile", sorted(p.name for p in (ROOT / "profiles").glob("*.yaml")))
def test_committed_profiles_resolve_to_valid_params_and_trials(profile):
    """Every profile the README and Makefile name parses, and its sweep grid leaves out only the
    combinations that cannot exist (L_D on a row without image targets): a patch size that does
    not fit a task's images, say, would be skipped, not run."""
    from flows.pipeline import resolve_params
    from mvot.sweep import trials

    raw, name = resolve_params(str(ROOT / "params.yaml"), str(ROOT / "profiles" / profile), [])
    grid, skipped = trials(parse_params(raw, profile))
    assert grid and all("L_D needs image targets" in s for s in skipped), skipped


def test_a_profile_extends_another_and_its_own_values_win(tmp_path):
    """``extends:`` merges the base profile first, section by section, then the profile's own
    values; a missing base and a cycle are refused with the file that names them."""
    from flows.pipeline import PipelineError, resolve_params

    (tmp_path / "base.yaml").write_text("train: {steps: 900, lr: 0.0007, model: {d_model: 96, n_layer: 3}}\nsweep: {name: base, max_workers: 3}\n")
    (tmp_path / "child.yaml").write_text("extends: base\ntrain: {steps: 300, model: {n_layer: 2}}\nsweep: {name: child}\n")
    raw, name = resolve_params(str(ROOT / "params.yaml"), str(tmp_path / "child.yaml"), [])
    assert name == "child"
    assert (raw["train"]["steps"], raw["train"]["lr"]) == (300, 0.0007)  # the base's lr is not params.yaml's
    assert (raw["train"]["model"]["d_model"], raw["train"]["model"]["n_layer"]) == (96, 2)  # merged key by key
    assert (raw["sweep"]["name"], raw["sweep"]["max_workers"]) == ("child", 3)
    assert "extends" not in raw

    (tmp_path / "mine.yaml").write_text("extends: multitask\ntrain: {steps: 500}\n")  # a committed one, by name
    raw, _ = resolve_params(str(ROOT / "params.yaml"), str(tmp_path / "mine.yaml"), [])
    assert (raw["train"]["steps"], raw["train"]["batch_tokens"], raw["sweep"]["name"]) == (500, 2048, "multitask")
    (tmp_path / "orphan.yaml").write_text("extends: nowhere\n")
    with pytest.raises(PipelineError, match=r"'nowhere' not found \(named by extends: in .*orphan.yaml\)"):
        resolve_params(str(ROOT / "params.yaml"), str(tmp_path / "orphan.yaml"), [])
    (tmp_path / "a.yaml").write_text("extends: b\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(PipelineError, match=r"cycle \(a.yaml -> b.yaml -> a.yaml\)"):
        resolve_params(str(ROOT / "params.yaml"), str(tmp_path / "a.yaml"), [])
    (tmp_path / "list.yaml").write_text("- train\n")
    with pytest.raises(PipelineError, match="a profile is a mapping"):
        resolve_params(str(ROOT / "params.yaml"), str(tmp_path / "list.yaml"), [])


def test_gpu_profile_trains_the_multitask_recipe():
    """profiles/gpu.yaml takes its model and steps from profiles/multitask.yaml (one recipe, one place)."""
    from flows.pipeline import resolve_params

    gpu, _ = resolve_params(str(ROOT / "params.yaml"), "gpu", [])
    multitask, _ = resolve_params(str(ROOT / "params.yaml"), "multitask", [])
    assert gpu["train"] == multitask["train"] and gpu["train"]["steps"] == 36000
    assert gpu["evaluate"] == {**multitask["evaluate"], "batch_size": 128} and gpu["evaluate"]["limit"] == 0
    assert gpu["sweep"]["grid"]["ld_weight"] == [0.0, 1.0] and gpu["sweep"]["max_workers"] == 1


def test_pipeline_prints_a_profiles_merged_params_and_runs_nothing(tmp_path, monkeypatch, capsys):
    """``--print-params``: the profile and --set values merged and validated, as YAML that
    ``mvot --params`` reads; no workspace, no tracking check; a bad value still fails first."""
    import yaml

    from flows import pipeline

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # unreachable: --print-params never asks
    work = tmp_path / "w"
    base = ["--params", str(ROOT / "params.yaml"), "--profile", "multitask"]
    assert pipeline.main([*base, "--set", "train.steps=400", "--workdir", str(work), "--print-params"]) == 0
    printed = capsys.readouterr().out
    params = parse_params(yaml.safe_load(printed))
    assert (params.train.steps, params.train.model.d_model, params.train.batch_tokens) == (400, 128, 2048)
    assert not work.exists()
    p = tmp_path / "mt.yaml"
    p.write_text(printed)  # exactly what was printed
    assert main(["--params", str(p), "params"]) == 0 and '"steps": 400' in capsys.readouterr().out

    assert pipeline.main([*base, "--set", "train.steps=-1", "--print-params"]) == 1
    captured = capsys.readouterr()
    assert "train.steps" in captured.err and captured.out == ""


def test_pipeline_names_a_bad_params_file_or_set_value(tmp_path, capsys):
    """An empty, non-mapping or non-UTF-8 params file and a --set value that is not YAML, or that
    sets a key under a section an earlier --set replaced, exit 1 with a message, not a traceback."""
    from flows.pipeline import PipelineError, main, resolve_params

    p = tmp_path / "params.yaml"
    for text, message in ((b"", "not an empty file"), (b"- a\n- b\n", "not a list"),
                          (b"seed: \xff\n", "cannot read the params file")):
        p.write_bytes(text)
        with pytest.raises(PipelineError, match=message):
            resolve_params(str(p), None, [])
    assert main(["--params", str(p), "--print-params"]) == 1
    assert "cannot read the params file" in capsys.readouterr().err
    good = str(ROOT / "params.yaml")
    with pytest.raises(PipelineError, match=r"--set 'train.steps=\[1': the value is not valid YAML"):
        resolve_params(good, None, ["train.steps=[1"])
    with pytest.raises(PipelineError, match="an earlier --set gave train a value"):
        resolve_params(good, None, ["train=5", "train.steps=3"])
    with pytest.raises(PipelineError, match="has an empty part"):
        resolve_params(good, None, ["train..steps=3"])


def test_train_log_file_is_checked_before_training(tmp_path, raw_params, capsys):
    import yaml

    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw_params))
    for log, message in ((tmp_path / "no" / "log.jsonl", "does not exist"), (tmp_path, "a folder, not a file")):
        assert main(["--params", str(p), "train", "--log-jsonl", str(log), "--out", str(tmp_path / "runs")]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
