"""Registry promotion: the rule that decides whether a newly evaluated model becomes ``champion``.

Pure logic over a small registry interface; :class:`mvot.tracking.MlflowRegistry` is the
MLflow implementation, and tests can pass any object with the same methods.

The rule (issue 6), applied by :func:`promote` to a candidate training run:

1. a run without test scores (evaluation missing or failed) is not registered at all;
2. every evaluated run is registered as a new version and gets the alias ``challenger``;
3. it also gets ``champion`` when there is no champion yet, or when, on the *same* test
   data (the DVC hashes of the token arrays it was scored on are equal) and the same
   tasks, its mean accuracy is higher and no task's V-Acc falls, or V-Red rises, by more
   than ``v_margin`` percentage points against the champion;
4. the champion's own run again is a no-op (nothing registered);
5. the decision and its reasons are written as tags on the version (``promotion.*``);
6. both aliases move together or not at all (the registry rolls back on a failure).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mvot.errors import MvotError

_METRIC = re.compile(r"^test/(?P<task>[a-z]+)/(?P<name>accuracy|v_acc|v_red)$")


class PromotionError(MvotError, RuntimeError):
    """The candidate cannot be considered (no such run, no model); the message says why."""


@dataclass(frozen=True)
class Scores:
    """What promotion compares: per-task test accuracy and V-metrics, and the data they
    were measured on."""

    run_id: str
    evaluated: bool
    accuracy: dict[str, float] = field(default_factory=dict)
    v_acc: dict[str, float] = field(default_factory=dict)
    v_red: dict[str, float] = field(default_factory=dict)
    test_version: dict[str, str] = field(default_factory=dict)

    @property
    def mean_accuracy(self) -> float:
        return sum(self.accuracy.values()) / len(self.accuracy) if self.accuracy else float("nan")

    @classmethod
    def from_run(cls, run_id: str, metrics: dict[str, float], tags: dict[str, str]) -> Scores:
        """Read the ``test/<task>/<metric>`` metrics and ``test_version.*`` tags that
        :func:`mvot.runs.evaluate_tracked` logs."""
        found: dict[str, dict[str, float]] = {"accuracy": {}, "v_acc": {}, "v_red": {}}
        for key, value in metrics.items():
            if m := _METRIC.match(key):
                found[m["name"]][m["task"]] = float(value)
        versions = {k.removeprefix("test_version."): v for k, v in tags.items() if k.startswith("test_version.")}
        evaluated = tags.get("evaluated") == "true" and bool(found["accuracy"])
        return cls(run_id, evaluated, found["accuracy"], found["v_acc"], found["v_red"], versions)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: tuple[str, ...]

    def tags(self) -> dict[str, str]:
        return {"promotion.decision": "champion" if self.promote else "challenger",
                "promotion.reasons": "; ".join(self.reasons)[:4900]}


def decide(candidate: Scores, champion: Scores | None, v_margin: float) -> Decision:
    """Whether ``candidate`` replaces ``champion`` (see the module docstring), with reasons."""
    if not candidate.evaluated:
        return Decision(False, ("the candidate has no test scores (evaluation missing or failed)",))
    if champion is None:
        return Decision(True, ("no champion yet",))
    if not champion.evaluated:
        return Decision(True, (f"the champion (run {champion.run_id}) has no test scores",))
    if candidate.test_version != champion.test_version:
        diff = sorted(k for k in candidate.test_version.keys() | champion.test_version.keys()
                      if candidate.test_version.get(k) != champion.test_version.get(k))
        return Decision(False, (f"scored on different test data than the champion ({', '.join(diff)}); "
                                "re-evaluate the champion on the current data to compare",))
    if set(candidate.accuracy) != set(champion.accuracy):
        return Decision(False, (f"scored on tasks {sorted(candidate.accuracy)}, the champion on "
                                f"{sorted(champion.accuracy)}",))
    reasons = []
    ok = True
    a, b = candidate.mean_accuracy, champion.mean_accuracy
    if a > b:
        reasons.append(f"mean accuracy {a:.2f} > champion {b:.2f}")
    else:
        ok = False
        reasons.append(f"mean accuracy {a:.2f} not above champion {b:.2f}")
    # (name, candidate's, champion's, sign: +1 where higher is better, -1 where lower is)
    checks = (("V-Acc", candidate.v_acc, champion.v_acc, 1, "falls", "below"),
              ("V-Red", candidate.v_red, champion.v_red, -1, "rises", "above"))
    for task in sorted(candidate.accuracy):
        for name, cand, champ, sign, verb, side in checks:
            if task in cand and task in champ and (worse := sign * (champ[task] - cand[task])) > v_margin:
                ok = False
                reasons.append(f"{task} {name} {cand[task]:.2f} {verb} {worse:.2f} points "
                               f"{side} champion {champ[task]:.2f} (margin {v_margin})")
    if ok:
        reasons.append(f"no V-metric regresses beyond {v_margin} points")
    return Decision(ok, tuple(reasons))


class Registry(Protocol):
    """What :func:`promote` needs from a model registry."""

    def run_scores(self, run_id: str) -> Scores: ...

    def alias_run(self, alias: str) -> tuple[str, str] | None:
        """``(version, run id)`` the alias points at, or None."""

    def register(self, model_uri: str, run_id: str) -> str: ...

    def move_aliases(self, moves: dict[str, str]) -> None:
        """Point each alias at its version, all or none."""

    def tag_version(self, version: str, tags: dict[str, str]) -> None: ...


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    version: str | None  # the registered version (None: not registered)
    champion_before: str | None
    champion_after: str | None

    def summary(self) -> dict:
        return {"promoted": self.decision.promote, "version": self.version, "champion_before": self.champion_before,
                "champion_after": self.champion_after, "reasons": list(self.decision.reasons)}


def promote(registry: Registry, run_id: str, model_uri: str, v_margin: float) -> Outcome:
    """Apply the promotion rule to the model ``model_uri`` of training run ``run_id``."""
    if not run_id or not model_uri:
        raise PromotionError("the candidate has no MLflow run or model; train it with tracking on "
                             "(models/runs/<run>/tracking.json is written by a tracked run)")
    current = registry.alias_run("champion")
    if current and current[1] == run_id:  # nothing new (a scheduled run with no changes): register nothing
        return Outcome(Decision(False, (f"run {run_id} is already the champion (version {current[0]})",)),
                       current[0], current[0], current[0])
    candidate = registry.run_scores(run_id)
    champion = registry.run_scores(current[1]) if current else None
    decision = decide(candidate, champion, v_margin)
    before = current[0] if current else None
    if not candidate.evaluated:
        return Outcome(decision, None, before, before)
    version = registry.register(model_uri, run_id)
    moves = {"challenger": version} | ({"champion": version} if decision.promote else {})
    try:
        registry.move_aliases(moves)
    except Exception as exc:
        registry.tag_version(version, {"promotion.decision": "failed", "promotion.reasons": f"alias move failed: {exc}"[:4900]})
        raise
    registry.tag_version(version, decision.tags() | {"promotion.champion_before": before or "none"})
    return Outcome(decision, version, before, version if decision.promote else before)


def promote_run(params, run: str | None = None, runs_root: str | Path = "models/runs", registry: Registry | None = None) -> Outcome:
    """Promotion for a trained run of ``params.yaml`` (default ``promote.run``), found through
    the ``tracking.json`` its tracked training wrote, against ``promote.model_name``."""
    from mvot.runs import tracking_info
    from mvot.tracking import MlflowRegistry

    run = run or params.promote.run
    if run not in params.train.runs:
        raise PromotionError(f"unknown run {run!r}; params.yaml train.runs has: {', '.join(params.train.runs)}")
    info = tracking_info(Path(runs_root) / run)
    if not info.get("run_id"):
        raise PromotionError(f"{Path(runs_root) / run}/tracking.json is missing: run {run!r} was not trained with "
                             f"MLflow tracking on; train it with `dvc repro train@{run}` or `python -m flows.train --run {run}`")
    registry = registry or MlflowRegistry(params.promote.model_name)
    return promote(registry, info["run_id"], info.get("model_uri"), params.promote.v_margin)
