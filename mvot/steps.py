"""Step positions: which action of the question, and which step of the response, a token belongs to.

A from-scratch model has to fetch the k-th action of the question when it writes step k.
With only 1D positions that is a counting problem (the question's actions are a few tokens
apart, the response's steps a whole image apart), which small transformers learn slowly:
issue 7's models wrote the whole action list right for only a third to a half of the
instances. ``train.model.step_pos: N`` gives every token a learned *step* embedding
(``mvot/model.py``) so the lookup becomes a content match, as ``grid_pos`` does for image
cells. The prompt text stays the paper's; the index is read off the text itself:

* in the question, inside the action list (after ``Full Action Sequence:`` up to the end
  of that line), a token belongs to action k once the first word of the k-th action
  (``Go``, ``Pick``, ``Put``) is complete; every other prompt token has index 0;
* in the response, a token's index is the number of actions written so far, counting the
  action word that this token completes. Step k's text, its image and everything up to
  the next action word share index k; the final line carries the last step's index.

Both are causal: a token's index depends only on the text up to and including it, so a
decoder can track it token by token (:class:`StepCounter`) and gets exactly what training
saw (:meth:`StepIndexer.index` on the whole sequence; tested equal). Indices above the
model's ``step_pos`` are clamped to it. Causality has a price: the end of the word is not
looked at, so a generated word that merely starts like an action word ("Goal") counts as
a step too; no trace text has such a word, so only a model's own mistakes can hit it.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np

LIST_MARK = "Full Action Sequence:"


@cache
def action_words() -> tuple[str, ...]:
    """First words of every task's action texts (``Go``, ``Pick``, ``Put``)."""
    from mvot.config import TASKS
    from mvot.traces import action_text
    from mvot.worlds import world

    return tuple(sorted({action_text(t, a).split()[0] for t in TASKS for a in world(t).ACTIONS}))


@cache
def word_re() -> re.Pattern:
    return re.compile(r"(?<![A-Za-z0-9_])(?:" + "|".join(map(re.escape, action_words())) + ")")


class StepIndexer:
    """Per-token step indices of token sequences of one vocabulary and text tokenizer."""

    def __init__(self, text_tokenizer, n_text: int, limit: int):
        self.text = text_tokenizer
        self.n_text = int(n_text)  # ids >= n_text are <boi>, <eoi> and image codes: no text
        self.limit = int(limit)
        self._pieces: dict[int, str] = {}

    def piece(self, token: int) -> str:
        """The text a token contributes ("" for non-text tokens and special tokens)."""
        s = self._pieces.get(token)
        if s is None:
            s = "" if token >= self.n_text else self.text.decode([token], skip_special_tokens=True)
            self._pieces[token] = s
        return s

    def index(self, ids, response_start: int) -> np.ndarray:
        """int64 step index of every token of ``ids``; the response begins at ``response_start``."""
        ids = np.asarray(ids).tolist()
        pieces = [self.piece(t) for t in ids]
        lens = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        ends = np.cumsum(lens)
        starts = ends - lens
        text = "".join(pieces)
        out = np.zeros(len(ids), dtype=np.int64)
        response_start = min(max(int(response_start), 0), len(ids))
        resp_char = int(starts[response_start]) if response_start < len(ids) else len(text)
        mark = text.find(LIST_MARK, 0, resp_char)
        if mark >= 0:
            a = mark + len(LIST_MARK)
            b = text.find("\n", a, resp_char)
            b = resp_char if b < 0 else b
            done = [m.end() for m in word_re().finditer(text, a, b)]
            sel = np.flatnonzero((starts >= a) & (starts < b) & (lens > 0))
            out[sel] = np.searchsorted(done, ends[sel], side="right")
        done = [m.end() for m in word_re().finditer(text, resp_char)]
        out[response_start:] = np.searchsorted(done, ends[response_start:], side="right")
        return np.minimum(out, self.limit)

    def counter(self, prompt=()) -> StepCounter:
        """A counter for the response that follows ``prompt`` (its last characters matter for
        the word-boundary test only)."""
        c = StepCounter(self)
        c._tail = "".join(self.piece(t) for t in np.asarray(prompt).tolist()[-8:])[-StepCounter._TAIL :]
        return c


class StepCounter:
    """The response's step index, token by token (what :meth:`StepIndexer.index` gives)."""

    _TAIL = 16  # characters kept: more than the longest action word plus its left neighbour

    def __init__(self, indexer: StepIndexer):
        self.indexer = indexer
        self.count = 0
        self._tail = ""

    def push(self, token: int) -> int:
        """Index of ``token``, the next token of the response."""
        s = self.indexer.piece(token)
        if s:
            old = len(self._tail)
            text = self._tail + s
            self.count += sum(1 for m in word_re().finditer(text, max(0, old - 8)) if m.end() > old)
            self._tail = text[-self._TAIL :]
        return min(self.count, self.indexer.limit)
