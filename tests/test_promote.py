"""Registry promotion: the rule on hand-made scores, and the alias moves on a real MLflow store."""

from __future__ import annotations

import json

import pytest

from mvot.promote import PromotionError, Scores, decide, promote, promote_run

DATA = {"data/tokens/maze": "aaa", "data/tokens/frozenlake": "bbb"}


def scores(acc: dict, v_acc: dict | None = None, v_red: dict | None = None, data: dict | None = None,
           evaluated: bool = True, run_id: str = "r") -> Scores:
    return Scores(run_id, evaluated, acc, v_acc or {}, v_red or {}, DATA if data is None else data)


CHAMP = scores({"maze": 60.0, "frozenlake": 70.0}, {"maze": 90.0, "frozenlake": 80.0}, {"maze": 5.0, "frozenlake": 10.0})


def test_rule_on_hand_made_scores():
    assert decide(CHAMP, None, 2.0).promote
    better = scores({"maze": 70.0, "frozenlake": 70.0}, {"maze": 89.0, "frozenlake": 80.0}, {"maze": 6.5, "frozenlake": 9.0})
    d = decide(better, CHAMP, 2.0)
    assert d.promote and "70.00 > champion 65.00" in d.reasons[0]
    equal = scores({"maze": 65.0, "frozenlake": 65.0}, CHAMP.v_acc, CHAMP.v_red)
    assert not decide(equal, CHAMP, 2.0).promote  # higher, not equal
    v_drop = scores({"maze": 90.0, "frozenlake": 90.0}, {"maze": 87.0, "frozenlake": 80.0}, CHAMP.v_red)
    d = decide(v_drop, CHAMP, 2.0)
    assert not d.promote and any("maze V-Acc 87.00 falls 3.00" in r for r in d.reasons)
    assert decide(v_drop, CHAMP, 3.0).promote  # within a wider margin
    v_rise = scores({"maze": 90.0, "frozenlake": 90.0}, CHAMP.v_acc, {"maze": 5.0, "frozenlake": 12.5})
    d = decide(v_rise, CHAMP, 2.0)
    assert not d.promote and any("frozenlake V-Red 12.50 rises 2.50" in r for r in d.reasons)
    other_data = scores({"maze": 99.0, "frozenlake": 99.0}, data={"data/tokens/maze": "ccc", "data/tokens/frozenlake": "bbb"})
    d = decide(other_data, CHAMP, 2.0)
    assert not d.promote and "data/tokens/maze" in d.reasons[0]
    other_tasks = scores({"maze": 99.0})
    assert not decide(other_tasks, CHAMP, 2.0).promote
    failed = scores({}, evaluated=False)
    assert not decide(failed, None, 2.0).promote


def test_scores_read_from_run_metrics_and_tags():
    s = Scores.from_run("x", {"test/maze/accuracy": 50.0, "test/maze/v_acc": 90.0, "test/maze/accuracy_size_3": 70.0,
                              "loss/total": 1.0}, {"evaluated": "true", "test_version.data/tokens/maze": "h"})
    assert s.evaluated and s.accuracy == {"maze": 50.0} and s.v_acc == {"maze": 90.0} and s.v_red == {}
    assert s.test_version == {"data/tokens/maze": "h"}
    assert not Scores.from_run("x", {}, {"evaluated": "true"}).evaluated  # tag without scores
    assert not Scores.from_run("x", {"test/maze/accuracy": 1.0}, {}).evaluated  # scores without the tag


# --------------------------------------------------------------------------------------
# Real MLflow store (sqlite, temp artifact root)


@pytest.fixture()
def store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from mvot.tracking import MlflowRegistry, start_run

    def make_run(acc: dict, v_acc=None, v_red=None, data=None, evaluated=True):
        """A tracked run with a tiny pyfunc model and test scores as evaluate_tracked logs them."""
        import mlflow.pyfunc

        class Echo(mlflow.pyfunc.PythonModel):
            _skip_type_hint_validation = True  # as mvot's own pyfunc model: no type-hint warning

            def predict(self, context, model_input, params=None):
                return model_input

        with start_run("promote-test", "r", root=tmp_path) as tracker:
            uri = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[]).model_uri
            if evaluated:
                m = {f"test/{t}/accuracy": a for t, a in acc.items()}
                m |= {f"test/{t}/v_acc": a for t, a in (v_acc or {}).items()}
                m |= {f"test/{t}/v_red": a for t, a in (v_red or {}).items()}
                tracker.log_metrics(m)
                tracker.set_tags({"evaluated": "true"} | {f"test_version.{k}": v for k, v in (data or DATA).items()})
            return tracker.run_id, uri

    return make_run, MlflowRegistry("mvot-test")


