"""The ``tokenizer`` stage: train the image VQ tokenizer and the text tokenizer, then freeze.

Outputs (``models/tokenizer/``)::

    vq.safetensors, vq.json        the frozen image tokenizer (mvot.vq)
    codebook.safetensors           code embeddings (N, D) and the N x N distance matrices
    tokenizer.json                 byte-level BPE text tokenizer (Hugging Face tokenizers;
                                   loads with transformers.PreTrainedTokenizerFast)
    vocab.json                     the unified vocabulary layout (mvot.vocab.Vocab)
    reconstructions.png            held-out originals beside their reconstructions

and ``metrics/tokenizer.json`` (fidelity, codebook usage), also logged to MLflow.

Training data of the VQ: every distinct patch of the rendered train frames of all tasks.
Renders are mosaics of a finite set of cell drawings, so deduplicating patches loses
nothing and weights rare cells (a candidate letter under an arrow) like common ones
(empty floor), which is what per-cell fidelity needs.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mvot import vq
from mvot.config import TASKS, Params, TokenizerConfig
from mvot.data import (
    file_in_the_way,
    iter_images,
    read_split,
    recover_replaced,
    replace_atomically,
    write_atomically,
)
from mvot.render import Renderer
from mvot.traces import VARIANTS, build
from mvot.vocab import Vocab

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


# --------------------------------------------------------------------------------------
# Image side


def frame_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def collect_patches(raw_dir: Path, patch: int, split: str = "train", tasks: Iterable[str] = TASKS) -> tuple[np.ndarray, np.ndarray]:
    """Distinct patches of a split's frames (all tasks) and how often each occurs."""
    counts: Counter[bytes] = Counter()
    for task in tasks:
        for _, img in iter_images(raw_dir / task, split):
            counts.update(p.tobytes() for p in vq.patches_of(frame_array(img)[None], patch))
    keys = sorted(counts)  # deterministic order
    patches = np.stack([np.frombuffer(k, np.uint8).reshape(patch, patch, 3) for k in keys])
    return patches, np.array([counts[k] for k in keys], dtype=np.int64)


def train_vq(patches: np.ndarray, cfg: TokenizerConfig, seed: int, log: Callable[[dict, int], None] = lambda m, s: None) -> vq.PatchVQ:
    """Fit the patch VQ on distinct patches; returns it frozen (eval mode)."""
    torch.manual_seed(seed)
    spec = vq.VQSpec(patch_px=cfg.patch_px, codebook_size=cfg.codebook_size, code_dim=cfg.code_dim, hidden=cfg.hidden, depth=cfg.depth)
    model = vq.PatchVQ(spec)
    x_all = model.to_input(patches)  # (U, 1, p*p*3): each distinct patch as a one-token image
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    gen = torch.Generator().manual_seed(seed)
    batch = min(cfg.batch, len(x_all))
    model.train()
    for step in range(cfg.steps):
        idx = torch.randperm(len(x_all), generator=gen)[:batch]
        x = x_all[idx]
        recon, codes, commit = model(x)
        rec = vq.recon_loss(x, recon)
        loss = rec + commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            log({"vq/recon_mse": rec.item(), "vq/commit": commit.item(), "vq/codes_in_batch": len(codes.unique())}, step)
    model.eval().requires_grad_(False)
    with torch.no_grad():
        used = model.nearest(model.encoder(x_all).flatten(0, 1))
        model.live.zero_()
        model.live[used.unique()] = True
    return model


