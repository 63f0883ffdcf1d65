"""A compiled loopback load generator: `wrk` POSTing JSON bodies over kept-alive connections.

The generator must never be what limits a server: a Python client on the same 2 cores capped a
trivial endpoint at ~330 req/s, while wrk (C, epoll, LuaJIT) needs well under a tenth of a core
at the rates measured here. A generated Lua script sets the method, bodies and headers, counts
the responses whose status is not the expected one (per status code) and, when wrk ends, prints
one JSON line of results that `parse` reads.

Two ways to bound a run:

- `post_for`: a fixed time (the API comparison); requests still in flight when the time is up
  are sent but not counted, so the server may commit up to one per connection more than wrk
  reports.
- `post_mixed`: a fixed number of POSTs (the soak), rotating through several bodies. Each wrk
  thread sends its share and then only `GET /health` until its last POST is answered, so the
  server receives exactly that many POSTs; wrk is then stopped (SIGINT, which ends its run as
  the clock would).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

THREADS = 2
CONNECTIONS = 16
TIMEOUT_SECONDS = 30
"""wrk's per-request timeout: a slower response counts as a `timeout` error (a failure)."""
MAX_COUNTED_SECONDS = 3600
"""How long a `post_mixed` run may take before wrk's clock ends it (short of its POSTs)."""
IDLE_STATUS = 200
"""What `GET /health` answers: in a counted run, the one status not counted as a POST's."""
MARKER = "SWITCHYARD-WRK-RESULT "
THREAD_DONE = "SWITCHYARD-WRK-THREAD-DONE"
SOCKET_ERRORS = ("connect", "read", "write", "timeout")

_SCRIPT = """\
{headers}
local bodies = {{{bodies}}}
local quotas = {{{quotas}}}
local idle_path = {idle_path}
local idle_status = {idle_status}

local threads = {{}}

function setup(thread)
   table.insert(threads, thread)
   thread:set("quota", quotas[#threads] or -1)
   thread:set("offset", #threads - 1)
   -- wrk 4 calls the first thread's request() once before the run, to parse what it returns
   -- (script_verify_request): that request is never sent, so it must not count.
   thread:set("verifying", #threads == 1)
end

local posts = {{}}
local idle = nil
local sent = 0
local finished = false
local last_answer = 0
answered = 0
unexpected = {{}}

function init(args)
   for i, body in ipairs(bodies) do
      posts[i] = wrk.format("POST", nil, nil, body)
   end
   if idle_path then
      idle = wrk.format("GET", idle_path, nil, nil)
   end
   last_answer = os.time()
end

function request()
   if verifying then
      verifying = false
      return posts[1]
   end
   if quota >= 0 and sent >= quota then
      return idle
   end
   sent = sent + 1
   return posts[(offset + sent - 1) % #posts + 1]
end

function response(status, headers, body)
   if idle_status and status == idle_status then
      -- Waiting for the last POSTs; one lost to a socket error would never be answered.
      if not finished and os.time() - last_answer > {stall} then
         finish()
      end
      return
   end
   answered = answered + 1
   last_answer = os.time()
   if status ~= {expect} then
      local code = tostring(status)
      unexpected[code] = (unexpected[code] or 0) + 1
   end
   if quota >= 0 and answered >= quota and not finished then
      finish()
   end
end

function finish()
   finished = true
   io.write("{thread_done}\\n")
   io.flush()
   wrk.thread:stop()
end

function done(summary, latency, requests)
   local total = 0
   local codes = {{}}
   for _, thread in ipairs(threads) do
      total = total + thread:get("answered")
      for code, count in pairs(thread:get("unexpected")) do
         codes[code] = (codes[code] or 0) + count
      end
   end
   local parts = {{}}
   for code, count in pairs(codes) do
      table.insert(parts, string.format('"%s": %.0f', code, count))
   end
   local e = summary.errors
   io.write(string.format(
      '{marker}{{"requests": %.0f, "duration_us": %.0f, "connect": %.0f, "read": %.0f, '
         .. '"write": %.0f, "timeout": %.0f, "p50_us": %.1f, "p99_us": %.1f, '
         .. '"unexpected": {{%s}}}}\\n',
      total, summary.duration, e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(99), table.concat(parts, ", ")))
   io.flush()
end
"""


