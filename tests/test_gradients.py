import pytest
import torch


def test_the_parts_add_up_to_the_training_loss_gradient(tiny_overfit):
    """g_text + g_image is the gradient of L_C as training computes it, and adding w g_D gives L_C + w L_D's."""
    import numpy as np

    from mvot import vq
    from mvot.generate import load_model
    from mvot.gradients import batch_gradients, flat_grad
    from mvot.train import collate, compute_losses, load_token_data, model_inputs, step_indexer

    _, model_dir, _, tok, _ = tiny_overfit
    lm = load_model(model_dir, "cpu")
    tok_dir = model_dir / "tokenizer"
    distance = vq.load_codebook(tok_dir)["distance_euclidean"]
    data = load_token_data(tok, lm.meta["tasks"], "train", "mvot",
                           step_indexer(tok_dir, lm.vocab, lm.model))
    batch = collate(data, np.arange(4), lm.vocab, None)
    w, clip = 0.7, 0.05

    def reference(weight):
        logits = lm.model(**model_inputs(batch)).logits.float()
        loss, _ = compute_losses(logits, batch, "mvot", weight, distance, lm.vocab, 0.0, "mean")
        return flat_grad(loss, [p for p in lm.model.parameters() if p.requires_grad])

    g0, g1 = reference(0.0), reference(w)
    got = batch_gradients(lm.model, batch, distance, lm.vocab.image_offset, w, clip)
    assert got.norm_without == pytest.approx(float(g0.norm()), rel=1e-4)
    assert got.norm_with == pytest.approx(float(g1.norm()), rel=1e-4)
    assert got.ld == pytest.approx(float((g1 - g0).norm()) / w, rel=1e-3)
    assert got.clip_without == pytest.approx(min(1.0, clip / got.norm_without))
    assert got.clip_with == pytest.approx(min(1.0, clip / got.norm_with))
    assert got.text_step_ratio == pytest.approx(got.clip_with / got.clip_without)
    assert got.text > 0 and got.image > 0 and got.ld > 0


def test_ld_pulls_the_pictures_the_way_the_image_ce_does_and_the_cli_prints_a_table(tiny_overfit, tmp_path, capsys):
    """At initialisation (near-uniform code probabilities) both losses raise the true code:
    their gradients point the same way; the CLI prints one line per model and refuses bad input."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    import mvot.model  # noqa: F401
    from mvot.cli import main
    from mvot.gradients import GradientError, gradient_shares

    _, model_dir, _, tok, _ = tiny_overfit
    fresh = tmp_path / "fresh"
    shutil.copytree(model_dir, fresh)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(fresh)).save_pretrained(fresh)
    report = gradient_shares(fresh, tok, batches=2, batch_tokens=4096)
    rows = report.batches
    assert 1 <= len(rows) <= 2
    assert report.adam_text_step_ratio > 0
    assert gradient_shares(fresh, tok, batches=2, batch_tokens=4096, ld_weight=0.0).adam_text_step_ratio == pytest.approx(1.0)
    assert all(r.cos_ld_image > 0 for r in rows)
    assert all(0 < r.clip_with <= 1 and 0 < r.clip_without <= 1 for r in rows)

    assert main(["grads", str(model_dir), str(fresh), "--tokens", str(tok), "--batches", "1", "--batch-tokens", "4096"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| model | batches | |g_text| |") and len(out) == 4
    assert out[2].startswith(f"| {model_dir} | 1 |") and out[3].startswith(f"| {fresh} | 1 |")

    with pytest.raises(GradientError, match="batches must be at least 1"):
        gradient_shares(model_dir, tok, batches=0)
    assert main(["grads", str(model_dir), "--tokens", str(tmp_path / "nowhere")]) == 1
    assert "dvc repro tokenize" in capsys.readouterr().err
    assert main(["grads", str(model_dir), "--tokens", str(tok), "--batch-tokens", "8"]) == 1
    assert "below the longest sequence" in capsys.readouterr().err


def test_adam_step_ratio():
    """The text's Adam step shrinks where L_D adds to a parameter's squared gradient, weighted by the text's gradient there."""
    from mvot.gradients import adam_step_ratio

    g = torch.tensor([1.0, -2.0, 0.5])
    assert adam_step_ratio(g**2, g**2, g.abs()) == pytest.approx(1.0)  # no L_D
    assert adam_step_ratio(g**2, (2 * g) ** 2, g.abs()) == pytest.approx(0.5, rel=1e-6)  # L_D doubles every gradient
    assert adam_step_ratio(g**2, (-g) ** 2, g.abs()) == pytest.approx(1.0)  # L_D flips it: same magnitude
    # only the first parameter gets L_D (4x its squared gradient); the text moves only the second
    assert adam_step_ratio(g**2, g**2 * torch.tensor([4.0, 1, 1]), torch.tensor([0.0, 1, 0])) == pytest.approx(1.0)
    assert adam_step_ratio(g**2, g**2 * torch.tensor([4.0, 1, 1]), torch.tensor([1.0, 0, 0])) == pytest.approx(0.5, rel=1e-6)


