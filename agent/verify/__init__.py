"""Third-party-style verification of a carledger store (see docs/block-format.md)."""

from carledger.verify.report import KINDS, Problem, Report, StreamSummary
from carledger.verify.verifier import verify_store

__all__ = ["verify_store", "Report", "Problem", "StreamSummary", "KINDS"]
