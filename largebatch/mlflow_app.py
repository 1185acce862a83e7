"""The MLflow server `largebatch ui` runs: MLflow's own app, plus one page that opens the UI in model-training mode.

MLflow 3.17's UI picks its GenAI pages or its model-training pages by a switch kept in the browser's local storage
(key `mlflow.workflowType_v1`, a JSON string; GenAI when unset). The URL parameter `workflowType=machine_learning`
overrides it for the page it is on only: a run opened from the runs table, or any link without the parameter, is
back in GenAI mode. `/largebatch/open` (same origin as the UI) sets the switch, then goes to the study's runs: every
page opened from there, run pages included, is a model-training page. Everything else is MLflow's app, untouched.

`mlflow server --app-name largebatch` finds `create_app` through the `mlflow.app` entry point in pyproject.toml.
"""
from __future__ import annotations

import re
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

OPEN_PATH = "/largebatch/open"
WORKFLOW_KEY = "mlflow.workflowType_v1"
WORKFLOW = "machine_learning"

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>largebatch: opening the MLflow UI</title></head>
<body><p>Opening the MLflow UI in model-training mode: <a href="{target}">{target}</a></p>
<script>
try {{ window.localStorage.setItem("{key}", JSON.stringify("{value}")); }} catch (e) {{}}
window.location.replace("{target}");
</script></body></html>
"""


def open_target(query: str) -> str:
    """Where /largebatch/open?experiment=ID goes: that experiment's runs (digits only), else the experiments list."""
    exp = (parse_qs(query).get("experiment") or [""])[0]
    if re.fullmatch(r"[0-9]{1,20}", exp):
        return f"/#/experiments/{exp}/runs?workflowType={WORKFLOW}"
    return f"/#/experiments?workflowType={WORKFLOW}"


def open_page(query: str) -> bytes:
    return _PAGE.format(target=open_target(query), key=WORKFLOW_KEY, value=WORKFLOW).encode()


Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


class _WithOpener:
    """An ASGI app: the opener page at OPEN_PATH, MLflow's app for everything else (lifespan included)."""

    def __init__(self, mlflow_app: ASGIApp):
        self.mlflow_app = mlflow_app

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope.get("path") == OPEN_PATH:
            body = open_page(scope.get("query_string", b"").decode("latin-1"))
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/html; charset=utf-8"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"cache-control", b"no-store")]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.mlflow_app(scope, receive, send)


def create_app() -> _WithOpener:
    from mlflow.server.fastapi_app import app

    return _WithOpener(app)
