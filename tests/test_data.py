import hashlib
import json
import zipfile

import pytest
import yaml

from mvot import data
from mvot.cli import main
from mvot.config import parse_params
from mvot.worlds import world
from tests.conftest import TASKS, tiny_raw


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tiny_generated):
    return tiny_generated


def test_outputs_stats_and_balance(generated, tiny_params):
    root, stats = generated
    for task in TASKS:
        for split in ("train", "val", "test"):
            assert (root / "raw" / task / f"{split}.jsonl").is_file()
            assert (root / "raw" / task / f"{split}.images.zip").is_file()
            s = stats[task]["splits"][split]
            assert s["instances"] == tiny_params.generate.task(task).splits.of(split)
            counts = list(s["answers"].values())
            assert max(counts) - min(counts) <= 1, s["answers"]
            sizes = list(s["sizes"].values())
            assert max(sizes) - min(sizes) <= 1 and len(sizes) == len(tiny_params.generate.task(task).sizes)
        assert json.loads((root / "stats" / f"{task}.json").read_text()) == stats[task]
        assert (root / "contact" / f"{task}.png").stat().st_size > 1000


def test_splits_are_disjoint_by_layout(generated):
    root, _ = generated
    for task in TASKS:
        keys = {}
        for split in ("train", "val", "test"):
            insts = data.read_split(root / "raw" / task, split)
            keys[split] = {world(task).layout_key(i.states[0]) for i in insts}
        assert not keys["train"] & keys["test"] and not keys["val"] & keys["test"] and not keys["train"] & keys["val"]


def test_every_state_has_its_image(generated, tiny_params):
    from mvot.render import Renderer

    root, _ = generated
    r = Renderer.from_params(tiny_params, "maze")
    insts = data.read_split(root / "raw" / "maze", "val")
    for inst in insts[:5]:
        for k, s in enumerate(inst.states):
            assert r.parse(data.load_image(root / "raw" / "maze", "val", inst.uid, k)) == s
    names = [n for n, _ in data.iter_images(root / "raw" / "maze", "val")]
    assert len(names) == sum(len(i.states) for i in insts)


@pytest.mark.slow
def test_same_params_same_bytes_whatever_the_workers(generated, tmp_path, raw_params):
    root, _ = generated
    raw = tiny_raw(raw_params)
    raw["generate"]["workers"] = 2
    p2 = parse_params(raw)
    for task in TASKS:
        data.generate_task(p2, task, tmp_path / "raw", tmp_path / "stats", tmp_path / "contact")
    assert _digest(tmp_path / "raw") == _digest(root / "raw")
    assert _digest(tmp_path / "stats") == _digest(root / "stats")


def test_test_split_does_not_depend_on_train_size(generated, tmp_path, raw_params):
    root, _ = generated
    p = parse_params(tiny_raw(raw_params, train=10))
    data.generate_task(p, "frozenlake", tmp_path / "raw", tmp_path / "stats", tmp_path / "contact")
    for name in ("test.jsonl", "test.images.zip", "val.jsonl"):
        assert (tmp_path / "raw" / "frozenlake" / name).read_bytes() == (root / "raw" / "frozenlake" / name).read_bytes()


def test_corrupt_files_give_clear_errors(generated, tmp_path):
    import shutil

    root, _ = generated
    d = tmp_path / "maze"
    shutil.copytree(root / "raw" / "maze", d)
    lines = (d / "val.jsonl").read_text().splitlines()
    rec = json.loads(lines[3])
    rec["answer"] = "D" if rec["answer"] != "D" else "A"
    lines[3] = json.dumps(rec)
    (d / "val.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(data.DataError, match=r"val.jsonl:4: corrupt record .*stored answer"):
        data.read_split(d, "val")
    (d / "test.jsonl").write_text('{"task": "maze", "id"\n')
    with pytest.raises(data.DataError, match=r"test.jsonl:1: corrupt record"):
        data.read_split(d, "test")
    blob = (d / "train.images.zip").read_bytes()
    (d / "train.images.zip").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(data.DataError, match="unreadable image archive"):
        list(data.iter_images(d, "train"))
    with pytest.raises(data.DataError, match="missing; run `dvc repro generate`"):
        data.read_split(tmp_path / "nowhere", "train")


def test_a_failure_leaves_previous_outputs_untouched(generated, tmp_path, tiny_params, monkeypatch):
    import shutil

    root, _ = generated
    shutil.copytree(root, tmp_path / "copy")
    before = _digest(tmp_path / "copy")

    def boom(*a, **k):
        raise data.DataError("verification failed")

    monkeypatch.setattr(data, "verify_task", boom)
    c = tmp_path / "copy"
    with pytest.raises(data.DataError):
        data.generate_task(tiny_params, "maze", c / "raw", c / "stats", c / "contact")
    assert _digest(c) == before
    assert not [p for p in (c / "raw").iterdir() if p.name.startswith(".")]


def test_cli_generate(tmp_path, raw_params, capsys):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(tiny_raw(raw_params, train=12, val=4, test=4)))
    code = main(["--params", str(p), "generate", "--task", "minibehavior", "--out", str(tmp_path / "raw"),
                 "--stats-dir", str(tmp_path / "stats"), "--sheet-dir", str(tmp_path / "contact")])
    assert code == 0
    out = capsys.readouterr().out
    assert "minibehavior: wrote" in out and "train n=    12" in out
    with zipfile.ZipFile(tmp_path / "raw" / "minibehavior" / "test.images.zip") as zf:
        assert all(n.endswith(".png") for n in zf.namelist())


@pytest.mark.parametrize("answers, sizes", [("ABC", (3, 4, 5, 6)), ("ABCD", (3, 4, 5, 6)), ("ABCD", (7, 9)), ("ABC", (3,))])
def test_balanced_cell_balances_every_prefix(answers, sizes):
    from collections import Counter

    cells = [data.balanced_cell(i, answers, sizes) for i in range(200)]
    for n in range(1, 200):
        a = Counter(c[0] for c in cells[:n])
        s = Counter(c[1] for c in cells[:n])
        assert max(a.values()) - min(a[x] for x in answers) <= 1
        assert max(s.values()) - min(s[x] for x in sizes) <= 1
    period = len(answers) * len(sizes)
    assert len(set(cells[: period * len(sizes)])) == period  # every pair occurs
