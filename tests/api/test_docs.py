"""/docs and /redoc work offline: every file they load comes from the app, none from a CDN."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from tests.api.conftest import ApiUnderTest

DOC_PAGES = ("/docs", "/redoc")
CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
    ".json": ("application/json",),
}
# What each asset must contain to be the real thing, not an empty or placeholder file.
SIGNATURES = {
    "swagger-ui-bundle.js": "SwaggerUIBundle",
    "swagger-ui.css": ".swagger-ui",
    "redoc.standalone.js": "Redoc",
}
# Swagger UI's inline script names the schema as `url: '/openapi.json'`.
INLINE_URL = re.compile(r"""\burl:\s*['"]([^'"]+)['"]""")


class References(HTMLParser):
    """The URLs a page makes the browser load: scripts, styles, icons, ReDoc's spec."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src", "redoc": "spec-url"}.get(tag)
        self.urls += [value for name, value in attrs if name == wanted and value]
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.urls += INLINE_URL.findall(data)


def references(html: str) -> list[str]:
    """Every URL `html` loads, in page order."""
    parser = References()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize("page", DOC_PAGES)
def test_a_docs_page_names_no_other_host(auth_api: ApiUnderTest, page: str) -> None:
    response = auth_api.client.get(page)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert re.findall(r"https?://\S+", response.text) == []
    assert "//" not in " ".join(references(response.text))  # no protocol-relative URL either


@pytest.mark.parametrize("page", DOC_PAGES)
def test_every_file_a_docs_page_loads_is_served_by_the_app_without_a_key(
    auth_api: ApiUnderTest, page: str
) -> None:
    urls = references(auth_api.client.get(page).text)

    assert any(url.endswith(".js") for url in urls)
    assert "/openapi.json" in urls
    for url in urls:
        response = auth_api.client.get(url)
        assert response.status_code == 200, url
        suffix = url[url.rfind(".") :]
        content_type = response.headers["content-type"].split(";")[0]
        assert content_type in CONTENT_TYPES[suffix], url
        signature = SIGNATURES.get(url.rsplit("/", 1)[-1])
        assert signature is None or signature in response.text, url


def test_swagger_ui_loads_its_script_and_style_from_the_app(auth_api: ApiUnderTest) -> None:
    urls = references(auth_api.client.get("/docs").text)

    assert "/docs-assets/swagger-ui-bundle.js" in urls
    assert "/docs-assets/swagger-ui.css" in urls


def test_redoc_loads_its_script_from_the_app(auth_api: ApiUnderTest) -> None:
    urls = references(auth_api.client.get("/redoc").text)

    assert "/docs-assets/redoc.standalone.js" in urls


def test_the_oauth2_redirect_page_of_swagger_ui_is_served_and_names_no_host(
    auth_api: ApiUnderTest,
) -> None:
    response = auth_api.client.get("/docs/oauth2-redirect")

    assert response.status_code == 200
    assert re.findall(r"https?://\S+", response.text) == []


def test_the_docs_pages_stay_out_of_the_openapi_schema(auth_api: ApiUnderTest) -> None:
    paths = auth_api.client.get("/openapi.json").json()["paths"]

    assert not {"/docs", "/redoc", "/docs/oauth2-redirect"} & set(paths)
    assert not any(path.startswith("/docs-assets") for path in paths)
