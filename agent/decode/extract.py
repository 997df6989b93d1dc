"""Fast signal extraction: a specialised decoder per message, exact to cantools.

`compile_message(message, names)` returns a `MessageExtractor` whose
`extract(data)` gives the physical values of the requested signals, in order,
as cantools' ``message.decode(data, decode_choices=False, scaling=True,
allow_truncated=True)`` gives them, with ``None`` for a signal that is absent.

How it is fast: at compile time we work out, per signal, the shift, mask,
sign bit, scale and offset, and generate (and ``exec``) one small Python
function per message. Per frame that function turns the payload into an int
once per byte order actually needed (``int.from_bytes``), or reads a byte
directly for signals inside one byte, and evaluates one expression per
signal. There is no per-signal dict, no bitstruct call and no per-frame object
other than the returned list.

cantools behaviour mirrored here (each one checked by tests/test_extract.py):

- the physical value is ``raw * scale + offset`` with the scale and offset
  objects of the signal's *conversion* object: cantools turns an integer-valued
  scale/offset (``2.0``) into ints, so an integer signal with such a scaling
  decodes to ``int``; ``scale == 1 and offset == 0`` returns the raw value
  unchanged (``int``, or ``float`` for IEEE float signals);
- a multiplexer selects by ``int(physical value of the multiplexer)``;
  extended multiplexing (``SG_MUL_VAL_``) is a chain of such selections;
  a multiplexer value no signal uses gives ``None`` for its children (cantools
  raises DecodeError for the whole frame);
- a payload longer than the message is cut to the message length; a shorter
  payload is padded with 0xFF and every signal whose bits (or whose
  multiplexers' bits) reach past the payload is ``None``;
- a signal defined past the message length (broken DBCs, e.g. 5-byte
  messages with 8 bytes of signals) makes cantools fail on every frame of
  that message; we give ``None`` for that signal and decode the others.
"""

from __future__ import annotations

import logging
import math
import struct
import types
from collections.abc import Iterable
from typing import Any, Callable

try:  # cantools >= 38
    from cantools.database.conversion import IdentityConversion, NamedSignalConversion
except ImportError:  # pragma: no cover - older cantools
    IdentityConversion = NamedSignalConversion = ()  # type: ignore[assignment,misc]

__all__ = ["MessageExtractor", "compile_message"]

_log = logging.getLogger(__name__)

_FLOAT_CODES = {16: "e", 32: "f", 64: "d"}


