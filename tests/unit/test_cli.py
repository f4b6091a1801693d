"""The `diffq` command line: every flag explains itself, `submit` finds its gateway from the
environment and says in one line when it cannot reach it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from diffq.cli import DEFAULT_URL, build_parser
from diffq.client import post_job, unreachable_reason
from diffq.serve import free_port
from tests.conftest import ROOT


def _parsers(
    parser: argparse.ArgumentParser, name: str = "diffq"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_flag_and_subcommand_has_help() -> None:
    missing = []
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):  # its subcommands need the help
                missing += [f"{name} {a.dest}" for a in action._choices_actions if not a.help]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"flags without help: {missing}"
    # The walk did reach the subcommands' flags (an empty walk would pass vacuously).
    names = {name for name, _ in _parsers(build_parser())}
    assert {"diffq submit", "diffq worker", "diffq keygen", "diffq openapi", "diffq import"} <= names


def test_submit_keeps_the_flags_of_every_model_kind() -> None:
    args = build_parser().parse_args(
        ["submit", "--prompt", "a fox", "--negative-prompt", "blur", "--width", "64", "--height", "32"]
    )
    assert (args.prompt, args.negative_prompt, args.width, args.height) == ("a fox", "blur", 64, 32)


def test_submit_url_defaults_to_diffq_url_then_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFQ_URL", "http://gateway.internal:9000")
    assert build_parser().parse_args(["submit"]).url == "http://gateway.internal:9000"
    assert build_parser().parse_args(["submit", "--url", "http://other:1"]).url == "http://other:1"
    monkeypatch.delenv("DIFFQ_URL")
    assert build_parser().parse_args(["submit"]).url == DEFAULT_URL == "http://127.0.0.1:8000"


def _run_submit(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("DIFFQ_URL", "DIFFQ_API_KEY")} | env
    return subprocess.run(
        [sys.executable, "-m", "diffq", "submit", *argv],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("via", ["flag", "env"])
def test_an_unreachable_gateway_is_one_line_and_a_failure(via: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # bound then released: nobody listens there
    done = _run_submit("--url", url) if via == "flag" else _run_submit(DIFFQ_URL=url)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert lines == [f"diffq submit: cannot reach {url} (connection refused); set --url or DIFFQ_URL"]


def _refusing_then(answers: list[httpx.Response], refusals: list[int]) -> httpx.Client:
    """A client whose requests numbered in ``refusals`` (1-based) are refused, the rest answered."""
    count = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        if count in refusals:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return answers.pop(0)

    return httpx.Client(base_url="http://gateway", transport=httpx.MockTransport(handler))


def test_a_first_refused_connection_is_not_retried() -> None:
    slept: list[float] = []
    with _refusing_then([], refusals=[1]) as client, pytest.raises(httpx.ConnectError) as info:
        post_job(client, {}, sleep=slept.append)
    assert slept == [], "a gateway that was never reached is reported at once"
    assert unreachable_reason(info.value) == "connection refused"


def test_a_refusal_after_the_gateway_answered_is_retried() -> None:
    # A gateway that answered 503 and then restarts refuses for a moment: worth another try.
    unavailable = httpx.Response(503, json={"error": {"message": "full"}}, headers={"Retry-After": "0"})
    slept: list[float] = []
    with _refusing_then([unavailable, httpx.Response(202, json={})], refusals=[2]) as client:
        assert post_job(client, {}, sleep=slept.append).status_code == 202
    assert len(slept) == 2


def test_unreachable_reasons_are_short() -> None:
    request = httpx.Request("POST", "http://gateway/v1/jobs")
    assert unreachable_reason(httpx.ConnectTimeout("timed out", request=request)) == "timed out"
    assert unreachable_reason(httpx.ConnectError("[Errno -2] Name or service not known")) == (
        "name or service not known"
    )
    assert unreachable_reason(httpx.RemoteProtocolError("")) == "RemoteProtocolError"
