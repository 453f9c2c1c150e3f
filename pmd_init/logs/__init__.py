"""Log capture (pipes to rotating files and pmd's own stdout), rotation and tails."""

from .capture import Capture, Forwarder, LogFile, open_log_path
from .tail import tail_lines

__all__ = ["Capture", "Forwarder", "LogFile", "open_log_path", "tail_lines"]