def _network_start(signal: Any) -> int:
    """Network (MSB-first) bit number of a big-endian signal's most significant bit."""
    s = signal.start
    return 8 * (s // 8) + (7 - s % 8)


class _Plan:
    """Compile-time facts about one signal of the message."""

    __slots__ = ("sig", "parent", "children", "var", "end", "reachable")

    def __init__(self, sig: Any) -> None:
        self.sig = sig
        self.parent: _Plan | None = None
        self.children: list[_Plan] = []
        self.var = ""
        # first bit past the signal, counted like cantools' truncation check
        if sig.byte_order == "little_endian":
            self.end = sig.start + sig.length
        else:
            self.end = _network_start(sig) + sig.length
        self.reachable = True


class _Gen:
    """Generates the source of one message's extract function."""

    def __init__(self, message: Any) -> None:
        self.length = message.length
        self.nbits = 8 * message.length
        self.ns: dict[str, Any] = {}
        self.uses_little = False
        self.uses_big = False
        self._consts = 0

    def const(self, value: Any) -> str:
        """Source text for a constant: a literal for plain ints and finite floats."""
        if type(value) is int or (type(value) is float and math.isfinite(value)):
            return f"({value!r})"
        self._consts += 1
        name = f"_c{self._consts}"
        self.ns[name] = value
        return name

    def raw(self, sig: Any) -> str:
        """Expression for the raw value (int, or float for IEEE float signals)."""
        length = sig.length
        little = sig.byte_order == "little_endian"
        if little:
            lo = sig.start  # bit 0 = LSB of byte 0
            first_byte = lo // 8
        else:
            net = _network_start(sig)
            first_byte = net // 8

        if sig.is_float:
            code = _FLOAT_CODES.get(length)
            if code is None:
                raise ValueError(f"signal {sig.name}: float of {length} bits is not supported")
            nbytes = length // 8
            if (little and lo % 8 == 0) or (not little and net % 8 == 0):
                fmt = ("<" if little else ">") + code
                name = f"_uf_{fmt[0] == '<' and 'l' or 'b'}{code}"
                self.ns[name] = struct.Struct(fmt).unpack_from
                return f"{name}(data, {first_byte})[0]"
            name = f"_ub_{code}"
            self.ns[name] = struct.Struct("<" + code).unpack
            return f"{name}(({self._bits(sig)}).to_bytes({nbytes}, 'little'))[0]"

        expr = self._bits(sig)
        if sig.is_signed:
            h = 1 << (length - 1)
            expr = f"((({expr}) ^ {h}) - {h})"
        return expr

    def _bits(self, sig: Any) -> str:
        """Expression for the unsigned bit field of the signal."""
        length = sig.length
        mask = (1 << length) - 1
        if sig.byte_order == "little_endian":
            lo = sig.start
            if lo // 8 == (lo + length - 1) // 8:  # inside one byte
                return self._byte_field(lo // 8, lo % 8, length)
            self.uses_little = True
            var, shift, top = "_l", lo, lo + length == self.nbits
        else:
            net = _network_start(sig)
            if net // 8 == (net + length - 1) // 8:
                return self._byte_field(net // 8, 8 - net % 8 - length, length)
            self.uses_big = True
            var, shift = "_b", self.nbits - net - length
            top = net == 0
        expr = f"({var} >> {shift})" if shift else var
        if not top:
            expr = f"({expr} & {mask:#x})"
        return expr

    @staticmethod
    def _byte_field(index: int, shift: int, length: int) -> str:
        expr = f"data[{index}]"
        if shift:
            expr = f"({expr} >> {shift})"
        if shift + length < 8:
            expr = f"({expr} & {(1 << length) - 1:#x})"
        return expr

    def value(self, sig: Any) -> tuple[str, bool]:
        """Expression for the physical value, and whether it is always an int."""
        raw = self.raw(sig)
        raw_is_int = not sig.is_float
        conv = sig.conversion
        if NamedSignalConversion and isinstance(conv, NamedSignalConversion):
            conv = conv._conversion  # what cantools uses with decode_choices=False
        if IdentityConversion and isinstance(conv, IdentityConversion):
            return raw, raw_is_int
        scale, offset = getattr(conv, "scale", None), getattr(conv, "offset", None)
        if type(scale) not in (int, float) or type(offset) not in (int, float):
            # unknown conversion type: let it do the work itself
            name = f"_conv_{len(self.ns)}"
            self.ns[name] = conv.raw_to_scaled
            return f"{name}({raw}, False)", False
        is_int = raw_is_int and type(scale) is int and type(offset) is int
        expr = raw
        if not (type(scale) is int and scale == 1):
            expr = f"{expr} * {self.const(scale)}"
        # `+ 0` is a no-op exactly when the product can't be -0.0 or a float-typed
        # int; otherwise keep it so the result is the same object type and sign.
        skip_offset = (
            type(offset) is int
            and offset == 0
            and raw_is_int
            and (type(scale) is int or scale > 0)
        )
        if not skip_offset:
            expr = f"{expr} + {self.const(offset)}"
        return f"({expr})", is_int


class MessageExtractor:
    """Extracts a fixed list of signals of one message from payloads.

    `extract(data)` returns a list of physical values (``None`` where absent),
    in the order of `names`.
    """

    __slots__ = ("message", "names", "extract", "source")

    message: Any
    names: tuple[str, ...]
    extract: Callable[[bytes], list]
    source: str

    def __repr__(self) -> str:
        return f"MessageExtractor({self.message.name!r}, {self.names!r})"


def compile_message(message: Any, signal_names: Iterable[str]) -> MessageExtractor:
    """Compile an extractor of `signal_names` (bare names) of a cantools Message."""
    names = tuple(signal_names)
    if getattr(message, "is_container", False):
        raise ValueError(f"message {message.name}: container messages are not supported")

    by_name = {s.name: s for s in message.signals}
    length = message.length
    nbits = 8 * length
    plans: dict[str, _Plan] = {}

    def plan_for(name: str) -> _Plan:
        plan = plans.get(name)
        if plan is not None:
            return plan
        try:
            sig = by_name[name]
        except KeyError:
            raise KeyError(f"message {message.name} has no signal {name!r}") from None
        plan = plans[name] = _Plan(sig)
        parent_name = sig.multiplexer_signal
        if plan.end > nbits:
            # cantools cannot decode this message at all ("unpacking failed");
            # we decode what fits and call the rest absent.
            past_end.append(name)
            plan.reachable = False
        elif parent_name is not None:
            parent_sig = by_name.get(parent_name)
            if (
                parent_sig is None
                or not parent_sig.is_multiplexer
                or sig.multiplexer_ids is None
                or parent_name == name
            ):
                plan.reachable = False  # cantools never decodes it
            else:
                # guard against multiplexer cycles in broken files
                seen = {name}
                p = parent_sig
                while p is not None and p.multiplexer_signal is not None:
                    if p.name in seen:
                        plan.reachable = False
                        break
                    seen.add(p.name)
                    p = by_name.get(p.multiplexer_signal)
                if plan.reachable:
                    parent = plan_for(parent_name)
                    plan.reachable = parent.reachable
                    if plan.reachable:
                        plan.parent = parent
                        parent.children.append(plan)
        return plan

    past_end: list[str] = []
    for name in names:
        plan_for(name)
    if past_end:
        _log.warning(
            "message %s: signals %s are defined past the message length of %d bytes;"
            " they will always be None",
            message.name, ", ".join(past_end), length,
        )

    gen = _Gen(message)

    body: list[str] = []
    var_counter = [0]

    def new_var() -> str:
        var_counter[0] += 1
        return f"v{var_counter[0]}"

    def descendants(plan: _Plan) -> list[_Plan]:
        out = []
        for child in plan.children:
            out.append(child)
            out.extend(descendants(child))
        return out

    def emit(plan: _Plan, indent: str) -> None:
        expr, is_int = gen.value(plan.sig)
        plan.var = new_var()
        body.append(f"{indent}{plan.var} = {expr}")
        if not plan.children:
            return
        key = plan.var if is_int else f"_int({plan.var})"
        if not is_int:
            kv = new_var()
            body.append(f"{indent}{kv} = {key}")
            key = kv
        groups: dict[frozenset, list[_Plan]] = {}
        for child in plan.children:
            groups.setdefault(frozenset(child.sig.multiplexer_ids), []).append(child)
        for ids, children in groups.items():
            if len(ids) == 1:
                cond = f"{key} == {next(iter(ids))!r}"
            else:
                gen._consts += 1
                cname = f"_ids{gen._consts}"
                gen.ns[cname] = ids
                cond = f"{key} in {cname}"
            body.append(f"{indent}if {cond}:")
            for child in children:
                emit(child, indent + "    ")
            body.append(f"{indent}else:")
            for child in children:
                for p in [child, *descendants(child)]:
                    if not p.var:
                        p.var = new_var()
                    body.append(f"{indent}    {p.var} = None")

    roots = [p for p in plans.values() if p.reachable and p.parent is None]
    multiplexed = any(p.children for p in roots)
    outputs: list[str] = []
    if multiplexed:
        for plan in roots:
            emit(plan, "    ")
        for name in names:
            plan = plans[name]
            outputs.append(plan.var if plan.reachable else "None")
    else:
        exprs = {p.sig.name: gen.value(p.sig)[0] for p in roots}
        outputs = [exprs.get(name, "None") for name in names]

    pre = [
        "def _extract(data):",
        f"    if len(data) != {length}:",
        "        return _other(data)",
    ]
    if gen.uses_little:
        pre.append("    _l = _fb(data, 'little')")
    if gen.uses_big:
        pre.append("    _b = _fb(data, 'big')")
    source = "\n".join([*pre, *body, f"    return [{', '.join(outputs)}]", ""])

    # Short payloads: pad like cantools, then blank what the payload does not cover.
    ends = []
    for i, name in enumerate(names):
        plan = plans[name]
        end = 0
        p: _Plan | None = plan
        while p is not None:
            end = max(end, p.end)
            p = p.parent
        ends.append((i, end))
    fast_holder: list[Callable[[bytes], list]] = []

    def _other(data: bytes) -> list:  # named in the generated code: calling_on_short() swaps it in a copy
        fast = fast_holder[0]
        n = len(data)
        if n > length:
            return fast(bytes(data[:length]))
        out = fast(bytes(data).ljust(length, b"\xff"))
        available = 8 * n
        for i, end in ends:
            if end > available:
                out[i] = None
        return out

    _other.length = length  # type: ignore[attr-defined]
    ns: dict[str, Any] = dict(gen.ns)
    ns.update(_fb=int.from_bytes, _int=int, _other=_other)
    code = compile(source, f"<carledger extract {message.name}>", "exec")
    exec(code, ns)  # noqa: S102 - generated from the DBC's numbers only
    fast = ns["_extract"]
    fast_holder.append(fast)

    ext = MessageExtractor()
    ext.message = message
    ext.names = names
    ext.extract = fast
    ext.source = source
    return ext


def calling_on_short(extract: Callable[[bytes], list], length: int,
                     on_short: Callable[[], None]) -> Callable[[bytes], list]:
    """`extract`, calling `on_short()` before it decodes a payload shorter than `length` (the message's).

    For a function `compile_message` made: a copy of it whose path for payloads of another length
    (`_other`) calls `on_short` first, so a payload of the message's length costs not one operation
    more (the crash ring's per-frame test, issue 16). Any other function gets a wrapper that tests.
    """
    other = getattr(extract, "__globals__", {}).get("_other")
    if getattr(other, "length", None) == length:
        def _other_short(data: bytes) -> list:
            if len(data) < length:
                on_short()
            return other(data)  # type: ignore[misc]

        code = extract.__code__  # type: ignore[attr-defined]
        return types.FunctionType(code, {**extract.__globals__, "_other": _other_short}, code.co_name)  # type: ignore[attr-defined]

    def _checked(data: bytes) -> list:
        if len(data) < length:
            on_short()
        return extract(data)

    return _checked
