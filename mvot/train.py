"""The training loop: L_C (+ w * L_D) over whole traces, on CPU or GPU, resumable exactly.

Whole-trace training (DESIGN.md 2.2): every sequence holds the question, the initial image
and the full output (text steps and, for the interleaved variants, every drawn state);
the loss covers the output positions:

* ``direct`` / ``cot``: text cross-entropy;
* ``interleaved``: text cross-entropy only (image positions are context, not targets);
* ``mvot``: text and image cross-entropy, plus ``ld.weight`` x L_D on image positions
  (``ld.weight: 0`` is "MVoT without L_D").

Batches are length-bucketed (sequences of similar length together, at most
``batch_tokens`` tokens a micro-batch with padding), in an order drawn from
``(seed, epoch)``; the image-augmentation draw of a batch comes from
``(seed, epoch, batch)``. Nothing else is random, so a run is deterministic on CPU and a
resumed run continues exactly: its final weights equal an uninterrupted run's. Every
checkpoint carries the run's fingerprint (:func:`mvot.checkpoint.training_fingerprint`:
params, token arrays, tokenizer, backbone, training code), so a run continues only from a
checkpoint of the same training.

The loop knows nothing about tracking: it calls ``log(metrics, step)``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mvot import vq
from mvot.checkpoint import (
    AFRESH,
    CKPT,
    install,
    read_state,
    recover,
    resumable,
    training_fingerprint,
)
from mvot.config import Params
from mvot.data import replace_atomically
from mvot.errors import MvotError
from mvot.losses import token_discrepancy_loss
from mvot.model import count_parameters, from_pretrained, from_scratch
from mvot.tokenize import load_split
from mvot.traces import trace_settings
from mvot.vocab import Vocab


class TrainError(MvotError, RuntimeError):
    """Training cannot start or resume; the message says why."""


# --------------------------------------------------------------------------------------
# Data


@dataclass
class TokenData:
    """The token arrays of one split and variant, for all training tasks."""

    seqs: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (tokens, supervised, image) per sequence
    initial: list[tuple[int, np.ndarray | None]]  # (position of the input image codes, (K+1, T) variants)
    tasks: list[str]
    steps: list[np.ndarray] | None = None  # step index of every token (train.model.step_pos), else None

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s[0]) for s in self.seqs], dtype=np.int64)


def load_token_data(tokens_dir: str | Path, tasks, split: str, variant: str, indexer=None) -> TokenData:
    """The token arrays of ``tasks``; with a :class:`mvot.steps.StepIndexer`, also every
    token's step index (computed once here, from the text)."""
    seqs, initial, names = [], [], []
    for task in tasks:
        ts = load_split(tokens_dir, task, split, variant)
        d = Path(tokens_dir) / task / split
        try:
            pos = np.load(d / "initial_pos.npy")
            codes = np.load(d / "initial_codes.npy", mmap_mode="r")
        except FileNotFoundError as exc:
            raise TrainError(f"{d}: missing input-image arrays ({exc.filename}); run `dvc repro tokenize`") from None
        except (ValueError, OSError, EOFError) as exc:
            raise TrainError(f"{d}: corrupt input-image arrays ({exc}); run `dvc repro -f tokenize`") from None
        if len(pos) != len(ts) or len(codes) != len(ts):
            raise TrainError(f"{d}: initial_pos.npy and initial_codes.npy hold {len(pos)} and {len(codes)} rows for "
                             f"{len(ts)} sequences; run `dvc repro -f tokenize`")
        for i in range(len(ts)):
            t, s, im = ts.sequence(i)
            seqs.append((np.asarray(t, np.int64), np.asarray(s, bool), np.asarray(im, bool)))
            initial.append((int(pos[i]), codes[i]))
            names.append(task)
    steps = None
    if indexer is not None:
        from mvot.traces import DRAWING_VARIANTS

        draws = variant in DRAWING_VARIANTS
        steps = [indexer.index(t, int(np.argmax(s)), task, draws) for (t, s, _), task in zip(seqs, names, strict=True)]
    return TokenData(seqs, initial, names, steps)


