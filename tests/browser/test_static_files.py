"""The pages' files as served: exactly the shipped files, with their types, CSP and cache headers.

No browser needed: plain HTTP against the real service.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import aiohttp

from exchange import web_page
from exchange.web_page import CSP, FILES, STATIC, UPLOT
from tests.conftest import Service

ROOT = Path(__file__).resolve().parents[2]


def shipped() -> set[str]:
    return {p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*") if p.is_file()}


def test_every_shipped_file_is_served_once_and_nothing_else() -> None:
    names = [f.name for f in FILES]
    assert sorted(names) == sorted(shipped())
    assert len({f.path for f in FILES}) == len(FILES)
    assert {r.path for r in web_page.ROUTES} == {f.path for f in FILES}


def test_the_package_data_globs_take_every_shipped_file() -> None:
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["exchange"]
    package = STATIC.parent
    matched = {p.relative_to(STATIC).as_posix() for g in globs for p in package.glob(g) if p.is_file()
               and STATIC in p.parents}
    assert matched == shipped()


def test_the_vendored_chart_library_carries_its_version_and_license() -> None:
    version = UPLOT.removeprefix("uPlot-")
    js = (STATIC / f"vendor/{UPLOT}.iife.min.js").read_text()
    assert js.startswith(f"/*! https://github.com/leeoniya/uPlot (v{version}) */")
    license_text = (STATIC / f"vendor/{UPLOT}.LICENSE.txt").read_text()
    assert "The MIT License" in license_text and "Leon Sorokin" in license_text


def test_the_pages_load_nothing_from_elsewhere_and_nothing_inline() -> None:
    for f in FILES:
        if f.vendored:
            continue
        text = (STATIC / f.name).read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), f.name
        assert not re.search(r"""(import|from)\s*["'](https?:)?//""", text), f.name
        assert "fetch(\"http" not in text and "localStorage" not in text, f.name
        if f.name.endswith(".html"):
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), f"{f.name}: inline script"
            assert not re.search(r"\sstyle\s*=", text), f"{f.name}: inline style"
            assert not re.search(r"\son[a-z]+\s*=", text), f"{f.name}: inline handler"


async def test_files_are_served_with_type_csp_and_cache_headers(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http:
        for f in FILES:
            async with http.get(f.path) as r:
                body = await r.read()
                assert r.status == 200, (f.path, r.status)
                assert body == (STATIC / f.name).read_bytes(), f.path
                assert r.content_type == f.media_type and r.charset == "utf-8", (f.path, r.headers)
                assert r.headers["Content-Security-Policy"] == CSP
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert r.headers["X-Frame-Options"] == "DENY"
                assert r.headers["Referrer-Policy"] == "no-referrer"
                want = "public, max-age=31536000, immutable" if f.name.startswith("vendor/") else "no-cache"
                assert r.headers["Cache-Control"] == want, f.path
                etag = r.headers["ETag"]
                assert etag == '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            async with http.get(f.path, headers={"If-None-Match": etag}) as r:
                assert r.status == 304 and await r.read() == b"", f.path
        # Nothing else under /static, and no path reaches the file system.
        for path in ("/static/", "/static/web_page.py", "/static/../web_page.py", "/static/vendor/",
                     "/static/%2e%2e/app.py", "/index.html"):
            async with http.get(path) as r:
                assert r.status == 404, (path, r.status)
        assert "'self'" in CSP and "unsafe" not in CSP and "connect-src 'self'" in CSP


async def test_the_openapi_document_lists_the_pages_as_public_files(service: Service) -> None:
    async with aiohttp.ClientSession(service.url) as http, http.get("/v1/openapi.json") as r:
        doc = await r.json()
    for f in FILES:
        op = doc["paths"][f.path]["get"]
        assert list(op["responses"]["200"]["content"]) == [f.media_type], f.path
        assert "security" not in op
