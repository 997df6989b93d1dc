"""The console's pages and actions: what the CLI shows, through the CLI's own functions.

"Now" is `status_report` (carledger status --json), "Who gets what" is
`consent_report` (carledger consent list --json, with `policy show`'s text of
each stream), "What left the car" is `audit_store` (carledger audit --json).
A change goes through `owner_request`, as `carledger consent grant|revoke`,
`pause` and `resume` do: the same rules (at most two years of consent) and the
same path (through the running agent, which applies it before the next block).
"""

from __future__ import annotations

import io
import ipaddress
import time
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from carledger.cli._store import Target
from carledger.console import pages
from carledger.console.auth import SESSION_MAX, Auth, Session, Throttled
from carledger.console.pages import ask, e, hidden, layout, message, select
from carledger.console.web import COOKIE, Request, Response

GRANT_CHOICES = (("90d", "90 days"), ("30d", "30 days"), ("1y", "1 year"), ("2y", "2 years"))
PAUSE_CHOICES = (("", "until I resume"), ("1h", "1 hour"), ("1d", "1 day"))
ACTIONS = ("grant", "revoke", "pause", "resume", "wipe", "allow", "withdraw")
WIPE_WORD = "WIPE"  # what `carledger wipe` asks the owner to type
EXPORT_FORMATS = {  # `carledger edr export --format`: (what the owner reads, the download's type)
    "csv": ("CSV (a spreadsheet)", "text/csv; charset=utf-8"),
    "jsonl": ("JSON lines (one sample a line)", "application/x-ndjson"),
    "json": ("JSON (one document, with the metadata)", "application/json"),
}


def _css() -> bytes:
    return resources.files("carledger.console").joinpath("static/console.css").read_bytes()


