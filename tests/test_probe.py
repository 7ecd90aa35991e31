import numpy as np
import pytest

from tests.conftest import OVERFIT_N


def test_probe_rebuilds_the_training_sequences(tiny_overfit):
    from mvot import vq
    from mvot.data import read_split
    from mvot.generate import load_model
    from mvot.probe import rebuild
    from mvot.tokenize import TraceEncoder, instance_codes, load_split
    from mvot.tokenizers import PatchCoder

    _, model_dir, raw, tok, _ = tiny_overfit
    lm = load_model(model_dir, "cpu")
    insts = read_split(raw / "frozenlake", "test")
    codes = instance_codes(PatchCoder(vq.load(model_dir / "tokenizer")), raw / "frozenlake", "test", insts[1:3])
    assert set(codes) == {i.uid for i in insts[1:3]}  # only the instances asked for
    seqs = rebuild(TraceEncoder(lm.vocab, lm.text_tokenizer), lm.meta, "mvot", insts[1:3], codes)
    ts = load_split(tok, "frozenlake", "test", "mvot")
    for k, s in enumerate(seqs, 1):
        t, sup, img = ts.sequence(k)
        assert np.array_equal(s.tokens, t) and np.array_equal(s.supervised, sup) and np.array_equal(s.image, img)


def test_probe_tells_a_memorising_model_from_an_untrained_one(tiny_overfit, tmp_path, capsys):
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    from mvot.cli import main
    from mvot.probe import ProbeError, probe

    _, model_dir, raw, _, _ = tiny_overfit
    rows = probe(model_dir, raw, splits=("test",), per_outcome=50)
    assert sum(r.instances for r in rows) == OVERFIT_N and {r.split for r in rows} == {"test"}
    right = sum(r.text_right for r in rows) / sum(r.text_tokens for r in rows)
    assert right >= 0.9 and sum(r.steps for r in rows) > 0
    assert sum(r.steps_whole for r in rows) >= sum(r.steps for r in rows) / 2
    assert all(r.text_whole + sum(r.first_errors.values()) == r.instances for r in rows)

    fresh = tmp_path / "fresh"  # same architecture and tokenizer, weights at initialisation
    shutil.copytree(model_dir, fresh)
    import mvot.model  # noqa: F401

    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(fresh)).save_pretrained(fresh)
    cold = probe(fresh, raw, splits=("test",), per_outcome=50)
    assert sum(r.text_whole for r in cold) == 0 and sum(r.steps_whole for r in cold) == 0
    assert sum(r.text_right for r in cold) / sum(r.text_tokens for r in cold) < right

    assert main(["probe", str(model_dir), "--raw", str(raw), "--split", "test", "--per-outcome", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| split | outcome | text whole |") and "| test |" in out
    with pytest.raises(ProbeError, match="not maze"):
        probe(model_dir, raw, task="maze")
    assert main(["probe", str(model_dir), "--raw", str(raw), "--task", "maze"]) == 1
    assert "not maze" in capsys.readouterr().err