class WrkMissing(RuntimeError):
    """wrk is not installed."""


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one wrk run did."""

    requests: int
    """POSTs answered (with any status) before the run ended."""
    seconds: float
    p50: float
    """Median latency, seconds, as wrk reports it: with its correction for coordinated
    omission, and in a counted run with its tail of `GET /health` included."""
    p99: float
    """99th-percentile latency, seconds."""
    socket_errors: dict[str, int]
    """connect / read / write / timeout errors, those that happened."""
    unexpected: dict[int, int]
    """POSTs answered with another status than the expected one, by status code."""
    short: int = 0
    """POSTs of a counted run that were not answered when it ended (its clock ran out)."""

    @property
    def answered(self) -> int:
        """POSTs answered with the expected status."""
        return self.requests - sum(self.unexpected.values())

    @property
    def throughput(self) -> float:
        """POSTs answered with the expected status per second."""
        return self.answered / self.seconds

    @property
    def failures(self) -> dict[str, int]:
        """Everything that went wrong, by kind ("read", "503", "unanswered"); empty if nothing."""
        found = {**self.socket_errors, **{str(code): n for code, n in self.unexpected.items()}}
        if self.short:
            found["unanswered"] = self.short
        return found


def post_for(
    url: str,
    body: dict[str, Any],
    *,
    seconds: int,
    expect: int,
    script_dir: Path | None = None,
    headers: dict[str, str] | None = None,
    connections: int = CONNECTIONS,
    threads: int = THREADS,
) -> LoadResult:
    """POST `body` to `url` for `seconds` on `connections` kept-alive connections."""
    script = _script([body], headers or {}, expect, quotas=[], idle_path=None)
    command = _command(url, seconds=seconds, connections=connections, threads=threads)
    return _run(command, script, script_dir, threads=0, timeout=seconds)


def post_mixed(
    url: str,
    bodies: Sequence[dict[str, Any]],
    *,
    requests: int,
    expect: int,
    headers: dict[str, str] | None = None,
    script_dir: Path | None = None,
    connections: int = CONNECTIONS,
    threads: int = THREADS,
    health_path: str = "/health",
    max_seconds: int = MAX_COUNTED_SECONDS,
) -> LoadResult:
    """POST exactly `requests` times to `url`, the bodies in turn, on `connections` kept-alive
    connections; the server must answer `GET health_path` with 200 (sent only to keep a
    connection busy while its thread waits for its last POSTs).

    `expect` must not be 200: a counted run tells its POSTs' responses from the health
    checks' by status.
    """
    if expect == IDLE_STATUS:
        raise ValueError(f"a counted run cannot expect {IDLE_STATUS}, the health check's status")
    if not bodies or requests < 1:
        raise ValueError("a counted run needs at least one body and one request")
    threads = min(threads, requests)
    quotas = [requests // threads + (1 if n < requests % threads else 0) for n in range(threads)]
    script = _script(bodies, headers or {}, expect, quotas=quotas, idle_path=health_path)
    command = _command(
        url, seconds=max_seconds, connections=max(threads, connections), threads=threads
    )
    result = _run(command, script, script_dir, threads=threads, timeout=max_seconds)
    short = requests - result.requests
    return LoadResult(
        requests=result.requests,
        seconds=result.seconds,
        p50=result.p50,
        p99=result.p99,
        socket_errors=result.socket_errors,
        unexpected=result.unexpected,
        short=short,
    )


def parse(output: str) -> LoadResult:
    """The result line the script's `done` printed, from wrk's whole output."""
    for line in output.splitlines():
        if line.startswith(MARKER):
            figures = json.loads(line.removeprefix(MARKER))
            break
    else:
        raise RuntimeError(f"wrk printed no result line:\n{output}")
    return LoadResult(
        requests=int(figures["requests"]),
        seconds=figures["duration_us"] / 1e6,
        p50=figures["p50_us"] / 1e6,
        p99=figures["p99_us"] / 1e6,
        socket_errors={kind: int(figures[kind]) for kind in SOCKET_ERRORS if figures[kind]},
        unexpected={int(code): int(n) for code, n in figures["unexpected"].items()},
    )


def _command(url: str, *, seconds: int, connections: int, threads: int) -> list[str]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise WrkMissing("wrk not found: install wrk (apt-get install wrk; `make services` does)")
    return [
        wrk,
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={seconds}s",
        f"--timeout={TIMEOUT_SECONDS}s",
        url,
    ]


def _run(
    command: list[str], script: str, script_dir: Path | None, *, threads: int, timeout: int
) -> LoadResult:
    """Run wrk with `script`; if `threads`, stop it once that many threads said they are done."""
    with tempfile.NamedTemporaryFile(
        "w", suffix=".lua", prefix="wrk-post-", dir=script_dir, encoding="utf-8"
    ) as file:
        file.write(script)
        file.flush()
        process = subprocess.Popen(  # noqa: S603 - wrk with our own arguments
            [*command[:-1], f"--script={file.name}", command[-1]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        deadline = time.monotonic() + timeout + TIMEOUT_SECONDS + 30
        try:
            assert process.stdout is not None
            waiting = threads
            for line in process.stdout:
                lines.append(line)
                if waiting and line.strip() == THREAD_DONE:
                    waiting -= 1
                    if not waiting:
                        _interrupt(process, deadline)
            returncode = process.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = "".join(lines)
    if returncode != 0:
        raise RuntimeError(f"wrk exited with {returncode}:\n{output}")
    return parse(output)


def _interrupt(process: subprocess.Popen[str], deadline: float) -> None:
    """SIGINT ends wrk's run as its clock would; again, should it come before wrk listens."""
    while process.poll() is None and time.monotonic() < deadline:
        os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            continue


def _script(
    bodies: Sequence[dict[str, Any]],
    headers: dict[str, str],
    expect: int,
    *,
    quotas: Sequence[int],
    idle_path: str | None,
) -> str:
    """The Lua script: per-thread quotas of POSTs (none: unbounded), health checks after."""
    lines = {"Content-Type": "application/json", **headers}
    return _SCRIPT.format(
        headers="\n".join(
            f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}"
            for name, value in lines.items()
        ),
        bodies=", ".join(_lua_string(json.dumps(body)) for body in bodies),
        quotas=", ".join(str(int(quota)) for quota in quotas),
        idle_path=_lua_string(idle_path) if idle_path else "nil",
        idle_status=IDLE_STATUS if idle_path else "nil",
        expect=int(expect),
        stall=TIMEOUT_SECONDS + 5,
        thread_done=THREAD_DONE,
        marker=MARKER,
    )


def _lua_string(text: str) -> str:
    """`text` as a Lua string literal: printable ASCII as is, every other byte as \\ddd."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\\' or not 0x20 <= byte < 0x7F:
            out.append(f"\\{byte:03d}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
