import json
import shutil

import pytest

from mvot.cli import main
from mvot.importer import FormatError, import_frozenlake_level, import_maze_file, import_mvot
from tests.conftest import SAMPLES

pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"paper samples not found at {SAMPLES}")
EXEC = {"success": "A", "terminated": "B", "truncated": "C"}


def test_samples_reproduce_every_answer():
    mazes = import_maze_file(SAMPLES / "maze" / "grid3.json")
    records = json.loads((SAMPLES / "maze" / "grid3.json").read_text())
    assert len(mazes) == len(records) == 6
    for inst, rec in zip(mazes, records, strict=True):
        truth = "ABCD"[[tuple(c) for c in rec["candidate_locs"]].index(tuple(rec["path_locs"][-1]))]
        assert inst.answer == truth
        assert [list(c) for c in inst.states[-1].path] == rec["path_locs"]
    lakes = import_frozenlake_level(SAMPLES / "frozenlake" / "level3")
    env = json.loads((SAMPLES / "frozenlake" / "level3" / "data.json").read_text())["0"]
    assert len(lakes) == 12
    assert [i.answer for i in lakes] == [EXEC[e] for e in env["exec_states"]]
    assert [len(i.extra_actions) for i in lakes] == [len(a) for a in env["additional_actions"]]


@pytest.fixture()
def samples(tmp_path):
    dst = tmp_path / "samples"
    shutil.copytree(SAMPLES, dst)
    return dst


def _edit(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["0"]["exec_states"].__setitem__(0, "terminated"), "env 0 path 0: the file says terminated (B), our world gives answer A"),
        (lambda d: d["0"]["states"].__setitem__(1, [7, 8]), "env 0 path 1: replaying the actions visits"),
        (lambda d: d["0"]["actions"].__setitem__(2, [3, 9]), "env 0 path 2: actions must be Gymnasium ids 0..3"),
        (lambda d: d["0"].pop("rewards"), "missing field 'rewards'"),
    ],
)
def test_frozenlake_disagreements_fail_loudly(samples, tmp_path, edit, message):
    _edit(samples / "frozenlake" / "level3" / "data.json", edit)
    out = tmp_path / "out"
    with pytest.raises(FormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_mvot(samples, out)
    assert not out.exists()  # all or nothing: the valid maze file was not written either


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d[0].__setitem__("action_list", ["up-1", "left-1", "left-1", "up-1", "up-1"]), "record 0: action 'left' from \\(0, 2\\) goes through a wall"),
        (lambda d: d[1].__setitem__("path_locs", d[1]["path_locs"][:-1]), "record 1: 6 path_locs for 6 actions"),
        (lambda d: d[2].__setitem__("candidate_locs", [[0, 0], [0, 0], [1, 1], [2, 2]]), "record 2: candidate_locs must be 4 distinct"),
        (lambda d: d[3].__setitem__("maze_info", "TTF"), "record 3: connection list must be 18 letters"),
        (lambda d: d[4].__setitem__("action_list", ["north"] * 4), "record 4: action 'north' is not one of"),
    ],
)
def test_maze_disagreements_fail_loudly(samples, tmp_path, edit, message):
    _edit(samples / "maze" / "grid3.json", edit)
    with pytest.raises(FormatError, match=message):
        import_mvot(samples / "maze" / "grid3.json", tmp_path / "out")


def test_missing_images_and_bad_json(samples, tmp_path):
    (samples / "maze" / "grid3" / "path_2_5.jpg").unlink()
    with pytest.raises(FormatError, match=r"record 2: images .*path_2_<k>.jpg missing for k = \[5\]"):
        import_maze_file(samples / "maze" / "grid3.json")
    (samples / "frozenlake" / "level3" / "data.json").write_text("{not json")
    with pytest.raises(FormatError, match="not readable JSON"):
        import_frozenlake_level(samples / "frozenlake" / "level3")


def test_cli_import_and_error_exit(samples, tmp_path, capsys):
    out = tmp_path / "imported"
    assert main(["import-mvot", str(SAMPLES), "--out", str(out)]) == 0
    assert len((out / "maze" / "grid3.jsonl").read_text().splitlines()) == 6
    assert len((out / "frozenlake" / "level3.jsonl").read_text().splitlines()) == 12
    assert main(["import-mvot", str(tmp_path / "nowhere"), "--out", str(out)]) == 1
    assert "no such file or directory" in capsys.readouterr().err


def test_unwritable_out_and_empty_source_write_nothing(samples, tmp_path):
    blocker = tmp_path / "o" / "frozenlake"  # the maze file would land first, then frozenlake/ cannot be made
    blocker.parent.mkdir()
    blocker.write_text("a file where a folder goes")
    with pytest.raises(FormatError, match=r"cannot write the imported instances there .*give --out a writable folder"):
        import_mvot(samples, tmp_path / "o")
    assert sorted(p.name for p in (tmp_path / "o").rglob("*")) == ["frozenlake"]  # no maze/ folder, no .tmp left
    (samples / "maze" / "grid3.json").write_text("[]")
    with pytest.raises(FormatError, match="grid3.json: holds no instance"):
        import_mvot(samples / "maze" / "grid3.json", tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_two_sources_with_one_destination_are_refused(samples, tmp_path):
    """train/frozenlake/level3 and test/frozenlake/level3 would both become frozenlake/level3.jsonl."""
    both = tmp_path / "both"
    shutil.copytree(samples, both / "train")
    shutil.copytree(samples, both / "test")
    with pytest.raises(FormatError, match=r"would both be written to .*grid3.jsonl; import them one at a time"):
        import_mvot(both, tmp_path / "o")
    assert not (tmp_path / "o").exists()