def epoch_pool(data: TokenData, tokens_dir: str | Path, raw_dir: str | Path, oversample: dict[str, int]) -> np.ndarray:
    """The training sequences one epoch visits, by index into ``data.seqs``: each once, or
    ``oversample[label]`` times where its instance ended with outcome ``label``
    (:func:`mvot.worlds.outcome`, as ``mvot outcomes`` reports it). The labels come from
    the raw training split in ``raw_dir``, matched to the token arrays by instance id."""
    if not oversample:
        return np.arange(len(data.seqs))
    from mvot.data import split_outcomes

    counts, seen = [], set()
    for task in dict.fromkeys(data.tasks):
        ids_file = Path(tokens_dir) / task / "train" / "ids.txt"
        ids = ids_file.read_text().split() if ids_file.is_file() else []
        if len(ids) != (n := data.tasks.count(task)):
            raise TrainError(f"{ids_file}: lists {len(ids)} instances for {n} token sequences; run `dvc repro -f tokenize`")
        labels = split_outcomes(Path(raw_dir) / task, "train")
        seen |= set(labels.values())
        missing = [u for u in ids if u not in labels]
        if missing:
            raise TrainError(f"{ids_file}: instance {missing[0]!r} is not in {Path(raw_dir) / task}/train.jsonl; the token arrays "
                             "are from other data (run `dvc repro tokenize`, or pass the raw data they were made from)")
        counts += [oversample.get(labels[u], 1) for u in ids]
    unknown = sorted(set(oversample) - seen)
    if unknown:
        raise TrainError(f"train.oversample: no training instance of {', '.join(dict.fromkeys(data.tasks))} ends with outcome "
                         f"{unknown[0]!r}; the outcomes are: {', '.join(sorted(seen))}")
    return np.repeat(np.arange(len(counts)), np.asarray(counts, dtype=np.int64))


