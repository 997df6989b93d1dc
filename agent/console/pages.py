"""The console's HTML: server-rendered, no script, one stylesheet from the package; every value escaped.

Phone first: one column, large type and targets (48 px), black on white
for sunlight, a label on every control (docs/console.md).
"""

from __future__ import annotations

from html import escape
from typing import Any, Iterable

NAV = (("/", "Now"), ("/consents", "Who gets what"), ("/left", "What left the car"), ("/trips", "Trips"),
       ("/crashes", "Crash captures"))


def e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def layout(title: str, body: str, *, here: str = "", signed_in: bool = True, csrf: str | None = None) -> bytes:
    """A whole page: the navigation (when signed in), the title and `body` (already escaped HTML)."""
    nav = ""
    if signed_in:
        links = "".join(
            f'<li><a href="{href}"{" aria-current=page" if href == here else ""}>{e(text)}</a></li>' for href, text in NAV
        )
        out = (f'<form method="post" action="/logout" class="inline">{hidden("csrf", csrf)}'
               f'<button type="submit" class="quiet">Sign out</button></form>') if csrf else ""
        nav = f'<nav aria-label="Pages"><ul>{links}</ul>{out}</nav>'
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{e(title)} · carledger</title><link rel="stylesheet" href="/static/console.css"></head>'
        f"<body>{nav}<main><h1>{e(title)}</h1>{body}</main></body></html>"
    ).encode()


def hidden(name: str, value: Any) -> str:
    return f'<input type="hidden" name="{e(name)}" value="{e(value)}">'


def select(name: str, label: str, choices: Iterable[tuple[str, str]], ident: str) -> str:
    options = "".join(f'<option value="{e(v)}">{e(t)}</option>' for v, t in choices)
    return f'<label for="{e(ident)}">{e(label)}</label><select id="{e(ident)}" name="{e(name)}">{options}</select>'


def ask(action: str, button: str, fields: dict[str, Any], *, label: str, choose: str = "") -> str:
    """A GET form to the confirmation page: nothing changes until the owner confirms there."""
    values = "".join(hidden(k, v) for k, v in fields.items())
    return (f'<form method="get" action="/confirm" class="ask">{hidden("action", action)}{values}{choose}'
            f'<button type="submit" aria-label="{e(label)}">{e(button)}</button></form>')


def table(header: tuple[str, ...], rows: list[tuple[Any, ...]], caption: str) -> str:
    """A table; on a phone each row is a card whose cells carry their column's name (data-label, console.css)."""
    head = "".join(f'<th scope="col">{e(h)}</th>' for h in header)
    body = "".join("<tr>" + "".join(f'<td data-label="{e(h)}">{e(c)}</td>' for h, c in zip(header, row)) + "</tr>"
                   for row in rows)
    return f"<table><caption>{e(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def message(text: str, *, error: bool = False) -> str:
    role = "alert" if error else "status"
    return f'<p role="{role}" class="{"error" if error else "done"}">{e(text)}</p>'
