"""Import python-can and cantools by the parts the agent uses, not whole (memory on a car computer).

Importing `can` runs python-can's `__init__`, which loads every log reader
and writer, asyncio (and ssl with it), the Notifier and, where asammdf is
installed, asammdf with numpy and pandas: about 100 MB of RSS with asammdf,
and 4 to 5 MB without it, for things `carledger run` never touches on a bus
(docs/performance.md measures each part). cantools' `__init__` imports its
tester, which imports all of python-can again.

So both packages are entered here without running their `__init__`: their
submodules import as usual when asked for (`can.interfaces.socketcan`,
`cantools.database`), the few python-can names the bus path reads from the
package (`can.BusABC`, `can.Message`, `can.Bus`, its exceptions ...) are set
from their submodules, and the first use of any other name (`can.Notifier`,
`can.ASCReader`, `cantools.tester` ...) runs the real `__init__` on the same
module object, so everything works as if it had been imported whole, at the
whole cost. asammdf stays hidden while python-can's `__init__` runs (its MF4
reader would import it); `enable_mf4()` brings it back, the only place that
needs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from types import ModuleType
from typing import Any

# python-can names the bus path uses, by the submodule that defines them (can/__init__.py re-exports them).
_CAN_NAMES = {
    "exceptions": ("CanError", "CanInitializationError", "CanInterfaceNotImplementedError", "CanOperationError",
                   "CanTimeoutError"),
    "message": ("Message",),
    "bit_timing": ("BitTiming", "BitTimingFd"),
    "bus": ("BusABC", "BusState", "CanProtocol"),
    "broadcastmanager": ("CyclicSendTaskABC", "LimitedDurationCyclicSendTaskABC", "ModifiableCyclicTaskABC",
                         "RestartableCyclicTaskABC"),
    "interfaces": ("VALID_INTERFACES",),
    "interface": ("Bus", "detect_available_configs"),
    "util": ("set_logging_level",),
}


def _hide_asammdf() -> bool:
    """Makes `import asammdf` raise ImportError; True when it was hidden here (and must be shown again)."""
    if "asammdf" in sys.modules:
        return False
    sys.modules["asammdf"] = None  # type: ignore[assignment]
    return True


def _show_asammdf(hidden: bool) -> None:
    if hidden and sys.modules.get("asammdf", 0) is None:
        del sys.modules["asammdf"]


def _enter_without_init(name: str) -> ModuleType | None:
    """The package `name` in sys.modules, its `__init__` not run yet; None where it is not installed.

    A missing attribute is a submodule (imported then) or else runs the
    package's own `__init__` on this module, once.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return None
    module = importlib.util.module_from_spec(spec)
    folder = spec.submodule_search_locations[0]
    submodules = {entry.removesuffix(".py") for entry in os.listdir(folder)
                  if entry.endswith(".py") or os.path.isfile(os.path.join(folder, entry, "__init__.py"))}

    def whole(attr: str) -> Any:
        if attr.startswith("__") and attr not in ("__version__", "__all__"):
            raise AttributeError(attr)  # __file__, __wrapped__ ... that a package has or has not: no reason to load it
        hidden = _hide_asammdf()
        try:
            if attr in submodules and attr != "__init__":
                return importlib.import_module(f"{name}.{attr}")
            del module.__getattr__
            kept = {key: module.__dict__[key] for key in ("rc",) if key in module.__dict__}
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        finally:
            _show_asammdf(hidden)
        module.__dict__.update(kept)  # `can.rc` as the bus path may have filled it
        return getattr(module, attr)

    module.__getattr__ = whole  # type: ignore[attr-defined]  # PEP 562: only for names not set
    sys.modules[name] = module
    return module


def _import_can_and_cantools_in_parts() -> None:
    if "can" not in sys.modules:
        can = _enter_without_init("can")
        if can is not None:
            can.log = logging.getLogger("can")  # type: ignore[attr-defined]  # what can/__init__ sets, read by can.util
            can.rc = {}  # type: ignore[attr-defined]
            for submodule, names in _CAN_NAMES.items():
                defined = importlib.import_module(f"can.{submodule}")
                for attr in names:
                    setattr(can, attr, getattr(defined, attr))
    if "cantools" not in sys.modules:
        _enter_without_init("cantools")


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


_import_can_and_cantools_in_parts()


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]) -> tuple[list[str], Any, Any]:
    """`__all__`, `__getattr__` and `__dir__` for a package that re-exports its submodules' names on first use.

    `exports` maps a submodule (relative name) to the names the package
    re-exports from it; an empty tuple re-exports the submodule itself. A run
    that never touches a stage (MQTT sync, OBD polling) then never imports
    it, nor what it needs (paho-mqtt and ssl, can-isotp).
    """
    where = {attr: sub for sub, attrs in exports.items() for attr in (attrs or (sub,))}

    def __getattr__(attr: str) -> Any:
        sub = where.get(attr)
        if sub is None:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        module = importlib.import_module(f"{package}.{sub}")
        value = module if attr == sub and not exports[sub] else getattr(module, attr)
        setattr(sys.modules[package], attr, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return sorted(where), __getattr__, __dir__
