"""The owner's console (issue 18): the real `carledger console` process, spoken to over HTTP(S) with urllib.

Each test starts the server on a free port over a real store with a policy
applied, pairs with a code from `carledger console pair`, and checks what a
browser (or an attacker on the LAN) gets: no mocks, no in-process shortcuts.
The session and throttle clocks are tested on `Auth` with a fake clock, since
nobody waits two hours for a session to expire.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import unescape
from pathlib import Path

import pytest

from carledger.cli import main
from carledger.console import auth as console_auth
from carledger.ledger import Ledger

NOW = time.time()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


POLICY = f"""
version = 1
[[stream]]
name = "fleet"
recipient = "Fleet Ops"
purpose = "maintenance"
signals = ["Vehicle.Speed", "Vehicle.Powertrain.CombustionEngine.Speed"]
precision = {{ "Vehicle.Speed" = 5 }}
consent = {{ granted = {iso(NOW - 86400)}, expires = {iso(NOW + 300 * 86400)} }}

[[stream]]
name = "insurer"
recipient = "Insurer"
purpose = "pay as you drive"
signals = ["Vehicle.Speed"]
consent = {{ granted = {iso(NOW - 86400)}, expires = {iso(NOW + 30 * 86400)} }}

[[stream]]
name = "vault"
local = true
purpose = "my own log"
signals = ["Vehicle.Speed"]
"""


def make_store(folder: Path, policy: str = POLICY) -> Path:
    """A store with `policy` applied, as `carledger policy apply` leaves it."""
    store = folder / "ledger"
    Ledger.open(store, vehicle_id="car-console").close()
    (folder / "policy.toml").write_text(textwrap.dedent(policy))
    assert main(["policy", "apply", str(folder / "policy.toml"), "--store", str(store)]) == 0
    return store


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str

    @property
    def text(self) -> str:
        """The page's text without tags, whitespace collapsed (what a reader sees)."""
        return " ".join(unescape(re.sub(r"<[^>]+>", " ", self.body)).split())


@dataclass
class Console:
    """A running `carledger console` and a browser-like client of it (one cookie jar, no redirects followed)."""

    proc: subprocess.Popen
    url: str
    store: Path
    fingerprint: str | None = None
    cookie: str | None = None
    lines: list[str] = field(default_factory=list)

    def request(self, path: str, form: dict[str, str] | None = None, *, cookie: bool = True,
                headers: dict[str, str] | None = None, files: dict[str, bytes] | None = None) -> Reply:
        """GET, or POST `form` (urlencoded; multipart/form-data, as a browser sends a file input, with `files`)."""
        data = None if form is None else urllib.parse.urlencode(form).encode()
        if files is not None:
            data, kind = multipart(form or {}, files)
            headers = {**(headers or {}), "Content-Type": kind}
        req = urllib.request.Request(self.url + path.lstrip("/"), data=data, headers=headers or {})
        if cookie and self.cookie:
            req.add_header("Cookie", f"carledger_console={self.cookie}")
        context = ssl._create_unverified_context() if self.url.startswith("https") else None
        opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=context))
        try:
            with opener.open(req, timeout=30) as r:
                return Reply(r.status, dict(r.headers), r.read().decode())
        except urllib.error.HTTPError as err:
            return Reply(err.code, dict(err.headers), err.read().decode())

    def pair(self) -> Reply:
        reply = self.request("/pair", {"code": new_code(self.store)}, cookie=False)
        assert reply.status == 303, reply
        self.cookie = re.match(r"carledger_console=([^;]+)", reply.headers["Set-Cookie"]).group(1)
        return reply

    def csrf(self, path: str) -> tuple[Reply, str]:
        """A page and the CSRF token of its first POST form (the confirm button)."""
        page = self.request(path)
        assert page.status == 200, page
        token = re.findall(r'name="csrf" value="([^"]+)"', page.body)
        return page, token[-1]

    def confirm(self, **query: str) -> Reply:
        """Open the confirmation page and press its button, as a person would."""
        page, token = self.csrf("/confirm?" + urllib.parse.urlencode(query))
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.body.split('action="/do"')[1]))
        return self.request("/do", {**{k: unescape(v) for k, v in fields.items()}, "csrf": token})


