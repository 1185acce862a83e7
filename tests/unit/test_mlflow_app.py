"""The opener page of `largebatch ui`'s server (largebatch/mlflow_app.py): only digits reach the page's script."""
from __future__ import annotations

import asyncio

from largebatch.mlflow_app import OPEN_PATH, _WithOpener, open_page, open_target


def test_the_target_is_the_experiments_runs_or_the_list():
    assert open_target("experiment=12") == "/#/experiments/12/runs?workflowType=machine_learning"
    assert open_target("") == "/#/experiments?workflowType=machine_learning"
    for hostile in ('experiment=1");alert(1);("', "experiment=1%0A2", "experiment=-1", "experiment=" + "9" * 21):
        assert open_target(hostile) == "/#/experiments?workflowType=machine_learning", hostile
    assert b'"mlflow.workflowType_v1", JSON.stringify("machine_learning")' in open_page("experiment=3")


def test_the_opener_is_served_and_everything_else_goes_to_mlflow():
    seen = []

    async def mlflow_app(scope, receive, send):
        seen.append((scope["type"], scope.get("path")))

    sent = []

    async def send(msg):
        sent.append(msg)

    app = _WithOpener(mlflow_app)
    asyncio.run(app({"type": "http", "path": OPEN_PATH, "query_string": b"experiment=5"}, None, send))
    assert sent[0]["status"] == 200 and b"/#/experiments/5/runs" in sent[1]["body"] and seen == []
    assert (b"cache-control", b"no-store") in sent[0]["headers"]
    asyncio.run(app({"type": "http", "path": "/ajax-api/2.0/mlflow/experiments/get"}, None, send))
    asyncio.run(app({"type": "lifespan"}, None, send))
    assert seen == [("http", "/ajax-api/2.0/mlflow/experiments/get"), ("lifespan", None)]
