"""Keep python-can from importing asammdf (and numpy, pandas ...) at import time.

python-can imports asammdf eagerly for its MF4 reader whenever asammdf is
installed, and cantools imports python-can. That costs about 100 MB of RSS and
half a second on every start, for a format most runs never touch. We hide
asammdf while python-can is first imported and bring the MF4 reader back on
demand with `enable_mf4()`, the only place that needs it.
"""

from __future__ import annotations

import importlib
import sys


def _import_can_without_asammdf() -> None:
    if "can" in sys.modules:
        return
    hidden = "asammdf" not in sys.modules
    if hidden:
        sys.modules["asammdf"] = None  # type: ignore[assignment]  # makes `import asammdf` raise ImportError
    try:
        import can  # noqa: F401
    finally:
        if hidden and sys.modules.get("asammdf", 0) is None:
            del sys.modules["asammdf"]


def enable_mf4() -> None:
    """Load asammdf and re-run python-can's MF4 module so MF4Reader works.

    Raises ImportError with an actionable message where asammdf is not installed.
    """
    try:
        import asammdf  # noqa: F401
    except ImportError as exc:
        raise ImportError("reading .mf4 needs asammdf: pip install 'carledger[mf4]'") from exc
    import can.io.mf4

    if getattr(can.io.mf4, "asammdf", None) is None:
        importlib.reload(can.io.mf4)


_import_can_without_asammdf()