def multipart(form: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body as a browser makes it: the fields, then each file as `NAME.key`."""
    boundary = "----carledgertest" + os.urandom(8).hex()
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in form.items()]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{k}.key"\r\n'
              "Content-Type: application/octet-stream\r\n\r\n".encode() + v + b"\r\n" for k, v in files.items()]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def new_code(store: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "carledger", "console", "pair", "--store", str(store), "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["code"]


def start_console(store: Path, *args: str) -> Console:
    proc = subprocess.Popen([sys.executable, "-m", "carledger", "console", "--store", str(store), "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    match = re.match(r"console: (https?://\S+/) ", first)
    assert match, first + proc.stderr.read()
    console = Console(proc, match.group(1), store)
    if match.group(1).startswith("https"):
        console.fingerprint = proc.stdout.readline().split(": ", 1)[1].strip()
    return console


def stop(console: Console) -> None:
    console.proc.terminate()
    try:
        console.proc.wait(timeout=15)
    finally:
        if console.proc.poll() is None:
            console.proc.kill()


@pytest.fixture
def store(tmp_path) -> Path:
    return make_store(tmp_path)


@pytest.fixture
def console(store):
    c = start_console(store)
    yield c
    stop(c)
    assert c.proc.returncode == 0, c.proc.stderr.read()


def consent_list(store: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "carledger", "consent", "list", "--store", str(store), "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def states(store: Path) -> dict[str, str]:
    return {s["stream"]: s["state"] for s in consent_list(store)["streams"]}


# -- 1. serving ---------------------------------------------------------------------------------


def test_served_on_loopback_over_http_by_default(console):
    assert console.url.startswith("http://127.0.0.1:")
    css = console.request("/static/console.css", cookie=False)
    assert css.status == 200 and "contrast" in css.body


def test_lan_mode_is_https_only_with_the_printed_fingerprint(store):
    console = start_console(store, "--listen", "0.0.0.0")
    try:
        assert console.url.startswith("https://0.0.0.0:")
        port = int(console.url.rsplit(":", 1)[1].strip("/"))
        console.url = f"https://127.0.0.1:{port}/"
        pem = ssl.get_server_certificate(("127.0.0.1", port))
        served = ":".join(f"{b:02X}" for b in hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).digest())
        assert served == console.fingerprint
        for name in ("console-key.pem", "console-cert.pem"):
            assert (store / "console" / name).stat().st_mode & 0o777 == 0o600, name
        assert (store / "console").stat().st_mode & 0o777 == 0o700
        # plain HTTP to the TLS port: a refusal, and nothing else
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /consents HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.0 400 ") and b"HTTPS only" in answer and b"Fleet" not in answer
        # over TLS, the session cookie is Secure
        reply = console.pair()
        assert "; Secure" in reply.headers["Set-Cookie"]
        assert "Fleet Ops" in console.request("/consents").text
    finally:
        stop(console)
    again = start_console(store, "--listen", "0.0.0.0")  # the certificate is kept: the same fingerprint
    stop(again)
    assert again.fingerprint == console.fingerprint


def test_a_bad_listen_address_and_a_busy_port_are_one_line(store, console):
    bad = subprocess.run([sys.executable, "-m", "carledger", "console", "--store", str(store), "--listen", "car.local"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.splitlines()[-1].startswith("carledger console: error: --listen car.local: not an IP address")
    port = console.url.rsplit(":", 1)[1].strip("/")
    busy = subprocess.run([sys.executable, "-m", "carledger", "console", "--store", str(store), "--port", port],
                          capture_output=True, text=True)
    assert busy.returncode == 1 and busy.stderr.strip() == f"carledger: cannot serve on 127.0.0.1 port {port}: Address already in use"


def test_on_loopback_only_a_loopback_host_is_answered(console, store):
    """DNS rebinding: a web page whose name now points at 127.0.0.1 sends its own name as Host."""
    for _ in range(console_auth.THROTTLE_TRIES):
        rebound = console.request("/pair", {"code": "1234-5678"}, cookie=False, headers={"Host": "evil.example:8765"})
        assert rebound.status == 421 and "pair" not in rebound.text.lower().split("refused")[0]
    assert console.request("/pair", cookie=False, headers={"Host": "localhost"}).status == 200
    code = new_code(store)
    assert console.request("/pair", {"code": code}, cookie=False).status == 303, "refused requests used up the tries"


# -- 2. authentication --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/consents", "/left", "/confirm?action=revoke&stream=fleet"])
def test_no_session_means_no_data(console, path):
    reply = console.request(path)
    assert reply.status == 303 and reply.headers["Location"] == "/pair" and reply.body == ""
    forged = console.request(path, cookie=False, headers={"Cookie": "carledger_console=guessed"})
    assert forged.status == 303 and forged.body == ""


def test_oversized_and_overfull_requests_get_one_answer_and_no_work(console):
    many = "&".join(f"f{i}=1" for i in range(40))
    assert console.request("/pair?" + many, cookie=False).status == 400
    assert console.request("/pair", {f"f{i}": "1" for i in range(40)}, cookie=False).status == 400
    assert console.request("/pair", {"code": "1" * 9000}, cookie=False).status == 413


def test_every_answer_has_the_security_headers_and_names_no_version(console):
    """The server's own answers too (a method the console does not serve), and no framework or Python version."""
    for method, path in (("PUT", "/consents"), ("GET", "/pair"), ("GET", "/nowhere")):
        req = urllib.request.Request(console.url + path.lstrip("/"), method=method, data=b"" if method == "PUT" else None)
        try:
            with urllib.request.build_opener(NoRedirect).open(req, timeout=30) as r:
                status, headers = r.status, r.headers
        except urllib.error.HTTPError as err:
            status, headers = err.code, err.headers
        assert status == {"PUT": 405}.get(method, 200 if path == "/pair" else 303), (method, path, status)
        assert headers["Content-Security-Policy"].startswith("default-src 'none'") and headers["X-Frame-Options"] == "DENY"
        assert headers["Server"] == "carledger-console", headers["Server"]


def test_no_session_means_no_change(console, store):
    reply = console.request("/do", {"action": "revoke", "stream": "fleet", "csrf": "x"})
    assert reply.status == 403 and "pair" in reply.text
    assert states(store)["fleet"] == "active"


def test_pairing_makes_a_strict_httponly_session_and_the_code_works_once(console, store):
    code = new_code(store)
    record = json.loads((store / "console" / "pairing.json").read_text())
    assert code.replace("-", "") not in json.dumps(record), "the code is stored in clear"
    assert (store / "console" / "pairing.json").stat().st_mode & 0o777 == 0o600
    reply = console.request("/pair", {"code": code}, cookie=False)
    assert reply.status == 303 and reply.headers["Location"] == "/"
    cookie = reply.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie  # plain HTTP on loopback
    console.cookie = re.match(r"carledger_console=([^;]+)", cookie).group(1)
    assert console.request("/").status == 200
    assert console.request("/pair", {"code": code}, cookie=False).status == 403, "a code works once"
    assert not (store / "console" / "pairing.json").exists()


def test_wrong_codes_are_rate_limited_even_before_the_right_one(console, store):
    code = new_code(store)
    wrong = "0000-0000" if code != "0000-0000" else "1111-1111"
    assert [console.request("/pair", {"code": wrong}, cookie=False).status for _ in range(4)] == [403] * 4
    assert console.request("/pair", {"code": code}, cookie=False).status == 303  # the 5th attempt of the minute
    throttled = console.request("/pair", {"code": new_code(store)}, cookie=False)
    assert throttled.status == 429 and "too many pairing attempts" in throttled.text


def test_five_wrong_codes_burn_the_code_and_the_throttle_lets_go_after_a_minute(store):
    clock = [NOW]
    auth = console_auth.Auth(store, clock=lambda: clock[0])
    code = console_auth.new_code(store, now=NOW)[0]
    for _ in range(console_auth.MAX_WRONG):
        assert auth.pair("99999999" if code != "9999-9999" else "1") is None
    clock[0] += console_auth.THROTTLE_WINDOW + 1
    assert auth.pair(code) is None, "a burnt code still paired"
    code = console_auth.new_code(store, now=clock[0])[0]
    clock[0] += console_auth.CODE_LIFETIME + 1
    assert auth.pair(code) is None, "an expired code paired"
    for _ in range(console_auth.THROTTLE_TRIES - 1):
        auth.pair("1")
    with pytest.raises(console_auth.Throttled):
        auth.pair("1")


def test_sessions_expire_when_idle_and_at_most_a_day_after_pairing(store):
    clock = [NOW]
    auth = console_auth.Auth(store, clock=lambda: clock[0])
    token = auth.pair(console_auth.new_code(store, now=NOW)[0])
    assert auth.session(token) is not None
    clock[0] += console_auth.SESSION_IDLE + 1
    assert auth.session(token) is None, "an idle session lived on"
    clock[0] = NOW
    token = auth.pair(console_auth.new_code(store, now=NOW)[0])
    while clock[0] < NOW + console_auth.SESSION_MAX:
        assert auth.session(token) is not None
        clock[0] += console_auth.SESSION_IDLE / 2
    clock[0] += 1
    assert auth.session(token) is None, "a session outlived SESSION_MAX"


def test_every_change_needs_a_fresh_csrf_token(console, store):
    console.pair()
    page, token = console.csrf("/confirm?action=revoke&stream=fleet")
    form = {"action": "revoke", "stream": "fleet"}
    assert console.request("/do", form).status == 403, "a POST without a token"
    assert console.request("/do", {**form, "csrf": "forged"}).status == 403
    cross = console.request("/do", {**form, "csrf": token}, headers={"Origin": "http://evil.example"})
    assert cross.status == 403 and "another site" in cross.text
    assert states(store)["fleet"] == "active"
    done = console.request("/do", {**form, "csrf": token})
    assert done.status == 200 and "consent revoked" in done.text.lower()
    assert console.request("/do", {"action": "grant", "stream": "fleet", "until": "30d", "csrf": token}).status == 403, \
        "a token used twice"
    assert states(store)["fleet"] == "consent-revoked"


def test_signing_out_ends_the_session(console):
    console.pair()
    _, token = console.csrf("/")
    assert console.request("/logout", {"csrf": token}).status == 303
    assert console.request("/").status == 303


# -- 3. pages: what the CLI's --json shows ------------------------------------------------------


def test_now_shows_what_status_json_shows(console, store):
    console.pair()
    page = console.request("/")
    status = json.loads(subprocess.run([sys.executable, "-m", "carledger", "status", "--store", str(store), "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    assert page.status == 200 and "Collecting" in page.text
    assert f"Disk used: {status['disk']['store_bytes']:,} bytes" in page.text
    for s in status["streams"]:
        assert s["stream"] in page.text and s["state"] in page.text
    assert 'name="viewport"' in page.body and 'lang=en' in page.body
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert page.headers["Cache-Control"] == "no-store" and page.headers["X-Frame-Options"] == "DENY"


def test_now_shows_each_bus_health_from_the_signed_health_stream(tmp_path):
    store = driven_store(tmp_path, POLICY, duration=20)
    status = json.loads(subprocess.run([sys.executable, "-m", "carledger", "status", str(store), "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    health = status["buses"]["replay"]
    assert health["frames"] > 1000 and health["problem"] is None
    console = start_console(store)
    try:
        console.pair()
        page = console.request("/")
    finally:
        stop(console)
    assert f"replay {health['frames']} by {health['counted']} - none" in page.text


def test_who_gets_what_shows_consent_list_json_with_the_policy_show_text(console, store):
    console.pair()
    page = console.request("/consents")
    for row in consent_list(store)["streams"]:
        assert f"{row['recipient']}: {row['purpose']}" in page.text
        assert f"until {row['expires']}" in page.text
        for line in row["summary"][1:]:
            assert line in page.text
    assert "rounded to 5" in page.text  # the precision, in policy show's words
    assert "vault" not in page.text.split("Who gets what", 1)[1], "a local stream goes to nobody"
    for label in ('aria-label="Revoke the consent of fleet"', 'aria-label="Extend the consent of fleet"',
                  '<label for="until-fleet">'):
        assert label in page.body


def test_revoke_and_grant_with_one_click_and_a_confirmation(console, store):
    console.pair()
    assert states(store)["insurer"] == "active"
    done = console.confirm(action="revoke", stream="insurer")
    assert done.status == 200 and "stream insurer: consent revoked" in done.text
    assert states(store) == {"fleet": "active", "insurer": "consent-revoked"}
    assert "not sent: consent-revoked" in console.request("/consents").text
    done = console.confirm(action="grant", stream="insurer", until="90d")
    assert done.status == 200 and "consent granted until" in done.text
    row = next(r for r in consent_list(store)["streams"] if r["stream"] == "insurer")
    assert row["state"] == "active" and 89 < row["days_left"] <= 90


def test_the_two_year_rule_is_the_clis(console, store):
    console.pair()
    refused = console.confirm(action="grant", stream="fleet", until="3y")
    assert refused.status == 409 and "consent can last at most 2 years" in refused.text
    cli = subprocess.run([sys.executable, "-m", "carledger", "consent", "grant", "fleet", "--until", "3y", "--store", str(store)],
                         capture_output=True, text=True)
    assert cli.returncode == 1 and cli.stderr.split("at most", 1)[1].split(":")[0] in refused.text
    assert console.confirm(action="revoke", stream="vault").status == 409  # a local stream has no consent


def test_pause_and_resume_with_a_confirmation(console, store):
    console.pair()
    done = console.confirm(action="pause", **{"for": ""})
    assert done.status == 200
    now = console.request("/")
    assert "Paused until `carledger resume`" in now.text and "Resume collection" in now.text
    done = console.confirm(action="resume")
    assert done.status == 200 and "Collecting" in console.request("/").text
    console.confirm(action="pause", **{"for": "1h"})
    assert "Paused until 20" in console.request("/").text
    # A time no date can show: refused on the page, and never sent to the agent (where 1e300 s had stopped it).
    far = "99999999999999999999d"
    asked = console.request("/confirm?" + urllib.parse.urlencode({"action": "pause", "for": far}))
    assert asked.status == 400 and "is not a time from 1970 to the year 9999" in asked.text
    _, token = console.csrf("/")
    sent = console.request("/do", {"action": "pause", "for": far, "csrf": token})
    assert sent.status == 409 and "is not a time from 1970 to the year 9999" in sent.text
    assert "Paused until 20" in console.request("/").text  # the pause of an hour stands


# -- 5. what left the car, my data ----------------------------------------------------------------


def test_what_left_the_car_is_the_audit_per_recipient_and_day(tmp_path):
    from test_audit_story import make_store as audited_store

    store = audited_store(tmp_path / "s")
    console = start_console(store)
    try:
        console.pair()
        page = console.request("/left")
    finally:
        stop(console)
    audit = json.loads(subprocess.run([sys.executable, "-m", "carledger", "audit", str(store), "--json"],
                                      capture_output=True, text=True, check=True).stdout)
    days: dict = {}
    for run in audit["sent"]:
        key = (run["recipient"], datetime.fromtimestamp(run["t"], timezone.utc).strftime("%Y-%m-%d"))
        days[key] = days.get(key, 0) + run["records"]
    assert days, "the audit store has no disclosures"
    for (recipient, day), records in days.items():
        assert f"{recipient} {day} fleet {records}" in page.text


def test_my_data_is_a_streamed_zip_that_a_third_party_verifies(tmp_path):
    from test_audit_story import make_store as audited_store

    store = audited_store(tmp_path / "s")
    console = start_console(store)
    try:
        assert console.request("/mydata.zip").status == 303, "my data without a session"
        console.pair()
        reply = urllib.request.build_opener().open(urllib.request.Request(
            console.url + "mydata.zip", headers={"Cookie": f"carledger_console={console.cookie}"}), timeout=60)
        assert reply.headers["Content-Type"] == "application/zip" and reply.headers["Content-Length"] is None
        assert reply.headers["Content-Disposition"].startswith('attachment; filename="carledger-')
        data = reply.read()
    finally:
        stop(console)
    check_archive(data, store, "fleet", tmp_path)


def check_archive(data: bytes, store: Path, stream: str, tmp_path: Path) -> None:
    """The My data ZIP holds what the store holds, and its signed blocks verify as a third party checks them."""
    import io
    import zipfile

    archive = zipfile.ZipFile(io.BytesIO(data))
    names = set(archive.namelist())
    assert {"README.txt", "vehicle.json", "policy.toml", "signals.json", "streams/audit.cose",
            f"streams/{stream}.jsonl", f"streams/{stream}.cose", "streams/audit.jsonl"} <= names
    assert archive.read("policy.toml") == (store / "owner" / "policy.toml").read_bytes()
    exported = subprocess.run([sys.executable, "-m", "carledger", "log", "export", str(store), "--stream", stream,
                               "--events"], capture_output=True, text=True, check=True).stdout
    assert archive.read(f"streams/{stream}.jsonl").decode() == exported
    vehicle = json.loads(archive.read("vehicle.json"))
    key = vehicle["stream_keys"][stream]  # a recipient's pseudonymous stream: its own key (docs/ledger-keys.md)
    assert vehicle["stream_keys"]["audit"] == vehicle["public_key"]  # the car's own streams: the vehicle key
    # ... and, for a stream with a key of its own, the vehicle key's certificate for it, checked as check-proof does
    proof = json.loads(archive.read("key-proof.json"))
    assert proof["vehicle_key"] == vehicle["public_key"]
    if key != vehicle["public_key"]:
        (tmp_path / "key-proof.json").write_bytes(archive.read("key-proof.json"))
        proved = subprocess.run([sys.executable, "-m", "carledger", "remote", "check-proof",
                                 str(tmp_path / "key-proof.json"), "--vehicle-key", vehicle["public_key"], "--json"],
                                capture_output=True, text=True)
        assert proved.returncode == 0, proved.stdout + proved.stderr
        assert key in proved.stdout  # the stream's key is among those the vehicle key certified
    verifier = Path(__file__).resolve().parents[1] / ".venv-verifier" / "bin" / "python"
    if not verifier.exists():
        pytest.skip("no .venv-verifier (scripts/setup makes it) to verify the download as a third party")
    cose = tmp_path / f"{stream}.cose"
    cose.write_bytes(archive.read(f"streams/{stream}.cose"))
    checked = subprocess.run([str(verifier), str(Path(__file__).resolve().parents[1] / "docs" / "third_party_verify.py"),
                              key, str(cose)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["blocks"] == json.loads(subprocess.run(
        [sys.executable, "-m", "carledger", "log", "list", str(store), "--json"],
        capture_output=True, text=True, check=True).stdout)["streams"][stream]["blocks"]


def test_crash_captures_are_edr_lists(console, store):
    console.pair()
    page = console.request("/crashes")
    listed = json.loads(subprocess.run([sys.executable, "-m", "carledger", "edr", "list", str(store), "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    assert listed["captures"] == [] and page.status == 200 and "No crash captures." in page.text


@pytest.fixture(scope="module")
def crash(tmp_path_factory) -> dict[str, Path]:
    """A store with a real crash capture (the simulated car's `crash` through the agent, as tests/test_edr.py
    makes it), encrypted to `owner` but not to `stranger`."""
    from carledger.ledger.encrypt import create_private_key
    from test_edr import drive, edr_policy, record

    folder = tmp_path_factory.mktemp("crash")
    keys = {name: folder / f"{name}.key" for name in ("owner", "stranger")}
    for path in keys.values():
        create_private_key(path)
    store = drive(folder / "car", record(folder / "crash.log", "crash"), edr_policy(keys, "owner"))
    return {"store": store, **keys}


def edr_export(store: Path, key: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carledger", "edr", "export", str(store), "--key", str(key), *args],
                          capture_output=True)


def export_form(console: Console) -> dict[str, str]:
    """The crash page's export form: its CSRF token and the capture it offers first (the newest)."""
    page = console.request("/crashes")
    form = page.body.split('action="/crashes/export"')[1]
    return {"csrf": unescape(re.search(r'name="csrf" value="([^"]+)"', form).group(1)),
            "capture": re.search(r'<option value="(\d+)"', form).group(1)}


def test_a_crash_capture_downloads_decrypted_byte_for_byte_as_edr_export_and_the_key_stays_nowhere(crash):
    store, owner = crash["store"], crash["owner"]
    key = owner.read_bytes()
    console = start_console(store)
    try:
        console.pair()
        page = console.request("/crashes")
        assert 'enctype="multipart/form-data"' in page.body and 'type="file"' in page.body
        assert '<label for="export-key">' in page.body
        for fmt in ("csv", "jsonl", "json"):
            reply = console.request("/crashes/export", {**export_form(console), "format": fmt}, files={"key": key})
            cli = edr_export(store, owner, "--format", fmt)
            assert cli.returncode == 0, cli.stderr
            assert reply.status == 200 and reply.body.encode() == cli.stdout and len(cli.stdout) > 100_000, fmt
            assert reply.headers["Content-Disposition"].startswith('attachment; filename="carledger-capture-')
        assert reply.headers["Content-Type"] == "application/json" and json.loads(reply.body)["verified"] is True
    finally:
        stop(console)
    secret = key.strip()
    raw = bytes.fromhex(secret.decode())
    for path in store.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert secret not in content and secret.upper() not in content and raw not in content, path
    logged = console.proc.stdout.read() + console.proc.stderr.read()
    assert secret.decode() not in logged and secret.decode().upper() not in logged


def test_opening_a_capture_needs_its_key_a_session_and_a_fresh_form(crash):
    store, owner, stranger = crash["store"], crash["owner"], crash["stranger"]
    console = start_console(store)
    try:
        form = {"capture": "1", "format": "csv"}
        assert console.request("/crashes/export", form, files={"key": owner.read_bytes()}).status == 403  # no session
        console.pair()
        wrong = console.request("/crashes/export", {**export_form(console), "format": "csv"},
                                files={"key": stranger.read_bytes()})
        cli = edr_export(store, stranger, "--format", "csv")
        assert wrong.status == 409 and cli.returncode == 1 and cli.stdout == b""
        line = cli.stderr.decode().strip().splitlines()[-1].split(": ", 1)[1]
        assert "is not encrypted to key" in line and f"Not opened: {line}" in wrong.text
        assert "Traceback" not in wrong.body and "Download decrypted" in wrong.text  # the form again, to retry
        assert console.request("/crashes/export", form, files={"key": owner.read_bytes()}).status == 403  # no token
        stale = export_form(console)
        assert console.request("/crashes/export", {**stale, "format": "csv"}, files={"key": owner.read_bytes()}).status == 200
        assert console.request("/crashes/export", {**stale, "format": "csv"}, files={"key": owner.read_bytes()}).status == 403
        other_site = console.request("/crashes/export", {**export_form(console), "format": "csv"},
                                     files={"key": owner.read_bytes()}, headers={"Origin": "https://evil.example"})
        assert other_site.status == 403
        not_a_key = console.request("/crashes/export", {**export_form(console), "format": "csv"}, files={"key": b"\xff" * 40})
        assert not_a_key.status == 400 and "Not opened: the recipient key file: not hex" in not_a_key.text
        huge = console.request("/crashes/export", {**export_form(console), "format": "csv"}, files={"key": b"0" * 9000})
        assert huge.status == 413
        missing = console.request("/crashes/export", {**export_form(console), "format": "csv"}, files={"key": b""})
        assert missing.status == 400 and "choose the file" in missing.text
        for capture in ("\u00b2", "9" * 30):  # str.isdigit() takes "²", which int() refuses; 30 digits no SQLite int holds
            odd = console.request("/crashes/export", {**export_form(console), "format": "csv", "capture": capture},
                                  files={"key": owner.read_bytes()})
            assert odd.status == 400 and "choose a capture from the list" in odd.text, capture
    finally:
        stop(console)


def test_wipe_needs_the_word_a_confirmation_and_a_stopped_agent_then_signs_everyone_out(console, store):
    from carledger.ledger import Ledger

    console.pair()
    unconfirmed = console.request("/confirm?action=wipe&word=wipe%3F")  # the word, as `carledger wipe` asks for it
    assert unconfirmed.status == 400 and "type WIPE" in unconfirmed.text and 'action="/do"' not in unconfirmed.body
    new_code(store)  # a code pending when the car changes hands
    key = (store / "keys" / "vehicle.pub").read_text()
    with Ledger.open(store):  # the agent holds the store
        refused = console.confirm(action="wipe", word="WIPE")
    assert refused.status == 409 and "stop it first" in refused.text
    assert (store / "keys" / "vehicle.pub").read_text() == key
    done = console.confirm(action="wipe", word="WIPE")
    assert done.status == 200 and "Every paired device is signed out" in done.text
    assert (store / "keys" / "vehicle.pub").read_text() != key
    assert not (store / "console").exists(), "the previous owner's pairing code survived the wipe"
    after = console.request("/")
    assert after.status == 503 and "restart the console" in after.text
    audit = json.loads(subprocess.run([sys.executable, "-m", "carledger", "audit", str(store), "--json"],
                                      capture_output=True, text=True, check=True).stdout)
    assert [d["kind"] for d in audit["decisions"]] == ["wipe"]


TRIPS_POLICY = """
version = 1
[[stream]]
name = "vault"
local = true
purpose = "my own driving log"
signals = ["Vehicle.Speed", "Vehicle.CurrentLocation.*"]
allow = ["location"]
[stream.metrics]
every = "1m"
distance = true
harsh_braking = true
night_driving = true
"""


def driven_store(folder: Path, policy: str, duration: int = 240) -> Path:
    """The store `carledger run --replay` leaves after a simulated city drive under `policy`.

    The drive ends by now, within one UTC day: the trips page sums a metric per UTC day, so a
    drive across midnight would show two days, not the one total a test looks for (it failed
    when the suite ran in the last four minutes of a day).
    """
    import time

    from carledger.dbc import path as dbc_path
    from carledger_sim.cli import main as sim_main

    now = time.time()
    start = max(now - duration, now // 86400 * 86400)  # today's midnight, if the drive ending now began before it
    log = folder / "drive.log"
    assert sim_main(["record", "--scenario", "city", "--seed", "1", "--duration", str(duration), "--start-time",
                     f"{start:.6f}", "-o", str(log)]) == 0
    (folder / "policy.toml").write_text(textwrap.dedent(policy))
    store = folder / "ledger"
    assert main(["run", "--replay", str(log), "--dbc", dbc_path("carledger_demo.dbc"), "--store", str(store),
                 "--policy", str(folder / "policy.toml"), "--fast"]) == 0
    return store


def test_trips_and_metrics_are_drawn_from_the_local_streams_without_tiles(tmp_path):
    from carledger.console.trips import LAT, LON

    store = driven_store(tmp_path, TRIPS_POLICY)
    rows = [json.loads(line) for line in subprocess.run(
        [sys.executable, "-m", "carledger", "log", "export", str(store), "--stream", "vault"],
        capture_output=True, text=True, check=True).stdout.splitlines()]
    positions = {r["t"] for r in rows if r["name"] in (LAT, LON)}  # a position: each time either changed
    distance = sum(r["value"] for r in rows if r["name"] == "metric.distance_km")
    assert positions and distance > 0
    console = start_console(store)
    try:
        console.pair()
        page = console.request("/trips")
    finally:
        stop(console)
    assert page.status == 200
    assert page.body.count("<polyline") == 1 and f"{len(positions)} positions" in page.text
    assert "distance km (total)" in page.text and f"{distance:.4g}" in page.text
    assert "http" not in page.body.split("<main>", 1)[1], "a drawing fetches something"


def test_a_position_that_is_no_place_on_earth_is_left_out_of_the_track(tmp_path):
    """A latitude of nan or a longitude of inf (CBOR carries them, and a signed block may hold them) went into the
    track as drawn: min and max of the points turned nan, and the SVG's every coordinate with them."""
    import math

    from carledger.console.trips import LAT, LON, read, track_svg
    from carledger.ledger import Ledger

    bad = {3: (math.nan, 11.503), 5: (48.105, math.inf), 7: (95.0, 11.507)}
    with Ledger.open(tmp_path / "s", "car-1") as ledger:
        vault = ledger.writer("vault")
        for i in range(10):
            lat, lon = bad.get(i, (48.1 + i / 1000, 11.5 + i / 1000))
            vault.add_sample(1.8e9 + i, LAT, lat)
            vault.add_sample(1.8e9 + i, LON, lon)
        ledger.seal()
    trips = read(str(tmp_path / "s"), ["vault"])["trips"]
    assert [len(trip.points) for trip in trips] == [7]
    svg = track_svg(trips[0])
    assert "nan" not in svg.lower() and "inf" not in svg.lower()


def test_pairing_with_the_owners_key_signing_the_pages_challenge(console, store, tmp_path):
    assert "owner's key" not in console.request("/pair", cookie=False).text, "offered with no owner key enrolled"
    owner = subprocess.run([sys.executable, "-m", "carledger", "keygen", "owner", "-o", str(tmp_path / "owner.key")],
                           capture_output=True, text=True, check=True)
    assert owner.returncode == 0
    subprocess.run([sys.executable, "-m", "carledger", "remote", "enroll-owner", str(tmp_path / "owner.pub"),
                    "--store", str(store)], capture_output=True, text=True, check=True)
    other = tmp_path / "other.key"
    subprocess.run([sys.executable, "-m", "carledger", "keygen", "owner", "-o", str(other)], capture_output=True, check=True)

    def attempt(key: Path, challenge: str | None = None) -> Reply:
        page = console.request("/pair", cookie=False)
        shown = re.search(r"sign-pairing ([0-9a-f]{32}) --key owner.key", page.text).group(1)
        signed = subprocess.run([sys.executable, "-m", "carledger", "console", "sign-pairing", challenge or shown,
                                 "--key", str(key)], capture_output=True, text=True, check=True).stdout.strip()
        return console.request("/pair", {"challenge": challenge or shown, "signature": signed}, cookie=False)

    assert attempt(other).status == 403, "a key that is not the enrolled owner's paired"
    assert attempt(tmp_path / "owner.key", challenge="0" * 32).status == 403, "a challenge the console never gave"
    reply = attempt(tmp_path / "owner.key")
    assert reply.status == 303 and "HttpOnly" in reply.headers["Set-Cookie"]
    page = console.request("/pair", cookie=False)
    shown = re.search(r"sign-pairing ([0-9a-f]{32})", page.text).group(1)
    signed = subprocess.run([sys.executable, "-m", "carledger", "console", "sign-pairing", shown, "--key",
                             str(tmp_path / "owner.key")], capture_output=True, text=True, check=True).stdout.strip()
    assert console.request("/pair", {"challenge": shown, "signature": signed}, cookie=False).status == 303
    assert console.request("/pair", {"challenge": shown, "signature": signed}, cookie=False).status in (403, 429), \
        "a signed challenge paired twice"
    bad = subprocess.run([sys.executable, "-m", "carledger", "console", "sign-pairing", "xyz", "--key", str(other)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "is not a challenge" in bad.stderr.splitlines()[-1]


def test_classes_off_at_each_drive_are_switched_as_consent_allow_and_withdraw_do(tmp_path):
    store = make_store(tmp_path, POLICY.replace("version = 1\n", 'version = 1\n[ignition]\neach_drive = ["location"]\n'))
    console = start_console(store)

    def allowance() -> str:
        return consent_list(store)["each_drive"]["location"]

    try:
        console.pair()
        page = console.request("/consents")
        assert "off this drive" in page.text and 'aria-label="Switch location on for this drive"' in page.body
        assert allowance() == "off"
        refused = console.confirm(action="allow", cls="location", scope="this-drive")  # no drive yet: the CLI's refusal
        cli = subprocess.run([sys.executable, "-m", "carledger", "consent", "allow", "location", "--this-drive",
                              "--store", str(store)], capture_output=True, text=True)
        assert refused.status == 409 and cli.returncode == 1
        assert cli.stderr.strip().removeprefix("carledger: ") in refused.text
        assert console.confirm(action="allow", cls="location", scope="standing").status == 200
        assert allowance() == "standing" and "on at every drive" in console.request("/consents").text
        assert console.confirm(action="withdraw", cls="location").status == 200 and allowance() == "off"
        assert console.confirm(action="allow", cls="technical", scope="standing").status == 409  # the CLI's rule
    finally:
        stop(console)
