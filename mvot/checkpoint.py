"""Checkpoint folders of training runs, without torch (so that a sweep can decide cheaply).

* :func:`training_fingerprint`: what a run's steps depend on, hashed in parts (params,
  tokens, tokenizer, backbone, code), so that a run continues only from a checkpoint of the
  same training and, where not, says which part changed;
* :func:`resumable`: whether a run may continue from a folder;
* :func:`install` / :func:`remove`: swap a new checkpoint in, or delete one, so that a
  kill at any moment leaves the old or the new checkpoint whole, never a half that looks
  resumable; :func:`recover` puts a whole one back after a kill mid-swap.

A checkpoint folder holds ``model.safetensors``, ``optimizer.pt``, any extra files (the
curve so far) and, written last, ``state.json`` (step, seconds, tokens, fingerprint, the
tracking run's id).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

from mvot.config import Params

CKPT = "checkpoint"  # a run's checkpoint folder in its output folder, unless placed elsewhere
PARTS = ("params", "tokens", "tokenizer", "backbone", "code")
# the modules that compute a training step: the train stage's code deps in dvc.yaml
TRAINING_SOURCES = ("mvot.train", "mvot.model", "mvot.losses", "mvot.steps")
REQUIRED = ("model.safetensors", "optimizer.pt", "state.json")
WHOLE = 64 << 20  # a backbone's files up to this size are hashed whole, larger ones (its weights) by size and both ends
EDGE = 8 << 20
# how to start a run afresh, for error messages
AFRESH = "start afresh (`mvot train` without --resume; `python -m flows.train --no-resume`)"


def _hash_tree(h, root: Path, files: list[Path], whole: bool = True) -> None:
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(root).as_posix()}\0{size}\0".encode())
        with f.open("rb") as fh:
            if whole or size <= WHOLE:
                h.update(hashlib.file_digest(fh, "sha256").digest())
            else:
                h.update(fh.read(EDGE))
                fh.seek(size - EDGE)
                h.update(fh.read(EDGE))


def _files(root: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file())


def training_fingerprint(params: Params, run: str, tokens_dir: str | Path, tokenizer_dir: str | Path) -> dict[str, str]:
    """What run ``run``'s steps depend on, one hash per part: ``params`` (the run's name and
    spec, the seed, the ``train`` section but for the other runs, ``checkpoint_every`` and
    ``log_every``), ``tokens`` (the train split's arrays of the run's variant, every training
    task), ``tokenizer`` (every file), ``backbone`` (a pretrained one's files; big files by
    size and both ends) and ``code`` (the training modules' source). A missing folder
    hashes as missing: the training itself then names it."""
    cfg = params.train
    spec = cfg.runs.get(run)
    train = cfg.model_dump(mode="json", exclude={"runs", "checkpoint_every", "log_every"})
    parts = {"params": hashlib.sha256(json.dumps(
        {"run": run, "spec": spec.model_dump(mode="json") if spec else None, "seed": params.seed, "train": train},
        sort_keys=True).encode())}
    parts["tokens"] = h = hashlib.sha256()
    for task in cfg.tasks:
        root = Path(tokens_dir) / task / "train"
        h.update(f"{task}\0".encode())
        _hash_tree(h, root, _files(root) + (_files(root / spec.variant, "**/*") if spec else []))
    parts["tokenizer"] = h = hashlib.sha256()
    _hash_tree(h, Path(tokenizer_dir), _files(Path(tokenizer_dir), "**/*"))
    parts["backbone"] = h = hashlib.sha256()
    if cfg.model.pretrained:
        _hash_tree(h, Path(cfg.model.pretrained), _files(Path(cfg.model.pretrained), "**/*"), whole=False)
    parts["code"] = h = hashlib.sha256()
    for name in TRAINING_SOURCES:
        h.update(Path(importlib.util.find_spec(name).origin).read_bytes())
    return {k: v.hexdigest() for k, v in parts.items()}


def read_state(directory: str | Path) -> dict:
    """A checkpoint's ``state.json`` ({} when missing or unreadable)."""
    try:
        state = json.loads((Path(directory) / "state.json").read_text())
    except (ValueError, UnicodeDecodeError, OSError):
        return {}
    return state if isinstance(state, dict) else {}


def _side(directory: Path, suffix: str) -> Path:
    return directory.with_name(directory.name + suffix)


def complete(directory: str | Path) -> bool:
    return all((Path(directory) / f).is_file() for f in REQUIRED)


def recover(directory: str | Path) -> None:
    """After a kill between the two renames of :func:`install` there is no checkpoint folder
    but a whole new (``.tmp``) or old (``.old``) one: put it in place, the newer first. (A
    half-deleted folder beside a whole ``.tmp``, as a kill mid-swap left before swaps were
    renames, gives way to the ``.tmp``.)"""
    d = Path(directory)
    if d.exists():
        if complete(d) or not (complete(_side(d, ".tmp")) and read_state(_side(d, ".tmp"))):
            return
        shutil.rmtree(d)
    for side in (_side(d, ".tmp"), _side(d, ".old")):
        if complete(side) and read_state(side):
            side.rename(d)
            return


def install(tmp: Path, directory: Path) -> None:
    """Swap the whole checkpoint written to ``tmp`` in for ``directory``'s."""
    old = _side(directory, ".old")
    if old.exists():
        shutil.rmtree(old)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    if old.exists():
        shutil.rmtree(old)


def remove(directory: str | Path) -> None:
    """Delete a checkpoint (and any half-written or old one beside it): each is renamed
    first, so a kill while deleting leaves nothing that looks resumable."""
    d = Path(directory)
    # the folder itself last: while it is there, recover() puts nothing back
    for side in (_side(d, ".gone"), _side(d, ".tmp"), _side(d, ".old"), d):
        if side.exists():
            gone = _side(d, ".gone")
            if side != gone:
                if gone.exists():
                    shutil.rmtree(gone)
                side.rename(gone)
            shutil.rmtree(gone)


def resumable(directory: str | Path, fingerprint: dict[str, str], legacy: bool = False) -> tuple[dict | None, str]:
    """``(state, "")`` when a run with ``fingerprint`` may continue from the checkpoint in
    ``directory`` (with ``legacy``, also a whole one written before checkpoints had
    fingerprints), else ``(None, why not)``, naming what changed."""
    d = Path(directory)
    recover(d)
    if not d.exists():
        return None, f"no checkpoint in {d}"
    if not complete(d):
        missing = ", ".join(f for f in REQUIRED if not (d / f).is_file())
        return None, f"the checkpoint in {d} is incomplete ({missing} missing)"
    state = read_state(d)
    try:
        step = int(state["step"])
    except (KeyError, TypeError, ValueError):
        return None, f"the checkpoint in {d} has an unreadable state.json"
    was = state.get("fingerprint")
    if was != fingerprint and not (legacy and was is None):
        if not isinstance(was, dict):
            return None, f"the checkpoint in {d} (step {step}) has no fingerprint to check it against"
        changed = [p for p in PARTS if was.get(p) != fingerprint.get(p)]
        return None, f"the checkpoint in {d} (step {step}) is of another training: its {', '.join(changed)} changed since"
    return state, ""
