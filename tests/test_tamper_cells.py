"""Schema-blind tampering: flip bytes of every cell of every table of a real store, one change at a time.

The store comes from two real runs of the agent (four streams; stream `s`
has a 5 s retention, so the second run drops records of the first, declared).
For each cell (whatever its table, column or type) the first, a middle and
the last byte of its value are flipped, one at a time, and the change is
undone before the next. Each change must be

- reported by `verify` (a problem, or the store refused as unreadable), or
- refused by the next open of the writer (`Store.open`), or
- in a column that docs/store-format.md lists as unsigned by design, and then
  provably harmless: verify still passes, and the writer opens with the same
  heads and vehicle id as on the untouched store (so it signs exactly what
  it would have signed).

And whatever verify says, a writer that does open must continue from the
same heads and as the same vehicle as on the untouched store: the car never signs
two different blocks for one (stream, seq). NULL cells (records dropped by
retention) have no bytes to flip. Issue 11.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from carledger.dbc import path as dbc_path
from carledger.ledger import Store, StoreError
from carledger.verify import verify_store
from harness.drives import write_drive_log

DOCS = Path(__file__).resolve().parent.parent / "docs" / "store-format.md"
TABLES = ("meta", "streams", "blocks")
POLICY = """version = 1

[[stream]]
name = "s"
local = true
purpose = "speed"
signals = ["Vehicle.Speed"]
retention = "5s"

[[stream]]
name = "t"
local = true
purpose = "powertrain"
signals = ["Vehicle.Powertrain.*"]
"""


def unsigned_by_design() -> set[str]:
    """`table.column` names in the table under docs/store-format.md's "Unsigned by design" heading."""
    text = DOCS.read_text()
    section = text.split("## Unsigned by design", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(\w+\.\w+)`", section, re.M))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tamper")
    first = write_drive_log(folder / "first.log")
    second = folder / "second.log"  # the same drive 700 s later: past the retention of the first's blocks
    second.write_text("".join(
        f"({float(line.split(' ', 1)[0][1:-1]) + 700:.6f}) {line.split(' ', 1)[1]}\n"
        for line in first.read_text().splitlines()
    ))
    policy = folder / "policy.toml"
    policy.write_text(POLICY)
    store = folder / "store"
    for log in (first, second):
        done = subprocess.run(
            [sys.executable, "-m", "carledger", "run", "--replay", str(log), "--dbc", dbc_path("carledger_demo.dbc"),
             "--store", str(store), "--fast", "--policy", str(policy)],
            capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stderr
    return store


def writer_view(store: Path) -> tuple:
    """What the writer would continue from: its vehicle id and the head of every stream."""
    with Store.open(store) as opened:
        return opened.vehicle_id, {name: opened.signed_head(name) for name in opened.streams()}


def flips(raw: object) -> list[tuple[int, object]]:
    """(position, changed value) for the first, a middle and the last byte of a cell's bytes."""
    if isinstance(raw, int):
        data, back = raw.to_bytes(8, "big", signed=True), lambda b: int.from_bytes(b, "big", signed=True)
    elif isinstance(raw, bytes):
        data, back = raw, bytes
    else:
        return []  # NULL: nothing to flip
    out = []
    for pos, mask in sorted({(0, 0x80), (len(data) // 2, 0x01), (len(data) - 1, 0x01)}):
        if 0 <= pos < len(data):
            changed = bytearray(data)
            changed[pos] ^= mask
            out.append((pos, back(bytes(changed))))
    return out


def cells(conn: sqlite3.Connection) -> list[tuple[str, str, int, str, object]]:
    """(table, column, rowid, storage class, value) of every cell; TEXT as its raw bytes."""
    out = []
    for table in TABLES:
        conn.text_factory = str
        columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        conn.text_factory = bytes
        picks = ", ".join(f"typeof({c}), {c}" for c in columns)
        for row in conn.execute(f"SELECT rowid, {picks} FROM {table}").fetchall():
            for i, column in enumerate(columns):
                out.append((table, column, row[0], row[1 + 2 * i].decode(), row[2 + 2 * i]))
    return out


def put(conn: sqlite3.Connection, table: str, column: str, rowid: int, kind: str, value: object) -> int:
    """Write one cell in its storage class; returns the row's rowid afterwards (blocks.id is the rowid)."""
    slot = "CAST(? AS TEXT)" if kind == "text" else "?"
    conn.execute(f"UPDATE {table} SET {column} = {slot} WHERE rowid = ?", (value, rowid))
    return value if (table, column) == ("blocks", "id") else rowid


def test_every_byte_of_every_cell_matters_or_is_unsigned_by_design(pristine, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    baseline = verify_store(store)
    assert baseline.ok, baseline.problems
    expected_writer = writer_view(store)
    harmless_columns = unsigned_by_design()
    assert {"blocks.synced", "blocks.acked"} <= harmless_columns

    conn = sqlite3.connect(store / "ledger.sqlite", isolation_level=None)
    all_cells = cells(conn)
    assert {c[0] for c in all_cells} == set(TABLES)
    assert any(c[4] is None for c in all_cells if c[1] == "records")  # retention dropped some records
    tried = caught_by_verify = refused = harmless = 0
    unexplained = []
    for table, column, rowid, kind, value in all_cells:
        for pos, changed in flips(value):
            try:
                moved = put(conn, table, column, rowid, kind, changed)
            except sqlite3.IntegrityError:
                continue  # collides with a key: not a store that can exist
            tried += 1
            where = f"{table}.{column} rowid {rowid} byte {pos}: {value!r} -> {changed!r}"
            try:
                view = writer_view(store)
            except StoreError:
                refused += 1
                view = None
            if view is not None and view != expected_writer:
                unexplained.append(f"{where}: the writer would continue from other heads or as another vehicle")
            try:
                verified = verify_store(store).ok
            except StoreError:
                verified = False  # refused as unreadable (exit 2), with the reason
            caught_by_verify += not verified
            if verified and view is not None:
                if f"{table}.{column}" in harmless_columns:
                    harmless += 1
                else:
                    unexplained.append(f"{where}: neither verify nor the writer notices")
            put(conn, table, column, moved, kind, value)
    conn.close()
    assert unexplained == [], unexplained
    assert verify_store(store).ok  # every change was undone
    assert tried > 1000 and caught_by_verify > 900 and refused > 50 and harmless > 0, (tried, caught_by_verify, refused, harmless)
