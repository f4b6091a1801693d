"""The `diffq` command: serve | gateway | worker | submit | keygen | openapi | train | export | eval | import.

Subcommands import only what they run, so `diffq worker` never loads the web stack and
`diffq gateway` never loads onnxruntime.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_URL = "http://127.0.0.1:8000"


def build_parser() -> argparse.ArgumentParser:
    """The command line: every subcommand and flag, each with its help."""
    p = argparse.ArgumentParser(prog="diffq", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="embedded Valkey + gateway + WORKERS workers, in the foreground")
    sub.add_parser("gateway", help="the HTTP gateway only")
    w = sub.add_parser("worker", help="one worker process")
    w.add_argument("--name", help="worker id (consumer name); default host-pid")
    w.add_argument("--model", help="model to serve; default the first in the store")
    w.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    _add_submit(sub.add_parser("submit", help="submit a job, show progress, save the PNGs"))
    k = sub.add_parser("keygen", help="print a new API key and its DIFFQ_API_KEYS entry")
    k.add_argument("--name", required=True, help="the key's name (owner of its jobs)")
    d = sub.add_parser("dead-letters", help="list the jobs workers gave up on, newest first (JSON lines)")
    d.add_argument("--model", required=True, help="the model whose dead letters to list")
    d.add_argument("--count", type=int, default=100, help="at most this many (default: %(default)s)")
    o = sub.add_parser("openapi", help="write the OpenAPI document")
    o.add_argument(
        "--out",
        type=Path,
        default=Path("openapi/openapi.json"),
        help="where to write it (default: %(default)s)",
    )
    # Their own parsers take the rest of the line (`diffq import --help` is theirs).
    for name in ("train", "export", "eval", "import"):
        sub.add_parser(name, help=f"model tooling: {name} (needs the train extra)", add_help=False)
    return p


def _add_submit(s: argparse.ArgumentParser) -> None:
    """`diffq submit`'s flags. Unset ones are left out of the request: the server's defaults apply."""
    # Read when the parser is built, so --help shows the URL that would be used.
    url = os.environ.get("DIFFQ_URL") or DEFAULT_URL
    s.add_argument("--url", default=url, help=f"gateway URL; default $DIFFQ_URL, else {DEFAULT_URL}")
    s.add_argument("--model", default=None, help="model name; default the server's")
    s.add_argument("--class-label", type=int, default=None, help="class-conditional models: class index")
    s.add_argument("--prompt", default=None, help="text-to-image models: what to draw")
    s.add_argument("--negative-prompt", default=None, help="text-to-image models: what to avoid")
    s.add_argument("--width", type=int, default=None, help="with --height: one of the model's sizes")
    s.add_argument("--height", type=int, default=None, help="with --width: output height in pixels")
    s.add_argument("--num-images", type=int, default=1, help="images in the job (default: %(default)s)")
    s.add_argument("--steps", type=int, default=None, help="denoising steps; default the model's")
    s.add_argument("--sampler", default=None, help="one of the model's samplers; default the model's")
    s.add_argument(
        "--guidance-scale", type=float, default=None, help="classifier-free guidance; default the model's"
    )
    s.add_argument(
        "--seed", type=int, default=None, help="seed of the first image; default drawn by the server"
    )
    s.add_argument(
        "--priority", choices=["high", "normal", "low"], default=None, help="queue priority; default normal"
    )
    s.add_argument("--out", type=Path, default=Path("."), help="folder for the PNGs (default: %(default)s)")
    s.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to follow the job (default: %(default)s)"
    )
    s.add_argument("--api-key", default=None, help="bearer key; default $DIFFQ_API_KEY")


def main(argv: list[str] | None = None) -> None:
    """Run the subcommand ``argv`` names (default: the process's arguments)."""
    p = build_parser()
    args, rest = p.parse_known_args(argv)
    if args.command == "serve":
        from diffq.serve import ServeSettings, serve

        sys.exit(serve(load_settings(ServeSettings)))
    elif args.command == "gateway":
        from service.config import GatewaySettings
        from service.main import run_gateway

        run_gateway(load_settings(GatewaySettings))
    elif args.command == "worker":
        from workers.config import WorkerSettings
        from workers.main import run_worker

        overrides = {k: v for k, v in (("worker_id", args.name), ("model", args.model)) if v}
        run_worker(load_settings(WorkerSettings, **overrides), burst=args.burst)
    elif args.command == "submit":
        from diffq.client import submit

        sys.exit(submit(args))
    elif args.command == "keygen":
        from service.auth import hash_key, new_key

        key = new_key()
        print(f"key (give to the client, shown once): {key}")
        print(f"entry for DIFFQ_API_KEYS: {args.name}:{hash_key(key)}")
    elif args.command == "dead-letters":
        sys.exit(_dead_letters(args.model, args.count))
    elif args.command == "openapi":
        from service.openapi import write_openapi

        write_openapi(args.out)
    elif args.command == "train":
        from tooling.training.train import main as train_main

        train_main(rest)
    elif args.command == "export":
        from tooling.training.export import main as export_main

        export_main(rest)
    elif args.command == "eval":
        from tooling.evaluation.run import main as eval_main

        eval_main(rest)
    elif args.command == "import":
        from tooling.importer.__main__ import main as import_main

        import_main(rest)


S = TypeVar("S")


def _dead_letters(model: str, count: int) -> int:
    """Print the model's dead letters (``REDIS_URL``, ``DIFFQ_KEY_PREFIX``) as JSON lines."""
    import json

    from diffq.errors import Unavailable
    from diffq.settings import CommonSettings
    from diffq.store import RedisStore

    settings = load_settings(CommonSettings)
    store = RedisStore(settings.redis_url, settings.key_prefix, timeout=settings.redis_timeout_seconds)
    try:
        for letter in store.dead_letters(model, max(1, count)):
            print(json.dumps(letter, sort_keys=True))
    except Unavailable as e:
        print(f"diffq: {e.message}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def load_settings(cls: Callable[..., S], **overrides: Any) -> S:
    """A process's settings, or a short message and exit status 2 for invalid ones (values
    are never echoed: the settings hide their input in errors, secrets included)."""
    from pydantic import ValidationError

    try:
        return cls(**overrides)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc']) or '?'}: {err['msg']}" for err in e.errors()]
        print("diffq: invalid settings:\n" + "\n".join(lines), file=sys.stderr)
        sys.exit(2)
