"""`mvot solve` end to end on a tiny trained model, and its clear errors."""

from PIL import Image

from mvot.cli import main


def test_solve_an_instance_file(tiny_overfit, tmp_path, capsys):
    params, model_dir, raw, _, _ = tiny_overfit
    inst_file = raw / "frozenlake" / "test.jsonl"
    code = main(["solve", str(inst_file), "--index", "0", "--model", str(model_dir), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "answer: " in out and "visual thought 1" in out and "(true answer" in out
    strips = list((tmp_path / "out").glob("*.strip.png"))
    gifs = list((tmp_path / "out").glob("*.thoughts.gif"))
    assert len(strips) == 1 and len(gifs) == 1
    gif = Image.open(gifs[0])
    assert gif.n_frames >= 2  # the initial state, then at least one thought

    # an imported id may hold a path separator: the pictures still go into --out, one file each
    import json

    record = json.loads(inst_file.read_text().splitlines()[0]) | {"id": "level3/0 x"}
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps(record) + "\n")
    assert main(["solve", str(odd), "--model", str(model_dir), "--out", str(tmp_path / "odd")]) == 0
    from mvot.evaluate import file_stem

    stem = file_stem("level3/0 x")
    assert stem.startswith("level3_0_x-") and stem != file_stem("level3_0 x") and file_stem("maze-test-000001") == "maze-test-000001"
    assert sorted(p.name for p in (tmp_path / "odd").iterdir()) == [f"{stem}.strip.png", f"{stem}.thoughts.gif"]


def test_solve_an_image_and_actions(tiny_overfit, tmp_path, capsys):
    from mvot.data import read_split
    from mvot.render import Renderer

    params, model_dir, raw, _, _ = tiny_overfit
    inst = read_split(raw / "frozenlake", "test")[0]
    png = tmp_path / "start.png"
    Renderer.from_params(params, "frozenlake").render(inst.states[0]).save(png)
    code = main(["solve", "--image", str(png), "--task", "frozenlake", "--actions", ",".join(inst.actions),
                 "--model", str(model_dir), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0 and "answer: " in out
    assert (tmp_path / "out" / "input.thoughts.gif").is_file()


def test_solve_refuses_bad_input(tiny_overfit, tmp_path, capsys, monkeypatch):
    _, model_dir, raw, _, _ = tiny_overfit
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "frozenlake", "this is": "not an instance"}\n')
    assert main(["solve", str(bad), "--model", str(model_dir)]) == 1
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "error" in err

    notjson = tmp_path / "broken.json"
    notjson.write_text("{ nope")
    assert main(["solve", str(notjson), "--model", str(model_dir)]) == 1
    assert "broken.json" in capsys.readouterr().err

    small = tmp_path / "small.png"
    Image.new("RGB", (50, 50), (255, 255, 255)).save(small)
    assert main(["solve", "--image", str(small), "--task", "frozenlake", "--actions", "up", "--model", str(model_dir)]) == 1
    assert "50x50" in capsys.readouterr().err

    assert main(["solve", "--image", str(small), "--task", "frozenlake", "--model", str(model_dir)]) == 1
    assert "--actions" in capsys.readouterr().err

    assert main(["solve", str(raw / "frozenlake" / "test.jsonl"), "--index", "99", "--model", str(model_dir)]) == 1
    assert "out of range" in capsys.readouterr().err

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["solve", str(raw / "frozenlake" / "test.jsonl"), "--model", "models:/no-such-model@champion"]) == 1
    assert "no-such-model" in capsys.readouterr().err

    assert main(["solve", str(raw / "frozenlake" / "test.jsonl"), "--model", str(tmp_path)]) == 1
    assert "no config.json" in capsys.readouterr().err

    import pytest
    import torch

    from mvot.generate import DecodeError, load_model

    if not torch.cuda.is_available():
        with pytest.raises(DecodeError, match="this torch has no usable CUDA device"):
            load_model(model_dir, device="cuda")
    with pytest.raises(DecodeError, match="not a torch device"):
        load_model(model_dir, device="gpu0")


def test_prompt_follows_the_models_index_hints(tiny_overfit):
    """A model trained on numbered actions (tokenize.index_hints) is asked in that form."""
    import dataclasses

    from mvot import vq
    from mvot.data import read_split
    from mvot.generate import load_model
    from mvot.render import Renderer
    from mvot.solve import Problem, prompt_ids
    from mvot.tokenizers import PatchCoder

    params, model_dir, raw, _, _ = tiny_overfit
    lm = load_model(model_dir)
    inst = read_split(raw / "frozenlake", "test")[0]
    problem = Problem("frozenlake", tuple(inst.actions), Renderer.from_params(params, "frozenlake").render_array(inst.states[0]))
    coder = PatchCoder(vq.load(model_dir / "tokenizer"))

    def text(model):
        ids = prompt_ids(model, coder, problem)
        return model.text_tokenizer.decode([int(i) for i in ids if i < model.vocab.n_text], skip_special_tokens=True)

    first = f"Go {inst.actions[0]}."
    assert f"Full Action Sequence: {first}" in text(lm)
    hinted = dataclasses.replace(lm, meta=lm.meta | {"index_hints": True})
    assert f"Full Action Sequence: 1: {first}" in text(hinted)


def test_renderer_follows_the_models_drawing(tmp_path):
    """A model trained with MINIBEHAVIOR's reach frames is read with them; a model saved
    before the field existed is read without."""
    from mvot.generate import LoadedModel
    from mvot.solve import renderer_of

    geo = {"cell_px": 16, "canvas_cells": 10, "sizes": [7, 8, 9, 10]}
    framed = LoadedModel(None, None, None, tmp_path, {"render": {"minibehavior": geo | {"reach": True}}})
    older = LoadedModel(None, None, None, tmp_path, {"render": {"minibehavior": geo}})
    assert "floor_reach" in renderer_of(framed, "minibehavior").painter.all_keys()
    assert "floor_reach" not in renderer_of(older, "minibehavior").painter.all_keys()


def test_model_dir_of_a_run_folder_skips_a_cut_off_save(tmp_path):
    """A run folder resolves to its model; a `.tmp` (being written) or `.old` (being replaced)
    folder left by a save cut off midway is never taken for it, and the error says so."""
    import pytest

    from mvot.tracking import TrackingError, resolve_model_dir

    run = tmp_path / "runs" / "mvot"
    for d in ("model.old", "model.tmp", "model"):
        (run / d).mkdir(parents=True)
        (run / d / "config.json").write_text("{}")
    assert resolve_model_dir(str(run)) == run / "model"
    assert resolve_model_dir(str(run / "model")) == run / "model"
    import shutil

    shutil.rmtree(run / "model")  # killed between the swap's two renames: only the sides are left
    with pytest.raises(TrackingError, match=r"model\.old: a save cut off midway; train the run again"):
        resolve_model_dir(str(run))
