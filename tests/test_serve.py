"""Schedules: deployments with cron schedules registered against a real local Prefect server."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, free_port, stop, wait_healthy


def test_prefect_yaml_entrypoints_are_the_flows():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    found = {}
    for d in spec["deployments"]:
        path, name = d["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        found[d["name"]] = (getattr(module, name).name, d["schedules"][0]["cron"])
    from flows.serve import NIGHTLY_CRON, WEEKLY_CRON

    assert found == {"nightly": ("pipeline", NIGHTLY_CRON), "weekly": ("sweep", WEEKLY_CRON)}


READ = """
import asyncio, json
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as c:
        out = {}
        for name in ("pipeline/nightly", "sweep/weekly"):
            d = await c.read_deployment_by_name(name)
            out[name] = [s.schedule.cron for s in d.schedules]
        print(json.dumps(out))
asyncio.run(main())
"""


@pytest.mark.slow
def test_cron_deployments_register_on_a_real_server(tmp_path):
    port = free_port()
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                        "DO_NOT_TRACK": "1", "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).parent / "prefect")
    server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=(tmp_path / "server.log").open("w"), stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(api + "/health", server, tmp_path / "server.log", "prefect server")
        env["PREFECT_API_URL"] = api
        res = subprocess.run([sys.executable, "-m", "flows.serve", "--register-only"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "registered deployment nightly" in res.stdout and "registered deployment weekly" in res.stdout
        res = subprocess.run([sys.executable, "-c", READ], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-3000:]
        assert json.loads(res.stdout.strip().splitlines()[-1]) == {"pipeline/nightly": ["0 2 * * *"],
                                                                    "sweep/weekly": ["0 3 * * 6"]}
    finally:
        stop(server)


def test_serve_without_a_server_says_how_to_start_one(monkeypatch, capsys):
    from flows.serve import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main([]) == 1
    assert "prefect server start" in capsys.readouterr().err
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # discard port: nothing listens
    assert main(["--register-only", "--nightly-cron", "0 2 * *"]) == 1
    assert "Invalid cron string" in capsys.readouterr().err
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # its own process: no test harness's server
    done = subprocess.run([sys.executable, "-m", "flows.serve", "--register-only"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "the Prefect server at http://127.0.0.1:9/api did not answer" in done.stderr
