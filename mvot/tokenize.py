"""The ``tokenize`` stage: every split's traces of every variant as token arrays.

Layout of ``data/tokens/<task>/<split>/``::

    <variant>/tokens.npy       int32, all sequences concatenated
    <variant>/offsets.npy      int64 (N + 1,): sequence i is tokens[offsets[i]:offsets[i+1]]
    <variant>/supervised.npy   bool: positions the model must predict (its output parts and <eos>)
    <variant>/image.npy        bool: positions holding image codes
    initial_codes.npy          int16 (N, K + 1, T): the initial image's codes after k = 0..K
                               encode->decode round trips (the paper's input augmentation)
    initial_pos.npy            int64 (N,): where the initial image's codes start, in every
                               variant (all variants share the prompt)
    ids.txt                    instance ids in order

plus ``metrics/tokens/<task>.json``: sequence-length statistics per split and variant.
Every array file is a plain ``.npy``, memory-mappable with ``np.load(..., mmap_mode="r")``.
A sequence is ``<bos> prompt-and-output <eos>``; images are ``<boi>`` codes ``<eoi>``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvot import vq
from mvot.config import SPLITS, Params
from mvot.data import DataError, iter_images, read_split
from mvot.tokenizers import PatchCoder, augment_codes, frame_array, load_text_tokenizer
from mvot.traces import Trace, build_with
from mvot.vocab import Vocab
from mvot.worlds import Instance


@dataclass
class Encoded:
    tokens: np.ndarray  # int32 (L,)
    supervised: np.ndarray  # bool (L,)
    image: np.ndarray  # bool (L,)


class TraceEncoder:
    """Turns traces into token ids with the frozen tokenizers (text ids cached by string)."""

    def __init__(self, vocab: Vocab, text_tokenizer):
        self.vocab = vocab
        self.text = text_tokenizer
        self._cache: dict[str, list[int]] = {}

    def text_ids(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self._cache[text] = self.text.encode(text, add_special_tokens=False).ids
        return ids

    def encode(self, trace: Trace, task: str, codes: list[np.ndarray]) -> Encoded:
        """``codes[k]`` are the image codes of state k."""
        v = self.vocab
        toks, sup, img = [v.bos_id], [False], [False]
        for part in trace.parts:
            if part.is_image:
                span = v.image_span(codes[part.state], task)
                toks += span.tolist()
                sup += [part.output] * len(span)
                img += [False] + [True] * (len(span) - 2) + [False]
            else:
                ids = self.text_ids(part.text)
                toks += ids
                sup += [part.output] * len(ids)
                img += [False] * len(ids)
        toks.append(v.eos_id)
        sup.append(True)
        img.append(False)
        return Encoded(np.array(toks, np.int32), np.array(sup, bool), np.array(img, bool))

    def decode(self, tokens, task: str) -> list[tuple[str, object]]:
        """Token ids -> ``("text", str)`` and ``("image", codes)`` parts (specials dropped)."""
        v = self.vocab
        out: list[tuple[str, object]] = []
        body = [t for t in np.asarray(tokens).tolist() if t not in (v.bos_id, v.eos_id, v.pad_id)]
        for kind, ids in v.split(body, task):
            out.append(("text", self.text.decode(ids.tolist(), skip_special_tokens=False)) if kind == "text" else ("image", ids))
        return out


def instance_codes(coder: PatchCoder, task_dir: Path, split: str, insts: list[Instance]) -> dict[str, list[np.ndarray]]:
    """Codes of every state image of ``insts`` (of one split), read from its image archive."""
    want = {i.uid: len(i.states) for i in insts}
    out: dict[str, list] = {uid: [None] * n for uid, n in want.items()}
    batch_names, batch = [], []

    def flush():
        if batch:
            for name, c in zip(batch_names, coder.encode(np.stack(batch)), strict=True):
                uid, k = name.rsplit("/", 1)
                out[uid][int(k.removesuffix(".png"))] = c
            batch_names.clear()
            batch.clear()

    for name, img in iter_images(task_dir, split):
        if name.rsplit("/", 1)[0] not in out:  # an instance not asked for
            continue
        batch_names.append(name)
        batch.append(frame_array(img))
        if len(batch) >= 512:
            flush()
    flush()
    missing = [uid for uid, cs in out.items() if any(c is None for c in cs)]
    if missing:
        raise DataError(f"{task_dir}/{split}.images.zip lacks images of {missing[:3]}; regenerate with `dvc repro -f generate`")
    return out


def _stats(lengths: np.ndarray, sup: int, img: int, total: int) -> dict:
    return {
        "sequences": int(len(lengths)),
        "tokens": int(total),
        "mean_len": round(float(lengths.mean()), 1),
        "p95_len": int(np.percentile(lengths, 95)),
        "max_len": int(lengths.max()),
        "supervised_share": round(sup / total, 4),
        "image_share": round(img / total, 4),
    }


def tokenize_task(params: Params, task: str, raw_dir, tokenizer_dir, out_dir, stats_dir) -> dict:
    """Tokenize all splits and variants of ``task``; outputs appear only when complete."""
    raw_dir, tokenizer_dir, out_dir, stats_dir = (Path(p) for p in (raw_dir, tokenizer_dir, out_dir, stats_dir))
    vocab = Vocab.load(tokenizer_dir / "vocab.json")
    if vocab.tokens_per_image.get(task) != params.tokens_per_image(task):
        raise vq.CheckpointError(
            f"{tokenizer_dir}: built for {vocab.tokens_per_image.get(task)} tokens per {task} image, params give "
            f"{params.tokens_per_image(task)}; run `dvc repro tokenizer`"
        )
    coder = PatchCoder(vq.load(tokenizer_dir))
    enc = TraceEncoder(vocab, load_text_tokenizer(tokenizer_dir))
    roundtrip = coder.roundtrip_map()
    cfg = params.tokenize
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{task}.", dir=out_dir))
    tmp.chmod(0o755)
    stats: dict = {"task": task, "tokens_per_image": params.tokens_per_image(task), "vocab_size": vocab.size, "splits": {}}
    try:
        for split in SPLITS:
            insts = read_split(raw_dir / task, split)
            codes = instance_codes(coder, raw_dir / task, split, insts)
            d = tmp / split
            d.mkdir()
            (d / "ids.txt").write_text("".join(i.uid + "\n" for i in insts))
            initial = np.stack([codes[i.uid][0] for i in insts])
            np.save(d / "initial_codes.npy", augment_codes(initial, roundtrip, params.tokenizer.augment_max_k).astype(np.int16))
            stats["splits"][split] = {}
            initial_pos = None
            for variant in cfg.variants:
                seqs = [enc.encode(build_with(i, variant, cfg), task, codes[i.uid]) for i in insts]
                pos = np.array([int(np.argmax(s.image)) for s in seqs], dtype=np.int64)
                if initial_pos is None:
                    initial_pos = pos
                elif not np.array_equal(pos, initial_pos):
                    raise DataError(f"{task}/{split}: variants disagree on the prompt; traces are inconsistent")
                lengths = np.array([len(s.tokens) for s in seqs], dtype=np.int64)
                vd = d / variant
                vd.mkdir()
                np.save(vd / "tokens.npy", np.concatenate([s.tokens for s in seqs]))
                np.save(vd / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]))
                np.save(vd / "supervised.npy", np.concatenate([s.supervised for s in seqs]))
                np.save(vd / "image.npy", np.concatenate([s.image for s in seqs]))
                stats["splits"][split][variant] = _stats(
                    lengths, sum(int(s.supervised.sum()) for s in seqs), sum(int(s.image.sum()) for s in seqs), int(lengths.sum())
                )
            np.save(d / "initial_pos.npy", initial_pos)
        stats_dir.mkdir(parents=True, exist_ok=True)
        stats_tmp = stats_dir / f".{task}.json.tmp"
        stats_tmp.write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = out_dir / task
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    stats_tmp.replace(stats_dir / f"{task}.json")
    return stats


@dataclass
class TokenSplit:
    """Memory-mapped token arrays of one task, split and variant."""

    tokens: np.ndarray
    offsets: np.ndarray
    supervised: np.ndarray
    image: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sequence(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.tokens[a:b], self.supervised[a:b], self.image[a:b]


def load_split(tokens_dir, task: str, split: str, variant: str) -> TokenSplit:
    d = Path(tokens_dir) / task / split / variant
    try:
        arrays = {name: np.load(d / f"{name}.npy", mmap_mode="r") for name in ("tokens", "offsets", "supervised", "image")}
    except FileNotFoundError as exc:
        raise DataError(f"{d}: missing token arrays ({exc.filename}); run `dvc repro tokenize`") from None
    except (ValueError, EOFError, OSError) as exc:  # a truncated or empty .npy, an unreadable file
        raise DataError(f"{d}: corrupt token arrays ({exc}); run `dvc repro -f tokenize`") from None
    ts = TokenSplit(**arrays)
    n = len(ts.tokens)
    if ts.offsets[-1] != n or len(ts.supervised) != n or len(ts.image) != n:
        raise DataError(f"{d}: token arrays disagree in length; run `dvc repro -f tokenize`")
    return ts
