"""Entry point for `celery -A backends.celery_worker worker`: builds the app from the environment.

`switchyard worker` is the documented wrapper around the same app; operators who prefer Celery's
own CLI (or Flower: `celery -A backends.celery_worker flower`) point it at this module.
"""

from __future__ import annotations

import sys

from backends.celery_tasks import build_worker_app
from execution.settings import SettingsError, load_settings
from execution.tools.registry import ToolLoadError

try:
    app = build_worker_app(load_settings())
except (SettingsError, ToolLoadError) as exc:  # one line for the operator, not a traceback
    sys.stderr.write(f"error: {exc}\n")
    raise SystemExit(2) from None
