"""The console's HTTP(S) server: the standard library's threading HTTP server, hardened for a car.

Why no framework: every light framework's own server (Werkzeug's, Bottle's
wsgiref) is this same `http.server` underneath; what a framework would add
is routing and form parsing for eight URLs, which take a page here, and it
would cost a dependency and memory on a Pi. What the car needs on top, it
gets here: TLS with the handshake in the connection's thread (a slow client
cannot stall the others), a plain-HTTP request to the TLS port answered
with a refusal, a socket timeout, a cap on connections and on body sizes,
and security headers on every response (docs/console.md).
"""

from __future__ import annotations

import html
import logging
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO, Callable
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

TIMEOUT = 20.0  # seconds a connection may stay silent
MAX_CONNECTIONS = 16  # connections served at once; more are closed at once
MAX_BODY = 8192  # bytes of a form: the console's forms are a few fields, or a key file of 65 bytes
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
    body: bytes | Callable[[BinaryIO], None] = b""  # a callable writes a streamed body itself
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def redirect(cls, where: str) -> "Response":
        return cls(303, b"", headers={"Location": where})

    @classmethod
    def text(cls, status: int, message: str) -> "Response":
        return cls(status, f"<!doctype html><title>{status}</title><p>{html.escape(message)}</p>".encode())


class _Handler(BaseHTTPRequestHandler):
    server_version = "carledger-console"
    sys_version = ""
    timeout = TIMEOUT
    server: "ConsoleServer"

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def _serve(self, method: str) -> None:
        request = self._request(method)
        if request is None:
            return
        try:
            response = self.server.app(request)
        except Exception:  # a bug must not kill the connection silently, nor show a traceback to the phone
            log.exception("console: %s %s failed", method, request.path)
            response = Response.text(500, "The console failed on this page; the log says why.")
        self._send(response, head=method == "HEAD")

    def _request(self, method: str) -> Request | None:
        parts = urlsplit(self.path)
        form: dict[str, str] | None = {}
        files: dict[str, bytes] = {}
        if method == "POST":
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                self._send(Response.text(413, f"a form is at most {MAX_BODY} bytes"))
                return None
            body = self.rfile.read(length)
            kind = self.headers.get("Content-Type") or ""
            if kind.lower().startswith("multipart/form-data"):
                parsed = _multipart(kind, body)
                if parsed is None:
                    self._send(Response.text(400, f"a form of at most {MAX_FIELDS} fields, as a browser sends it"))
                    return None
                form, files = parsed
            else:
                form = _fields(body.decode("utf-8", "replace"))
        query = _fields(parts.query)
        if form is None or query is None:
            self._send(Response.text(400, f"at most {MAX_FIELDS} fields in a query or a form"))
            return None
        cookie = None
        try:
            jar = SimpleCookie(self.headers.get("Cookie") or "")
            cookie = jar[COOKIE].value if COOKIE in jar else None
        except CookieError:
            pass
        return Request(method, parts.path, query, form, cookie, self.headers.get("Origin"),
                       self.headers.get("Host"), self.server.tls is not None, files)

    def _send(self, response: Response, head: bool = False) -> None:
        self.send_response(response.status)
        for name, value in {**HEADERS, **response.headers}.items():
            self.send_header(name, value)
        if response.status != 303 or response.body:
            self.send_header("Content-Type", response.content_type)
        if isinstance(response.body, bytes):
            self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if head:
            return
        if isinstance(response.body, bytes):
            self.wfile.write(response.body)
            return
        try:
            response.body(self.wfile)  # no Content-Length: the end of the connection ends the body
        except Exception:
            log.exception("console: streaming %s failed; the download is cut short", self.path)


def _fields(text: str) -> dict[str, str] | None:
    """A query string or urlencoded form, one value per name (the first); None when it has too many fields."""
    try:
        return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True, max_num_fields=MAX_FIELDS).items()}
    except ValueError:  # "Max number of fields exceeded"
        return None


def _multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, bytes]] | None:
    """A multipart/form-data body (a form with a file, MAX_BODY at most): its fields and its files, kept in
    memory only; None when it is not one or has more than MAX_FIELDS parts. The email parser reads it, as
    the standard library's removed `cgi` module did."""
    from email import policy
    from email.parser import BytesParser

    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart() or message.defects:
        return None
    parts = list(message.iter_parts())  # type: ignore[attr-defined] - policy.HTTP makes an EmailMessage
    if len(parts) > MAX_FIELDS:
        return None
    form: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for part in parts:
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        data = part.get_payload(decode=True) or b""
        if part.get_filename() is not None:
            files.setdefault(name, data)
        else:
            form.setdefault(name, data.decode("utf-8", "replace"))
    return form, files


REFUSE_PLAIN = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                b"This console serves HTTPS only on this address: use https://\r\n")


class ConsoleServer(ThreadingHTTPServer):
    """One thread per connection, at most MAX_CONNECTIONS of them; TLS when `tls` is given."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: Callable[[Request], Response], tls: ssl.SSLContext | None = None):
        self.app = app
        self.tls = tls
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """The TLS handshake happens here, in the connection's own thread; plain HTTP gets a refusal."""
        request.settimeout(TIMEOUT)
        if self.tls is not None:
            try:
                first = request.recv(1, socket.MSG_PEEK)
                if first != b"\x16":  # not a TLS handshake record: someone typed http://
                    if first:
                        request.recv(MAX_BODY)  # the request line, read so that the refusal is not reset
                        request.sendall(REFUSE_PLAIN)
                    return
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.info("console: TLS connection from %s failed: %s", client_address[0], exc)
                return
        try:
            super().finish_request(request, client_address)
        finally:
            if self.tls is not None:
                try:
                    request.close()
                except OSError:
                    pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.info("console: connection from %s ended with an error", client_address[0], exc_info=True)
