"""The operator dashboard in a real browser: headless Chromium against a real `switchyard serve`.

Chromium is the test's own subprocess (`--dump-dom` prints the DOM once the page's script has
run, `--screenshot` saves what a 1440x900 laptop screen shows); the API is a real server on a
free port with SQLite, the thread backend and the operator key its first start writes.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from execution.database import make_engine, upgrade
from tests.api.test_dashboard import check_minute_buckets
from tests.helpers import wait_until
from tests.integration.servers import PostgresServer, free_port
from tests.integration.shell_blocks import Shell
from tests.integration.workers import REPO_ROOT

pytestmark = pytest.mark.integration

BROWSER_TIMEOUT = 90
"""Seconds one Chromium run may take at most; it takes about one."""
VIRTUAL_TIME_MS = 8000
"""Virtual time Chromium gives the page's script (fetches included) before it dumps the DOM."""


class TextById(HTMLParser):
    """The text inside each element that has an id, nested text included."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self._open: list[tuple[str, str | None]] = []

    VOID = frozenset({"input", "br", "img", "meta", "link", "hr", "col", "source", "wbr"})

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        element_id = dict(attrs).get("id")
        if element_id:
            self.text.setdefault(element_id, "")
        self._open.append((tag, element_id))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            opened, _ = self._open.pop()
            if opened == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, element_id in self._open:
            if element_id:
                self.text[element_id] += data


def text_by_id(dom: str) -> dict[str, str]:
    """Each id'd element's text, whitespace collapsed."""
    parser = TextById()
    parser.feed(dom)
    return {key: " ".join(value.split()) for key, value in parser.text.items()}


@dataclass
class Served:
    """A real API and the operator key its first start wrote."""

    shell: Shell
    url: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        """The operator's Authorization header."""
        return {"Authorization": f"Bearer {self.key}"}

    def cli(self, *args: str) -> str:
        """`switchyard <args>` in the server's environment; its stdout."""
        return self.shell.run("switchyard " + " ".join(args)).strip()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """`switchyard serve` on a free port: SQLite, threads only, the first key in a file."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO_ROOT),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'switchyard.db'}",
        "OPERATOR_KEY_FILE": str(tmp_path / "operator.key"),
        "SWITCHYARD_DATA_DIR": str(tmp_path),
        "USE_CELERY": "false",
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
    }
    env.pop("SWITCHYARD_API_KEY", None)
    env.pop("CELERY_ROLLOUT_PERCENTAGE", None)
    shell = Shell(workdir=tmp_path, env=env, url=url)
    shell.serve("switchyard serve")
    try:
        yield Served(shell=shell, url=url, key=(tmp_path / "operator.key").read_text().strip())
    finally:
        shell.stop_all()


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    """Headless Chromium, run to its end; FAILS (never skips) when it is not installed."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail(
            "chromium is not installed: run `make services` (it installs it) or "
            "`apt-get install -y chromium`; the dashboard test needs a real browser",
            pytrace=False,
        )
    done = subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",  # required as root; the page is this test's own
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            "--window-size=1440,900",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"chromium failed:\n{done.stderr[-3000:]}"
    return done


def dashboard_dom(served: Served, key: str, tmp_path: Path) -> str:
    """The DOM of /dashboard#key=<key> after its script ran."""
    url = f"{served.url}/dashboard#key={key}"
    return chromium("--dump-dom", url, profile=tmp_path / "chromium").stdout


def set_rollout(served: Served, percentage: float, reason: str) -> None:
    """PUT /rollout against the version just read, as the API asks."""
    current = httpx.get(f"{served.url}/rollout", headers=served.headers, timeout=10)
    assert current.status_code == 200, current.text
    changed = httpx.put(
        f"{served.url}/rollout",
        headers={**served.headers, "If-Match": current.headers["ETag"]},
        json={"percentage": percentage, "reason": reason},
        timeout=10,
    )
    assert changed.status_code == 200, changed.text


def run_task(served: Served, tool_id: str, payload: dict[str, str]) -> str:
    """Create a task and wait until it has ended; its id."""
    created = httpx.post(
        f"{served.url}/tasks",
        headers=served.headers,
        json={"tool_id": tool_id, "payload": payload},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    task_id: str = created.json()["task_id"]

    def ended() -> bool:
        task = httpx.get(f"{served.url}/tasks/{task_id}", headers=served.headers, timeout=10)
        return task.json()["status"] in {"COMPLETED", "FAILED"}

    wait_until(ended, what=f"task {task_id} to end")
    return task_id


@pytest.mark.timeout(300)
def test_the_dashboard_shows_the_rollout_in_force_and_follows_a_change(
    served: Served, tmp_path: Path
) -> None:
    before = text_by_id(dashboard_dom(served, served.key, tmp_path))

    assert before["conn"] == "live", before.get("notice")
    assert before["rollout-percentage"] == "0"
    assert before["rollout-version"] == "v1"
    assert "updated" in before["updated"]

    run_task(served, "noop", {})
    failed = run_task(served, "fail", {"message": "the dashboard test failed this on purpose"})
    set_rollout(served, 25, "first step, from the dashboard test")
    dom = dashboard_dom(served, served.key, tmp_path)
    after = text_by_id(dom)

    assert after["conn"] == "live", after.get("notice")
    assert after["rollout-percentage"] == "25"
    assert after["rollout-version"] == "v2"
    assert "USE_CELERY is false" in after["rollout-explanation"]
    history = after["history-table"]
    assert "v2" in history
    assert "0 % → 25 %" in history
    assert "first step, from the dashboard test" in history
    assert "thread" in after["backend-cards"]
    assert after["failure-rate"] == "50 %"
    assert "the dashboard test failed this on purpose" in after["failures-table"]
    assert failed[:8] in after["failures-table"]
    assert "thread completed 1" in after["chart-legend"]
    assert "<svg" in dom
    # The key left the address bar and is nowhere in the page.
    assert served.key not in dom


@pytest.mark.timeout(300)
def test_a_screenshot_on_a_laptop_screen(served: Served, tmp_path: Path) -> None:
    set_rollout(served, 25, "screenshot")
    shot = tmp_path / "dashboard.png"

    chromium(
        f"--screenshot={shot}",
        f"{served.url}/dashboard#key={served.key}",
        profile=tmp_path / "chromium",
    )

    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1440, 900)
    assert len(png) > 30_000, "a near-empty screenshot: did the page render?"


@pytest.mark.timeout(300)
def test_a_user_key_or_a_wrong_key_gets_a_clear_message(served: Served, tmp_path: Path) -> None:
    user_key = served.cli("keys create --user alice --role user")

    as_user = text_by_id(dashboard_dom(served, user_key, tmp_path))
    as_nobody = text_by_id(dashboard_dom(served, "sy_0000000000000000_wrong", tmp_path))

    assert "403" in as_user["notice"]
    assert "needs an operator key" in as_user["notice"]
    assert "401" in as_nobody["notice"]
    assert "unknown, malformed or revoked" in as_nobody["notice"]
    for page in (as_user, as_nobody):
        assert page["rollout-percentage"] == "—"  # nothing was shown


def test_minutes_land_in_the_right_bucket_on_postgresql(postgres_server: PostgresServer) -> None:
    engine = make_engine(postgres_server.create_database("dashboard_activity"))
    try:
        upgrade(engine)
        check_minute_buckets(engine)
    finally:
        engine.dispose()
