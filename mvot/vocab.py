"""The unified vocabulary: where text ids end and image codes begin.

Layout (one object owns it; everything else asks it)::

    [0, n_text)                          text tokenizer ids (its specials <pad> <bos> <eos> <unk> first)
    n_text                               <boi>  begin of image
    n_text + 1                           <eoi>  end of image
    [n_text + 2, n_text + 2 + n_codes)   image codes 0 .. n_codes - 1

An image span is always ``<boi>``, exactly ``tokens_per_image[task]`` codes, ``<eoi>``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mvot.errors import MvotError


class VocabError(MvotError, ValueError):
    """A token sequence breaks the vocabulary's rules (e.g. an image span of the wrong length)."""


@dataclass(frozen=True)
class Vocab:
    n_text: int
    n_codes: int
    tokens_per_image: dict[str, int] = field(default_factory=dict)
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    @property
    def boi(self) -> int:
        return self.n_text

    @property
    def eoi(self) -> int:
        return self.n_text + 1

    @property
    def image_offset(self) -> int:
        return self.n_text + 2

    @property
    def size(self) -> int:
        return self.n_text + 2 + self.n_codes

    def code_ids(self, codes) -> np.ndarray:
        """Image codes -> token ids."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= self.n_codes):
            raise VocabError(f"image codes must lie in 0..{self.n_codes - 1}")
        return codes + self.image_offset

    def codes_of(self, ids) -> np.ndarray:
        """Token ids -> image codes (every id must be an image code)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not self.is_code(ids).all():
            raise VocabError("not every id is an image code")
        return ids - self.image_offset

    def is_code(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= self.image_offset) & (ids < self.size)

    def is_text(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= 0) & (ids < self.n_text)

    def image_span(self, codes, task: str) -> np.ndarray:
        """``<boi> codes <eoi>`` as ids; the code count must match the task."""
        want = self.tokens_per_image[task]
        if len(codes) != want:
            raise VocabError(f"a {task} image has {want} tokens, got {len(codes)}")
        return np.concatenate([[self.boi], self.code_ids(codes), [self.eoi]])

    def split(self, ids, task: str) -> list[tuple[str, np.ndarray]]:
        """Cut a sequence into ``("text", text ids)`` and ``("image", codes)`` parts.

        Raises :class:`VocabError` on an unclosed image, a stray ``<eoi>``, an image of the
        wrong length or a non-code inside an image."""
        ids = np.asarray(ids, dtype=np.int64)
        want = self.tokens_per_image[task]
        parts: list[tuple[str, np.ndarray]] = []
        i, start = 0, 0
        while i < len(ids):
            if ids[i] == self.eoi:
                raise VocabError(f"<eoi> at position {i} without an open image")
            if ids[i] != self.boi:
                i += 1
                continue
            if i > start:
                parts.append(("text", ids[start:i]))
            end = i + 1 + want
            if end >= len(ids) or ids[end] != self.eoi:
                got = next((j for j in range(i + 1, len(ids)) if ids[j] in (self.eoi, self.boi)), len(ids)) - i - 1
                raise VocabError(f"image at position {i} has {got} tokens before its end; a {task} image has {want}")
            body = ids[i + 1 : end]
            if not self.is_code(body).all():
                raise VocabError(f"image at position {i} holds ids that are not image codes")
            parts.append(("image", body - self.image_offset))
            i = start = end + 1
        if start < len(ids):
            parts.append(("text", ids[start:]))
        return parts

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        try:
            vocab = cls(**json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise VocabError(f"{path}: missing; run `dvc repro tokenizer`") from None
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
            raise VocabError(f"{path}: unreadable vocabulary ({exc}); run `dvc repro tokenizer`") from None
        ints = {k: getattr(vocab, k) for k in ("n_text", "n_codes", "pad_id", "bos_id", "eos_id")}
        bad = [k for k, v in ints.items() if type(v) is not int or v < 0]
        tpi = vocab.tokens_per_image
        if not bad and not (isinstance(tpi, dict) and all(isinstance(k, str) and type(v) is int and v > 0 for k, v in tpi.items())):
            bad = ["tokens_per_image"]
        if bad:
            raise VocabError(f"{path}: corrupt vocabulary ({bad[0]} = {getattr(vocab, bad[0])!r}: want a non-negative integer, "
                             "or task -> positive integer for tokens_per_image); run `dvc repro tokenizer`")
        return vocab
