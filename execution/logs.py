"""Structured logging: events with bound context, JSON in production, readable on a terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import structlog

from execution.redaction import redact_text


def configure_logging(
    *,
    level: str = "INFO",
    json_output: bool = False,
    foreign_processors: Sequence[structlog.typing.Processor] = (),
) -> None:
    """Route structlog and the standard library (uvicorn, celery) through one renderer.

    `foreign_processors` run on standard-library records only (after the shared ones), to lift
    fields out of a library's records (Celery's per-task lines, say)."""
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json_output
        # Plain tracebacks: rich ones print every frame's locals (request headers with API
        # keys, settings) and wrap long lines, which would split a URL past redaction.
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        # Level first: a DEBUG line at INFO costs one level check, not a timestamp and a dict
        # (the executor and dispatcher log DEBUG lines per task).
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                *shared,
                _uvicorn_access_fields,
                *foreign_processors,
                _drop_positional_args,
            ],
            # A record's arguments, for processors that lift them into fields (uvicorn's
            # access line); its message is formatted with them either way.
            pass_foreign_args=True,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if json_output else _identity,
                renderer,
                _redact_rendered,  # last: tracebacks and third-party messages are masked too
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # No line shows where it was logged from (file, function, line number), so no record
    # looks it up: the logging HOWTO's own switch ("Optimization"), a stack walk saved on
    # every line: 3.5 of the 25 µs the line each task logs cost.
    logging._srcfile = None
    root.setLevel(level)
    # Python warnings (a library's deprecation, Celery's superuser warning) are log lines too,
    # not raw text between them.
    logging.captureWarnings(True)
    # Alembic narrates each migration context at INFO ("Context impl SQLiteImpl."), which every
    # command that opens the database would print; `db.upgraded` says what happened. DEBUG
    # brings its lines back.
    quiet = root.level > logging.DEBUG
    logging.getLogger("alembic").setLevel(logging.WARNING if quiet else logging.NOTSET)


UVICORN_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")
"""What uvicorn.access passes as the arguments of its '%s - "%s %s HTTP/%s" %d' line."""


def _uvicorn_access_fields(
    _logger: object, _name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """An access line keeps its formatted text as the event, with each part as a field too."""
    record = event_dict.get("_record")
    args = event_dict.get("positional_args")
    if (
        getattr(record, "name", None) == "uvicorn.access"
        and isinstance(args, tuple)
        and len(args) == len(UVICORN_ACCESS_FIELDS)
    ):
        for key, value in zip(UVICORN_ACCESS_FIELDS, args, strict=True):
            event_dict.setdefault(key, value)
    return event_dict


def _drop_positional_args(
    _logger: object, _name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    event_dict.pop("positional_args", None)
    return event_dict


def _identity(
    _logger: object, _name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    return event_dict


def _redact_rendered(_logger: object, _name: str, rendered: Any) -> Any:
    # Runs after the renderer, so it is handed the finished line, typed as an event dict.
    return redact_text(rendered) if isinstance(rendered, str) else rendered
