"""``python -m bench.simulated_worker --device zero|h200``: the real worker on a simulated device.

Settings come from the environment exactly as for ``diffq worker``; only the denoiser (and, on
``zero``, a pipeline's text encoder and VAE decoder) differ (``bench.simulated``). Two
measurement hooks, both off unless their variable is set:

- ``BENCH_ROUND_TRIPS_FILE``: every ``ROUND_TRIPS_EVERY`` seconds, the requests this process
  has sent to Redis so far (a pipeline or a script call is one) and the commands in them,
  written to that file;
- ``BENCH_PROFILE``: a cProfile of the whole process, written there when the worker stops.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import threading
from pathlib import Path
from typing import Any

import redis.connection

from bench.simulated import DEVICES, ROUND_TRIPS_EVERY, simulated, simulated_stages
from diffq.cli import load_settings
from workers.config import WorkerSettings
from workers.main import run_worker


class RoundTrips:
    """Counts this process's requests to Redis on redis-py's connections: ``send_packed_command``
    calls (one per request sent: a command, a whole pipeline, a health-check PING, each answered
    before the caller goes on), and the commands in them."""

    def __init__(self) -> None:
        self.requests = 0
        self.commands = 0
        lock = threading.Lock()  # the probe server's thread sends too (readiness PINGs)
        conn = redis.connection.AbstractConnection
        send_packed, send_command, pack_commands = (
            conn.send_packed_command,
            conn.send_command,
            conn.pack_commands,
        )

        def counted_send(c: Any, command: Any, check_health: bool = True) -> None:
            with lock:
                self.requests += 1
            send_packed(c, command, check_health)

        def counted_command(c: Any, *args: Any, **kwargs: Any) -> Any:
            with lock:
                self.commands += 1
            return send_command(c, *args, **kwargs)

        def counted_pack(c: Any, commands: Any) -> Any:
            commands = list(commands)  # a pipeline's, MULTI and EXEC included
            with lock:
                self.commands += len(commands)
            return pack_commands(c, commands)

        conn.send_packed_command = counted_send  # type: ignore[method-assign]
        conn.send_command = counted_command  # type: ignore[method-assign,assignment]
        conn.pack_commands = counted_pack  # type: ignore[method-assign]

    def write_every(self, path: Path, seconds: float) -> None:
        """Keep ``path`` up to date ("requests commands") from a daemon thread (replaced whole,
        never half written)."""

        def loop() -> None:
            tmp = path.with_suffix(".tmp")
            while True:
                tmp.write_text(f"{self.requests} {self.commands}")
                tmp.replace(path)
                threading.Event().wait(seconds)

        threading.Thread(target=loop, name="round-trips", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.simulated_worker", description=__doc__)
    p.add_argument("--device", choices=DEVICES, required=True, help="the simulated denoiser")
    p.add_argument("--name", help="worker id (consumer name); default host-pid")
    p.add_argument("--model", help="model to serve; default the first in the store")
    args = p.parse_args(argv)
    if out := os.environ.get("BENCH_ROUND_TRIPS_FILE"):
        RoundTrips().write_every(Path(out), ROUND_TRIPS_EVERY)
    overrides = {k: v for k, v in (("worker_id", args.name), ("model", args.model)) if v}
    settings = load_settings(WorkerSettings, **overrides)
    profile_to = os.environ.get("BENCH_PROFILE")
    profiler = cProfile.Profile() if profile_to else None
    if profiler is not None:
        profiler.enable()
    try:
        run_worker(settings, wrap_engine=simulated(args.device), wrap_component=simulated_stages(args.device))
    finally:
        if profiler is not None and profile_to:
            profiler.disable()
            profiler.dump_stats(profile_to)


if __name__ == "__main__":
    main()
