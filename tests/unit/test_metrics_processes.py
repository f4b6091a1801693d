"""A gateway process killed outright leaves its live-only gauge values behind in the
multiprocess directory: a scrape drops those of processes that are gone, and only those."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from diffq.metrics import forget_dead_processes


def test_only_the_live_gauge_files_of_dead_processes_are_dropped(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid names no process now
    me = os.getpid()
    for name in (f"gauge_livesum_{gone.pid}.db", f"gauge_livesum_{me}.db", f"counter_{gone.pid}.db"):
        (tmp_path / name).write_bytes(b"")
    assert forget_dead_processes(str(tmp_path)) == [gone.pid]
    left = sorted(p.name for p in tmp_path.iterdir())
    # a dead process's counters stay: they still count what it did
    assert left == sorted([f"gauge_livesum_{me}.db", f"counter_{gone.pid}.db"])
