"""Sources: where frames come from (live python-can buses, recorded logs)."""

from carledger.sources.base import EventSink, FrameSource
from carledger.sources.bus import BusSource
from carledger.sources.frame import EFF_FLAG, Frame, FrameFilter, frame_key
from carledger.sources.replay import LogSource

__all__ = ["BusSource", "EFF_FLAG", "EventSink", "Frame", "FrameFilter", "FrameSource", "LogSource", "frame_key"]
