import json

import numpy as np
import pytest
import torch

from mvot import vq
from mvot.render import Renderer
from mvot.tokenizers import PatchCoder, augment_codes, codebook_usage, collect_patches, train_vq
from tests.conftest import draw


def test_distance_matrix_by_hand():
    # 4 codes in 2-D: (0,0), (3,4), (0,1), (1,0)
    cb = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0], [1.0, 0.0]])
    d = vq.distance_matrix(cb, "euclidean")
    assert d[0].tolist() == pytest.approx([0.0, 5.0, 1.0, 1.0])
    assert d[2, 3].item() == pytest.approx(2**0.5)
    assert torch.equal(d, d.T)
    m = vq.distance_matrix(cb, "mse")  # squared distance / dim
    assert m[0].tolist() == pytest.approx([0.0, 12.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="unknown distance"):
        vq.distance_matrix(cb, "cosine")


def test_shapes_and_patch_independence():
    torch.manual_seed(0)
    model = vq.PatchVQ(vq.VQSpec(patch_px=8, codebook_size=32, code_dim=8, hidden=32, depth=1)).eval()
    images = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    codes = model.encode(images)
    assert codes.shape == (3, 16) and codes.dtype == np.int64
    out = model.decode(codes, 4)
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    # deterministic, and a patch gets the same code alone or inside any image
    assert np.array_equal(model.encode(images), codes)
    alone = model.encode(vq.patches_of(images, 8))
    assert np.array_equal(alone.reshape(3, 16), codes)
    assert np.array_equal(model.decode(codes[:1], 4), out[:1])


def test_reconstruction_loss_falls_within_a_few_steps(params, raw_params):
    from mvot.config import parse_params
    from tests.conftest import tiny_tokenizer_raw

    p = parse_params(tiny_tokenizer_raw(raw_params) | {})
    r = Renderer.from_params(p, "frozenlake")
    frames = np.stack([r.render_array(s) for seed in range(6) for s in draw("frozenlake", p, seed).states])
    patches = np.unique(vq.patches_of(frames, 16).reshape(-1, 16 * 16 * 3), axis=0).reshape(-1, 16, 16, 3)
    losses = []
    cfg = p.tokenizer.model_copy(update={"steps": 80})
    train_vq(patches, cfg, seed=0, log=lambda m, s: losses.append(m["vq/recon_mse"]))
    assert losses[-1] < 0.2 * losses[0]


def test_tiny_tokenizer_fidelity_and_usage(tiny_tokenizer, tiny_generated):
    from mvot.data import iter_images, read_split
    from mvot.tokenizers import frame_array

    params, tok_dir, metrics = tiny_tokenizer
    fid = metrics["fidelity"]
    assert fid["frozenlake"]["image_fidelity"] == 1.0 and fid["minibehavior"]["image_fidelity"] >= 0.9
    assert fid["all"]["cell_fidelity"] >= 0.97  # tiny data: some val cells are drawings train never showed
    # every val image drawn only with cell drawings that train showed comes back exactly;
    # the misses above are images with a drawing train never had (a reach frame on a rare object;
    # a tiny tokenizer's maze decoder is not this exact, the full one is: metrics/tokenizer.json)
    root, _ = tiny_generated
    seen = {p.tobytes() for p in collect_patches(root / "raw", 16)[0]}
    coder = PatchCoder(vq.load(tok_dir))
    for task in ("minibehavior", "frozenlake"):
        r = Renderer.from_params(params, task)
        insts = {i.uid: i for i in read_split(root / "raw" / task, "val")}
        n_seen = 0
        for name, img in iter_images(root / "raw" / task, "val"):
            frame = frame_array(img)
            if not all(p.tobytes() in seen for p in vq.patches_of(frame[None], 16)):
                continue
            n_seen += 1
            uid, k = name.rsplit("/", 1)
            back = coder.decode(coder.encode(frame[None]), frame.shape[0] // 16)[0]
            assert r.parse(back) == insts[uid].states[int(k.removesuffix(".png"))], name
        assert n_seen >= 20, task
    cb = metrics["codebook"]
    assert cb["used_codes"] == metrics["distinct_train_patches"]  # one code per distinct cell drawing
    assert cb["used_codes"] + cb["unused_codes"] == cb["size"]
    assert cb["roundtrip_stable_share"] == 1.0
    book = vq.load_codebook(tok_dir)
    n = cb["size"]
    assert book["embeddings"].shape[0] == n and book["distance_euclidean"].shape == (n, n)


def test_spearman_and_geometry_by_hand():
    assert vq.spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert vq.spearman(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1.0)
    assert vq.spearman(np.array([1, 1, 2]), np.array([5, 5, 9])) == pytest.approx(1.0)  # ties share a rank
    assert np.isnan(vq.spearman(np.array([1, 1, 1]), np.array([1, 2, 3])))
    # four codes on a line at 0, 1, 3, 7; pixels that order the pairs the same way
    emb = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    g = vq.geometry(emb, torch.tensor([[0.0], [10.0], [30.0], [70.0]]))
    assert g == {"codes": 4, "duplicate_pairs": 0, "nearest_distance": 1.0, "median_distance": 3.5,
                 "spearman": pytest.approx(1.0), "nearest_agree": 1.0}
    # codes 2 and 3 decode to the same patch: one duplicate pair; code 2's nearest in pixels is
    # now code 3, in embeddings still code 1 (the only disagreement of the four)
    g = vq.geometry(emb, torch.tensor([[0.0], [10.0], [30.0], [30.0]]))
    assert g["duplicate_pairs"] == 1 and g["nearest_agree"] == 0.75
    # pixels in the reverse order of embeddings: distance ranks disagree
    g = vq.geometry(emb, torch.tensor([[70.0], [30.0], [10.0], [0.0]]))
    assert g["spearman"] < 0.5 and g["nearest_agree"] < 1.0
    with pytest.raises(ValueError, match="at least 2 codes"):
        vq.geometry(emb[:1], emb[:1])


def test_codebook_geometry_of_a_trained_tokenizer(tiny_tokenizer, capsys):
    from mvot.cli import main

    _, tok_dir, metrics = tiny_tokenizer
    g = vq.codebook_geometry(vq.load(tok_dir))
    assert g["codes"] == metrics["codebook"]["used_codes"] and g["codebook_size"] == metrics["codebook"]["size"]
    assert g["duplicate_pairs"] == 0  # one code per distinct drawing, each decoding to its own patch
    assert g["spearman"] > 0.5  # a trained VQ puts look-alike patches near each other
    assert 0 < g["nearest_distance"] <= g["median_distance"]
    assert main(["codebook", str(tok_dir)]) == 0
    out = capsys.readouterr().out
    assert f"| {tok_dir} | 16 | {g['codes']} | {g['codebook_size']} | 0 |" in out


def test_usage_and_augmentation_by_hand():
    u = codebook_usage(np.array([0, 1]), np.array([1.0, 1.0]), 4)
    assert u == {"perplexity": pytest.approx(2.0), "used_codes": 2, "unused_codes": 2}
    roundtrip = np.array([1, 2, 2, 0])  # 0 -> 1 -> 2 -> 2
    aug = augment_codes(np.array([[0, 3]]), roundtrip, 3)
    assert aug.shape == (1, 4, 2)
    assert aug[0].tolist() == [[0, 3], [1, 0], [2, 1], [2, 2]]


def test_coder_cache_is_exact(tiny_tokenizer, tiny_generated):
    params, tok_dir, _ = tiny_tokenizer
    model = vq.load(tok_dir)
    coder = PatchCoder(model)
    r = Renderer.from_params(params, "maze")
    frames = np.stack([r.render_array(s) for s in draw("maze", params, 4).states])
    assert np.array_equal(coder.encode(frames), model.encode(frames))
    assert np.array_equal(coder.encode(frames), coder.encode(frames))


def test_corrupt_checkpoints_give_clear_errors(tiny_tokenizer, tmp_path):
    import shutil

    _, tok_dir, _ = tiny_tokenizer
    d = tmp_path / "tok"
    shutil.copytree(tok_dir, d)
    blob = (d / vq.WEIGHTS).read_bytes()
    (d / vq.WEIGHTS).write_bytes(blob[: len(blob) // 3])
    with pytest.raises(vq.CheckpointError, match="corrupt or truncated weights"):
        vq.load(d)
    (d / vq.WEIGHTS).write_bytes(blob)
    spec = json.loads((d / vq.CONFIG).read_text())
    (d / vq.CONFIG).write_text(json.dumps(spec | {"hidden": spec["hidden"] * 2}))
    with pytest.raises(vq.CheckpointError, match="weights do not match vq.json"):
        vq.load(d)
    (d / vq.CONFIG).write_text("not json")
    with pytest.raises(vq.CheckpointError, match="unreadable tokenizer config"):
        vq.load(d)
    (d / vq.CONFIG).unlink()
    with pytest.raises(vq.CheckpointError, match="missing"):
        vq.load(d)
    (d / vq.CODEBOOK).write_bytes(b"\x00" * 10)
    with pytest.raises(vq.CheckpointError, match="corrupt or truncated"):
        vq.load_codebook(d)


def test_collect_patches_counts(tiny_generated):
    root, _ = tiny_generated
    patches, counts = collect_patches(root / "raw", 16, tasks=["frozenlake"])
    assert patches.shape[1:] == (16, 16, 3)
    assert len(patches) <= 9  # 4 tiles x agent or not, plus the outside grey
    assert len({p.tobytes() for p in patches}) == len(patches) and counts.min() >= 1
