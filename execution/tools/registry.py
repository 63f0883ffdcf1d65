"""Tools: plain functions registered under an id, collected from the modules operators name."""

from __future__ import annotations

import functools
import importlib
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from execution.tools.enqueue import DEFAULT_USER, TaskHandle, enqueue

if TYPE_CHECKING:
    from execution.tools.parallel import OnBatchFailure, ParallelJob

JSONValue = Any
"""Whatever `json.dumps` accepts; checked at run time when a tool returns."""

TOOL_ATTRIBUTE = "__switchyard_tool__"


class ProgressReporter(Protocol):
    """`progress(pct, message)`: how a tool says how far it got."""

    def __call__(self, percent: float, message: str | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool receives: its task, which attempt this is, its payload, and a progress hook."""

    task_id: str
    attempt: int
    payload: Any
    progress: ProgressReporter
    data_dir: Path
    """Where tools may read input files from (SWITCHYARD_DATA_DIR)."""
    stop_requested: threading.Event = field(default_factory=threading.Event)
    """Set when the tool should stop: its soft time limit passed, a caller cancelled the task,
    or the attempt was taken over. A long tool checks it (or calls `progress`, which raises)."""


class ToolHandler(Protocol):
    """A tool's body: takes its context, returns a JSON-able result or raises."""

    def __call__(self, ctx: ToolContext, /) -> JSONValue: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed attempt runs again, and after how long (Celery's names and defaults).

    An attempt is retried while the tool has retries left and it raised one of `retry_on`
    (or outlived its time limit). The n-th retry waits `backoff * 2**(n-1)` seconds, at most
    `backoff_max`; with `jitter`, a random time between half that and all of it, so tasks
    that failed together do not come back together.
    """

    max_retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    backoff: float = 2.0
    backoff_max: float = 600.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff < 0 or self.backoff_max < 0:
            raise ValueError("RetryPolicy: max_retries, backoff and backoff_max must be >= 0")

    def delay(self, retry: int) -> float:
        """Seconds before the `retry`-th retry (1 for the first)."""
        exponent = min(max(retry - 1, 0), 60)  # 2**60 s is past any cap already
        delay = min(self.backoff_max, self.backoff * 2**exponent)
        return random.uniform(delay / 2, delay) if self.jitter else delay


@dataclass(frozen=True, slots=True)
class Tool:
    """A registered tool and the defaults its tasks start with."""

    tool_id: str
    handler: ToolHandler
    description: str = ""
    queue: str = "default"
    priority: int = 0
    time_limit: int | None = None
    soft_time_limit: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    payload_model: type[BaseModel] | None = None
    parallel: ParallelJob | None = None
    """Set for a parallel tool: its tasks plan batches, run them, and finalize (`handler` then
    runs every step inline, for a direct call)."""
    on_batch_failure: OnBatchFailure | None = None
    """A parallel tool's answer to a batch that failed for good."""

    def validate_payload(self, payload: Any) -> Any:
        """The payload as the tool will see it, or InvalidPayload saying what is wrong."""
        if self.payload_model is None:
            return payload
        try:
            return self.payload_model.model_validate(payload).model_dump(mode="json")
        except ValidationError as exc:
            details = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'payload'}: {err['msg']}"
                for err in exc.errors()
            )
            raise InvalidPayload(f"payload for {self.tool_id!r} is invalid: {details}") from None


class InvalidPayload(ValueError):
    """The payload does not fit the tool's declared model."""


class UnknownTool(LookupError):
    """No tool is registered under this id."""

    def __init__(self, tool_id: str, known: Iterable[str]) -> None:
        self.tool_id = tool_id
        self.known = sorted(known)
        super().__init__(f"unknown tool {tool_id!r}; known tools: {', '.join(self.known)}")


class ToolLoadError(ImportError):
    """A module named in SWITCHYARD_TOOLS could not be loaded or registers a clash."""


R = TypeVar("R")


class ToolFunction(Generic[R]):
    """A function marked with @tool: still called as before, and enqueued as a task with
    `.enqueue(payload)` through the Switchyard running in this process."""

    __name__: str
    __qualname__: str

    def __init__(self, func: Callable[[ToolContext], R], spec: Tool) -> None:
        self.func = func
        self.spec = spec
        setattr(self, TOOL_ATTRIBUTE, spec)  # what `tools_in` finds in a module
        functools.update_wrapper(self, func)

    def __call__(self, ctx: ToolContext, /) -> R:
        return self.func(ctx)

    def enqueue(
        self,
        payload: Mapping[str, Any] | None = None,
        *,
        user_id: str = DEFAULT_USER,
        priority: int | None = None,
    ) -> TaskHandle:
        """Create a task of this tool, as POST /tasks would (same validation, routing, rows),
        owned by `user_id`; returns its handle at once. UnknownTool if the running Switchyard
        does not load this tool (SWITCHYARD_TOOLS), InvalidPayload if the payload does not fit,
        BackendUnavailable if its backend refuses it now."""
        return enqueue(
            self.spec.tool_id,
            {} if payload is None else dict(payload),
            user_id=user_id,
            priority=priority,
        )

    def __repr__(self) -> str:
        return f"<tool {self.spec.tool_id!r}: {self.__module__}.{self.__qualname__}>"


def tool(
    tool_id: str,
    *,
    description: str = "",
    queue: str = "default",
    priority: int = 0,
    time_limit: int | None = None,
    soft_time_limit: int | None = None,
    retry: RetryPolicy | None = None,
    payload_model: type[BaseModel] | None = None,
) -> Callable[[Callable[[ToolContext], R]], ToolFunction[R]]:
    """Mark a function as a tool; `load_registry` finds it in its module, and application code
    enqueues it with `.enqueue(payload)`."""
    if not 0 <= priority <= 9:
        raise ValueError(f"tool {tool_id!r}: priority must be 0-9")

    def mark(func: Callable[[ToolContext], R]) -> ToolFunction[R]:
        doc = (func.__doc__ or "").strip()
        spec = Tool(
            tool_id=tool_id,
            handler=func,
            description=description or (doc.splitlines()[0] if doc else ""),
            queue=queue,
            priority=priority,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            retry=retry or RetryPolicy(),
            payload_model=payload_model,
        )
        return ToolFunction(func, spec)

    return mark


class ToolRegistry(Mapping[str, Tool]):
    """The tools this process can run; the API and every worker build it from the same modules."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for spec in tools:
            if spec.tool_id in self._tools:
                raise ToolLoadError(f"tool id {spec.tool_id!r} is registered twice")
            self._tools[spec.tool_id] = spec

    def __getitem__(self, tool_id: str) -> Tool:
        try:
            return self._tools[tool_id]
        except KeyError:
            raise UnknownTool(tool_id, self._tools) from None

    def __contains__(self, tool_id: object) -> bool:
        return tool_id in self._tools

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._tools))

    def __len__(self) -> int:
        return len(self._tools)


def tools_in(module: ModuleType) -> list[Tool]:
    """Every function in `module` marked with @tool."""
    return [
        spec
        for value in vars(module).values()
        if isinstance(spec := getattr(value, TOOL_ATTRIBUTE, None), Tool)
    ]


def load_registry(module_names: Iterable[str]) -> ToolRegistry:
    """Import each module and collect its tools."""
    found: list[Tool] = []
    for name in module_names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ToolLoadError(f"SWITCHYARD_TOOLS: cannot import {name!r}: {exc}") from None
        found.extend(tools_in(module))
    if not found:
        raise ToolLoadError("SWITCHYARD_TOOLS: the named modules register no tools")
    return ToolRegistry(found)
