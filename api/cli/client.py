"""How CLI commands talk to a running API: base URL, API key, one-line errors."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import typer

from api.cli.bootstrap import KeyFileError, read_key_file
from api.cli.console import fail, settings_or_exit
from api.client import error_of

DEFAULT_API_URL = "http://127.0.0.1:8000"
"""Where `switchyard serve` listens with the default HOST and PORT."""

UrlOption = Annotated[
    str, typer.Option("--url", envvar="SWITCHYARD_URL", help="Base URL of a running API.")
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="SWITCHYARD_API_KEY",
        # A string, not "[default: ...]" in the help: Rich would take that for markup and drop it.
        show_default="the key in OPERATOR_KEY_FILE, written by the first `serve`",
        help="API key.",
    ),
]


def api_client(url: str, api_key: str | None) -> httpx.Client:
    """A client sending `api_key`, else the key in OPERATOR_KEY_FILE; exits if there is none."""
    if api_key is None:
        path = settings_or_exit().operator_key_file
        try:
            api_key = read_key_file(path)
        except KeyFileError as exc:
            fail(str(exc))
        if api_key is None:
            fail(
                f"no API key: pass --api-key or set SWITCHYARD_API_KEY (`switchyard keys create` "
                f"makes one); the first `switchyard serve` also writes one to OPERATOR_KEY_FILE "
                f"({path})"
            )
    headers = {"Authorization": f"Bearer {api_key.strip()}"}
    return httpx.Client(base_url=url, timeout=10.0, headers=headers)


def call_api(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """The JSON answer to one request; any failure exits with one line (status and detail)."""
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        fail(f"cannot reach the API at {client.base_url}: {exc}")
    fail_on_error(response)
    return response.json()


def fail_on_error(response: httpx.Response) -> None:
    """Exit with one line (status and detail) if `response` is an error; a streamed one is read."""
    error = error_of(response)
    if error is not None:
        fail(str(error))
