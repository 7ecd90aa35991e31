"""Where a training step's gradient comes from: the text, the pictures, and L_D.

MVoT's loss is ``L_C + w L_D`` (DESIGN.md 2.4), and one global gradient-norm clip
(``train.clip``) scales the whole update. L_C is an average over every supervised
position, so it splits exactly into a text part and an image part,

    L_C = (sum_text ce + sum_image ce) / (n_text + n_image) = L_text + L_image,

and the step's gradient is ``g_text + g_image + w g_D``. This module measures the three
parts separately on training batches of a model (its own checkpoint, or the model a run
starts from) and what the clip then does to each: with ``c = min(1, clip / |g|)``, the
text moves by ``c |g_text|``, so adding L_D changes the text's step by the ratio
``c(with L_D) / c(without)``. The optimiser is AdamW, which divides each parameter's
step by the root of its running mean squared gradient, so L_D can also shrink the text's
step where the clip does nothing: over the measured batches, with ``S0_j`` and ``S1_j``
the mean squared gradient of parameter ``j`` without and with ``w L_D`` and ``T_j`` the
mean ``|g_text,j|``, the text's Adam step changes by about

    sum_j T_j (sqrt(S0_j) + eps) / (sqrt(S1_j) + eps)  /  sum_j T_j

(1: not at all; 0.5: halved), a steady-state estimate that leaves out momentum. Those are
the questions ``mvot grads`` answers: does L_D's gradient take the text's share of the
update, and does it pull the pictures the same way as the image cross-entropy (cosine of
``g_D`` and ``g_image``)?
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mvot import vq
from mvot.errors import MvotError


class GradientError(MvotError, ValueError):
    """The measurement cannot run; the message says why."""


@dataclass
class BatchGradients:
    """One batch: the norms of the three gradient parts, their cosines, and the clip factors."""

    text: float  # |g_text|
    image: float  # |g_image|
    ld: float  # |g_D| (weight 1)
    cos_ld_image: float
    cos_ld_text: float
    norm_without: float  # |g_text + g_image|
    norm_with: float  # |g_text + g_image + w g_D|
    clip_without: float  # min(1, clip / norm_without)
    clip_with: float

    @property
    def text_step_ratio(self) -> float:
        """How much the text's clipped step changes when L_D is added (1: not at all)."""
        return self.clip_with / self.clip_without


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else 0.0


@dataclass
class GradientReport:
    """The batches of one model, and the estimated change of the text's AdamW step when L_D is added."""

    batches: list[BatchGradients]
    adam_text_step_ratio: float


