"""Real Redis and PostgreSQL servers on free loopback ports, started and stopped by the tests."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

START_TIMEOUT = 30.0


class ServerUnavailable(RuntimeError):
    """A server the tests need could not be started; the message says how to get it."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    """A throwaway redis-server."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        """redis://127.0.0.1:<port>/0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Terminate and wait."""
        self.process.terminate()
        self.process.wait(timeout=10)


REDIS_DATABASES = 64


def start_redis(workdir: Path, port: int | None = None) -> RedisServer:
    """redis-server without persistence (tests need none); on `port` to restart one."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerUnavailable(
            "redis-server is not installed: run `make test` (it installs it) "
            "or `apt-get install -y redis-server`"
        )
    port = port or free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            # A benchmark run gives every setup a database of its own; 16 is not enough.
            "--databases",
            str(REDIS_DATABASES),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            client.ping()
            return RedisServer(process, port)
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise ServerUnavailable(f"redis-server did not start on port {port}") from None
            time.sleep(0.05)


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL cluster."""

    bindir: Path
    datadir: Path
    port: int
    user: str
    as_postgres: list[str]

    def url(self, database: str) -> str:
        """SQLAlchemy URL of `database` on this server (psycopg 3)."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database; returns its URL."""
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown, then remove the cluster."""
        subprocess.run(
            [
                *self.as_postgres,
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """initdb + pg_ctl start with the server binaries in /usr/lib/postgresql/*/bin.

    The cluster lives in its own directory under the system temp dir, which the `postgres`
    user can reach (pytest's per-user temp dirs are private to root).
    """
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not candidates:
        raise ServerUnavailable(
            "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin: "
            "install postgresql (the Debian package) to run the PostgreSQL tests"
        )
    bindir = Path(candidates[-1]).parent
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        as_postgres = ["runuser", "-u", "postgres", "--"]
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-pg-"))
    if as_postgres:
        shutil.chown(workdir, "postgres", "postgres")
        workdir.chmod(0o700)
    datadir, port, user = workdir / "data", free_port(), "switchyard"
    steps = [
        [str(bindir / "initdb"), "-D", str(datadir), "-A", "trust", "-U", user, "--no-sync"],
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(datadir),
            "-l",
            str(workdir / "server.log"),
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            "-o",
            f"-p {port} -c listen_addresses=127.0.0.1 -k {workdir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            "start",
        ],
    ]
    for step in steps:
        done = subprocess.run([*as_postgres, *step], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ServerUnavailable(
                f"PostgreSQL would not start ({Path(step[0]).name}): {done.stderr.strip()[-500:]}"
            )
    return PostgresServer(bindir, datadir, port, user, as_postgres)
