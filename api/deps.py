"""Request-scoped access to the runtime the app was built with.

A dependency that does no I/O is declared `async def`, here and in every room of the API:
FastAPI runs a plain `def` dependency in its threadpool, one thread hop per dependency per
request, which cost `POST /tasks` about 15 % of its CPU for lookups like this one.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    """The Runtime stored on the app at creation."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