class PatchCoder:
    """Exact, cached encode/decode of whole images with a frozen :class:`vq.PatchVQ`.

    Patches are encoded independently, so caching codes by patch bytes changes nothing
    but the cost (renders repeat a few hundred cell drawings)."""

    def __init__(self, model: vq.PatchVQ):
        self.model = model
        self.patch = model.spec.patch_px
        self._codes: dict[bytes, int] = {}

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, S, S, 3) -> codes (B, (S/patch)^2)."""
        images = np.asarray(images, dtype=np.uint8)
        pats = vq.patches_of(images, self.patch)
        keys = [p.tobytes() for p in pats]
        todo = {k: p for k, p in zip(keys, pats, strict=True) if k not in self._codes}
        if todo:
            new = self.model.encode(np.stack(list(todo.values()))).reshape(-1)
            self._codes.update(zip(todo, (int(c) for c in new), strict=True))
        return np.array([self._codes[k] for k in keys], dtype=np.int64).reshape(len(images), -1)

    def decode(self, codes: np.ndarray, side: int) -> np.ndarray:
        return self.model.decode(codes, side)

    def roundtrip_map(self) -> np.ndarray:
        """``(N,)``: the code each code becomes after one decode -> encode round trip."""
        n = self.model.spec.codebook_size
        patches = self.model.decode(np.arange(n).reshape(n, 1), 1)
        return self.model.encode(patches).reshape(-1)


def augment_codes(codes: np.ndarray, roundtrip: np.ndarray, max_k: int) -> np.ndarray:
    """``(..., T) -> (..., max_k + 1, T)``: the codes after k = 0..max_k encode->decode round trips."""
    out = [codes]
    for _ in range(max_k):
        out.append(roundtrip[out[-1]])
    return np.stack(out, axis=-2)


def measure_fidelity(coder: PatchCoder, params: Params, raw_dir: Path, split: str = "val") -> dict:
    """Share of cells and of whole images that survive encode -> decode -> parse."""
    out: dict = {}
    tot_cells = ok_cells = tot_img = ok_img = 0
    for task in TASKS:
        renderer = Renderer.from_params(params, task)
        side = params.image_size(task) // coder.patch
        insts = {i.uid: i for i in read_split(raw_dir / task, split)}
        frames, states = [], []
        for name, img in iter_images(raw_dir / task, split):
            uid, k = name.rsplit("/", 1)
            frames.append(frame_array(img))
            states.append(insts[uid].states[int(k.removesuffix(".png"))])
            if len(frames) >= params.tokenizer.fidelity_frames:
                break
        recon = coder.decode(coder.encode(np.stack(frames)), side)
        cells = ok = images = img_ok = 0
        for r, s in zip(recon, states, strict=True):
            n, keys = renderer.read_cells(r)
            truth = renderer.cells(s)
            cells += len(truth)
            ok += sum(keys.get(c) == v for c, v in truth.items()) if n == s.size else 0
            images += 1
            img_ok += renderer.parse(r) == s
        out[task] = {"cell_fidelity": ok / cells, "image_fidelity": img_ok / images, "frames": images}
        tot_cells, ok_cells, tot_img, ok_img = tot_cells + cells, ok_cells + ok, tot_img + images, ok_img + img_ok
    out["all"] = {"cell_fidelity": ok_cells / tot_cells, "image_fidelity": ok_img / tot_img, "frames": tot_img}
    return out


def codebook_usage(codes: np.ndarray, weights: np.ndarray, n_codes: int) -> dict:
    """Perplexity of the code distribution (weighted by occurrences) and unused codes."""
    hist = np.bincount(codes, weights=weights, minlength=n_codes).astype(np.float64)
    p = hist / hist.sum()
    nz = p[p > 0]
    return {"perplexity": float(np.exp(-(nz * np.log(nz)).sum())), "used_codes": int((hist > 0).sum()), "unused_codes": int((hist == 0).sum())}


def reconstruction_sheet(coder: PatchCoder, params: Params, raw_dir: Path, per_task: int = 4) -> Image.Image:
    """Rows of held-out originals (left) beside their reconstructions (right), per task."""
    rows = []
    width = max(params.image_size(t) for t in TASKS)
    for task in TASKS:
        side = params.image_size(task) // coder.patch
        frames = []
        for _, img in iter_images(raw_dir / task, "val"):
            frames.append(frame_array(img))
            if len(frames) == per_task * 3:
                break
        frames = np.stack(frames[::3])  # later states of different instances
        recon = coder.decode(coder.encode(frames), side)
        pad = lambda a: np.pad(a, ((0, width - a.shape[0]), (0, width - a.shape[1] + 4), (0, 0)), constant_values=255)  # noqa: E731
        rows.append(np.concatenate([pad(f) for f in frames] + [np.full((width, 12, 3), 255, np.uint8)] + [pad(r) for r in recon], axis=1))
    return Image.fromarray(np.concatenate(rows, axis=0))


# --------------------------------------------------------------------------------------
# Text side


def text_corpus(params: Params, raw_dir: Path) -> Iterable[str]:
    """Every text part of every variant's trace of the train split of every task."""
    for task in TASKS:
        for inst in read_split(raw_dir / task, "train"):
            for variant in VARIANTS:
                for layout in (False, True) if variant == "cot" else (False,):
                    for part in build(inst, variant, layout_text=layout).parts:
                        if not part.is_image:
                            yield part.text


def train_text_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE (lossless on any text) with the specials of :data:`SPECIALS` first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_text_tokenizer(directory: str | Path):
    from tokenizers import Tokenizer

    path = Path(directory) / "tokenizer.json"
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on a bad file
        raise vq.CheckpointError(f"{path}: missing or unreadable text tokenizer ({exc}); run `dvc repro tokenizer`") from None


