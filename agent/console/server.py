"""The console's HTTP(S) server: Bottle reads the requests and writes the responses, cheroot serves them.

Why these two (docs/console.md, "The server"): the standard library's
`http.server` is not meant for production (its own documentation says so),
and the light frameworks' built-in servers are that same module. cheroot is
CherryPy's production WSGI server, maintained with it: a fixed pool of
worker threads, keep-alive connections waiting in a selector rather than in
a thread, TLS through the `ssl` module, socket timeouts, limits on the
request line, headers and body, and a 503 at once when every worker and
queue slot is taken. Bottle is a WSGI framework in one module with no
dependencies: it parses queries, urlencoded and multipart forms and cookies,
and streams an iterable body chunk by chunk. Both are pure Python and
together add under 2 MB to the console's memory (bench/bench_console.py).

The pages (`app.Console`) see only `web.Request` and return `web.Response`;
this module is the one place that knows about WSGI.
"""

from __future__ import annotations

import logging
import socket
import ssl
from http.cookies import CookieError
from typing import Any, Callable, Iterable, Iterator

import bottle
from cheroot import errors, wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from carledger.console.web import (COOKIE, HEADERS, MAX_BODY, MAX_CONNECTIONS, MAX_FIELDS, MAX_HEADERS, TIMEOUT,
                                   Request, Response)

log = logging.getLogger(__name__)

THREADS = 4  # requests handled at once (a page is one request, its style sheet another); the rest wait in line
HANDSHAKE_TIMEOUT = 5.0  # seconds for a TLS handshake: cheroot shakes hands in its accepting thread
REFUSE_PLAIN = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                b"This console serves HTTPS only on this address: use https://\r\n")
SERVER_NAME = "carledger-console"  # the Server header: no versions
bottle.BaseRequest.MEMFILE_MAX = MAX_BODY  # Bottle keeps a body this small in memory (cheroot refuses a larger one)


def wsgi_app(console: Callable[[Request], Response]) -> bottle.Bottle:
    """A Bottle application that hands every request to `console` (which routes by itself) and sends its
    response with the security headers."""
    app = bottle.Bottle(catchall=False, autojson=False)
    app.default_error_handler = _error_page  # type: ignore[method-assign] - Bottle's own page is not ours
    app.route("/<path:path>", "ANY", lambda path: _serve(console))
    app.route("/", "ANY", lambda: _serve(console))
    return app


def _serve(console: Callable[[Request], Response]) -> bottle.HTTPResponse:
    request = _request(bottle.request)
    if isinstance(request, Response):
        return _response(request)
    try:
        response = console(request)
    except Exception:  # a bug must not kill the connection silently, nor show a traceback to the phone
        log.exception("console: %s %s failed", request.method, request.path)
        response = Response.text(500, "The console failed on this page; the log says why.")
    return _response(response, request.path)


def _request(req: bottle.BaseRequest) -> Request | Response:
    """The console's Request, or the answer to a request it must not see (a method it does not serve, too
    many fields, a form that is not one)."""
    if req.method not in ("GET", "HEAD", "POST"):
        return Response.text(405, "the console answers GET and POST only")
    try:
        query = _first(req.query)
        form: dict[str, str] | None = {}
        files: dict[str, bytes] = {}
        if req.method == "POST":
            form = _first(req.forms)
            for name, upload in list(req.files.allitems()):
                files.setdefault(name, upload.file.read())
    except (bottle.MultipartError, UnicodeError, ValueError):
        return Response.text(400, f"a form of at most {MAX_FIELDS} fields in UTF-8, as a browser sends it")
    if query is None or form is None or len(form) + len(files) > MAX_FIELDS:
        return Response.text(400, f"at most {MAX_FIELDS} fields in a query or a form")
    try:
        cookie = req.get_cookie(COOKIE)
    except CookieError:
        cookie = None
    return Request(req.method, req.path, query, form, cookie, req.get_header("Origin"), req.get_header("Host"),
                   req.urlparts.scheme == "https", files)


