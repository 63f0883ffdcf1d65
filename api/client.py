"""A typed client of a Switchyard deployment's HTTP API, for services that submit and follow
tasks: the answers are the API's own models, and every failure is one SwitchyardError.

    with SwitchyardClient("http://switchyard.internal:8000", api_key=key) as switchyard:
        task = switchyard.submit("profile-csv", {"path": "sales.csv"})
        done = switchyard.wait(task.task_id, timeout=60)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import anyio
import httpx
from httpx_sse import SSEError, aconnect_sse
from pydantic import TypeAdapter

from api.schemas import TaskBatchOut, TaskPage
from execution.records import TaskRecord
from execution.status import TaskStatus

T = TypeVar("T")

_TASK = TypeAdapter(TaskRecord)

STREAM_ATTEMPTS = 4
"""Broken task streams in a row before `wait` falls back to polling GET /tasks/{id}."""

STREAM_READ_SECONDS = 60.0
"""A quiet stream still gets a `: ping` every 15 s; a minute without a byte means it is gone."""

POLL_SECONDS = 0.3
"""How often `wait` reads the task when the server has no stream (or it keeps breaking)."""


class SwitchyardError(Exception):
    """The API refused a request (`status_code` and its `detail`), or could not be reached
    (`status_code` None)."""

    def __init__(
        self,
        detail: str,
        *,
        status_code: int | None = None,
        retry_after: int | None = None,
        body: Any = None,
    ) -> None:
        self.detail = detail
        self.status_code = status_code
        self.retry_after = retry_after
        """Seconds to wait before sending again, from a 429 or 503's Retry-After."""
        self.body = body
        """The whole JSON answer: a 422's `errors`, a rejected task's `task_id`."""
        shown = detail if status_code is None else f"{status_code}: {detail}"
        super().__init__(shown + (f" (retry after {retry_after} s)" if retry_after else ""))


def error_of(response: httpx.Response) -> SwitchyardError | None:
    """The SwitchyardError an answer carries, or None if it is not an error (a streamed
    answer is read first)."""
    if response.status_code < 400:
        return None
    response.read()
    try:
        body = response.json()
        detail = str(body.get("detail", response.text)) if isinstance(body, dict) else response.text
    except ValueError:
        body, detail = None, response.text
    wait = response.headers.get("Retry-After", "")
    return SwitchyardError(
        detail or response.reason_phrase,
        status_code=response.status_code,
        retry_after=int(wait) if wait.isdigit() else None,
        body=body,
    )


