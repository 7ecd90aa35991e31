"""Prefect flows: the orchestration edge. They import `mvot`; `mvot` never imports them.

Defaults for running Prefect on a laptop or in CI without a server (an ephemeral API is
started on demand): no analytics calls (there may be no network) and a generous start-up
timeout (the first ephemeral start took ~24 s on a busy 2-core machine). Set
PREFECT_API_URL to use a real server instead.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
