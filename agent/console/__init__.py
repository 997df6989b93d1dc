"""The owner's console: a small web application served from the car computer (docs/console.md).

It shows what the owner's commands show, read through the same functions
(`carledger status`, `consent list`, `policy show`, `audit`), and changes the
owner's state through the same request path (`owner_request`), so no rule is
written twice. `tls` makes the LAN mode's certificate, `auth` pairs phones and
keeps sessions, `web` is the request and response the pages speak, `server`
serves them (cheroot, with Bottle) and `pages` is the HTML.
"""

CONSOLE_DIR = "console"  # under the store: the pairing code's hash and the TLS certificate
DEFAULT_PORT = 8765
