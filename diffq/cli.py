"""The `diffq` command: serve | gateway | worker | webhooks | submit | keygen | openapi | and model tooling.

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
    h = sub.add_parser("webhooks", help="webhook deliveries: the delivering process, dead letters, secrets")
    hs = h.add_subparsers(dest="webhooks_command", required=True)
    hs.add_parser("run", help="one delivering process (run as many as you like)")
    hd = hs.add_parser("dead-letters", help="list the deliveries given up on, newest first (JSON lines)")
    hd.add_argument("--count", type=int, default=100, help="at most this many (default: %(default)s)")
    hr = hs.add_parser("replay", help="queue dead letters again, due now, their attempts reset")
    hr.add_argument("entries", nargs="*", help="dead-letter entries (their `entry`); none with --all")
    hr.add_argument("--all", action="store_true", help="every dead letter (up to 100,000)")
    hs.add_parser("secret", help="print a new webhook secret (whsec_...) for DIFFQ_WEBHOOK_SECRETS")
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
    elif args.command == "webhooks":
        sys.exit(_webhooks(args))
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


def _webhooks(args: argparse.Namespace) -> int:
    """`diffq webhooks ...`: run the deliverer, list or replay dead letters, print a secret."""
    import json

    if args.webhooks_command == "secret":
        from webhooks.signing import new_secret

        print(new_secret())
        return 0
    if args.webhooks_command == "run":
        from webhooks.config import WebhookSettings
        from webhooks.main import run_deliverer

        run_deliverer(load_settings(WebhookSettings))
        return 0
    from diffq.errors import Unavailable
    from diffq.settings import CommonSettings
    from diffq.store import RedisStore

    settings = load_settings(CommonSettings)
    store = RedisStore(settings.redis_url, settings.key_prefix, timeout=settings.redis_timeout_seconds)
    try:
        if args.webhooks_command == "dead-letters":
            for letter in store.dead_deliveries(max(1, args.count)):
                print(json.dumps(letter, sort_keys=True))
            return 0
        if not args.entries and not args.all:
            print("diffq webhooks replay: name dead-letter entries, or --all", file=sys.stderr)
            return 2
        entries = [d["entry"] for d in store.dead_deliveries(100_000)] if args.all else args.entries
        replayed = sum(store.replay_delivery(entry) for entry in entries)
        print(f"replayed {replayed} of {len(entries)} dead letters")
        return 0 if replayed == len(entries) else 1
    except Unavailable as e:
        print(f"diffq: {e.message}", file=sys.stderr)
        return 1
    finally:
        store.close()


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
