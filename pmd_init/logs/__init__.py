"""Log capture (pipes to rotating files and pmd's own stdout), rotation and tails."""

from .capture import Capture, Forwarder, LogFile, open_log_path
from .tail import Line, capture_times, count_lines, last_lines, tail_lines

__all__ = ["Capture", "Forwarder", "Line", "LogFile", "capture_times", "count_lines",
           "last_lines", "open_log_path", "tail_lines"]
