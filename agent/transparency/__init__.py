"""Transparency-log formats: C2SP signed notes, checkpoints, cosignatures, and RFC 6962 log proofs.

Modelled on Go's golang.org/x/mod/sumdb/note and sumdb/tlog, and checked
against them (tests/test_transparency_interop.py). Self-contained: nothing
here reads the ledger store; docs/transparency.md says how it plugs in.
"""