class SwitchyardClient:
    """Sync client of one deployment, holding a connection pool: use it as a context manager
    (or call `close`)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._headers = {"Authorization": f"Bearer {api_key.strip()}"}
        self._base_url = base_url
        self._timeout = timeout
        self._http = httpx.Client(
            base_url=base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    @property
    def base_url(self) -> str:
        """The deployment this client talks to."""
        return self._base_url

    def __enter__(self) -> SwitchyardClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def submit(
        self,
        tool_id: str,
        payload: Mapping[str, Any] | None = None,
        *,
        priority: int | None = None,
        idempotency_key: str | None = None,
    ) -> TaskRecord:
        """POST /tasks: the new task (or, with an `idempotency_key` sent before, the task it
        created)."""
        body: dict[str, Any] = {"tool_id": tool_id, "payload": dict(payload or {})}
        if priority is not None:
            body["priority"] = priority
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._call(_TASK, "POST", "/tasks", json=body, headers=headers)

    def submit_batch(self, items: Iterable[Mapping[str, Any]]) -> TaskBatchOut:
        """POST /tasks/batch with `{tool_id, payload, priority?}` items (at most the server's
        BATCH_MAX_ITEMS): every task in item order, all created or none."""
        body = {"items": [dict(item) for item in items]}
        return self._call(TypeAdapter(TaskBatchOut), "POST", "/tasks/batch", json=body)

    def get(self, task_id: str) -> TaskRecord:
        """GET /tasks/{task_id}: the task now, result included."""
        return self._call(_TASK, "GET", f"/tasks/{task_id}")

    def cancel(self, task_id: str) -> TaskRecord:
        """POST /tasks/{task_id}/cancel: a waiting task ends CANCELLED at once, a running one
        is asked to stop (still PROCESSING, `cancel_requested_at` set); 409 if it has ended."""
        return self._call(_TASK, "POST", f"/tasks/{task_id}/cancel")

    def retry(self, task_id: str) -> TaskRecord:
        """POST /tasks/{task_id}/retry: a FAILED or CANCELLED task runs again."""
        return self._call(_TASK, "POST", f"/tasks/{task_id}/retry")

    def list(
        self,
        *,
        status: TaskStatus | str | None = None,
        tool_id: str | None = None,
        backend: str | None = None,
        user_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> TaskPage:
        """GET /tasks: the caller's tasks (an operator's: everyone's), newest first."""
        params = {"status": status, "tool_id": tool_id, "backend": backend, "user_id": user_id}
        query = {k: str(v) for k, v in params.items() if v is not None}
        query |= {"limit": str(limit), "offset": str(offset)}
        return self._call(TypeAdapter(TaskPage), "GET", "/tasks", params=query)

    def wait(self, task_id: str, *, timeout: float | None = None) -> TaskRecord:
        """The task once it has ended (COMPLETED, FAILED or CANCELLED: check `status`),
        followed through its event stream (polled if the server has none, or the stream keeps
        breaking); TimeoutError if it has not ended within `timeout` seconds. Blocks: call it
        from a thread, not from async code."""
        try:
            anyio.run(self._follow, task_id, math.inf if timeout is None else timeout)
        except TimeoutError:
            raise TimeoutError(f"task {task_id} did not end within {timeout:g} s") from None
        return self.get(task_id)  # the events carry no result

    async def _follow(self, task_id: str, timeout: float) -> None:
        """Return once the task has ended; the whole wait, reconnects and polling included,
        is cancelled at `timeout` exactly (a quiet stream sends nothing to wake a read)."""
        with anyio.fail_after(timeout):
            async with httpx.AsyncClient(
                base_url=self._base_url, headers=self._headers, timeout=self._timeout
            ) as http:
                if not await self._watch_stream(http, task_id):
                    while not await self._has_ended(http, task_id):
                        await anyio.sleep(POLL_SECONDS)

    async def _watch_stream(self, http: httpx.AsyncClient, task_id: str) -> bool:
        """True once the stream showed the task's end; False from a server without the stream
        (404: a missing task gets its own 404 from GET), or after STREAM_ATTEMPTS breaks in a
        row."""
        broken = 0
        timeout = httpx.Timeout(self._timeout, read=STREAM_READ_SECONDS)
        while broken < STREAM_ATTEMPTS:
            try:
                async with aconnect_sse(
                    http, "GET", f"/tasks/{task_id}/stream", timeout=timeout
                ) as source:
                    response = source.response
                    if response.status_code == 404:
                        return False
                    if response.is_error:
                        await response.aread()
                        if response.status_code < 500:  # 401, 422: asking again changes nothing
                            raise _error(response)
                        response.raise_for_status()  # 5xx: a restart under way, perhaps
                    async for event in source.aiter_sse():
                        if event.event == "task":
                            broken = 0
                            if TaskStatus(event.json()["status"]).is_terminal:
                                return True
            except (httpx.HTTPError, SSEError, ValueError, KeyError, TypeError):
                pass  # a broken stream, a proxy's page, a garbled event: open it again
            broken += 1
            await anyio.sleep(0.5 * 2 ** (broken - 1))
        return False

    async def _has_ended(self, http: httpx.AsyncClient, task_id: str) -> bool:
        try:
            response = await http.get(f"/tasks/{task_id}")
        except httpx.HTTPError as exc:
            raise SwitchyardError(f"cannot reach the API at {self._base_url}: {exc}") from None
        if response.is_error:
            raise _error(response)
        return TaskStatus(response.json()["status"]).is_terminal

    def _call(self, model: TypeAdapter[T], method: str, path: str, **kwargs: Any) -> T:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise SwitchyardError(f"cannot reach the API at {self._base_url}: {exc}") from None
        if response.is_error:
            raise _error(response)
        return model.validate_python(response.json())


def _error(response: httpx.Response) -> SwitchyardError:
    error = error_of(response)
    assert error is not None, "called for an error answer only"
    return error