def test_promotion_moves_aliases_and_records_reasons(store):
    make_run, reg = store
    first = make_run({"maze": 50.0}, {"maze": 90.0}, {"maze": 5.0})
    out = promote(reg, *first, v_margin=2.0)
    assert out.decision.promote and out.version == "1" and reg.aliases() == {"champion": "1", "challenger": "1"}

    better = make_run({"maze": 60.0}, {"maze": 89.0}, {"maze": 6.0})
    out = promote(reg, *better, v_margin=2.0)
    assert out.decision.promote and out.champion_before == "1" and reg.aliases() == {"champion": "2", "challenger": "2"}

    worse = make_run({"maze": 55.0}, {"maze": 95.0}, {"maze": 1.0})
    out = promote(reg, *worse, v_margin=2.0)
    assert not out.decision.promote and reg.aliases() == {"champion": "2", "challenger": "3"}
    tags = reg.client.get_model_version("mvot-test", "3").tags
    assert tags["promotion.decision"] == "challenger" and "not above champion 60.00" in tags["promotion.reasons"]
    assert tags["promotion.champion_before"] == "2"

    regress = make_run({"maze": 90.0}, {"maze": 80.0}, {"maze": 6.0})
    out = promote(reg, *regress, v_margin=2.0)
    assert not out.decision.promote and reg.aliases() == {"champion": "2", "challenger": "4"}

    new_data = make_run({"maze": 99.0}, {"maze": 99.0}, {"maze": 0.0}, data={"data/tokens/maze": "zzz"})
    out = promote(reg, *new_data, v_margin=2.0)
    assert not out.decision.promote and "different test data" in out.decision.reasons[0]
    assert reg.aliases() == {"champion": "2", "challenger": "5"}

    out = promote(reg, *better, v_margin=2.0)  # the champion's own run again: nothing registered
    assert out.version == "2" and not out.decision.promote and "already the champion" in out.decision.reasons[0]

    failed = make_run({}, evaluated=False)
    out = promote(reg, *failed, v_margin=2.0)
    assert out.version is None and reg.aliases() == {"champion": "2", "challenger": "5"}
    assert len(reg.client.search_model_versions("name='mvot-test'")) == 5  # a failed evaluation is not registered


def test_crash_between_alias_moves_leaves_aliases_as_they_were(store, monkeypatch):
    make_run, reg = store
    promote(reg, *make_run({"maze": 50.0}), v_margin=2.0)
    before = reg.aliases()
    real = reg.client.set_registered_model_alias

    def crash_on_champion(name, alias, version):
        if alias == "champion":
            raise ConnectionError("tracking server went away")
        return real(name, alias, version)

    monkeypatch.setattr(reg.client, "set_registered_model_alias", crash_on_champion)
    with pytest.raises(ConnectionError):
        promote(reg, *make_run({"maze": 70.0}), v_margin=2.0)  # challenger moves first, then the crash
    monkeypatch.undo()
    assert reg.aliases() == before == {"champion": "1", "challenger": "1"}
    assert reg.client.get_model_version("mvot-test", "2").tags["promotion.decision"] == "failed"


def test_promote_run_needs_a_tracked_run(params, tmp_path):
    with pytest.raises(PromotionError, match="tracking.json is missing"):
        promote_run(params, "mvot", tmp_path, registry=object())
    with pytest.raises(PromotionError, match="unknown run"):
        promote_run(params, "nope", tmp_path, registry=object())
    (tmp_path / "mvot").mkdir()
    (tmp_path / "mvot" / "tracking.json").write_text(json.dumps({"run_id": "abc", "model_uri": "models:/m-1"}))

    class NoChampion:
        def run_scores(self, run_id):
            return Scores(run_id, False)

        def alias_run(self, alias):
            return None

    out = promote_run(params, "mvot", tmp_path, registry=NoChampion())
    assert out.version is None and not out.decision.promote
