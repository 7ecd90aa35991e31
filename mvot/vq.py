"""The image tokenizer: a patch VQ-VAE whose quantizer is vector-quantize-pytorch's.

An image of side S is cut into (S / patch_px)^2 square patches; each patch is encoded to a
``code_dim`` vector by a patch embedding (a linear map of the patch's pixels, as in
ViT-VQGAN) and a few residual MLP blocks, quantized to the nearest of ``codebook_size``
codes, and decoded back to a patch by the mirror image. Every layer acts on one patch, so
tokens line up with grid cells (cells are a whole number of patches), encoding is the
same whatever the image around a patch, and a generated code decodes to a clean patch
whatever its neighbours.

The quantizer is ``vector_quantize_pytorch.VectorQuantize``: EMA codebook updates, k-means
initialisation and replacement of dead codes (codes unused for a while are re-seeded from
the batch), which keeps the codebook in use. Frozen after training: the codebook
embeddings (a plain ``(N, D)`` tensor) and the N x N code distance matrix are exported for
the token discrepancy loss (DESIGN.md 2.4).

Why vector-quantize-pytorch rather than diffusers' ``VQModel``: the latter is a
convolutional VQGAN whose receptive field mixes neighbouring cells, needs far more compute
on a CPU, and has no dead-code handling; the quantizer here is the part worth not
rewriting, and the patch encoder/decoder are a few lines.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from vector_quantize_pytorch import VectorQuantize

from mvot.errors import MvotError


class CheckpointError(MvotError, RuntimeError):
    """A tokenizer checkpoint is missing, truncated or does not match its config."""


@dataclass(frozen=True)
class VQSpec:
    """Architecture of the image tokenizer (saved beside its weights)."""

    patch_px: int = 16
    codebook_size: int = 1024
    code_dim: int = 32
    hidden: int = 256
    depth: int = 2
    commitment: float = 0.25
    ema_decay: float = 0.9
    dead_code_threshold: float = 1.0


class _Residual(nn.Module):
    """Pre-norm residual MLP block acting on each patch vector on its own."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class PatchVQ(nn.Module):
    def __init__(self, spec: VQSpec):
        super().__init__()
        self.spec = spec
        p, h, d = spec.patch_px, spec.hidden, spec.code_dim
        pix = 3 * p * p
        # every layer acts on one patch vector: tokens never mix, at any image size
        self.encoder = nn.Sequential(nn.Linear(pix, h), *[_Residual(h) for _ in range(spec.depth)], nn.GELU(), nn.Linear(h, d))
        self.quantizer = VectorQuantize(
            dim=d,
            codebook_size=spec.codebook_size,
            decay=spec.ema_decay,
            commitment_weight=spec.commitment,
            kmeans_init=True,
            kmeans_iters=10,
            threshold_ema_dead_code=spec.dead_code_threshold,
        )
        self.decoder = nn.Sequential(nn.Linear(d, h), *[_Residual(h) for _ in range(spec.depth)], nn.GELU(), nn.Linear(h, pix))
        # codes that encoding may pick: after training, those some training patch used.
        # Dead codes keep their embedding (a model may still emit them) but never win a
        # nearest-code search, so encoding is exactly the training assignment.
        self.register_buffer("live", torch.ones(spec.codebook_size, dtype=torch.bool))

    # images: uint8 (B, H, W, 3) <-> patch vectors (B, h*w, 3*p*p) in [-1, 1]
    def to_input(self, images) -> torch.Tensor:
        """uint8 ``(B, S, S, 3)`` -> ``(B, (S/p)^2, p*p*3)`` floats in [-1, 1], row-major patches."""
        arr = np.asarray(images, dtype=np.uint8)
        b, side = arr.shape[0], arr.shape[1] // self.spec.patch_px
        pats = patches_of(arr, self.spec.patch_px).reshape(b, side * side, -1)
        return torch.from_numpy(pats.astype(np.float32)) / 127.5 - 1.0

    def to_uint8(self, x: torch.Tensor, side: int) -> np.ndarray:
        """``(B, side*side, p*p*3)`` -> uint8 ``(B, S, S, 3)``."""
        p = self.spec.patch_px
        arr = _pixel_values(x).to(torch.uint8).numpy()
        b = arr.shape[0]
        return arr.reshape(b, side, side, p, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, side * p, side * p, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, T, p*p*3) -> reconstruction (B, T, p*p*3), codes (B, T), commitment loss."""
        q, codes, commit = self.quantizer(self.encoder(x))
        return self.decoder(q), codes, commit.sum()

    @torch.no_grad()
    def encode(self, images) -> np.ndarray:
        """uint8 (B, H, W, 3) -> codes (B, h*w), row-major."""
        z = self.encoder(self.to_input(images))  # (B, T, D)
        b, t, d = z.shape
        return self.nearest(z.reshape(-1, d)).reshape(b, t).numpy()

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest live code of each row of ``z`` (N, D); exact distances, so the result does
        not depend on the batch it is computed in."""
        dist = torch.cdist(z.double(), self.codebook.double(), compute_mode="donot_use_mm_for_euclid_dist")
        return dist.masked_fill(~self.live, float("inf")).argmin(-1)

    @torch.no_grad()
    def decode(self, codes, side: int) -> np.ndarray:
        """codes (B, side*side) -> uint8 images (B, side*patch, side*patch, 3)."""
        c = torch.as_tensor(np.asarray(codes), dtype=torch.long).reshape(-1, side * side)
        return self.to_uint8(self.decoder(self.codebook[c]), side)

    @property
    def codebook(self) -> torch.Tensor:
        """The ``(N, D)`` code embeddings."""
        return self.quantizer.codebook.detach()


