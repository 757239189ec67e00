"""Links into the MLflow UI that open its model-training view, for every line we print or write.

MLflow 3.17's UI keeps a GenAI / model-training toggle in the browser and reads
``workflowType=machine_learning`` from the URL (docs/field-notes.md, 2026-12-07). The UI routes with a
hash router (react-router's ``createHashRouter``: the location is parsed from
``window.location.hash``) and reads the parameter with ``useSearchParams``, so the query belongs
*inside the hash route*: ``http://host:5000/#/experiments/1/runs/<id>?workflowType=machine_learning``.
A page query (``/?workflowType=...#/experiments/1``) is not seen. Checked against the bundle in
``mlflow/server/js/build/static/js`` (``e.get("workflowType")`` on the router's search params).
"""

from __future__ import annotations

import re
from urllib.parse import quote

WORKFLOW_QUERY = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def experiments_route() -> str:
    """The experiment list."""
    return _route("/experiments")


def experiment_route(experiment_id: str) -> str:
    return _route(f"/experiments/{quote(str(experiment_id), safe='')}")


def run_route(experiment_id: str, run_id: str) -> str:
    return _route(f"/experiments/{quote(str(experiment_id), safe='')}/runs/{quote(run_id, safe='')}")


def model_route(name: str, version: str | int | None = None) -> str:
    path = f"/models/{quote(name, safe='')}"  # the UI encodes the name with encodeURIComponent
    return _route(path if version is None else f"{path}/versions/{quote(str(version), safe='')}")


def _route(path: str) -> str:
    return f"#{path}?{WORKFLOW_QUERY}"


def server_base(tracking_uri: str | None = None) -> str | None:
    """The UI's base URL when the tracking store is a server (credentials removed), else None."""
    uri = (tracking_uri or _current_uri()).strip()
    if not uri.startswith(("http://", "https://")):
        return None
    return re.sub(r"(?<=://)[^/@]*@", "", uri).rstrip("/")


def ui_url(route: str, tracking_uri: str | None = None) -> str:
    """The full URL of a route: on the tracking server, or on a local `mlflow ui`."""
    return f"{server_base(tracking_uri) or LOCAL_UI}/{route}"


def ui_command(tracking_uri: str | None = None) -> str | None:
    """The command that serves the UI for a store without a server (None for a server)."""
    uri = tracking_uri or _current_uri()
    if server_base(uri) is not None:
        return None
    masked = re.sub(r"(?<=://)([^/:@]*):[^/@]*@", r"\1:***@", uri)  # no password on screen
    return f"mlflow ui --backend-store-uri {masked}"


def where_to_look(route: str, tracking_uri: str | None = None) -> str:
    """One line telling a person how to open a route: the URL, preceded by the `mlflow ui`
    command when there is no server."""
    command = ui_command(tracking_uri)
    url = ui_url(route, tracking_uri)
    return url if command is None else f"{command}  then open {url}"


def _current_uri() -> str:
    import mlflow  # imported when needed: `mae-tracker --help` stays fast

    return mlflow.get_tracking_uri()


def _experiment_of(run_id: str, tracking_uri: str | None) -> str:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.experiment_id


def run_url(run_id: str, tracking_uri: str | None = None) -> str:
    """The URL of a run in the training view (its experiment looked up in the store)."""
    return ui_url(run_route(_experiment_of(run_id, tracking_uri), run_id), tracking_uri)


def run_where(run_id: str, tracking_uri: str | None = None) -> str:
    """:func:`where_to_look` for a run."""
    return where_to_look(run_route(_experiment_of(run_id, tracking_uri), run_id), tracking_uri)
