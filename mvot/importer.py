"""Import the MVoT paper's released data format (see shared/mvot-format-samples/README.md).

* MAZE ``gridN.json``: a list of paths with ``maze_info`` (maze-dataset connection list,
  flattened), ``path_locs``, ``action_list`` (``up-1``...), ``candidate_locs`` (A-D),
  ``grid_num`` and ``file_prefix``; images ``<file_prefix>_<k>.jpg`` for k = 1..len(path)
  relative to the folder above ``gridN.json``'s folder.
* FROZENLAKE ``levelN/data.json``: env id -> environment with ``env_desc`` and, per path,
  ``actions`` (Gymnasium ids), ``states`` (flat cells), ``rewards``, ``exec_states``,
  ``additional_actions``, ``data_id``; images ``levelN/<data_id>/<k>.png``, k = 0..

Each record is rebuilt with our worlds: the actions are replayed, and the states, the
outcome and the answer must equal what the file says, and every image must exist. Any
disagreement or malformed record stops the import with its file and record named; nothing
is written unless every record passed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from mvot.config import Params
from mvot.worlds import InvalidInstance, frozenlake, maze
from mvot.worlds.base import Instance

_MAZE_ACTION = re.compile(r"^(up|down|left|right)-1$")
_EXEC_ANSWER = {"success": "A", "terminated": "B", "truncated": "C"}


class FormatError(InvalidInstance):
    """A record of the paper's format is malformed or disagrees with our worlds."""


def _cell(x: Any, n: int, what: str) -> tuple[int, int]:
    if not (isinstance(x, (list, tuple)) and len(x) == 2 and all(isinstance(v, int) for v in x)):
        raise FormatError(f"{what} must be a [row, col] pair of ints, got {x!r}")
    if not (0 <= x[0] < n and 0 <= x[1] < n):
        raise FormatError(f"{what} {x!r} lies outside the {n}x{n} grid")
    return (x[0], x[1])


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not readable JSON ({exc})") from None


def import_maze_file(path: Path, check_images: bool = True) -> list[Instance]:
    records = _read_json(path)
    if not isinstance(records, list):
        raise FormatError(f"{path}: expected a list of paths, got {type(records).__name__}")
    root = path.parent.parent
    out = []
    for i, rec in enumerate(records):
        where = f"{path} record {i}"
        try:
            n = rec["grid_num"]
            if not isinstance(n, int) or n < 2:
                raise FormatError(f"grid_num must be an int >= 2, got {n!r}")
            conn = rec["maze_info"]
            maze.check_connections(n, conn)
            locs = [_cell(c, n, "path_locs item") for c in rec["path_locs"]]
            cands = tuple(_cell(c, n, "candidate_locs item") for c in rec["candidate_locs"])
            if len(cands) != 4 or len(set(cands)) != 4:
                raise FormatError(f"candidate_locs must be 4 distinct cells, got {rec['candidate_locs']!r}")
            actions = []
            for a in rec["action_list"]:
                m = _MAZE_ACTION.match(str(a))
                if not m:
                    raise FormatError(f"action {a!r} is not one of up-1/down-1/left-1/right-1")
                actions.append(m.group(1))
            if len(locs) != len(actions) + 1:
                raise FormatError(f"{len(locs)} path_locs for {len(actions)} actions (expected one more cell than actions)")
            s0 = maze.MazeState(n, conn, locs[0], cands, (locs[0],))
            states, answer = maze.run(s0, tuple(actions))
            if list(states[-1].path) != locs:
                raise FormatError(f"replaying the actions gives path {list(states[-1].path)}, the file says {locs}")
            uid = f"maze-grid{n}-path{rec.get('path_id', i)}"
            if check_images:
                prefix = root / str(rec["file_prefix"])
                missing = [k for k in range(1, len(locs) + 1) if not Path(f"{prefix}_{k}.jpg").is_file()]
                if missing:
                    raise FormatError(f"images {prefix}_<k>.jpg missing for k = {missing}")
        except KeyError as exc:
            raise FormatError(f"{where}: missing field {exc}") from None
        except (InvalidInstance, TypeError, ValueError) as exc:
            raise FormatError(f"{where}: {exc}") from None
        out.append(Instance("maze", uid, tuple(actions), states, answer))
    return out


