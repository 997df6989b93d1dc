"""What the console's pages speak: a request in, a response out, and the limits and headers of both.

Kept apart from the server (`server`, Bottle and cheroot) so the pages
(`app`) are plain functions of a `Request`, testable and readable without
any framework, and the server can change without touching a page.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Iterable

TIMEOUT = 20.0  # seconds a connection may stay silent
MAX_CONNECTIONS = 16  # connections served or waiting at once; more are answered 503 at once
MAX_BODY = 8192  # bytes of a form: the console's forms are a few fields, or a key file of 65 bytes
MAX_HEADERS = 16384  # bytes of a request line and its headers
MAX_FIELDS = 32  # fields of a query or a form
COOKIE = "carledger_console"
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # not no-referrer: with it, Chromium sends `Origin: null` on our own forms
    "Cache-Control": "no-store",
}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    cookie: str | None
    origin: str | None
    host: str | None
    tls: bool
    files: dict[str, bytes] = field(default_factory=dict)  # a multipart form's files, in memory only


@dataclass
class Response:
    status: int
    body: bytes | Iterable[bytes] = b""  # an iterable is streamed chunk by chunk (a download of any size)
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def redirect(cls, where: str) -> "Response":
        return cls(303, b"", headers={"Location": where})

    @classmethod
    def text(cls, status: int, message: str) -> "Response":
        return cls(status, f"<!doctype html><title>{status}</title><p>{html.escape(message)}</p>".encode())
