"""Purge: the QUEUED tasks of a tool, a backend or a queue end CANCELLED on both backends;
a dry run only counts; running tasks are left alone; a bad filter changes nothing."""

from __future__ import annotations

import pytest

from backends.celery_tasks import WorkerServices
from dispatch.purge import PurgeInvalid, PurgeOutcome, PurgeSelection, purge_queued
from execution.executor import RunOutcome, TaskExecutor
from execution.status import TaskStatus
from execution.store import TaskStore
from execution.tools.registry import Tool, ToolContext, ToolRegistry, UnknownTool
from tests.conftest import ThreadBackendFactory
from tests.helpers import claim, queued_task, wait_until
from tests.tools import Gate


def _report(ctx: ToolContext) -> dict[str, str]:
    return {"report": ctx.task_id}


@pytest.fixture
def tools(registry: ToolRegistry) -> ToolRegistry:
    """The test tools (on the default queue) and `report`, on a queue of its own."""
    return ToolRegistry([*registry.values(), Tool("report", _report, queue="reports")])


def _purge(store: TaskStore, tools: ToolRegistry, selection: PurgeSelection) -> PurgeOutcome:
    return purge_queued(store, tools, selection, actor="ops", reason="bad batch", dry_run=False)


def _status(store: TaskStore, task_id: str) -> TaskStatus:
    row = store.get(task_id)
    assert row is not None
    return row.status


def test_a_dry_run_counts_per_backend_and_tool_and_changes_nothing(
    store: TaskStore, tools: ToolRegistry
) -> None:
    tasks = [
        queued_task(store, tool_id="echo", backend="celery"),
        queued_task(store, tool_id="echo", backend="thread"),
        queued_task(store, tool_id="echo", backend="thread"),
        queued_task(store, tool_id="noop", backend="celery"),
    ]
    running = queued_task(store, tool_id="echo", backend="celery")
    assert claim(store, running.task_id) is not None
    history = {t.task_id: store.events(t.task_id) for t in tasks}

    outcome = purge_queued(
        store,
        tools,
        PurgeSelection(tool_id="echo"),
        actor="ops",
        reason="bad batch",
        dry_run=True,
    )

    assert outcome.dry_run
    assert outcome.cancelled == {"celery": {"echo": 1}, "thread": {"echo": 2}}
    assert (outcome.total, outcome.running_total) == (3, 1)
    assert outcome.running == {"celery": {"echo": 1}}
    for task in tasks:
        assert _status(store, task.task_id) is TaskStatus.QUEUED
        assert store.events(task.task_id) == history[task.task_id]


def test_a_purge_by_tool_cancels_on_both_backends_with_who_and_why(
    store: TaskStore, tools: ToolRegistry
) -> None:
    on_celery = queued_task(store, tool_id="echo", backend="celery")
    on_threads = queued_task(store, tool_id="echo", backend="thread")
    other = queued_task(store, tool_id="noop", backend="celery")
    running = queued_task(store, tool_id="echo", backend="thread")
    assert claim(store, running.task_id) is not None

    outcome = purge_queued(
        store,
        tools,
        PurgeSelection(tool_id="echo"),
        actor="ops",
        reason="bad batch",
        dry_run=False,
    )

    assert not outcome.dry_run
    assert outcome.cancelled == {"celery": {"echo": 1}, "thread": {"echo": 1}}
    assert outcome.running == {"thread": {"echo": 1}}
    for task in (on_celery, on_threads):
        row = store.get(task.task_id)
        assert row is not None
        assert (row.status, row.message) == (TaskStatus.CANCELLED, "purged by ops: bad batch")
    assert _status(store, other.task_id) is TaskStatus.QUEUED
    assert _status(store, running.task_id) is TaskStatus.PROCESSING


def test_a_backend_filter_takes_every_tool_on_that_backend_only(
    store: TaskStore, tools: ToolRegistry
) -> None:
    on_celery = [queued_task(store, tool_id=t, backend="celery") for t in ("echo", "noop")]
    on_threads = queued_task(store, tool_id="echo", backend="thread")

    _purge(store, tools, PurgeSelection(backend="celery"))

    assert {_status(store, t.task_id) for t in on_celery} == {TaskStatus.CANCELLED}
    assert _status(store, on_threads.task_id) is TaskStatus.QUEUED