def _first(fields: bottle.FormsDict) -> dict[str, str] | None:
    """One value per name (the first), decoded as UTF-8; None when there are more than MAX_FIELDS."""
    pairs = list(fields.decode().allitems())
    if len(pairs) > MAX_FIELDS:
        return None
    first: dict[str, str] = {}
    for name, value in pairs:
        first.setdefault(name, value)
    return first


def _response(response: Response, path: str = "") -> bottle.HTTPResponse:
    headers = {**HEADERS, **response.headers}
    if response.status != 303 or response.body:
        headers["Content-Type"] = response.content_type
    body = response.body if isinstance(response.body, bytes) else _logged(response.body, path)
    return bottle.HTTPResponse(body, response.status, headers)


def _logged(chunks: Iterable[bytes], path: str) -> Iterator[bytes]:
    """A streamed body (no Content-Length: the end of the connection ends it); a failure half-way is logged."""
    try:
        yield from chunks
    except Exception:
        log.exception("console: streaming %s failed; the download is cut short", path)
        raise


def _error_page(error: bottle.HTTPError) -> bytes:
    """Bottle's own errors (none is expected: every request is routed to the console) in the console's words."""
    response = Response.text(error.status_code, str(error.body or error.status_line))
    for name, value in HEADERS.items():
        bottle.response.set_header(name, value)
    return response.body  # type: ignore[return-value] - Response.text's body is bytes


class TlsAdapter(BuiltinSSLAdapter):
    """cheroot's builtin TLS adapter with our context (TLS 1.2 or later), a short handshake timeout, and a
    plain-HTTP request to the TLS port answered with a refusal and nothing else (cheroot's own answer to it
    is lost: the failed handshake has closed the socket by then)."""

    def __init__(self, context: ssl.SSLContext, cert: str, key: str):
        super().__init__(cert, key)
        self.context = context

    def wrap(self, sock: socket.socket) -> Any:
        sock.settimeout(HANDSHAKE_TIMEOUT)  # cheroot sets its own timeout again after the handshake
        try:
            first = sock.recv(1, socket.MSG_PEEK)
            if first != b"\x16":  # not a TLS handshake record: someone typed http://
                if first:
                    sock.recv(MAX_HEADERS)  # the request, read so that the refusal is not reset
                    sock.sendall(REFUSE_PLAIN)
                raise OSError("a plain HTTP request to the TLS port, refused")
        except OSError as exc:
            sock.close()
            raise errors.FatalSSLAlert(str(exc)) from None  # cheroot logs it and drops the connection
        return super().wrap(sock)


class ConsoleServer(wsgi.Server):
    """cheroot serving the console; `tls` is (context, certificate file, key file) for HTTPS.

    Binds at once, so a busy port or a bad address is an OSError here, with
    the system's reason as its `strerror`.
    """

    def __init__(self, address: tuple[str, int], console: Callable[[Request], Response],
                 tls: tuple[ssl.SSLContext, str, str] | None = None):
        super().__init__(address, wsgi_app(console), numthreads=THREADS, max=THREADS, server_name=SERVER_NAME,
                         timeout=TIMEOUT, accepted_queue_size=MAX_CONNECTIONS - THREADS, accepted_queue_timeout=0)
        self.max_request_body_size = MAX_BODY  # cheroot answers 413 to a larger body, before any of it is read
        self.max_request_header_size = MAX_HEADERS
        self.keep_alive_conn_limit = MAX_CONNECTIONS
        self.tls = tls is not None
        if tls is not None:
            self.ssl_adapter = TlsAdapter(*tls)
        self.bind_error: OSError | None = None
        try:
            self.prepare()
        except OSError as exc:
            raise self.bind_error or exc from None

    def bind(self, family: Any, type: Any, proto: int = 0) -> None:  # noqa: A002 - cheroot's names
        try:
            super().bind(family, type, proto)
        except OSError as exc:
            self.bind_error = exc  # cheroot reraises a summary without strerror
            raise

    def error_log(self, msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
        """cheroot's reports (a client that dropped its TLS handshake, a plain-HTTP request refused) go to the log."""
        log.log(level, "console: %s", msg, exc_info=traceback)

    @property
    def address(self) -> tuple[str, int]:
        """The address served, with the port the system chose for port 0."""
        return self.bind_addr[:2]