def flat_grad(loss: torch.Tensor, params: list[torch.Tensor], retain_graph: bool = False) -> torch.Tensor:
    """d loss / d params as one vector (zeros for parameters the loss does not reach)."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params, strict=True)])


def _parts(model, batch: dict, distance: torch.Tensor, image_offset: int, reduction: str, through: str = "model") -> list[torch.Tensor]:
    """The flat gradients of L_text, L_image and L_D (weight 1) on one batch; with ``through``
    = ``head``, L_D is taken as ``train.ld.through: head`` takes it (its gradient reaches the
    output layer only)."""
    from mvot.train import HeadInput, discrepancy, image_targets, model_inputs

    targets = batch["targets"]
    image_pos = image_targets(batch, "mvot")
    text_pos = batch["supervised"] & ~image_pos
    if not bool(image_pos.any()) or not bool(text_pos.any()):
        raise GradientError("a batch has no image (or no text) positions to supervise: measure on MVoT sequences")
    n = int(text_pos.sum()) + int(image_pos.sum())
    params = [p for p in model.parameters() if p.requires_grad]
    if through not in ("model", "head"):
        raise GradientError(f"through must be 'model' or 'head', got {through!r}")
    head = HeadInput(model) if through == "head" else None
    try:
        logits = model(**model_inputs(batch)).logits.float()
        ld = discrepancy(logits, targets, image_pos, distance, image_offset, reduction, head.ld_logits(batch) if head else None)
    finally:
        if head is not None:
            head.remove()
    ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    terms = [(ce * text_pos).sum() / n, (ce * image_pos).sum() / n, ld]
    return [flat_grad(loss, params, retain_graph=k < len(terms) - 1) for k, loss in enumerate(terms)]


def _summary(g_text, g_image, g_ld, ld_weight: float, clip: float) -> BatchGradients:
    without = g_text + g_image
    norm0, norm1 = float(without.norm()), float((without + ld_weight * g_ld).norm())
    return BatchGradients(
        text=float(g_text.norm()), image=float(g_image.norm()), ld=float(g_ld.norm()),
        cos_ld_image=_cos(g_ld, g_image), cos_ld_text=_cos(g_ld, g_text),
        norm_without=norm0, norm_with=norm1,
        clip_without=min(1.0, clip / max(norm0, 1e-12)), clip_with=min(1.0, clip / max(norm1, 1e-12)),
    )


def batch_gradients(model, batch: dict, distance: torch.Tensor, image_offset: int, ld_weight: float, clip: float,
                    reduction: str = "mean", through: str = "model") -> BatchGradients:
    """The three gradient parts of one collated MVoT batch (:func:`mvot.train.collate`)."""
    return _summary(*_parts(model, batch, distance, image_offset, reduction, through), ld_weight, clip)


def gradient_shares(model_dir: str | Path, tokens_dir: str | Path, split: str = "train", batches: int = 8,
                    batch_tokens: int = 8192, ld_weight: float = 1.0, clip: float = 1.0, distance: str = "euclidean",
                    reduction: str = "mean", seed: int = 0, device: str | None = "cpu", eps: float = 1e-8,
                    through: str = "model") -> GradientReport:
    """The gradient parts of ``model_dir`` on ``batches`` length-bucketed batches of the MVoT
    sequences of its tasks in ``tokens_dir`` (whatever the model's own variant: a CoT model is
    where an MVoT run from it starts)."""
    from mvot.generate import load_model
    from mvot.train import collate, load_token_data, make_batches, step_indexer

    if batches < 1:
        raise GradientError(f"batches must be at least 1, got {batches}")
    if ld_weight < 0 or clip <= 0:
        raise GradientError(f"need ld_weight >= 0 and clip > 0, got {ld_weight} and {clip}")
    lm = load_model(model_dir, device)
    tasks = lm.meta.get("tasks") or []
    if not tasks:
        raise GradientError(f"{model_dir}/mvot.json names no tasks; give a model directory written by `mvot train`")
    tok_dir = Path(model_dir) / "tokenizer"
    codebook = vq.load_codebook(tok_dir)
    key = f"distance_{distance}"
    if key not in codebook:
        raise GradientError(f"unknown L_D distance {distance!r}; the codebook has: "
                            f"{', '.join(k.removeprefix('distance_') for k in codebook if k.startswith('distance_'))}")
    dev = next(lm.model.parameters()).device
    dist = codebook[key].to(dev)
    indexer = step_indexer(tok_dir, lm.vocab, lm.model)
    try:
        data = load_token_data(tokens_dir, tasks, split, "mvot", indexer)
    except (FileNotFoundError, OSError) as exc:
        raise GradientError(f"{tokens_dir}: no MVoT token arrays of {', '.join(tasks)} / {split} ({exc}); run `dvc repro tokenize`") from None
    if data.lengths.max() > batch_tokens:
        raise GradientError(f"batch_tokens = {batch_tokens} is below the longest sequence ({data.lengths.max()} tokens)")
    chosen = make_batches(data.lengths, batch_tokens, np.random.default_rng([seed, 0]))[:batches]
    lm.model.train()  # as in training (dropout, if the model has any)
    out, s0, s1, t = [], 0.0, 0.0, 0.0
    for idx in chosen:
        batch = {k: v.to(dev) for k, v in collate(data, idx, lm.vocab, None).items()}
        g_text, g_image, g_ld = _parts(lm.model, batch, dist, lm.vocab.image_offset, reduction, through)
        out.append(_summary(g_text, g_image, g_ld, ld_weight, clip))
        s0 = s0 + (g_text + g_image) ** 2
        s1 = s1 + (g_text + g_image + ld_weight * g_ld) ** 2
        t = t + g_text.abs()
    return GradientReport(out, adam_step_ratio(s0 / len(chosen), s1 / len(chosen), t, eps))


def adam_step_ratio(s0: torch.Tensor, s1: torch.Tensor, text: torch.Tensor, eps: float = 1e-8) -> float:
    """The text's AdamW step with L_D over without (module docstring): per-parameter mean squared
    gradients ``s0`` (without) and ``s1`` (with), averaged with weights ``text`` (mean |g_text|)."""
    ratio = (s0.sqrt() + eps) / (s1.sqrt() + eps)
    return float((text * ratio).sum() / text.sum().clamp_min(1e-30))


COLUMNS = ("|g_text|", "|g_image|", "|g_D|", "cos(g_D, g_image)", "cos(g_D, g_text)", "|g| without L_D", "|g| with w L_D",
           "clip factor without", "clip factor with", "text step with / without: clip", "text step with / without: Adam")


def _row(report: GradientReport) -> list[float]:
    vals = [[r.text, r.image, r.ld, r.cos_ld_image, r.cos_ld_text, r.norm_without, r.norm_with, r.clip_without, r.clip_with,
             r.text_step_ratio] for r in report.batches]
    return np.mean(np.array(vals), axis=0).tolist() + [report.adam_text_step_ratio]


def gradient_table(results: dict[str, GradientReport]) -> str:
    """Markdown: one line per model, each column the mean over its batches (the last: over all of them)."""
    lines = ["| model | batches | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for name, report in results.items():
        lines.append(f"| {name} | {len(report.batches)} | " + " | ".join(f"{v:.3g}" for v in _row(report)) + " |")
    return "\n".join(lines)
