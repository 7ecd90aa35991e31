"""Step positions: which action of the question, and which step of the response, a token belongs to.

A from-scratch model has to fetch the k-th action of the question when it writes step k.
With only 1D positions that is a counting problem (the question's actions are a few tokens
apart, the response's steps a whole image apart), which small transformers learn slowly:
issue 7's models wrote the whole action list right for only a third to a half of the
instances. ``train.model.step_pos: N`` gives every token a learned *step* embedding
(``mvot/model.py``) so the lookup becomes a match of equal indices, as ``grid_pos`` does
for image cells. The prompt text stays the paper's; the index is read off the sequence:

* **question**: inside the action list (after ``Full Action Sequence:`` up to the end of
  that line) every token of the k-th action (``Go up.``, ``Pick up printer_0.``) has index
  k; every other prompt token has 0;
* **response**: from the prompt's last token on, a token's index is 1 + the number of
  steps completed up to and including it. A step completes at its image's ``<eoi>`` for
  the variants that draw (interleaved, mvot), and at the end of its last sentence for CoT
  (the agent's coordinates, ``(2, 1).``; in MINIBEHAVIOR the inventory, ``Carrying
  objects: None.``). So the token that predicts the first word of step k (the prompt's
  last token for step 1, then the previous image's ``<eoi>`` or the previous step's final
  period) carries k, and so does all of step k up to its end: choosing ``Go``, ``Pick``
  or ``Put`` and the direction after it are both a lookup of question action k. The final
  line carries n + 1 after n steps (the question has an action n + 1 exactly when actions
  are listed past the end of the episode).

The response index is causal: it depends only on the tokens up to and including this one,
so a decoder tracks it token by token (:class:`StepCounter`) and gets exactly what
training computed on whole sequences (:meth:`StepIndexer.index`; tested equal on every
trace). Indices above the model's ``step_pos`` are clamped to it.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np

LIST_MARK = "Full Action Sequence:"
# the end of a CoT step: its last sentence (mvot/traces.py, cot_step)
COT_STEP_END = {
    "frozenlake": re.compile(r"\(\d+, \d+\)\."),
    "maze": re.compile(r"\(\d+, \d+\)\."),
    "minibehavior": re.compile(r"Carrying objects: [^.]*\."),
}


@cache
def action_words() -> tuple[str, ...]:
    """First words of every task's action texts (``Go``, ``Pick``, ``Put``)."""
    from mvot.config import TASKS
    from mvot.traces import action_text
    from mvot.worlds import world

    return tuple(sorted({action_text(t, a).split()[0] for t in TASKS for a in world(t).ACTIONS}))


@cache
def word_re() -> re.Pattern:
    """An action word at a word start."""
    return re.compile(r"(?<![A-Za-z0-9_])(?:" + "|".join(map(re.escape, action_words())) + ")")


@cache
def action_re() -> re.Pattern:
    """A whole listed action: its first word up to its period."""
    return re.compile(word_re().pattern + r"[^.\n]*\.")


class StepIndexer:
    """Per-token step indices of token sequences of one vocabulary and text tokenizer."""

    def __init__(self, text_tokenizer, n_text: int, limit: int):
        self.text = text_tokenizer
        self.n_text = int(n_text)  # ids >= n_text are <boi>, <eoi> and image codes: no text
        self.eoi = self.n_text + 1
        self.limit = int(limit)
        self._pieces: dict[int, str] = {}

    def piece(self, token: int) -> str:
        """The text a token contributes ("" for non-text tokens and special tokens)."""
        s = self._pieces.get(token)
        if s is None:
            s = "" if token >= self.n_text else self.text.decode([token], skip_special_tokens=True)
            self._pieces[token] = s
        return s

    def index(self, ids, response_start: int, task: str, draws: bool) -> np.ndarray:
        """int64 step index of every token of ``ids``, a trace of ``task`` whose response
        begins at ``response_start``; ``draws``: a variant that draws (steps end at ``<eoi>``)."""
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
        if mark >= 0:  # the question's actions: a token belongs to the action its last character is in
            a = mark + len(LIST_MARK)
            b = text.find("\n", a, resp_char)
            b = resp_char if b < 0 else b
            spans = [(m.start(), m.end()) for m in action_re().finditer(text, a, b)]
            last = ends - 1
            for k, (s, e) in enumerate(spans, 1):
                out[(last >= s) & (last < e) & (lens > 0)] = k
        first = max(response_start - 1, 0)  # the prompt's last token predicts step 1
        done = np.zeros(len(ids), dtype=np.int64)
        if draws:
            done[response_start:] = np.asarray(ids[response_start:], dtype=np.int64) == self.eoi
        else:
            w = word_re().search(text, resp_char)  # steps begin with the first action word
            pattern = COT_STEP_END.get(task)
            if w is not None and pattern is not None:
                for m in pattern.finditer(text, w.start()):
                    done[int(np.searchsorted(ends, m.end(), side="left"))] += 1
        out[first:] = 1 + np.cumsum(done[first:])
        return np.minimum(out, self.limit)

    def counter(self, prompt, task: str, draws: bool) -> StepCounter:
        """A counter for the response of a trace of ``task`` that follows ``prompt``."""
        c = StepCounter(self, task, draws)
        c._tail = "".join(self.piece(t) for t in np.asarray(prompt).tolist()[-8:])[-StepCounter._TAIL :]
        return c


class StepCounter:
    """The response's step index, token by token (what :meth:`StepIndexer.index` gives)."""

    _TAIL = 48  # characters kept: more than the longest step-end sentence

    def __init__(self, indexer: StepIndexer, task: str, draws: bool):
        self.indexer = indexer
        self.draws = bool(draws)
        self.pattern = COT_STEP_END.get(task)
        self.done = 0
        self.started = False  # CoT: an action word was written
        self._tail = ""

    def push(self, token: int) -> int:
        """Index of ``token``, the next token of the response."""
        if self.draws:
            self.done += token == self.indexer.eoi
        elif self.pattern is not None and (s := self.indexer.piece(token)):
            old = len(self._tail)
            text = self._tail + s
            if not self.started and (w := word_re().search(text, max(0, old - 8))):
                self.started = True
                text, old = text[w.start():], old - w.start()  # steps begin with the first action word
            if self.started:
                self.done += sum(1 for m in self.pattern.finditer(text) if m.end() > old)
            self._tail = text[-self._TAIL :]
        return min(1 + self.done, self.indexer.limit)