class Console:
    """The web application: `Console(where, auth)(request) -> response`."""

    def __init__(self, where: Target, auth: Auth, clock: Callable[[], float] = time.time, *,
                 local_only: bool = False):
        self.where = where
        self.auth = auth
        self.clock = clock
        self.local_only = local_only  # served on loopback: only a loopback name may be in Host
        self.css = _css()
        self.key = _vehicle_key(where.store)  # a wipe replaces it: every session of the old owner ends

    def __call__(self, req: Request) -> Response:
        if self.local_only and not _loopback_host(req.host):
            return Response.text(421, "refused: this console answers only to 127.0.0.1, [::1] or localhost")
        if req.path == "/static/console.css" and req.method in ("GET", "HEAD"):
            return Response(200, self.css, "text/css; charset=utf-8")
        if _vehicle_key(self.where.store) != self.key:
            self.auth.end_all()
            return Response.text(503, "This car's store was wiped for a new owner: restart the console "
                                      "(carledger console), then pair again.")
        if req.method == "POST" and not _same_origin(req):
            return Response.text(403, "refused: this form was sent from another site")
        if req.path == "/pair":
            return self.pair(req)
        session = self.auth.session(req.cookie)
        if session is None:
            if req.method == "POST":
                return Response.text(403, "refused: pair this device first (carledger console pair)")
            return Response.redirect("/pair")
        if req.method == "POST":
            if not self.auth.check_csrf(session, req.form.get("csrf")):
                return Response.text(403, "refused: this form is stale or was not made by the console; open the page again")
            if req.path == "/do":
                return self.do(req, session)
            if req.path == "/crashes/export":
                return self.export_capture(req, session)
            if req.path == "/logout":
                self.auth.end(req.cookie)
                return Response.redirect("/pair")
            return Response.text(404, "no such action")
        page = {"/": self.now, "/consents": self.consents, "/confirm": self.confirm, "/left": self.left,
                "/crashes": self.crashes, "/trips": self.trips, "/wipe": self.wipe_page, "/mydata.zip": self.mydata}.get(req.path)
        if page is None:
            return Response.text(404, "no such page")
        return page(req, session)

    def _page(self, title: str, body: str, here: str, session: Session, status: int = 200) -> Response:
        return Response(status, layout(title, body, here=here, csrf=self.auth.csrf_token(session)))

    # -- pairing ----------------------------------------------------------------------------------

    def pair(self, req: Request) -> Response:
        note, status = "", 200
        if req.method == "POST":
            try:
                if "signature" in req.form:
                    token = self.auth.pair_with_key(req.form.get("challenge", ""), req.form.get("signature", ""))
                else:
                    token = self.auth.pair(req.form.get("code", ""))
            except Throttled as exc:
                token, note, status = None, message(str(exc), error=True), 429
            if token is not None:
                secure = "; Secure" if req.tls else ""
                cookie = f"{COOKIE}={token}; Path=/; Max-Age={int(SESSION_MAX)}; HttpOnly; SameSite=Strict{secure}"
                return Response(303, b"", headers={"Location": "/", "Set-Cookie": cookie})
            if status == 200:
                what = ("That signature is not the enrolled owner key's over this page's challenge (a challenge works "
                        "once: use the new one below)." if "signature" in req.form else
                        "That code is wrong, used or expired. Run carledger console pair for a new one.")
                note, status = message(what, error=True), 403
        body = (f"{note}<p>On the car computer, run <code>carledger console pair</code> and type the code it prints. "
                "A code works once, for ten minutes.</p>"
                '<form method="post" action="/pair"><label for="code">Pairing code</label>'
                '<input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" required class="code">'
                '<p><button type="submit">Pair this device</button></p></form>')
        body += self._key_pairing()
        return Response(status, layout("Pair this device", body, signed_in=False))

    def _key_pairing(self) -> str:
        """The other way in: the owner's key (enrolled with `carledger remote enroll-owner`) signs a challenge."""
        from carledger.ledger.keys import KEY_DIR
        from carledger.sync.policy_update import OWNER_PUB

        if not (Path(self.where.store) / KEY_DIR / OWNER_PUB).exists():
            return ""
        challenge = self.auth.challenge()
        return ("<h2>Or with the owner's key</h2><p>On a computer that holds your owner key, run "
                f'<code id="challenge-command">carledger console sign-pairing {challenge} --key owner.key</code> '
                "and paste what it prints.</p>"
                f'<form method="post" action="/pair">{hidden("challenge", challenge)}'
                '<label for="signature">Signature</label>'
                '<input id="signature" name="signature" autocomplete="off" required spellcheck="false">'
                '<p><button type="submit">Pair with the owner key</button></p></form>')

    # -- pages ------------------------------------------------------------------------------------

    def now(self, req: Request, session: Session) -> Response:
        from carledger.cli.status import describe, status_report

        report = status_report(self.where.store, self.clock())
        collection = report["collection"]
        version = report["policy_version"]
        said = describe(collection)
        body = [f'<p class="state" id="collection">{e(said[:1].upper() + said[1:])}</p>',
                f"<p>Policy: {e(f'version {version}' if version else 'none applied (nothing is collected)')}</p>",
                f'<p id="disk">Disk used: {report["disk"]["store_bytes"]:,} bytes '
                f'({report["disk"]["blocks_bytes"]:,} of signed blocks)</p>']
        if collection["state"] == "collecting":
            body.append(ask("pause", "Pause collection", {}, label="Pause all collection",
                            choose=select("for", "Pause for", PAUSE_CHOICES, "pause-for")))
        else:
            body.append(ask("resume", "Resume collection", {}, label="Resume collection"))
        rows = [(s["stream"], s["recipient"] or "kept in the car", s["state"],
                 "-" if s["recipient"] is None else s["acked_until"] or "nothing yet") for s in report["streams"]]
        body.append(pages.table(("Stream", "Goes to", "State", "Last sync (acked up to)"), rows, "Streams"))
        buses = []
        for bus, health in report["buses"].items():
            problem = health.get("problem")
            rate = "" if health.get("frames_per_s") is None else f"{health['frames_per_s']:g}/s"
            buses.append((bus, f"{health.get('frames')} by {health.get('counted')}", rate or "-",
                          f"{problem['kind']} at {problem['t']}: {problem.get('error') or ''}" if problem else "none"))
        if buses:
            body.append(pages.table(("Bus", "Frames counted", "Rate", "Last problem"), buses, "Buses (the agent's health)"))
        body.append('<h2>My data</h2><p><a href="/mydata.zip" download>Download everything the car holds (ZIP)</a>: '
                    "every stream as JSON lines and as signed blocks, the policies, the audit, and the key to check them.</p>"
                    '<h2>Change of owner</h2><p><a href="/wipe">Wipe the car\'s data for a new owner</a></p>')
        return self._page("Now", "".join(body), "/", session)

    def mydata(self, req: Request, session: Session) -> Response:
        from carledger.console.mydata import archive

        name = f"carledger-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.zip"
        return Response(200, archive(self.where), "application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    def consents(self, req: Request, session: Session) -> Response:
        from carledger.cli.consent import consent_report

        report = consent_report(self.where.store, self.clock())
        cards = []
        for row in report["streams"]:
            name = row["stream"]
            active = row["state"] == "active"
            until = (f"until {row['expires']} ({row['days_left']} days left)" if active
                     else f"not sent: {row['state']}")
            summary = "".join(f"<li>{e(line)}</li>" for line in row["summary"][1:])
            choose = select("until", "Consent for", GRANT_CHOICES, f"until-{name}")
            controls = [ask("grant", "Extend" if active else "Grant", {"stream": name}, choose=choose,
                            label=f"{'Extend' if active else 'Grant'} the consent of {name}")]
            if active:
                controls.insert(0, ask("revoke", "Revoke", {"stream": name}, label=f"Revoke the consent of {name}"))
            cards.append(
                f'<section class="card" id="stream-{e(name)}" aria-labelledby="h-{e(name)}">'
                f'<h2 id="h-{e(name)}">{e(row["recipient"])}: {e(row["purpose"])}</h2>'
                f'<p class="state">{e(until)}</p><p>Stream <code>{e(name)}</code></p>'
                f'<ul class="summary">{summary}</ul><div class="actions">{"".join(controls)}</div></section>'
            )
        if not cards:
            cards.append("<p>No stream leaves the car: nothing is sent to anyone.</p>")
        words = {"off": "off this drive", "this-drive": "on for this drive only", "standing": "on at every drive"}
        for cls, allowance in report["each_drive"].items():
            controls = []
            if allowance != "this-drive":
                controls.append(ask("allow", "On for this drive", {"cls": cls, "scope": "this-drive"},
                                    label=f"Switch {cls} on for this drive"))
            if allowance != "standing":
                controls.append(ask("allow", "On at every drive", {"cls": cls, "scope": "standing"},
                                    label=f"Switch {cls} on at every drive"))
            if allowance != "off":
                controls.insert(0, ask("withdraw", "Switch off", {"cls": cls}, label=f"Switch {cls} off"))
            cards.append(f'<section class="card" id="class-{e(cls)}"><h2>{e(cls.capitalize())} signals</h2>'
                         f'<p class="state">{e(words[allowance])} (ignition cycle {e(report["ignition_cycle"])})</p>'
                         "<p>The policy switches them off at every drive until you switch them on.</p>"
                         f'<div class="actions">{"".join(controls)}</div></section>')
        return self._page("Who gets what", "".join(cards), "/consents", session)

    def left(self, req: Request, session: Session) -> Response:
        from carledger.owner.audit import audit_store

        report = audit_store(self.where.store).to_json()
        days: dict[tuple[str, str], dict[str, Any]] = {}
        for run in report["sent"]:
            day = datetime.fromtimestamp(run["t"], timezone.utc).strftime("%Y-%m-%d")
            entry = days.setdefault((run["recipient"] or "-", day), {"records": 0, "streams": set(), "signals": set()})
            entry["records"] += run["records"]
            entry["streams"].add(run["stream"])
            entry["signals"].update(run["signals"] or [])
        rows = [(recipient, day, ", ".join(sorted(v["streams"])), v["records"], ", ".join(sorted(v["signals"])) or "-")
                for (recipient, day), v in sorted(days.items(), key=lambda kv: (kv[0][1], kv[0][0]), reverse=True)]
        body = ("<p>What each recipient acknowledged receiving, per day (UTC), from the signed audit in the ledger "
                "(<code>carledger audit</code>).</p>"
                + pages.table(("Recipient", "Day", "Streams", "Records", "Signals"), rows, "Disclosures")
                if rows else "<p>Nothing has left the car yet.</p>")
        return self._page("What left the car", body + self._receipts(), "/left", session)

    def _receipts(self) -> str:
        """The signed receipts, as `carledger audit` lists them: each checked against the recipient's enrolled key."""
        from carledger.owner.receipts import check_receipts, latest_receipts
        from carledger.owner.state import iso

        checks = check_receipts(self.where.store)
        rows = [(c.recipient, c.stream, f"0..{c.size - 1}", c.root[:16], iso(c.stated), iso(c.received))
                for c in latest_receipts(checks)]
        html = ("<h2>Signed receipts</h2><p>What each recipient signed that it received: its collector's "
                "cosignature of the stream's log, kept in the car (<code>carledger receipts verify</code> "
                "checks them offline).</p>")
        html += (pages.table(("Recipient", "Stream", "Blocks", "Root", "Cosigned at", "Kept at"), rows, "Receipts")
                 if rows else "<p>No signed receipt yet.</p>")
        bad = sum(1 for c in checks if c.problem)
        if bad:
            html += message(f"{bad} receipts do not verify (carledger receipts verify says why).", error=True)
        return html

    def trips(self, req: Request, session: Session) -> Response:
        from carledger.console import trips
        from carledger.owner.state import OwnerState

        local = [s.name for s in OwnerState.load(self.where.store).policy.streams if s.local]
        found = trips.read(self.where.store, local)
        body = [f"<p>From the streams that stay in the car ({e(', '.join(local) or 'none')}), drawn here: no map "
                "tiles, nothing from the internet.</p>"]
        if found["problems"]:
            body.append(message(f"{found['problems']} blocks do not verify and are left out (carledger verify says why).",
                                error=True))
        body.append("<h2>Trips</h2>")
        for trip in reversed(found["trips"]):
            start = datetime.fromtimestamp(trip.start, timezone.utc)
            end = datetime.fromtimestamp(trip.end, timezone.utc)
            body.append(f'<figure class="trip">{trips.track_svg(trip)}<figcaption>{start:%Y-%m-%d %H:%M}–{end:%H:%M} UTC, '
                        f"{trip.seen} positions (green: start, red: end)</figcaption></figure>")
        if not found["trips"]:
            body.append("<p>No trips: no local stream holds positions (allow location in a local stream, docs/policy.md).</p>")
        body.append("<h2>Metrics per day (UTC)</h2>")
        for name, days in found["metrics"].items():
            words = name.removeprefix("metric.").replace("_", " ")
            how = "total" if name in trips.SUMMED else "average"
            body.append(f"<h3>{e(words)} ({how})</h3>{trips.bars_svg(words, days)}"
                        + pages.table(("Day", words), [(d, f"{v:.4g}") for d, v in days.items()], f"{words} per day"))
        if not found["metrics"]:
            body.append("<p>No metrics: add [stream.metrics] to a local stream (docs/policy.md).</p>")
        return self._page("Trips and metrics", "".join(body), "/trips", session)

    def crashes(self, req: Request, session: Session, note: str = "", status: int = 200) -> Response:
        from carledger.edr import read_captures
        from carledger.ledger import MalformedBlock, Store
        from carledger.owner.state import iso

        try:
            with Store.open_readonly(self.where.store) as store:
                captures = [c.to_json() for c in read_captures(store, store.verify_key)]
        except MalformedBlock as exc:
            return self._page("Crash captures", message(f"The crash stream does not verify: {exc}", error=True),
                              "/crashes", session, 409)
        rows = [(c["capture"], iso(c["t"]), c["trigger"].get("kind", "?"), f"{c['trigger'].get('delta_v_kmh', 0):.1f} km/h",
                 "deployed" if c["deployment"] else "no", c["status"], ", ".join(k.get("name", "?") for k in c["keys"]))
                for c in captures]
        body = note + ("<p>What the event data recorder captured around a crash (<code>carledger edr list</code>). Each "
                       "capture is encrypted to the keys named: only such a key opens it.</p>")
        body += (pages.table(("Capture", "Time (UTC)", "Trigger", "Delta-v", "Airbag", "Status", "Encrypted to"), rows,
                             "Crash captures") if rows else "<p>No crash captures.</p>")
        readable = [c for c in captures if c["status"] != "overwritten"]
        if readable:
            body += self._export_form(readable, session)
        return self._page("Crash captures", body, "/crashes", session, status)

    def _export_form(self, captures: list[dict[str, Any]], session: Session) -> str:
        """The owner's key, picked from a file, opens one capture; the download is `carledger edr export`'s."""
        from carledger.console.web import MAX_BODY
        from carledger.owner.state import iso

        newest = captures[-1]["capture"]
        choices = [(str(c["capture"]), f"capture {c['capture']}, {iso(c['t'])}") for c in reversed(captures)]
        return ("<h2>Open a capture</h2><p>Pick the key file the capture is encrypted to (the one "
                "<code>carledger keygen recipient</code> wrote). The car uses it for this download only: it is not "
                "saved, logged or kept. For the most caution, open the capture on a computer you trust instead: "
                f"<code>carledger edr export --key owner.key --capture {newest}</code>.</p>"
                '<form method="post" action="/crashes/export" enctype="multipart/form-data" class="ask">'
                + hidden("csrf", self.auth.csrf_token(session))
                + select("capture", "Capture", choices, "export-capture")
                + select("format", "Format", [(k, v[0]) for k, v in EXPORT_FORMATS.items()], "export-format")
                + f'<label for="export-key">Recipient key file (at most {MAX_BODY // 1024} KiB)</label>'
                '<input id="export-key" name="key" type="file" required>'
                '<button type="submit" aria-label="Verify, decrypt and download the capture">Download decrypted</button>'
                "</form>")

    def export_capture(self, req: Request, session: Session) -> Response:
        """`carledger edr export --key` over the console: the key from the form, in this request's memory only.

        Verified and decrypted before the first byte is sent, through the very
        functions the command uses, so a refusal is the command's own line on
        the page; the download then writes what `edr export` writes.
        """
        from carledger.cli._store import EXIT_REFUSED
        from carledger.cli.edr import ExportRefused, open_for_export, write_capture
        from carledger.ledger import KeyFileError
        from carledger.ledger.encrypt import parse_private_key

        raw = req.files.pop("key", None)  # the request keeps no copy of it
        fmt = req.form.get("format", "csv")
        wanted = req.form.get("capture", "")
        try:
            if fmt not in EXPORT_FORMATS:
                raise ExportRefused(f"format: {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}", 400)
            if not (wanted.isascii() and wanted.isdigit() and len(wanted) <= 18):  # str.isdigit() also takes "²"
                raise ExportRefused("capture: choose a capture from the list", 400)
            if not raw:
                raise ExportRefused("the recipient key file: choose the file (it was empty or missing)", 400)
            try:
                key = parse_private_key(raw.decode("ascii"), "the recipient key file")
            except UnicodeDecodeError:
                raise ExportRefused("the recipient key file: not hex", 400) from None
            finally:
                del raw
            number, content = open_for_export(self.where.store, key, int(wanted))
            del key  # only the decrypted capture goes on to the download
        except (ExportRefused, KeyFileError) as exc:
            status = 409 if getattr(exc, "status", None) == EXIT_REFUSED else 400  # refused, or a bad form
            return self.crashes(req, session, message(f"Not opened: {exc}", error=True), status)
        name = f"carledger-capture-{number}.{fmt}"
        text = io.StringIO(newline="")  # the capture is in memory already: the download is its text, in UTF-8
        write_capture(content, text, fmt)
        return Response(200, text.getvalue().encode(), EXPORT_FORMATS[fmt][1], headers={"Content-Disposition": f'attachment; filename="{name}"'})

    def wipe_page(self, req: Request, session: Session) -> Response:
        body = ("<p>For a change of owner: this deletes every block of every stream, the policy, the consents and the "
                "enrolments, and replaces the vehicle key (<code>carledger wipe</code>). Nothing is collected until the "
                "new owner applies a policy. Stop the agent first; every paired device is signed out.</p>"
                + ask("wipe", "Wipe the car's data", {}, label="Wipe all the car's data",
                      choose=f'<label for="word">Type {WIPE_WORD} to go on</label>'
                             '<input id="word" name="word" autocomplete="off" required>'))
        return self._page("Wipe for a new owner", body, "/wipe", session)

    # -- changes ----------------------------------------------------------------------------------

    def confirm(self, req: Request, session: Session) -> Response:
        action = req.query.get("action", "")
        if action not in ACTIONS:
            return Response.text(400, "no such action")
        fields = {"action": action, "stream": req.query.get("stream", ""), "until": req.query.get("until", ""),
                  "for": req.query.get("for", ""), "word": req.query.get("word", ""), "cls": req.query.get("cls", ""),
                  "scope": req.query.get("scope", "")}
        try:
            question, button = self._question(fields)
        except ValueError as exc:
            return self._page("Confirm", message(str(exc), error=True), "", session, 400)
        back = "/consents" if action in ("grant", "revoke", "allow", "withdraw") else "/"
        form = (f'<p>{e(question)}</p><form method="post" action="/do" class="inline">'
                + "".join(hidden(k, v) for k, v in fields.items())
                + hidden("csrf", self.auth.csrf_token(session))
                + f'<button type="submit" id="confirm" class="{"danger" if action in ("revoke", "pause", "wipe") else ""}">'
                f'{e(button)}</button></form> <a href="{back}">Cancel</a>')
        return self._page("Confirm", form, "", session)

    def _question(self, fields: dict[str, str]) -> tuple[str, str]:
        from carledger.cli._owner import parse_when
        from carledger.owner.state import iso

        action, stream = fields["action"], fields["stream"]
        if action == "revoke":
            return (f"Revoke the consent of stream {stream}? It stops before its next block; "
                    "nothing more is sent to its recipient.", "Yes, revoke")
        if action == "grant":
            until = iso(parse_when(fields["until"], now=self.clock()))
            return f"Grant stream {stream} consent until {until}?", "Yes, grant"
        if action == "pause":
            if not fields["for"]:
                return "Pause all collection until you resume it?", "Yes, pause"
            until = iso(parse_when(fields["for"], now=self.clock()))
            return f"Pause all collection until {until}?", "Yes, pause"
        if action == "allow":
            when = "for this drive only" if fields["scope"] == "this-drive" else "at every drive, until you switch them off"
            return f"Switch {fields['cls']} signals on {when}?", "Yes, switch on"
        if action == "withdraw":
            return f"Switch {fields['cls']} signals off now?", "Yes, switch off"
        if action == "wipe":
            if fields["word"].strip() != WIPE_WORD:
                raise ValueError(f"not confirmed: type {WIPE_WORD} to wipe; nothing changed")
            return ("Delete ALL data in this car's store and replace the vehicle key? This cannot be undone.",
                    "Yes, wipe everything")
        return "Resume collection? Every stream whose consent is in force collects again.", "Yes, resume"

    def do(self, req: Request, session: Session) -> Response:
        from carledger.cli._owner import owner_request, parse_when
        from carledger.ledger import LedgerError
        from carledger.owner import OwnerError, OwnerStateError

        action, stream = req.form.get("action", ""), req.form.get("stream", "")
        back = "/consents" if action in ("grant", "revoke", "allow", "withdraw") else "/"
        try:
            now = self.clock()
            if action == "grant":
                request: dict[str, Any] = {"action": "grant", "stream": stream, "until": parse_when(req.form.get("until", ""), now=now)}
            elif action == "revoke":
                request = {"action": "revoke", "stream": stream}
            elif action == "pause":
                duration = req.form.get("for", "")
                request = {"action": "pause", "until": parse_when(duration, now=now) if duration else None}
            elif action == "resume":
                request = {"action": "resume"}
            elif action == "allow":  # as `carledger consent allow CLASS --this-drive|--standing`
                request = {"action": "allow-class", "class": req.form.get("cls", ""),
                           "standing": req.form.get("scope") == "standing"}
            elif action == "withdraw":  # as `carledger consent withdraw CLASS`
                request = {"action": "withdraw-class", "class": req.form.get("cls", "")}
            elif action == "wipe":
                return self._wipe(req, session)
            else:
                raise ValueError("no such action")
            result = owner_request(self.where, request)
        except (ValueError, OwnerError, OwnerStateError, LedgerError, OSError) as exc:
            body = message(f"Refused: {exc}", error=True) + f'<p><a href="{back}">Back</a></p>'
            return self._page("Not done", body, "", session, 409)
        where_ran = " (by the running agent)" if result.get("agent") == "running" else ""
        body = message(f"{result.get('message', 'done')}{where_ran}") + f'<p><a href="{back}">Back</a></p>'
        return self._page("Done", body, "", session)

    def _wipe(self, req: Request, session: Session) -> Response:
        """`carledger wipe`'s own function; then every session ends (they were the previous owner's)."""
        from carledger.ledger import LedgerError, StoreLocked
        from carledger.owner.wipe import wipe

        if req.form.get("word", "").strip() != WIPE_WORD:
            return self._page("Not done", message(f"Not confirmed: type {WIPE_WORD} to wipe; nothing changed.", error=True),
                              "", session, 409)
        try:
            result = wipe(self.where.store)
        except StoreLocked:
            return self._page("Not done", message("The agent is running on this store: stop it first "
                                                  "(systemctl stop carledger), then wipe.", error=True), "", session, 409)
        except (LedgerError, OSError) as exc:
            return self._page("Not done", message(f"Refused: {exc}", error=True), "", session, 409)
        self.auth.end_all()  # and, the key having changed, every request now asks for a restart
        text = (f"wiped {result.blocks} blocks of {result.streams} streams; vehicle key {result.old_kid} replaced by "
                f"{result.new_kid}. Every paired device is signed out. Restart the console (with --listen it makes a "
                "new certificate), then the new owner pairs with carledger console pair.")
        return Response(200, layout("Wiped", message(text), signed_in=False))


def _vehicle_key(store: str) -> bytes | None:
    from carledger.ledger.keys import KEY_DIR, PUB_FILE

    try:
        return (Path(store) / KEY_DIR / PUB_FILE).read_bytes()
    except OSError:
        return None


def _loopback_host(host: str | None) -> bool:
    """A Host header naming this computer: a page whose own name was rebound to 127.0.0.1 (DNS rebinding)
    sends its name, and is refused before it can try a pairing code or fill the throttle."""
    if not host:
        return False
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _same_origin(req: Request) -> bool:
    """A POST's Origin, when the browser sends one, must be this console (SameSite=Strict already keeps the
    cookie off cross-site requests; this refuses them before anything is read)."""
    if req.origin is None:
        return True
    return req.origin != "null" and urlsplit(req.origin).netloc == (req.host or "")
