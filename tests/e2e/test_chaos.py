"""A short run of the chaos driver (`make chaos` runs it for minutes): steady load, one worker
and one Valkey SIGKILLed mid-run, one worker paused past its lease, the store full for a
few seconds, and every accepted job ends terminal exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_a_short_chaos_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    args = [
        "--seconds",
        "20",
        "--worker-kills",
        "1",
        "--redis-kills",
        "1",
        "--worker-pauses",
        "1",
        "--store-fills",
        "1",
        "--seed",
        "5",
    ]
    args += ["--drain-seconds", "30", "--json", str(report_path), "--keep-logs", str(tmp_path / "logs")]
    out = subprocess.run(
        [sys.executable, "-m", "tests.chaos", *args], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stdout + out.stderr[-4000:]
    report = json.loads(report_path.read_text())
    assert report["worker_kills"] == 1 and report["redis_kills"] == 1 and report["worker_pauses"] == 1
    assert report["store_fills"] == 1
    assert report["accepted"] >= 30, report  # about 3 a second for 20 s, less the outage
    assert report["lost"] == 0 and report["duplicates"] == 0, report
    assert report["succeeded"] > 0 and report["failed"] == 0, report
    assert report["succeeded"] + report["cancelled"] == report["accepted"], report
