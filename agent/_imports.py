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
needs it. python-can's interface plug-ins (entry points, read through
`importlib.metadata`) are read only when a bus names an interface python-can
does not ship (`_Interfaces`).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import threading
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


class _Interfaces(dict):  # type: ignore[type-arg]
    """python-can's interface table (`can.interfaces.BACKENDS`), its plug-ins read on the first name it lacks.

    python-can reads every installed package's metadata at import to find
    interface plug-ins (`importlib.metadata`, and with it email, zipfile and
    csv: 3 MB of RSS). A bus is opened by a name from the agent's
    configuration, nearly always one python-can ships, so the plug-ins are
    read only when a name is not in the table, when the table is listed, or
    when python-can is used whole. A plug-in that registers a name python-can
    ships is then not used for it: python-can's own interface is.
    """

    complete = False
    _reading = threading.Lock()  # two buses open in their own threads: neither may see a half-read table

    def read_plugins(self) -> None:
        if self.complete:
            return
        with self._reading:
            if self.complete:
                return
            plugins = _real_entry_points().read_entry_points(group="can.interface")
            dict.update(self, {p.key: (p.module_name, p.class_name) for p in plugins})  # as python-can does
            names = frozenset(dict.keys(self))
            for module in ("can", "can.interfaces", "can.util"):
                if module in sys.modules and isinstance(vars(sys.modules[module]).get("VALID_INTERFACES"),
                                                         _InterfaceNames):
                    sys.modules[module].VALID_INTERFACES = names
            self.complete = True

    def __contains__(self, name: object) -> bool:
        if dict.__contains__(self, name):
            return True
        self.read_plugins()
        return dict.__contains__(self, name)

    def __missing__(self, name: str) -> tuple[str, str]:
        if self.complete:
            raise KeyError(name)
        self.read_plugins()
        return self[name]

    def __iter__(self) -> Any:
        self.read_plugins()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self.read_plugins()
        return dict.__len__(self)

    def keys(self) -> Any:
        self.read_plugins()
        return dict.keys(self)

    def items(self) -> Any:
        self.read_plugins()
        return dict.items(self)


class _InterfaceNames(frozenset):  # type: ignore[type-arg]
    """`can.VALID_INTERFACES` while the plug-ins are unread: a name it lacks reads them (see `_Interfaces`)."""

    table: _Interfaces

    def __contains__(self, name: object) -> bool:
        return name in self.table

    def __iter__(self) -> Any:
        return iter(sorted(self.table))

    def __len__(self) -> int:
        return len(self.table)


def _real_entry_points() -> ModuleType:
    """python-can's `can._entry_points`, put back in place of the stand-in `_defer_interface_plugins` made."""
    module = sys.modules.get("can._entry_points")
    if module is None or getattr(module, "deferred", False):
        sys.modules.pop("can._entry_points", None)
        module = importlib.import_module("can._entry_points")
    return module


def _defer_interface_plugins() -> None:
    """Import `can.interfaces` without reading the installed packages' metadata (see `_Interfaces`)."""
    stand_in = ModuleType("can._entry_points")
    stand_in.deferred = True  # type: ignore[attr-defined]
    stand_in.read_entry_points = lambda group: []  # type: ignore[attr-defined]  # what can.interfaces asks for now
    sys.modules["can._entry_points"] = stand_in
    try:
        interfaces = importlib.import_module("can.interfaces")
    finally:
        if sys.modules.get("can._entry_points") is stand_in:
            del sys.modules["can._entry_points"]  # the next importer (a log reader, a writer) gets python-can's own
    if type(getattr(interfaces, "BACKENDS", None)) is not dict or "VALID_INTERFACES" not in vars(interfaces):
        del sys.modules["can.interfaces"]  # a python-can laid out otherwise: let it read its plug-ins as it does
        importlib.import_module("can.interfaces")
        return
    table = _Interfaces(interfaces.BACKENDS)
    names = _InterfaceNames(dict.keys(table))
    names.table = table
    interfaces.BACKENDS, interfaces.VALID_INTERFACES = table, names


def _import_can_and_cantools_in_parts() -> None:
    if "can" not in sys.modules:
        can = _enter_without_init("can")
        if can is not None:
            can.log = logging.getLogger("can")  # type: ignore[attr-defined]  # what can/__init__ sets, read by can.util
            can.rc = {}  # type: ignore[attr-defined]
            _defer_interface_plugins()
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
