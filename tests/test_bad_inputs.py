"""Bad input is a clear error naming the file and the fix, a non-zero exit, and nothing
half-written: corrupt records, tokenizer configs, model files, sweep trials and report
outputs (the cases of a bad-input audit of every `mvot` command)."""

import json
import shutil

import pytest

from mvot.cli import main
from tests.test_sweep import _report_trial


def test_malformed_instance_records_and_files_that_are_not_utf8(tiny_generated, tmp_path):
    from mvot.config import ConfigError, load_params
    from mvot.data import DataError, read_split
    from mvot.worlds import InvalidInstance, instance_from_json

    root, _ = tiny_generated
    record = json.loads((root / "raw" / "frozenlake" / "test.jsonl").read_text().splitlines()[0])
    assert instance_from_json(record).uid == record["id"]
    with pytest.raises(InvalidInstance, match="malformed record \\(no states\\)"):
        instance_from_json(record | {"states": []})
    (tmp_path / "frozenlake").mkdir()
    (tmp_path / "frozenlake" / "test.jsonl").write_bytes(json.dumps(record).encode() + b"\n\xff\xfe{\n")
    with pytest.raises(DataError, match=r"test.jsonl:2: corrupt record .*regenerate"):
        read_split(tmp_path / "frozenlake", "test")
    (tmp_path / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xff")
    with pytest.raises(ConfigError, match="binary.yaml: not a UTF-8 text file"):
        load_params(tmp_path / "binary.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="empty.yaml: empty params file"):
        load_params(tmp_path / "empty.yaml")


def test_corrupt_tokenizer_configs(tiny_tokenizer, tmp_path):
    from mvot import vq
    from mvot.vocab import Vocab, VocabError

    _, tok_dir, _ = tiny_tokenizer
    tok = tmp_path / "tok"
    shutil.copytree(tok_dir, tok)
    vocab = json.loads((tok / "vocab.json").read_text())
    (tok / "vocab.json").write_text(json.dumps(vocab | {"n_codes": "512"}))
    with pytest.raises(VocabError, match=r"corrupt vocabulary \(n_codes = '512'"):
        Vocab.load(tok / "vocab.json")
    (tok / "vocab.json").write_text(json.dumps(vocab | {"tokens_per_image": {"maze": 0}}))
    with pytest.raises(VocabError, match="corrupt vocabulary \\(tokens_per_image"):
        Vocab.load(tok / "vocab.json")
    spec = json.loads((tok / vq.CONFIG).read_text())
    vq.load(tok)  # the copy as it is loads
    for bad in ({"codebook_size": "1024"}, {"hidden": -4}, {"depth": 0}, {"commitment": None}):
        (tok / vq.CONFIG).write_text(json.dumps(spec | bad))
        with pytest.raises(vq.CheckpointError, match=f"corrupt tokenizer config \\({next(iter(bad))} = .*dvc repro tokenizer"):
            vq.load(tok)


def test_corrupt_model_files(tiny_overfit, tmp_path):
    from mvot.generate import DecodeError, load_model

    _, model_dir, *_ = tiny_overfit
    m = tmp_path / "model"
    shutil.copytree(model_dir, m)
    (m / "mvot.json").write_text("[1, 2]")
    with pytest.raises(DecodeError, match="mvot.json: holds a list"):
        load_model(m)
    weights = m / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(DecodeError, match="cannot load the model weights"):
        load_model(m)


def test_malformed_sweep_trials(raw_params, tiny_generated, tmp_path):
    from mvot.config import ConfigError
    from mvot.report import ReportError, outcome_table, results_table

    sweep = tmp_path / "sweep"
    t = _report_trial(sweep, raw_params, "mvot", 1.0, 0, 50.0, [("A", "A", -0.1), ("B", "A", -0.2)])
    d = sweep / "trials" / t["trial"]
    assert "| mvot" in results_table([sweep]).lower()
    row = json.loads((d / "row.json").read_text())
    for bad, message in (({"seed": "0"}, "seed is '0'; want an integer"), ({"tasks": None}, "tasks is None; want an object"),
                         ({"tasks": {"maze": {"accuracy": "50"}}}, "the scores of maze are not numbers \\('accuracy'\\)")):
        (d / "row.json").write_text(json.dumps(row | bad))
        with pytest.raises(ReportError, match=message):
            results_table([sweep])
    (d / "row.json").write_text(json.dumps(row))
    (d / "params.yaml").unlink()
    with pytest.raises(ConfigError, match="params.yaml: params file not found"):
        results_table([sweep])
    shutil.copy(_params_file(raw_params, tmp_path), d / "params.yaml")
    preds = d / "eval" / "trial" / "maze" / "predictions.jsonl"
    preds.write_text(json.dumps({"uid": "u0", "gold": "A"}) + "\n")
    with pytest.raises(ReportError, match="predictions.jsonl:1: not a prediction record"):
        outcome_table([sweep], tiny_generated[0] / "raw")


def _params_file(raw_params, tmp_path):
    import yaml

    p = tmp_path / "params-copy.yaml"
    p.write_text(yaml.safe_dump(raw_params))
    return p


def test_reports_write_all_or_nothing(raw_params, tmp_path, capsys, monkeypatch):
    sweep = tmp_path / "sweep"
    t = _report_trial(sweep, raw_params, "mvot", 1.0, 0, 50.0, [("A", "A", -0.1)])
    curve = sweep / "trials" / t["trial"] / "runs" / "trial" / "curve.csv"
    curve.parent.mkdir(parents=True)
    curve.write_text("step,loss/total\n10,abc\n")
    plots = tmp_path / "plots"
    assert main(["report", str(sweep), "--plots", str(plots)]) == 1
    err = capsys.readouterr()
    assert "curve.csv: not a training curve" in err.err and "| mvot" not in err.out.lower()
    assert list(plots.iterdir()) == []  # neither the by-size CSV nor a figure, nor the temporary folder
    curve.write_text("step,loss/total\n10,1.5\n20,1.0\n")
    assert main(["report", str(sweep), "--plots", str(plots)]) == 0
    assert sorted(p.name for p in plots.iterdir()) == ["table_by_size.png", "table_by_size_maze.csv", "table_curves.png"]
    capsys.readouterr()
    (tmp_path / "afile").write_text("")
    assert main(["report", str(sweep), "--plots", str(tmp_path / "afile")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert main(["report", str(sweep), "--plots", str(tmp_path / "p2"), "--track"]) == 1
    out = capsys.readouterr()
    assert "unreachable" in out.err and out.out == "" and not (tmp_path / "p2").exists()


def test_combine_with_a_missing_prediction_file_writes_nothing(tiny_params, tmp_path):
    from mvot.config import ConfigError
    from mvot.data import DataError
    from mvot.evaluate import evaluate_combined

    a, b = tiny_params.evaluate.combine
    task = tiny_params.train.tasks[0]
    (tmp_path / "eval" / a / task).mkdir(parents=True)
    (tmp_path / "eval" / a / task / "predictions.jsonl").write_text("")
    with pytest.raises(DataError, match=f"{b}/{task}/predictions.jsonl: missing"):
        evaluate_combined(tiny_params, tmp_path / "eval", tmp_path / "metrics", tmp_path / "plots")
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "plots").exists()
    for run in tiny_params.train.runs:  # every run's predictions there, but --plots names a file
        for t in tiny_params.train.tasks:
            (tmp_path / "eval" / run / t).mkdir(parents=True, exist_ok=True)
            (tmp_path / "eval" / run / t / "predictions.jsonl").write_text("")
    (tmp_path / "plots").write_text("")
    with pytest.raises(ConfigError, match="plots: a file is in the way of folder"):
        evaluate_combined(tiny_params, tmp_path / "eval", tmp_path / "metrics", tmp_path / "plots")
    assert not (tmp_path / "metrics").exists()


def test_corrupt_tracking_record_and_generate_into_a_file(tiny_params, tmp_path):
    from mvot.data import DataError, generate_task
    from mvot.runs import tracking_info
    from mvot.tracking import TrackingError

    assert tracking_info(tmp_path) == {}
    (tmp_path / "tracking.json").write_text('{"run_id": ')
    with pytest.raises(TrackingError, match="tracking.json: corrupt .*delete the file"):
        tracking_info(tmp_path)
    (tmp_path / "afile").write_text("")
    with pytest.raises(DataError, match="afile: is a file, not a folder"):
        generate_task(tiny_params, "maze", tmp_path / "afile", tmp_path / "stats", tmp_path / "sheet")
    assert not (tmp_path / "stats").exists()


def test_tokenizers_are_swapped_in_whole_and_a_blocked_out_fails_before_training(tiny_tokenizer, tiny_generated, tmp_path,
                                                                                   monkeypatch):
    from mvot.tokenizers import run_stage
    from mvot.vq import CheckpointError

    params, tok_dir, _ = tiny_tokenizer
    assert sorted(p.name for p in tok_dir.parent.iterdir()) == ["tokenizer", "tokenizer.json"]  # no staging folder left
    (tmp_path / "afile").write_text("")
    with pytest.raises(CheckpointError, match="afile: a file is in the way"):
        run_stage(params, tiny_generated[0] / "raw", tmp_path / "afile" / "tokenizer", tmp_path / "m" / "tokenizer.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]

    # a failure after the staging folder was made leaves the old tokenizers as they were; so does a kill
    # between the swap's two renames (the old folder waits as tokenizer.old, put back by the next run)
    import mvot.tokenizers

    out = tmp_path / "models" / "tokenizer"
    shutil.copytree(tok_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    out.rename(out.with_name("tokenizer.old"))

    def fails(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(mvot.tokenizers, "train_vq", fails)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_stage(params, tiny_generated[0] / "raw", out, tmp_path / "metrics" / "tokenizer.json")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["tokenizer"] and not (tmp_path / "metrics" / "tokenizer.json").exists()


def test_batch_sizes_below_one_are_refused_by_the_parser(capsys):
    from mvot.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["probe", "m", "--batch-size", "0"])
    assert exit_.value.code == 2 and "expected a whole number of at least 1; got '0'" in capsys.readouterr().err
