"""Sources and decoding: PyAV for files, RTSP, HTTP/HLS and devices, on one stream clock."""

from livesense.stream.clock import StreamClock
from livesense.stream.counters import SourceCounters
from livesense.stream.handoff import Handoff
from livesense.stream.source import MediaSource, Source, open_source

__all__ = ["Handoff", "MediaSource", "Source", "SourceCounters", "StreamClock", "open_source"]