def test_a_queue_filter_takes_the_tools_on_that_queue_and_combines_with_the_backend(
    store: TaskStore, tools: ToolRegistry
) -> None:
    report_celery = queued_task(store, tool_id="report", backend="celery")
    report_thread = queued_task(store, tool_id="report", backend="thread")
    default_queue = queued_task(store, tool_id="echo", backend="celery")

    _purge(store, tools, PurgeSelection(queue="reports", backend="celery"))

    assert _status(store, report_celery.task_id) is TaskStatus.CANCELLED
    assert _status(store, report_thread.task_id) is TaskStatus.QUEUED
    assert _status(store, default_queue.task_id) is TaskStatus.QUEUED

    _purge(store, tools, PurgeSelection(queue="reports", tool_id="report"))

    assert _status(store, report_thread.task_id) is TaskStatus.CANCELLED
    assert _status(store, default_queue.task_id) is TaskStatus.QUEUED


def test_all_purges_every_queued_task(store: TaskStore, tools: ToolRegistry) -> None:
    tasks = [
        queued_task(store, tool_id=t, backend=b)
        for t, b in [("echo", "celery"), ("report", "thread")]
    ]

    _purge(store, tools, PurgeSelection(everything=True))

    assert {_status(store, t.task_id) for t in tasks} == {TaskStatus.CANCELLED}


@pytest.mark.parametrize(
    ("selection", "field", "says"),
    [
        (PurgeSelection(), "tool_id", "name a tool, a backend or a queue"),
        (PurgeSelection(everything=True, backend="celery"), "all", "or give filters"),
        (PurgeSelection(backend="rabbit"), "backend", "'rabbit' is not a backend; known: celery"),
        (PurgeSelection(queue="nowhere"), "queue", "no tool uses queue 'nowhere'; known: default"),
        (PurgeSelection(tool_id="echo", queue="reports"), "queue", "'echo' is on queue 'default'"),
    ],
)
def test_a_bad_or_missing_filter_is_refused_and_changes_nothing(
    store: TaskStore,
    tools: ToolRegistry,
    selection: PurgeSelection,
    field: str,
    says: str,
) -> None:
    task = queued_task(store, tool_id="echo", backend="celery")

    with pytest.raises(PurgeInvalid) as refused:
        _purge(store, tools, selection)

    assert refused.value.field == field
    assert says in str(refused.value)
    assert _status(store, task.task_id) is TaskStatus.QUEUED


def test_an_unknown_tool_or_a_blank_reason_is_refused(
    store: TaskStore, tools: ToolRegistry
) -> None:
    task = queued_task(store, tool_id="echo")

    with pytest.raises(UnknownTool):
        _purge(store, tools, PurgeSelection(tool_id="nope"))
    with pytest.raises(PurgeInvalid, match="reason"):
        purge_queued(
            store, tools, PurgeSelection(tool_id="echo"), actor="ops", reason=" ", dry_run=False
        )

    assert _status(store, task.task_id) is TaskStatus.QUEUED


def test_a_purged_tasks_celery_message_runs_nothing(
    store: TaskStore, tools: ToolRegistry, executor: TaskExecutor
) -> None:
    task = queued_task(store, tool_id="echo", backend="celery")
    _purge(store, tools, PurgeSelection(tool_id="echo"))

    # What a worker does with the message that was already in the broker
    outcome = WorkerServices(executor=executor, hand_back_to=lambda _: None).run(
        task.task_id, "echo"
    )

    assert outcome == RunOutcome.NOT_CLAIMED.value
    row = store.get(task.task_id)
    assert row is not None
    assert (row.status, row.attempts) == (TaskStatus.CANCELLED, 0)


def test_a_purged_tasks_entry_in_the_thread_pool_runs_nothing(
    store: TaskStore,
    tools: ToolRegistry,
    thread_backends: ThreadBackendFactory,
    gate: Gate,
) -> None:
    pool = thread_backends(workers=1)
    blocker = queued_task(store, tool_id="gate")
    pool.submit(blocker)
    wait_until(lambda: gate.ran, what="the gate task to hold the only thread")
    waiting = [queued_task(store, tool_id="echo") for _ in range(3)]
    for task in waiting:
        pool.submit(task)

    _purge(store, tools, PurgeSelection(tool_id="echo"))
    gate.open()

    wait_until(
        lambda: (
            _status(store, blocker.task_id) is TaskStatus.COMPLETED
            and pool.health().counts["waiting"] == 0
            and pool.health().counts["running"] == 0
        ),
        what="the pool to drain its entries",
    )
    for task in waiting:
        row = store.get(task.task_id)
        assert row is not None
        assert (row.status, row.attempts) == (TaskStatus.CANCELLED, 0)
        assert TaskStatus.PROCESSING not in {e.status for e in store.events(task.task_id)}
