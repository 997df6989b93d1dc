"""Decoding: DBC files (tolerant of real ones), fast signal extraction, VSS names."""

from carledger.decode.dbcfile import DbcError, LoadedDbc, load_dbc
from carledger.decode.extract import MessageExtractor, compile_message
from carledger.decode.table import DecodeTable
from carledger.decode.vss import VssMapping

__all__ = ["DbcError", "DecodeTable", "LoadedDbc", "MessageExtractor", "VssMapping", "compile_message", "load_dbc"]