def _pixel_values(x: torch.Tensor) -> torch.Tensor:
    """Decoder output in [-1, 1] -> pixel values 0..255 (rounded, still float)."""
    return ((x.clamp(-1, 1) + 1.0) * 127.5).round()


def distance_matrix(codebook: torch.Tensor, kind: str = "euclidean") -> torch.Tensor:
    """``(N, N)`` distances between code embeddings: ``euclidean`` or ``mse`` (mean squared)."""
    d2 = torch.cdist(codebook.double(), codebook.double()).pow(2)
    if kind == "euclidean":
        return d2.sqrt().float()
    if kind == "mse":
        return (d2 / codebook.shape[1]).float()
    raise ValueError(f"unknown distance {kind!r}; use 'euclidean' or 'mse'")


# --------------------------------------------------------------------------------------
# Saving and loading (safetensors + JSON)

WEIGHTS = "vq.safetensors"
CONFIG = "vq.json"
CODEBOOK = "codebook.safetensors"


def save(model: PatchVQ, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    (directory / CONFIG).write_text(json.dumps(asdict(model.spec), indent=2, sort_keys=True) + "\n")
    emb = model.codebook.contiguous()
    save_file(
        {"embeddings": emb, "distance_euclidean": distance_matrix(emb, "euclidean"), "distance_mse": distance_matrix(emb, "mse")},
        str(directory / CODEBOOK),
    )


def load(directory: str | Path) -> PatchVQ:
    """Load a frozen tokenizer (eval mode, no gradients). Any problem is a CheckpointError."""
    directory = Path(directory)
    hint = "re-create it with `dvc repro tokenizer` (or `dvc pull`)"
    try:
        spec = VQSpec(**json.loads((directory / CONFIG).read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"{directory / CONFIG}: missing; {hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
        raise CheckpointError(f"{directory / CONFIG}: unreadable tokenizer config ({exc}); {hint}") from None
    for name, default in asdict(VQSpec()).items():  # sizes are positive ints, rates non-negative numbers
        v = getattr(spec, name)
        if type(default) is int:
            ok = type(v) is int and v > 0
        else:
            ok = type(v) in (int, float) and v >= 0
        if not ok:
            raise CheckpointError(f"{directory / CONFIG}: corrupt tokenizer config ({name} = {v!r}: want a "
                                  f"{'positive integer' if type(default) is int else 'non-negative number'}); {hint}")
    try:
        model = PatchVQ(spec)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{directory / CONFIG}: tokenizer config builds no model ({exc}); {hint}") from None
    try:
        state = load_file(str(directory / WEIGHTS))
    except FileNotFoundError:
        raise CheckpointError(f"{directory / WEIGHTS}: missing; {hint}") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{directory / WEIGHTS}: corrupt or truncated weights ({exc}); {hint}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{directory / WEIGHTS}: weights do not match {CONFIG} ({first}); {hint}") from None
    model.eval().requires_grad_(False)
    return model


def load_codebook(directory: str | Path) -> dict[str, torch.Tensor]:
    """``embeddings`` (N, D), ``distance_euclidean`` and ``distance_mse`` (N, N)."""
    path = Path(directory) / CODEBOOK
    try:
        out = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; re-create it with `dvc repro tokenizer`") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated ({exc}); re-create it with `dvc repro tokenizer`") from None
    if set(out) != {"embeddings", "distance_euclidean", "distance_mse"}:
        raise CheckpointError(f"{path}: unexpected tensors {sorted(out)}")
    return out


def patches_of(images: np.ndarray, patch: int) -> np.ndarray:
    """uint8 (B, S, S, 3) -> (B * (S/patch)^2, patch, patch, 3), row-major per image."""
    b, s, _, _ = images.shape
    n = s // patch
    return images.reshape(b, n, patch, n, patch, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b * n * n, patch, patch, 3)


def recon_loss(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(recon, x)


# --------------------------------------------------------------------------------------
# Codebook geometry: what the token discrepancy loss can see (`mvot codebook`)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of ``x``, ties sharing their average rank (as Spearman's rho needs)."""
    xs = np.sort(x)
    return (np.searchsorted(xs, x, "left") + np.searchsorted(xs, x, "right") - 1) / 2.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two equal-length samples (nan if either is constant)."""
    ra, rb = _average_ranks(np.asarray(a, float)), _average_ranks(np.asarray(b, float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def geometry(embeddings: torch.Tensor, pixels: torch.Tensor) -> dict:
    """How code-embedding distance (what L_D weighs) relates to what the codes look like.

    embeddings: (N, D) the live codes; pixels: (N, P) each code's decoded patch, uint8 values.
    Returns the number of codes; ``duplicate_pairs``, pairs of codes whose decoded patches are
    identical (visually equivalent codes, over which cross-entropy splits its target and L_D
    does not); the nearest and median embedding distance between two codes; ``spearman``,
    the rank correlation of embedding and pixel distance over all pairs; and
    ``nearest_agree``, the share of codes whose nearest code in pixels is also their nearest
    in embedding space.
    """
    n = embeddings.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 codes, got {n}")
    de = distance_matrix(embeddings, "euclidean").double().numpy()  # the distance L_D weighs
    dp = torch.cdist(pixels.double(), pixels.double()).numpy()
    iu = np.triu_indices(n, 1)
    np.fill_diagonal(de, np.inf)
    np.fill_diagonal(dp, np.inf)
    return {
        "codes": int(n),
        "duplicate_pairs": int((dp[iu] == 0).sum()),
        "nearest_distance": float(de[iu].min()),
        "median_distance": float(np.median(de[iu])),
        "spearman": spearman(de[iu], dp[iu]),
        "nearest_agree": float((de.argmin(1) == dp.argmin(1)).mean()),
    }


@torch.no_grad()
def codebook_geometry(model: PatchVQ) -> dict:
    """:func:`geometry` of a tokenizer's live codes (the ones encoding can produce)."""
    emb = model.codebook[model.live]
    pix = _pixel_values(model.decoder(emb))
    return geometry(emb, pix) | {"codebook_size": int(model.spec.codebook_size), "patch_px": int(model.spec.patch_px)}