def test_ld_through_the_head_has_the_same_value_and_reaches_only_the_output_layer(tiny_overfit):
    """train.ld.through = head: L_D is the same number, its gradient is zero everywhere but
    the output layer (so the text's AdamW statistics in the shared layers are left alone),
    and on the output layer it equals the full L_D's gradient there."""
    import numpy as np

    from mvot import vq
    from mvot.generate import load_model
    from mvot.gradients import GradientError, _parts, batch_gradients
    from mvot.losses import token_discrepancy_loss
    from mvot.train import (
        HeadInput,
        collate,
        compute_losses,
        load_token_data,
        model_inputs,
        step_indexer,
    )

    _, model_dir, _, tok, _ = tiny_overfit
    lm = load_model(model_dir, "cpu")
    tok_dir = model_dir / "tokenizer"
    distance = vq.load_codebook(tok_dir)["distance_euclidean"]
    data = load_token_data(tok, lm.meta["tasks"], "train", "mvot", step_indexer(tok_dir, lm.vocab, lm.model))
    batch = collate(data, np.arange(4), lm.vocab, None)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    head = lm.model.get_output_embeddings()
    is_head = torch.cat([torch.full((p.numel(),), any(p is q for q in head.parameters())) for p in params])

    _, _, ld_model = _parts(lm.model, batch, distance, lm.vocab.image_offset, "mean", "model")
    _, _, ld_head = _parts(lm.model, batch, distance, lm.vocab.image_offset, "mean", "head")
    assert float(ld_model[~is_head].norm()) > 0 and float(ld_model[is_head].norm()) > 0
    assert float(ld_head[~is_head].abs().max()) == 0.0
    assert torch.allclose(ld_head[is_head], ld_model[is_head], atol=1e-6)

    hook = HeadInput(lm.model)
    logits = lm.model(**model_inputs(batch)).logits.float()
    via_head = hook.ld_logits(batch)
    hook.remove()
    image = batch["supervised"] & batch["image"]
    _, terms = compute_losses(logits, batch, "mvot", 1.0, distance, lm.vocab, 0.0, "mean", ld_logits=via_head)
    full = token_discrepancy_loss(logits, batch["targets"], image, distance, lm.vocab.image_offset)
    assert terms["loss/ld"] == pytest.approx(float(full.detach()), rel=1e-5)
    assert not head._forward_hooks  # removed: a saved or reused model carries no hook

    got = batch_gradients(lm.model, batch, distance, lm.vocab.image_offset, 1.0, 1.0, through="head")
    assert got.ld == pytest.approx(float(ld_head.norm()), rel=1e-4)
    with pytest.raises(GradientError, match="through must be 'model' or 'head'"):
        _parts(lm.model, batch, distance, lm.vocab.image_offset, "mean", "trunk")
