"""Losses of MVoT training, as pure functions of tensors.

Token discrepancy loss (DESIGN.md 2.4). With codebook embeddings e_1..e_N, the N x N
distance matrix D[g, n] = d(e_g, e_n) (a *distance*: 0 on the diagonal), and at an image
position i with true code g_i the model's distribution P_i over the N image codes only
(softmax of the image-code logits, the rest of the vocabulary left out):

    L_D = reduce_i  sum_n D[g_i, n] * P_i[n]        (expected distance from the true code)

``reduce`` is ``mean`` (the released code) or ``sum`` (the paper's formula); ``d`` is
Euclidean (released code) or MSE (paper), chosen when D is built (``mvot.vq.distance_matrix``).
The loss is zero when all mass is on the true code, and only image-position logits of
image codes receive gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_discrepancy_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    image_mask: torch.Tensor,
    distance: torch.Tensor,
    image_offset: int,
    reduction: str = "mean",
) -> torch.Tensor:
    """L_D over the positions where ``image_mask`` is true.

    logits: (B, T, V) next-token logits; targets: (B, T) the ids they predict;
    image_mask: (B, T) bool, true where the target is an image code; distance: (N, N);
    image codes are vocabulary ids ``image_offset .. image_offset + N - 1``.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    n = distance.shape[0]
    sel = logits[image_mask][:, image_offset : image_offset + n]  # (M, N)
    if sel.shape[0] == 0:
        return logits.sum() * 0.0  # no image position: zero, still part of the graph
    probs = F.softmax(sel.float(), dim=-1)  # (M, N): softmax over image codes only
    true = targets[image_mask] - image_offset  # (M,)
    per_position = (distance[true].to(probs.dtype) * probs).sum(-1)  # (M,) expected distance
    return per_position.mean() if reduction == "mean" else per_position.sum()


def token_discrepancy_loss_reference(logits, targets, image_mask, distance, image_offset, reduction="mean"):
    """The same loss, one position at a time (slow; for tests)."""
    n = distance.shape[0]
    terms = []
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if not bool(image_mask[b, t]):
                continue
            p = torch.softmax(logits[b, t, image_offset : image_offset + n].float(), dim=0)
            g = int(targets[b, t]) - image_offset
            terms.append(sum(distance[g, k] * p[k] for k in range(n)))
    if not terms:
        return logits.sum() * 0.0
    total = torch.stack(terms)
    return total.mean() if reduction == "mean" else total.sum()
