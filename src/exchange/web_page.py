"""The market page (`/`) and the read-only account page (`/account`), served from `static/`.

Plain files shipped in the package: HTML, CSS and ES modules, and a vendored chart library
(uPlot, MIT, its license beside it). Nothing is built; nothing is fetched from elsewhere at run
time. The pages read the public REST routes and `GET /v1/ws`; the account page keeps the API key
it is given in the browser's sessionStorage only and sends it as a bearer header and in `login`.

Every file is a public route of the route table (so the access middleware, the metrics, the
authorization matrix and the OpenAPI document see them), one route per file: nothing outside
`FILES` is served, and no path from a request ever reaches the file system.

Headers: a Content-Security-Policy allowing this origin only (scripts, styles, images, and
`connect-src 'self'`, which covers the same-origin websocket), no framing, `nosniff`, no
referrer. Vendored files carry their version in their names and are cached for a year as
immutable; the pages and our own modules are revalidated on every use (`no-cache` + ETag).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from aiohttp import web

from .openapi import Media
from .routes import Access, Handler, Route

STATIC = Path(__file__).with_name("static")
UPLOT = "uPlot-1.6.32"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".txt": "text/plain",
}


@dataclass(frozen=True)
class File:
    path: str  # the URL path
    name: str  # under static/
    summary: str

    @property
    def media_type(self) -> str:
        return _TYPES[Path(self.name).suffix]

    @property
    def vendored(self) -> bool:
        return self.name.startswith("vendor/")


FILES = (
    File("/", "index.html", "The market page (HTML): book, trades, ticker, price and supply, live"),
    File("/account", "account.html", "The read-only account page (HTML): balances, open orders and fills"),
    File("/static/style.css", "style.css", "The pages' style sheet"),
    File("/static/format.js", "format.js", "The pages' module: labels, formatting, REST"),
    File("/static/feed.js", "feed.js", "The pages' module: the websocket, reconnects, staleness"),
    File("/static/book.js", "book.js", "The pages' module: the local order book and its checksum"),
    File("/static/market.js", "market.js", "The market page's module"),
    File("/static/account.js", "account.js", "The account page's module"),
    File(f"/static/vendor/{UPLOT}.iife.min.js", f"vendor/{UPLOT}.iife.min.js", "uPlot, the chart library (MIT)"),
    File(f"/static/vendor/{UPLOT}.min.css", f"vendor/{UPLOT}.min.css", "uPlot's style sheet (MIT)"),
    File(f"/static/vendor/{UPLOT}.LICENSE.txt", f"vendor/{UPLOT}.LICENSE.txt", "uPlot's license"),
)


@dataclass(frozen=True)
class Body:
    data: bytes
    etag: str


@cache
def _body(name: str) -> Body:
    data = (STATIC / name).read_bytes()
    return Body(data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"')


def _handler(f: File) -> Handler:
    headers = {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": IMMUTABLE if f.vendored else REVALIDATE,
    }

    async def serve(request: web.Request) -> web.StreamResponse:
        body = _body(f.name)
        if body.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers={**headers, "ETag": body.etag})
        return web.Response(body=body.data, content_type=f.media_type, charset="utf-8",
                            headers={**headers, "ETag": body.etag})

    serve.__name__ = f"serve_{f.name.replace('/', '_').replace('.', '_').replace('-', '_')}"
    return serve


ROUTES = [Route("GET", f.path, _handler(f), Access.PUBLIC, f.summary, None, Media((f.media_type,))) for f in FILES]
