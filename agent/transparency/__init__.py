"""Transparency-log formats: C2SP signed notes, checkpoints, cosignatures, and RFC 6962 log proofs.

Modelled on Go's golang.org/x/mod/sumdb/note and sumdb/tlog, and checked
against them (tests/test_transparency_interop.py). Self-contained: nothing
here reads the ledger store; docs/transparency.md says how it plugs in.
"""

# The ledger first: its store imports checkpoint.py, which imports the ledger's merkle module; entered here
# first, that cycle found carledger.transparency.checkpoint half made (test_witness.py failed to import).
import carledger.ledger  # noqa: F401,I001
from carledger.transparency.checkpoint import Checkpoint, CheckpointError, open_checkpoint, sign_checkpoint
from carledger.transparency.cosignature import CosignatureSigner, CosignatureVerifier, cosignature_times
from carledger.transparency.note import (
    Ed25519Signer,
    Ed25519Verifier,
    Note,
    NoteError,
    Signature,
    Verifiers,
    generate_key,
    open_note,
    parse_signer_key,
    parse_verifier_key,
    sign_note,
)
from carledger.transparency.tlog import MemoryLog, check_record, check_tree, prove_record, prove_tree

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "open_checkpoint",
    "sign_checkpoint",
    "CosignatureSigner",
    "CosignatureVerifier",
    "cosignature_times",
    "Ed25519Signer",
    "Ed25519Verifier",
    "Note",
    "NoteError",
    "Signature",
    "Verifiers",
    "generate_key",
    "open_note",
    "parse_signer_key",
    "parse_verifier_key",
    "sign_note",
    "MemoryLog",
    "check_record",
    "check_tree",
    "prove_record",
    "prove_tree",
]