def make_batches(lengths: np.ndarray, batch_tokens: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Length buckets: sort by length (ties in random order), cut greedily so that
    ``len(batch) * longest <= batch_tokens``, then shuffle the batches."""
    order = np.lexsort((rng.random(len(lengths)), lengths))
    batches, cur, longest = [], [], 0
    for i in order:
        longest_if = max(longest, int(lengths[i]))
        if cur and longest_if * (len(cur) + 1) > batch_tokens:
            batches.append(np.array(cur))
            cur, longest_if = [], int(lengths[i])
        cur.append(int(i))
        longest = longest_if
    if cur:
        batches.append(np.array(cur))
    return [batches[int(j)] for j in rng.permutation(len(batches))]


def padding_share(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1.0 - float(sum(int(lengths[b].sum()) for b in batches)) / padded


def collate(data: TokenData, idx: np.ndarray, vocab: Vocab, aug_rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
    """Right-padded inputs, shifted targets and the loss masks of one micro-batch."""
    longest = max(len(data.seqs[i][0]) for i in idx)
    n = len(idx)
    tokens = np.full((n, longest), vocab.pad_id, dtype=np.int64)
    sup = np.zeros((n, longest), dtype=bool)
    img = np.zeros((n, longest), dtype=bool)
    steps = np.zeros((n, longest), dtype=np.int64) if data.steps is not None else None
    for row, i in enumerate(idx):
        t, s, m = data.seqs[i]
        if steps is not None:
            steps[row, : len(t)] = data.steps[i]
        tokens[row, : len(t)] = t
        sup[row, : len(t)] = s
        img[row, : len(t)] = m
        pos, variants = data.initial[i]
        if aug_rng is not None and variants is not None and len(variants) > 1:
            k = int(aug_rng.integers(len(variants)))
            tokens[row, pos : pos + variants.shape[1]] = np.asarray(variants[k], np.int64) + vocab.image_offset
    x = torch.from_numpy(tokens)
    out = {
        "input_ids": x[:, :-1],
        "attention_mask": torch.from_numpy(tokens[:, :-1] != vocab.pad_id).long(),
        "targets": x[:, 1:],
        "supervised": torch.from_numpy(sup[:, 1:]),
        "image": torch.from_numpy(img[:, 1:]),
    }
    if steps is not None:
        out["step_index"] = torch.from_numpy(steps[:, :-1])
    return out


def model_inputs(batch: dict) -> dict:
    """The forward arguments of a collated batch."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "step_index") if k in batch}


# --------------------------------------------------------------------------------------
# Losses


class HeadInput:
    """Keeps what the model's output layer read on the last forward pass (the final hidden
    states), so L_D can be taken through the head alone (``train.ld.through: head``)."""

    def __init__(self, model):
        self.head = model.get_output_embeddings()
        if self.head is None:
            raise TrainError(f"{type(model).__name__} has no output embeddings: train.ld.through = head needs a causal LM head")
        self.hidden: torch.Tensor | None = None
        self.hook = self.head.register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        self.hidden = args[0]

    def ld_logits(self, batch: dict) -> torch.Tensor:
        """(M, V) logits of the M image targets of ``batch`` from the detached hidden states:
        their gradient reaches the head's weights and nothing before it."""
        if self.hidden is None:
            raise TrainError("HeadInput.ld_logits called before a forward pass")
        hidden, self.hidden = self.hidden, None
        mask = image_targets(batch, "mvot")
        if hidden.shape[:2] != mask.shape:
            raise TrainError(f"output layer read hidden states of shape {tuple(hidden.shape[:2])}, targets are {tuple(mask.shape)}")
        return self.head(hidden[mask].detach())

    def remove(self) -> None:
        self.hook.remove()


def image_targets(batch: dict, variant: str) -> torch.Tensor:
    """(B, T) bool: supervised positions whose target is an image code (none unless mvot)."""
    sup, img = batch["supervised"], batch["image"]
    return sup & img if variant == "mvot" else torch.zeros_like(sup)


def discrepancy(logits, targets, image_pos, distance, image_offset: int, reduction: str, ld_logits: torch.Tensor | None = None):
    """L_D over the image targets ``image_pos``: on ``logits`` (B, T, V), or, when given, on
    ``ld_logits`` ((M, V), those targets' rows from :meth:`HeadInput.ld_logits`)."""
    if ld_logits is None:
        return token_discrepancy_loss(logits, targets, image_pos, distance, image_offset, reduction)
    every = torch.ones(1, ld_logits.shape[0], dtype=torch.bool, device=ld_logits.device)
    return token_discrepancy_loss(ld_logits.float()[None], targets[image_pos][None], every, distance, image_offset, reduction)


def compute_losses(logits, batch, variant: str, ld_weight: float, distance, vocab: Vocab, label_smoothing: float, ld_reduction: str,
                   text_weight: float = 1.0, ld_logits: torch.Tensor | None = None):
    """Total loss and its logged terms (text CE, image CE, L_D).

    L_C is the cross-entropy averaged over the supervised positions, a text position
    counting ``text_weight`` times (1 = the plain average; only the mvot variant has both
    kinds, so only it is affected). ``ld_logits`` ((M, V), the image targets' logits from
    :meth:`HeadInput.ld_logits`) is what L_D is taken on when given; otherwise ``logits``."""
    targets, sup, img = batch["targets"], batch["supervised"], batch["image"]
    text_pos = sup & ~img
    image_pos = image_targets(batch, variant)
    ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none", label_smoothing=label_smoothing)  # (B, T)
    n_text, n_img = int(text_pos.sum()), int(image_pos.sum())
    loss_c = (text_weight * (ce * text_pos).sum() + (ce * image_pos).sum()) / max(1.0, text_weight * n_text + n_img)
    terms = {
        "loss/text_ce": float((ce.detach() * text_pos).sum() / max(1, n_text)),
        "loss/image_ce": float((ce.detach() * image_pos).sum() / max(1, n_img)) if n_img else 0.0,
    }
    loss = loss_c
    if ld_weight > 0 and n_img:
        ld = discrepancy(logits, targets, image_pos, distance, vocab.image_offset, ld_reduction, ld_logits)
        loss = loss + ld_weight * ld
        terms["loss/ld"] = float(ld.detach())
    terms["loss/total"] = float(loss.detach())
    return loss, terms


# --------------------------------------------------------------------------------------
# Checkpoints

def save_checkpoint(directory: Path, model, optimizer, scheduler, step: int, seconds: float = 0.0,
                    meta: dict | None = None, files: dict[str, Path] | None = None) -> None:
    """Weights, optimizer and schedule at ``step``, the training seconds spent to get there
    (over every resumption) and ``meta`` (tokens so far, the fingerprint, a tracking run id)
    in ``state.json``, and copies of ``files`` (name -> path, e.g. the curve so far), written
    to a temporary folder and swapped in whole (:func:`mvot.checkpoint.install`)."""
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():  # left by a save that was cut off
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    for name, path in (files or {}).items():
        if Path(path).is_file():
            shutil.copy2(path, tmp / name)
    (tmp / "state.json").write_text(json.dumps({"step": step, "seconds": round(seconds, 1)} | (meta or {})) + "\n")
    install(tmp, directory)


def load_checkpoint(directory: Path, model, optimizer, scheduler) -> tuple[int, float]:
    """Restore weights, optimizer and schedule; returns the step and the training seconds
    recorded (0 for a checkpoint written before they were)."""
    try:
        state = json.loads((directory / "state.json").read_text())
        model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
        opt = torch.load(directory / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
    except FileNotFoundError as exc:
        raise TrainError(f"{directory}: incomplete checkpoint ({exc.filename} missing); {AFRESH}") from None
    except Exception as exc:  # safetensors / torch raise many kinds on a damaged file
        raise TrainError(f"{directory}: unreadable checkpoint ({type(exc).__name__}: {exc}); {AFRESH}") from None
    return int(state["step"]), float(state.get("seconds") or 0.0)


# --------------------------------------------------------------------------------------
# The loop


# what a trained model directory ships of the tokenizers it was trained with (``model/tokenizer``)
TOKENIZER_FILES = ("vq.safetensors", "vq.json", "codebook.safetensors", "tokenizer.json", "vocab.json")


def check_pretrained_tokenizer(pretrained: str | Path, tokenizer_dir: str | Path) -> None:
    """Refuse to train an mvot model on under tokenizers other than its own.

    A model directory written by :func:`save_model` carries its tokenizers; under another
    image tokenizer (another patch size, another VQ training) or text vocabulary, every
    token id it learnt would stand for another picture or word, and training on would
    quietly start over. A plain causal LM backbone (no ``tokenizer/``) is not checked:
    its vocabulary is resized to ours."""
    theirs, ours = Path(pretrained) / "tokenizer", Path(tokenizer_dir)
    if not theirs.is_dir():
        return
    differ = [name for name in TOKENIZER_FILES
              if (theirs / name).is_file() and (ours / name).is_file() and (theirs / name).read_bytes() != (ours / name).read_bytes()]
    if differ:
        raise TrainError(
            f"train.model.pretrained = {pretrained} was trained with other tokenizers than {ours} "
            f"({', '.join(differ)} differ): its token ids would mean other pictures or words. Train it on with its "
            f"own tokenizers (tokenize with --tokenizer {theirs}), or point train.model.pretrained at a model "
            f"trained with these (same tokenizer.patch_px and tokenizer training)")


def build_model(params: Params, vocab: Vocab):
    m = params.train.model
    if m.pretrained:
        return from_pretrained(m.pretrained, vocab, m.lora_r, m.lora_alpha)
    return from_scratch(vocab, m.d_model, m.n_layer, m.n_head, m.d_ff, m.max_len, seed=params.seed, grid_pos=m.grid_pos,
                        step_pos=m.step_pos)


def step_indexer(tokenizer_dir: str | Path, vocab: Vocab, model):
    """The :class:`mvot.steps.StepIndexer` of ``model`` if it has step positions (its config's
    ``step_pos``: from params, or from a pretrained checkpoint), else None."""
    step_pos = int(getattr(model.config, "step_pos", 0) or 0)
    if step_pos <= 0:
        return None
    from mvot.steps import StepIndexer
    from mvot.tokenizers import load_text_tokenizer

    return StepIndexer(load_text_tokenizer(tokenizer_dir), vocab.n_text, step_pos)


def distributed() -> tuple[int, int, int]:
    """``(world size, rank, local rank)`` under torchrun (process group initialised: gloo on
    CPU, nccl on CUDA), ``(1, 0, 0)`` otherwise."""
    import os

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1, 0, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return world, dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))