def import_frozenlake_level(level_dir: Path, check_images: bool = True) -> list[Instance]:
    path = level_dir / "data.json"
    envs = _read_json(path)
    if not isinstance(envs, dict):
        raise FormatError(f"{path}: expected env id -> environment, got {type(envs).__name__}")
    out = []
    for env_id, env in envs.items():
        try:
            flat = env["env_desc"]
            n = int(round(len(flat) ** 0.5))
            if not isinstance(flat, str) or n * n != len(flat):
                raise FormatError(f"env_desc must be a square map flattened row-major, got {flat!r}")
            desc = tuple(flat[r * n : (r + 1) * n] for r in range(n))
            s0 = frozenlake.initial_state(desc)
            fields = ("actions", "states", "rewards", "exec_states", "additional_actions", "data_id")
            lengths = {f: len(env[f]) for f in fields}
            if len(set(lengths.values())) != 1:
                raise FormatError(f"per-path lists differ in length: {lengths}")
        except KeyError as exc:
            raise FormatError(f"{path} env {env_id}: missing field {exc}") from None
        except (InvalidInstance, TypeError) as exc:
            raise FormatError(f"{path} env {env_id}: {exc}") from None
        for j in range(lengths["actions"]):
            where = f"{path} env {env_id} path {j}"
            try:
                ids = [*env["actions"][j], *env["additional_actions"][j]]
                if any(not isinstance(a, int) or not 0 <= a < 4 for a in ids):
                    raise FormatError(f"actions must be Gymnasium ids 0..3, got {ids}")
                actions = tuple(frozenlake.ACTIONS[a] for a in ids)
                states, answer = frozenlake.run(s0, actions)
                visited = [r * n + c for r, c in (s.agent for s in states)]
                if visited != list(env["states"][j]):
                    raise FormatError(f"replaying the actions visits {visited}, the file says {env['states'][j]}")
                if len(states) - 1 != len(env["actions"][j]):
                    raise FormatError("the episode ends at a different step than the file's action list")
                want = _EXEC_ANSWER.get(env["exec_states"][j])
                if want is None:
                    raise FormatError(f"exec_state {env['exec_states'][j]!r} is not success/terminated/truncated")
                if want != answer:
                    raise FormatError(f"the file says {env['exec_states'][j]} ({want}), our world gives answer {answer}")
                if float(env["rewards"][j]) != (1.0 if answer == "A" else 0.0):
                    raise FormatError(f"reward {env['rewards'][j]} disagrees with answer {answer}")
                data_id = env["data_id"][j]
                if check_images:
                    missing = [k for k in range(len(states)) if not (level_dir / str(data_id) / f"{k}.png").is_file()]
                    if missing:
                        raise FormatError(f"images {level_dir}/{data_id}/<k>.png missing for k = {missing}")
            except (InvalidInstance, TypeError, ValueError, IndexError) as exc:
                raise FormatError(f"{where}: {exc}") from None
            out.append(Instance("frozenlake", f"frozenlake-{level_dir.name}-{data_id}", actions, states, answer))
    return out


def find_sources(path: Path) -> list[tuple[str, Path]]:
    """``(task, source)`` pairs under ``path``: maze grid files and frozenlake level folders."""
    if path.is_file():
        if re.fullmatch(r"grid\d+\.json", path.name):
            return [("maze", path)]
        if path.name == "data.json":
            return [("frozenlake", path.parent)]
        raise FormatError(f"{path}: neither a maze gridN.json nor a frozenlake data.json")
    if not path.is_dir():
        raise FormatError(f"{path}: no such file or directory")
    if (path / "data.json").is_file():
        return [("frozenlake", path)]
    found = [("maze", p) for p in sorted(path.rglob("grid*.json")) if re.fullmatch(r"grid\d+\.json", p.name)]
    found += [("frozenlake", p.parent) for p in sorted(path.rglob("data.json"))]
    if not found:
        raise FormatError(f"{path}: found no maze gridN.json or frozenlake levelN/data.json in it")
    return found


def import_mvot(path: Path, out_dir: Path, params: Params | None = None) -> dict[str, int]:
    """Import everything under ``path`` into ``out_dir/<task>/<name>.jsonl``; all or nothing."""
    batches: list[tuple[Path, list[Instance], Path]] = []
    for task, src in find_sources(Path(path)):
        if task == "maze":
            insts = import_maze_file(src)
            name = src.stem
        else:
            insts = import_frozenlake_level(src)
            name = src.name
        if params is not None:
            fit = max(params.generate.task(task).sizes)
            too_big = [i.uid for i in insts if i.size > fit]
            if too_big:
                raise FormatError(f"{src}: grids larger than the largest {task} size in params ({fit}): {too_big[:3]}; add the size to generate.{task}.sizes")
        if not insts:
            raise FormatError(f"{src}: holds no instance")
        batches.append((Path(out_dir) / task / f"{name}.jsonl", insts, src))
    seen: dict[Path, Path] = {}
    for dest, _, src in batches:  # e.g. train/frozenlake/level3 and test/frozenlake/level3: one file each would overwrite
        if dest in seen:
            raise FormatError(f"{seen[dest]} and {src} would both be written to {dest}; import them one at a time, "
                              "each into its own --out folder")
        seen[dest] = src
    tmps: list[Path] = []
    made: list[Path] = []  # folders this call created, removed again if writing fails
    try:
        for dest, insts, _ in batches:
            for d in reversed([dest.parent, *dest.parent.parents]):
                if not d.exists():
                    d.mkdir()
                    made.append(d)
            tmps.append(dest.with_suffix(".jsonl.tmp"))
            tmps[-1].write_text("".join(i.dumps() + "\n" for i in insts))
    except OSError as exc:
        for t in tmps:
            if t.is_file():
                t.unlink()
        for d in reversed(made):
            d.rmdir()
        raise FormatError(f"{out_dir}: cannot write the imported instances there ({exc}); give --out a writable folder") from None
    written = {}
    for (dest, insts, _), tmp in zip(batches, tmps, strict=True):
        os.replace(tmp, dest)
        written[str(dest)] = len(insts)
    return written
