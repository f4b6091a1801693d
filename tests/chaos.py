"""`make chaos`: a steady load on a real stack while its workers and its Valkey are killed.

Starts its own Valkey (append-only, ``appendfsync always``) on a fixed port, a gateway and N
workers with short leases; submits a mix of jobs (samplers, steps, image counts; some of them
cancelled soon after) at a steady rate; and at random times SIGKILLs a worker (starting a new
one in its place), SIGKILLs Valkey (restarting it on the same port and data), or pauses a
worker with SIGSTOP for two to three leases (its jobs are reclaimed by the others) and then
resumes it with SIGCONT: the resumed worker must let go of what was taken from it; or fills
the store (``maxmemory`` set to what Valkey holds, noeviction) for a few seconds: submissions
get 503s, workers back off holding their jobs, and everything finishes once there is room. Every job
accepted with 202 goes into a ledger. When the load stops, the driver waits for each to be
terminal, reads every result again and reports:

- accepted, succeeded, cancelled, failed, expired
- lost: accepted, but never terminal before the deadline, or its record is gone
- duplicates: a job whose images or finish time changed after it was first read as succeeded,
  whose status left ``succeeded``, or whose image count is not what it asked for
- 503s answered while Valkey was down (and outside those windows, which should be none)

Exits 1 if any job is lost or duplicated. ``python -m tests.chaos --minutes 2`` (the default);
``--json PATH`` also writes the report as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from diffq.serve import free_port, start_valkey
from tests.conftest import Stack, stack_env

TERMINAL = ("succeeded", "cancelled", "failed", "expired")
SAMPLERS = ("dpmpp_2m", "ddim", "euler_ancestral", "ddpm")


@dataclass
class Entry:
    """One accepted job, as the client saw it."""

    id: str
    body: dict[str, Any]
    status: str = "queued"
    first_success: dict[str, Any] | None = None  # finished_at and image hashes at first read
    problems: list[str] = field(default_factory=list)
    missing: bool = False
    error: dict[str, Any] | None = None  # a failed job's error, as the gateway reported it


@dataclass
class Counts:
    unavailable_in_outage: int = 0
    unavailable_otherwise: int = 0
    other_errors: int = 0  # transport errors and unexpected statuses, by the client's count
    cancels_sent: int = 0
    worker_kills: int = 0
    redis_kills: int = 0
    worker_pauses: int = 0
    store_fills: int = 0


class Chaos:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.port = free_port()
        self.data = workdir / "valkey"
        self.valkey = start_valkey(self.data, self.port)
        env = stack_env(
            f"redis://127.0.0.1:{self.port}/0",
            f"chaos{uuid.uuid4().hex[:8]}",
            DIFFQ_LEASE_SECONDS=str(args.lease),
            DIFFQ_HEARTBEAT_SECONDS=str(args.lease / 5),
            DIFFQ_MAX_WAIT_MS="20",
            DIFFQ_INTRA_OP_THREADS="1",
            DIFFQ_LOG_LEVEL="WARNING",
        )
        self.stack = Stack(env=env, logs=workdir)
        self.workers: list[str] = []
        self.incarnations = 0
        self.ledger: dict[str, Entry] = {}
        self.lock = threading.Lock()
        self.counts = Counts()
        self.redis_down = threading.Event()
        self.stop_load = threading.Event()
        self.cancels: list[tuple[float, str]] = []

    # ---- the stack ---------------------------------------------------------------------
    def start(self) -> None:
        self.stack.start_gateway()
        for _ in range(self.args.workers):
            self._new_worker()
        self.stack.wait_ready(timeout=90)

    def _new_worker(self) -> None:
        self.incarnations += 1
        name = f"worker-{self.incarnations}"
        self.stack.start_worker(name)
        self.workers.append(name)

    def kill_worker(self) -> None:
        name = self.rng.choice(self.workers)
        self.workers.remove(name)
        self.stack.stop(name, signal.SIGKILL)
        self.counts.worker_kills += 1
        log(f"killed {name}")
        time.sleep(self.rng.uniform(0, 1))
        self._new_worker()

    def pause_worker(self) -> None:
        name = self.rng.choice(self.workers)
        proc = self.stack.procs[name]
        paused = self.rng.uniform(2.0, 3.0) * self.args.lease
        proc.send_signal(signal.SIGSTOP)
        self.counts.worker_pauses += 1
        log(f"paused {name} for {paused:.1f}s")
        time.sleep(paused)
        proc.send_signal(signal.SIGCONT)

    def fill_store(self) -> None:
        """Valkey full for a while: ``maxmemory`` at what it holds now, then lifted."""
        full = self.rng.uniform(1.5, 3.0)
        r = redis.Redis(port=self.port, socket_timeout=2)
        try:
            self.redis_down.set()  # its 503s are the fault's, like an outage's
            used = int(r.info("memory")["used_memory"])
            r.config_set("maxmemory-policy", "noeviction")
            r.config_set("maxmemory", str(used))
            self.counts.store_fills += 1
            log(f"store full for {full:.1f}s (maxmemory {used} bytes)")
            time.sleep(full)
            r.config_set("maxmemory", "0")
            time.sleep(0.5)  # replies already in flight may still say 503
        finally:
            self.redis_down.clear()
            r.close()

    def kill_redis(self) -> None:
        self.redis_down.set()
        self.valkey.kill()
        self.valkey.wait(10)
        self.counts.redis_kills += 1
        down = self.rng.uniform(0.5, 2.5)
        log(f"killed valkey for {down:.1f}s")
        time.sleep(down)
        self.valkey = start_valkey(self.data, self.port)
        # Replies already in flight may still say 503: count them as the outage's.
        time.sleep(0.5)
        self.redis_down.clear()

    def stop(self) -> None:
        self.stack.stop_all()
        if self.valkey.poll() is None:
            self.valkey.terminate()
            try:
                self.valkey.wait(10)
            except subprocess.TimeoutExpired:
                self.valkey.kill()

    # ---- load --------------------------------------------------------------------------
    def body(self) -> dict[str, Any]:
        sampler = self.rng.choice(SAMPLERS)
        steps = self.rng.randint(20, 150) if sampler == "ddpm" else self.rng.randint(2, 25)
        return {
            "class_label": self.rng.choice([None, *range(10)]),
            "num_images": self.rng.randint(1, 4),
            "steps": steps,
            "sampler": sampler,
            "guidance_scale": self.rng.choice([0.0, 1.0, 1.5, 3.0]),
            "seed": self.rng.randrange(2**40),
        }

    def _unavailable(self) -> None:
        with self.lock:
            if self.redis_down.is_set():
                self.counts.unavailable_in_outage += 1
            else:
                self.counts.unavailable_otherwise += 1

    def load(self, client: httpx.Client) -> None:
        period = 1 / self.args.rate
        next_at = time.monotonic()
        while not self.stop_load.is_set():
            self._cancel_due(client)
            body = self.body()
            try:
                r = client.post("/v1/jobs", json=body)
            except httpx.HTTPError:
                with self.lock:
                    self.counts.other_errors += 1  # outcome unknown: not in the ledger
            else:
                if r.status_code == 202:
                    job_id = r.json()["id"]
                    with self.lock:
                        self.ledger[job_id] = Entry(job_id, body)
                    if self.rng.random() < self.args.cancel_fraction:
                        self.cancels.append((time.monotonic() + self.rng.uniform(0, 0.4), job_id))
                elif r.status_code == 503:
                    self._unavailable()
                else:
                    with self.lock:
                        self.counts.other_errors += 1
            next_at += period
            self.stop_load.wait(max(0.0, next_at - time.monotonic()))

    def _cancel_due(self, client: httpx.Client) -> None:
        now = time.monotonic()
        due = [c for c in self.cancels if c[0] <= now]
        self.cancels = [c for c in self.cancels if c[0] > now]
        for _, job_id in due:
            try:
                r = client.delete(f"/v1/jobs/{job_id}")
            except httpx.HTTPError:
                continue
            if r.status_code == 503:
                self._unavailable()
            elif r.status_code in (200, 202, 409):
                self.counts.cancels_sent += 1

    def faults(self, duration: float) -> None:
        """Spread the kills over the load window, one per slot, at a random point of each."""
        kinds = ["worker"] * self.args.worker_kills + ["redis"] * self.args.redis_kills
        kinds += ["pause"] * self.args.worker_pauses + ["full"] * self.args.store_fills
        self.rng.shuffle(kinds)
        started = time.monotonic()
        window = (0.1 * duration, 0.8 * duration)
        slot = (window[1] - window[0]) / max(1, len(kinds))
        for i, kind in enumerate(kinds):
            at = window[0] + slot * (i + self.rng.uniform(0.2, 0.8))
            if self.stop_load.wait(max(0.0, started + at - time.monotonic())):
                return
            faults = {"worker": self.kill_worker, "redis": self.kill_redis, "pause": self.pause_worker}
            (faults | {"full": self.fill_store})[kind]()

    # ---- checking ----------------------------------------------------------------------
    def poll(self, client: httpx.Client, entry: Entry) -> None:
        try:
            r = client.get(f"/v1/jobs/{entry.id}")
        except httpx.HTTPError:
            return
        if r.status_code == 503:
            self._unavailable()
            return
        if r.status_code == 404:
            entry.missing = True
            return
        if r.status_code != 200:
            return
        entry.missing = False
        job = r.json()
        if entry.first_success is not None and job["status"] != "succeeded":
            entry.problems.append(f"left succeeded for {job['status']}")
        entry.status = job["status"]
        entry.error = job.get("error")
        if job["status"] != "succeeded":
            return
        hashes = self.image_hashes(client, job)
        if hashes is None:
            return  # Valkey went away between the two reads: try again next round
        seen = {"finished_at": job["timings"]["finished_at"], "images": hashes}
        if len(hashes) != entry.body["num_images"]:
            entry.problems.append(f"{len(hashes)} images for num_images={entry.body['num_images']}")
        if entry.first_success is None:
            entry.first_success = seen
        elif seen != entry.first_success:
            entry.problems.append("result changed after it was first read as succeeded")

    def image_hashes(self, client: httpx.Client, job: dict[str, Any]) -> list[str] | None:
        out = []
        for image in job["images"]:
            try:
                r = client.get(image["url"])
            except httpx.HTTPError:
                return None
            if r.status_code != 200:
                if r.status_code == 503:
                    self._unavailable()
                return None
            out.append(hashlib.sha256(r.content).hexdigest())
        return out

    def pending(self) -> list[Entry]:
        with self.lock:
            entries = list(self.ledger.values())
        # Not terminal yet, or succeeded but its images not read yet (Valkey was down).
        return [
            e
            for e in entries
            if e.status not in TERMINAL or (e.status == "succeeded" and not e.first_success)
        ]

    def watch(self, client: httpx.Client, until: threading.Event) -> None:
        while not until.is_set():
            for entry in self.pending():
                self.poll(client, entry)
            until.wait(0.3)

    # ---- the run -----------------------------------------------------------------------
    def run(self, duration: float, drain_timeout: float) -> dict[str, Any]:
        started = time.monotonic()
        done_watching = threading.Event()
        with (
            httpx.Client(base_url=self.stack.base_url, timeout=5) as load_client,
            httpx.Client(base_url=self.stack.base_url, timeout=5) as watch_client,
        ):
            loader = threading.Thread(target=self.load, args=(load_client,), name="load")
            watcher = threading.Thread(target=self.watch, args=(watch_client, done_watching), name="watch")
            loader.start()
            watcher.start()
            faults = threading.Thread(target=self.faults, args=(duration,), name="faults")
            faults.start()
            deadline = started + duration
            while time.monotonic() < deadline:
                time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
                log(f"{len(self.ledger)} accepted, {len(self.pending())} not yet terminal")
            faults.join()  # a restart in progress finishes first
            self.stop_load.set()
            loader.join()
            drain_until = time.monotonic() + drain_timeout
            while self.pending() and time.monotonic() < drain_until:
                time.sleep(0.3)
            done_watching.set()
            watcher.join()
            for entry in list(self.ledger.values()):  # read every result once more
                if entry.status == "succeeded":
                    self.poll(watch_client, entry)
        return self.report(time.monotonic() - started)

    def report(self, seconds: float) -> dict[str, Any]:
        entries = list(self.ledger.values())
        by_status = {s: sum(e.status == s for e in entries) for s in TERMINAL}
        lost = [e.id for e in entries if e.missing or e.status not in TERMINAL]
        duplicates = {e.id: e.problems for e in entries if e.problems}
        return {
            "seconds": round(seconds, 1),
            "accepted": len(entries),
            **by_status,
            "lost": len(lost),
            "lost_ids": lost[:20],
            "duplicates": len(duplicates),
            "duplicate_details": dict(list(duplicates.items())[:20]),
            "failed_details": {e.id: e.error for e in entries if e.status == "failed"},
            "unavailable_503_in_outage": self.counts.unavailable_in_outage,
            "unavailable_503_otherwise": self.counts.unavailable_otherwise,
            "other_errors": self.counts.other_errors,
            "cancels_sent": self.counts.cancels_sent,
            "worker_kills": self.counts.worker_kills,
            "redis_kills": self.counts.redis_kills,
            "worker_pauses": self.counts.worker_pauses,
            "store_fills": self.counts.store_fills,
        }


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=2.0, help="how long the load runs (default 2)")
    p.add_argument("--seconds", type=float, help="the same in seconds (overrides --minutes)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rate", type=float, default=3.0, help="submissions per second")
    p.add_argument("--cancel-fraction", type=float, default=0.1, help="share of jobs cancelled soon after")
    p.add_argument("--worker-kills", type=int, help="default: one per 20 s of load")
    p.add_argument("--redis-kills", type=int, help="default: one per 45 s of load")
    p.add_argument(
        "--worker-pauses", type=int, help="SIGSTOP past the lease, then SIGCONT; default: one per 30 s"
    )
    p.add_argument(
        "--store-fills", type=int, help="Valkey at maxmemory for a few seconds; default: one per 45 s"
    )
    p.add_argument("--lease", type=float, default=1.5, help="DIFFQ_LEASE_SECONDS for the workers")
    p.add_argument("--drain-seconds", type=float, default=90.0, help="how long to wait for the last jobs")
    p.add_argument("--seed", type=int, default=None, help="for a reproducible schedule and load")
    p.add_argument("--json", type=Path, help="also write the report here")
    p.add_argument("--keep-logs", type=Path, help="write the processes' logs here (default: a temp dir)")
    args = p.parse_args(argv)
    args.duration = args.seconds if args.seconds is not None else args.minutes * 60
    if args.worker_kills is None:
        args.worker_kills = max(1, round(args.duration / 20))
    if args.redis_kills is None:
        args.redis_kills = max(1, round(args.duration / 45))
    if args.worker_pauses is None:
        args.worker_pauses = max(1, round(args.duration / 30))
    if args.store_fills is None:
        args.store_fills = max(1, round(args.duration / 45))
    if args.seed is None:
        args.seed = random.randrange(2**32)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="diffq-chaos-") as tmp:
        workdir = args.keep_logs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        log(f"seed {args.seed}; {args.duration:.0f}s of load, {args.workers} workers; logs in {workdir}")
        chaos = Chaos(args, workdir)
        try:
            chaos.start()
            report = chaos.run(args.duration, args.drain_seconds)
        finally:
            chaos.stop()
    report["seed"] = args.seed
    text = json.dumps(report, indent=2)
    print(text, flush=True)
    if args.json:
        args.json.write_text(text)
    clean = report["lost"] == 0 and report["duplicates"] == 0
    log("clean: nothing lost, nothing duplicated" if clean else "NOT CLEAN: see lost_ids / duplicate_details")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