def device(local_rank: int = 0) -> torch.device:
    return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")


def hardware(dev: torch.device) -> str:
    """The chip a run trained on, for its record: floating-point results (and so where a
    run's text cross-entropy passes its transition) can differ between CPU models and
    kernels, while on one machine training is exact (resume, two processes)."""
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA {torch.version.cuda})"
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    import platform

    name = info.get("model name") or platform.processor() or platform.machine()
    model = f", family {info['cpu family']} model {info['model']}" if "cpu family" in info and "model" in info else ""
    return f"{name}{model}, {torch.backends.cpu.get_cpu_capability()}"


def _mean_across(values: dict[str, float], world: int) -> dict[str, float]:
    if world == 1:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t.tolist(), strict=True)}


def train(
    params: Params,
    run: str,
    tokens_dir: str | Path,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    log: Callable[[dict, int], None] = lambda m, s: None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    raw_dir: str | Path = "data/raw",
    checkpoint_dir: str | Path | None = None,
    checkpoint_meta: dict | None = None,
    checkpoint_files: dict[str, Path] | None = None,
    fingerprint: dict[str, str] | None = None,
) -> dict:
    """Train run ``run`` of ``params.train.runs``; the final model goes to ``out_dir``, the
    checkpoints to ``checkpoint_dir`` (default ``out_dir/checkpoint``).

    ``stop_after`` ends the run after that many steps (with a checkpoint), as an
    interruption would; ``resume`` continues from the checkpoint, which must be of this
    training (its fingerprint; one written before checkpoints had fingerprints is taken as
    it is). Each checkpoint holds ``checkpoint_meta`` in its state and copies of
    ``checkpoint_files``. ``fingerprint`` (:func:`mvot.checkpoint.training_fingerprint`) is computed when
    not given. ``raw_dir`` (the generated data) is read only for ``train.oversample``'s
    outcome labels."""
    cfg = params.train
    if run not in cfg.runs:
        raise TrainError(f"unknown run {run!r}; params.yaml train.runs has: {', '.join(cfg.runs)}")
    spec = cfg.runs[run]
    out_dir, tokenizer_dir = Path(out_dir), Path(tokenizer_dir)
    vocab = Vocab.load(tokenizer_dir / "vocab.json")
    distance = vq.load_codebook(tokenizer_dir)[f"distance_{cfg.ld.distance}"]
    if cfg.model.pretrained:
        check_pretrained_tokenizer(cfg.model.pretrained, tokenizer_dir)
    model = build_model(params, vocab)
    # step positions are the built model's: from params, or from a pretrained checkpoint's config
    indexer = step_indexer(tokenizer_dir, vocab, model)
    data = load_token_data(tokens_dir, cfg.tasks, "train", spec.variant, indexer)
    if data.lengths.max() > cfg.model.max_len:
        raise TrainError(f"longest training sequence has {data.lengths.max()} tokens > train.model.max_len = {cfg.model.max_len}")
    if data.lengths.max() > cfg.batch_tokens:
        raise TrainError(f"train.batch_tokens = {cfg.batch_tokens} is below the longest sequence ({data.lengths.max()} tokens)")
    pool = epoch_pool(data, tokens_dir, raw_dir, dict(cfg.oversample))
    pool_lengths = data.lengths[pool]

    def epoch_batches_of(rng: np.random.Generator) -> list[np.ndarray]:
        return [pool[b] for b in make_batches(pool_lengths, cfg.batch_tokens, rng)]
    world, rank, local_rank = distributed()
    dev = device(local_rank)
    model = model.to(dev)
    distance = distance.to(dev)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    core = model  # the unwrapped model: what checkpoints hold
    if world > 1:  # torchrun: PyTorch DDP averages gradients across processes
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if dev.type == "cuda" else None)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / CKPT
    if rank == 0:
        recover(ckpt)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    if resume and not ckpt.exists():
        raise TrainError(f"{ckpt}: no checkpoint to resume from")
    fingerprint = fingerprint or training_fingerprint(params, run, tokens_dir, tokenizer_dir)
    # a checkpoint of another training is refused; a damaged one is named by load_checkpoint, and one
    # without a fingerprint (written before there were) is taken as it is
    if resume and read_state(ckpt).get("fingerprint", fingerprint) != fingerprint:
        raise TrainError(f"cannot resume: {resumable(ckpt, fingerprint)[1]}; {AFRESH}, or delete {ckpt}")
    step, prior_seconds = load_checkpoint(ckpt, core, opt, sched) if resume else (0, 0.0)
    prior_tokens = int(read_state(ckpt).get("tokens") or 0) if resume else 0
    start_step = step
    state_meta = (checkpoint_meta or {}) | {"fingerprint": fingerprint}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    # L_D through the head alone: its logits are recomputed from the detached hidden states
    head_input = HeadInput(core) if cfg.ld.through == "head" and spec.ld_weight > 0 else None

    # the data position of micro-batch m is a pure function of m: (epoch, index in epoch)
    first = epoch_batches_of(np.random.default_rng([params.seed, 0]))
    epoch_batches: dict[int, list[np.ndarray]] = {0: first}

    def batch_at(m: int) -> tuple[np.ndarray, np.random.Generator]:
        epoch = 0
        while True:
            if epoch not in epoch_batches:
                epoch_batches[epoch] = epoch_batches_of(np.random.default_rng([params.seed, epoch]))
            if m < len(epoch_batches[epoch]):
                return epoch_batches[epoch][m], np.random.default_rng([params.seed, epoch, m])
            m -= len(epoch_batches[epoch])
            epoch += 1

    summary = count_parameters(core) | {
        "processes": world,
        "sequences": len(data.seqs),
        "sequences_per_epoch": len(pool),
        "batches_per_epoch": len(first),
        "padding_share": round(padding_share(data.lengths, first), 4),
        "device": dev.type,
        "hardware": hardware(dev),
        "torch": torch.__version__,
    }
    bar = None
    if progress and rank == 0:
        from mvot.progress import progress_bar

        bar = progress_bar(cfg.steps, f"train {run}", "step", 1.0, initial=step, dynamic_ncols=True)
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    model.train()
    t0, tokens_seen = time.perf_counter(), 0
    while step < end:
        opt.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            # the global batch of a step is grad_accum x world micro-batches; this process
            # takes every world-th one, so N processes see what one process with
            # N x grad_accum sees
            idx, rng = batch_at((step * cfg.grad_accum + micro) * world + rank)
            batch = {k: v.to(dev) for k, v in collate(data, idx, vocab, rng if cfg.augment else None).items()}
            ld_weight = spec.ld_weight if step >= cfg.ld.from_step else 0.0
            with autocast:
                logits = model(**model_inputs(batch)).logits
                ld_logits = head_input.ld_logits(batch) if head_input is not None and ld_weight > 0 else None
            loss, terms = compute_losses(
                logits.float(), batch, spec.variant, ld_weight, distance, vocab,
                cfg.label_smoothing, cfg.ld.reduction, cfg.text_weight, ld_logits,
            )
            (loss / cfg.grad_accum).backward()
            tokens_seen += int(batch["attention_mask"].sum())  # real (unpadded) tokens
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        sched.step()
        step += 1
        if step % cfg.log_every == 0 or step == end:
            tps = world * tokens_seen / max(1e-9, time.perf_counter() - t0)
            metrics = _mean_across(sums, world) | {"train/grad_norm": float(grad_norm), "train/lr": sched.get_last_lr()[0], "train/tokens_per_s": tps}
            if rank == 0:
                log(metrics, step)
        if bar:
            bar.set_postfix(loss=f"{sums['loss/total']:.3f}", tok_s=f"{tokens_seen / max(1e-9, time.perf_counter() - t0):.0f}",
                            refresh=False)  # drawn by update(), at most every mininterval
            bar.update(1)
        if (step % cfg.checkpoint_every == 0 or step == end) and rank == 0:
            save_checkpoint(ckpt, core, opt, sched, step, prior_seconds + time.perf_counter() - t0,
                            state_meta | {"tokens": prior_tokens + tokens_seen}, checkpoint_files)
    if bar:
        bar.close()
    if head_input is not None:
        head_input.remove()
    if step >= cfg.steps and rank == 0:
        geometry = {t: params.render.task(t).model_dump() | {"canvas_cells": params.canvas_cells(t),
                        "sizes": list(params.generate.task(t).sizes)} for t in cfg.tasks}
        meta = {"run": run, "variant": spec.variant, "ld_weight": spec.ld_weight, "tasks": list(cfg.tasks), "steps": step,
                **trace_settings(params.tokenize), "render": geometry}
        save_model(core, vocab, tokenizer_dir, out_dir / "model", meta)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    # seconds and tokens: the whole training, over every resumption; resumed_from_step: where this process began
    return summary | {"step": step, "seconds": round(prior_seconds + time.perf_counter() - t0, 1),
                      "tokens": prior_tokens + tokens_seen} | (
        {"resumed_from_step": start_step} if resume else {})


def save_model(model, vocab: Vocab, tokenizer_dir: Path, directory: Path, meta: dict | None = None) -> None:
    """The final model directory: weights (safetensors), config, both tokenizers and
    ``mvot.json`` (run, variant, tasks: what decoding needs to know). Written to
    ``<directory>.tmp`` and swapped in whole: a kill or a full disk leaves the old model (or
    none), never a directory that loads with half its files."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():  # left by a save that was cut off
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if hasattr(model, "merge_and_unload"):  # LoRA: ship merged full weights
        model = model.merge_and_unload()
    model.save_pretrained(str(tmp), safe_serialization=True)
    (tmp / "mvot.json").write_text(json.dumps(meta or {}, indent=2, sort_keys=True) + "\n")
    tok = tmp / "tokenizer"
    tok.mkdir()
    for name in TOKENIZER_FILES:
        shutil.copy2(tokenizer_dir / name, tok / name)
    replace_atomically(tmp, directory)
