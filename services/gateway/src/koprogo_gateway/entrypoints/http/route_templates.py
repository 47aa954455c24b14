"""The template of the route that took a request (`/mcp/v1/tasks/{task_id}`), for the HTTP span's
name and the HTTP series' `route` label: never the raw path, whose ids would make one name per request.

Read from the scope after the router ran. FastAPI puts its own routes in the scope (`route`); for
the plain Starlette routes beside them (`/health`, `/metrics`, `/mcp`) it leaves only their
`endpoint`, so those are looked up by endpoint in the app's route list, read at the first
request (when every route is in it). A middleware that passes a copy of the scope on hands the
route back (`json_body.py`). A request no route matched is `unmatched`.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute, Route
from starlette.types import Scope

UNMATCHED = "unmatched"


class RouteTemplates:
    """`templates(scope)`: the template of the route that took the request, or `unmatched`."""

    __slots__ = ("_by_endpoint", "_routes")

    def __init__(self, routes: Sequence[BaseRoute] = ()) -> None:
        self._routes = routes
        self._by_endpoint: dict[object, str] | None = None

    def __call__(self, scope: Scope) -> str:
        template = getattr(scope.get("route"), "path_format", None)
        if template:
            return str(template)
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return UNMATCHED
        if self._by_endpoint is None:
            self._by_endpoint = {r.endpoint: r.path_format for r in self._routes if isinstance(r, Route)}
        return self._by_endpoint.get(endpoint, UNMATCHED)