# --------------------------------------------------------------------------------------
# The stage


def run_stage(params: Params, raw_dir: str | Path, out_dir: str | Path, metrics_path: str | Path, tracker=None) -> dict:
    """Train both tokenizers, measure them, save them frozen; returns the metrics."""
    from mvot.tracking import NullTracker

    tracker = tracker or NullTracker()
    raw_dir, out_dir, metrics_path = Path(raw_dir), Path(out_dir), Path(metrics_path)
    staging = _staging_dir(out_dir, metrics_path)  # before any training: an unwritable --out fails at once
    try:
        return _run_stage(params, raw_dir, out_dir, metrics_path, tracker, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _staging_dir(out_dir: Path, metrics_path: Path) -> Path:
    """``<out>.tmp``, empty: the tokenizers are written there, then swapped in for ``out_dir`` whole
    (an old ``out_dir`` that a kill mid-swap left aside is put back first)."""
    for p in (out_dir, metrics_path.parent):
        if (blocker := file_in_the_way(p)) is not None:
            raise vq.CheckpointError(f"{blocker}: a file is in the way of folder {p}; give --out and --metrics folders that can be made")
    if metrics_path.is_dir():
        raise vq.CheckpointError(f"{metrics_path}: a folder, not a file; give --metrics a file name")
    staging = out_dir.with_name(out_dir.name + ".tmp")
    try:
        recover_replaced(out_dir)
        shutil.rmtree(staging, ignore_errors=True)  # what a killed run left
        staging.mkdir(parents=True)
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise vq.CheckpointError(f"{out_dir}: cannot write the tokenizers there ({exc}); give --out a writable folder") from None
    return staging


def _run_stage(params: Params, raw_dir: Path, out_dir: Path, metrics_path: Path, tracker, staging: Path) -> dict:
    cfg = params.tokenizer
    tracker.log_params({"tokenizer": params.tokenizer.model_dump(), "render": params.render.model_dump(), "seed": params.seed})
    t0 = time.perf_counter()
    patches, counts = collect_patches(raw_dir, cfg.patch_px)
    t1 = time.perf_counter()
    model = train_vq(patches, cfg, params.seed, log=lambda m, s: tracker.log_metrics(m, step=s))
    t2 = time.perf_counter()
    coder = PatchCoder(model)
    fidelity = measure_fidelity(coder, params, raw_dir)
    usage = codebook_usage(model.encode(patches).reshape(-1), counts, cfg.codebook_size)
    roundtrip = coder.roundtrip_map()
    used = np.unique(model.encode(patches))
    stable = float((roundtrip[used] == used).mean())

    text = train_text_tokenizer(text_corpus(params, raw_dir), cfg.text_vocab)
    vocab = Vocab(
        n_text=text.get_vocab_size(),
        n_codes=cfg.codebook_size,
        tokens_per_image={t: params.tokens_per_image(t) for t in TASKS},
        pad_id=text.token_to_id("<pad>"),
        bos_id=text.token_to_id("<bos>"),
        eos_id=text.token_to_id("<eos>"),
    )
    t3 = time.perf_counter()

    vq.save(model, staging)
    text.save(str(staging / "tokenizer.json"))
    vocab.save(staging / "vocab.json")
    sheet = reconstruction_sheet(coder, params, raw_dir)
    sheet.save(staging / "reconstructions.png")

    metrics = {
        "fidelity": fidelity,
        "codebook": usage | {"size": cfg.codebook_size, "roundtrip_stable_share": stable},
        "distinct_train_patches": int(len(patches)),
        "tokens_per_image": {t: params.tokens_per_image(t) for t in TASKS},
        "text_vocab": vocab.n_text,
        "vocab_size": vocab.size,
        "seconds": {"collect_patches": round(t1 - t0, 1), "train_vq": round(t2 - t1, 1), "measure_and_text": round(t3 - t2, 1)},
    }
    replace_atomically(staging, out_dir)  # the tokenizers, then their metrics: each whole or as it was
    write_atomically(metrics_path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    flat = {f"fidelity/{t}/{k}": v for t, d in fidelity.items() for k, v in d.items() if k != "frames"}
    tracker.log_metrics(flat | {f"codebook/{k}": v for k, v in metrics["codebook"].items()})
    tracker.log_image(sheet, "reconstructions.png")
    tracker.log_artifacts(out_dir, "tokenizer")
    return metrics
