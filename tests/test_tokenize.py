import numpy as np
import pytest

from mvot import data
from mvot.tokenize import TraceEncoder, load_split, tokenize_task
from mvot.tokenizers import load_text_tokenizer
from mvot.traces import VARIANTS, build_with
from mvot.vocab import Vocab
from tests.conftest import TASKS


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory, tiny_tokenizer, tiny_generated):
    params, tok_dir, _ = tiny_tokenizer
    root, _ = tiny_generated
    out = tmp_path_factory.mktemp("tokens")
    stats = {t: tokenize_task(params, t, root / "raw", tok_dir, out / "tokens", out / "stats") for t in TASKS}
    return params, tok_dir, root, out, stats


def test_decoding_gives_back_the_trace(tokenized):
    params, tok_dir, root, out, _ = tokenized
    vocab = Vocab.load(tok_dir / "vocab.json")
    enc = TraceEncoder(vocab, load_text_tokenizer(tok_dir))
    from mvot import vq
    from mvot.tokenizers import PatchCoder

    coder = PatchCoder(vq.load(tok_dir))
    for task in TASKS:
        insts = data.read_split(root / "raw" / task, "val")
        for variant in VARIANTS:
            ts = load_split(out / "tokens", task, "val", variant)
            assert len(ts) == len(insts)
            for i, inst in enumerate(insts[:4]):
                toks, sup, img = ts.sequence(i)
                trace = build_with(inst, variant, params.tokenize)
                parts = enc.decode(toks, task)
                text = "".join(p for k, p in parts if k == "text")
                assert text == "".join(p.text for p in trace.parts if not p.is_image)
                got_codes = [p for k, p in parts if k == "image"]
                want = [coder.encode(np.asarray(data.load_image(root / "raw" / task, "val", inst.uid, s))[None])[0] for s in trace.images]
                assert len(got_codes) == len(want) and all(np.array_equal(a, b) for a, b in zip(got_codes, want, strict=True))
                assert img.sum() == len(want) * params.tokens_per_image(task)
                assert toks[0] == vocab.bos_id and toks[-1] == vocab.eos_id and sup[-1]
                # the prompt (question + initial image) is never supervised; every output part is
                first_out = int(np.argmax(sup))
                assert not sup[:first_out].any() and sup[first_out:].all()


def test_mvot_supervises_images_and_shares_the_prompt(tokenized):
    params, _, _, out, stats = tokenized
    for task in TASKS:
        mv = load_split(out / "tokens", task, "train", "mvot")
        di = load_split(out / "tokens", task, "train", "direct")
        toks, sup, img = mv.sequence(0)
        assert (sup & img).sum() > 0  # drawn thoughts are targets
        pos = np.load(out / "tokens" / task / "train" / "initial_pos.npy")
        t2, _, _ = di.sequence(0)
        assert np.array_equal(toks[: pos[0]], t2[: pos[0]])
        aug = np.load(out / "tokens" / task / "train" / "initial_codes.npy")
        k = params.tokenizer.augment_max_k
        assert aug.shape == (len(mv), k + 1, params.tokens_per_image(task))
        assert np.array_equal(aug[0, 0], toks[pos[0] : pos[0] + params.tokens_per_image(task)] - Vocab.load(
            tokenized[1] / "vocab.json").image_offset)
        s = stats[task]["splits"]["train"]
        assert s["mvot"]["mean_len"] > s["cot"]["mean_len"] > s["direct"]["mean_len"]


def test_text_tokenizer_is_lossless_and_loads_in_transformers(tiny_tokenizer):
    from transformers import PreTrainedTokenizerFast

    _, tok_dir, _ = tiny_tokenizer
    tok = load_text_tokenizer(tok_dir)
    text = "Task: Maze Navigation Simulation\nGo down. \nResponse: Action sequence finished. The answer is D."
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"), bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")
    assert fast.decode(fast(text, add_special_tokens=False)["input_ids"]) == text
    assert fast.pad_token_id == Vocab.load(tok_dir / "vocab.json").pad_id


def test_missing_or_corrupt_token_arrays(tokenized, tmp_path):
    import shutil

    _, _, _, out, _ = tokenized
    d = tmp_path / "tokens"
    shutil.copytree(out / "tokens" / "maze", d / "maze")
    with pytest.raises(data.DataError, match="missing token arrays"):
        load_split(d, "maze", "val", "nonexistent")
    np.save(d / "maze" / "val" / "mvot" / "image.npy", np.zeros(3, bool))
    with pytest.raises(data.DataError, match="disagree in length"):
        load_split(d, "maze", "val", "mvot")
    (d / "maze" / "val" / "mvot" / "tokens.npy").write_bytes(b"")  # a shard cut off at zero bytes
    with pytest.raises(data.DataError, match="corrupt token arrays .*dvc repro -f tokenize"):
        load_split(d, "maze", "val", "mvot")


def test_tokenizer_run_is_tracked_in_mlflow(tiny_generated, raw_params, tmp_path):
    from mlflow.tracking import MlflowClient

    from mvot.config import parse_params
    from mvot.tokenizers import run_stage
    from mvot.tracking import start_run
    from tests.conftest import tiny_tokenizer_raw

    raw = tiny_tokenizer_raw(raw_params)
    raw["tokenizer"]["steps"] = 20
    params = parse_params(raw)
    root, _ = tiny_generated
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with start_run("tokenizer", "test", root=tmp_path, uri=uri) as tracker:
        run_stage(params, root / "raw", tmp_path / "tok", tmp_path / "m.json", tracker)
    run = MlflowClient(uri).get_run(tracker.run_id)
    assert run.data.params["tokenizer.codebook_size"] == "512"
    assert "fidelity/all/cell_fidelity" in run.data.metrics and "codebook/perplexity" in run.data.metrics
    arts = {a.path for a in MlflowClient(uri).list_artifacts(tracker.run_id)}
    assert {"reconstructions.png", "tokenizer"} <= arts
