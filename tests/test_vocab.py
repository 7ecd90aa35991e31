import numpy as np
import pytest

from mvot.vocab import Vocab, VocabError

# 10 text ids, 5 image codes, 2 tokens per image of task "t":
# text 0..9 | <boi>=10 | <eoi>=11 | codes 0..4 -> ids 12..16
V = Vocab(n_text=10, n_codes=5, tokens_per_image={"t": 2})


def test_layout_by_hand():
    assert (V.boi, V.eoi, V.image_offset, V.size) == (10, 11, 12, 17)
    assert V.code_ids([0, 4]).tolist() == [12, 16]
    assert V.codes_of([12, 16]).tolist() == [0, 4]
    assert V.is_code([9, 10, 11, 12, 16, 17]).tolist() == [False, False, False, True, True, False]
    assert V.is_text([0, 9, 10]).tolist() == [True, True, False]
    assert V.image_span([3, 1], "t").tolist() == [10, 15, 13, 11]


def test_split_round_trip():
    seq = [1, 2, 10, 12, 13, 11, 5, 10, 16, 16, 11]
    parts = V.split(seq, "t")
    assert [(k, p.tolist()) for k, p in parts] == [("text", [1, 2]), ("image", [0, 1]), ("text", [5]), ("image", [4, 4])]
    rebuilt = []
    for kind, p in parts:
        rebuilt += V.image_span(p, "t").tolist() if kind == "image" else p.tolist()
    assert rebuilt == seq


@pytest.mark.parametrize(
    "seq, message",
    [
        ([1, 10, 12, 11], "image at position 1 has 1 tokens before its end; a t image has 2"),
        ([1, 10, 12, 12, 12, 11], "image at position 1 has 3 tokens before its end; a t image has 2"),
        ([1, 10, 12, 12], "image at position 1 has 2 tokens before its end"),
        ([1, 11], "<eoi> at position 1 without an open image"),
        ([10, 12, 3, 11], "holds ids that are not image codes"),
    ],
)
def test_malformed_image_spans(seq, message):
    with pytest.raises(VocabError, match=message):
        V.split(seq, "t")


def test_wrong_count_and_range():
    with pytest.raises(VocabError, match="a t image has 2 tokens, got 3"):
        V.image_span([0, 1, 2], "t")
    with pytest.raises(VocabError, match="image codes must lie in 0..4"):
        V.code_ids([5])


def test_save_load(tmp_path):
    V.save(tmp_path / "vocab.json")
    assert Vocab.load(tmp_path / "vocab.json") == V
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(VocabError, match="unreadable vocabulary"):
        Vocab.load(tmp_path / "bad.json")
    assert np.array_equal(V.code_ids([]), np.array([], dtype=np.int64))
