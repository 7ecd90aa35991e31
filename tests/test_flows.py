"""Prefect flows, run against one session-scoped test API."""

import pytest
import yaml

from tests.conftest import tiny_tokenizer_raw


def _params_file(tmp_path, raw_params):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(tiny_tokenizer_raw(raw_params)))
    return str(p)


def test_train_task_logic(tiny_tokens, raw_params, tmp_path):
    from flows.train import train_one

    _, tok_dir, tokens_dir = tiny_tokens
    out = train_one.fn(_params_file(tmp_path, raw_params), "direct", str(tokens_dir), str(tok_dir), str(tmp_path / "runs"), False)
    assert out["step"] == 3 and out["mlflow_run_id"] is None
    assert (tmp_path / "runs" / "direct" / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_train_flow_runs_every_run(prefect_harness, tiny_tokens, raw_params, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.train import train_flow

    _, tok_dir, tokens_dir = tiny_tokens
    results = train_flow(_params_file(tmp_path, raw_params), None, str(tokens_dir), str(tok_dir), str(tmp_path / "runs"), False)
    assert set(results) == {"direct", "mvot"}
    assert all((tmp_path / "runs" / r / "model" / "model.safetensors").is_file() for r in results)

    import asyncio

    async def artifact():
        async with get_client() as client:
            return await client.read_latest_artifacts()

    keys = {a.key for a in asyncio.run(artifact())}
    assert "train-runs" in keys


def test_train_flow_rejects_unknown_runs(prefect_harness, raw_params, tmp_path):
    from flows.train import train_flow

    with pytest.raises(ValueError, match="unknown run 'nope'"):
        train_flow(_params_file(tmp_path, raw_params), ["nope"], track=False)
