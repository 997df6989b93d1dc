"""Crash capture: an event data recorder sealed for the owner and the investigators the policy names.

`CrashRecorder` (recorder.py) keeps the pre-crash ring buffer and writes
captures into the `crash` stream; `read_captures` and `open_capture`
(captures.py) read them back, the first from cleartext metadata, the second
with a recipient's key. The format is in docs/edr.md.
"""

from carledger.edr.captures import (
    CRASH_STREAM, CaptureContent, CaptureError, CaptureInfo, capture_bundle, open_capture, read_captures,
)
from carledger.edr.recorder import CrashRecorder

__all__ = [
    "CRASH_STREAM", "CaptureContent", "CaptureError", "CaptureInfo", "CrashRecorder", "capture_bundle", "open_capture",
    "read_captures",
]
