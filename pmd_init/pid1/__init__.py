"""PID-1 duties: signals, the reaper, the subreaper, the main command, shutdown, re-exec."""
