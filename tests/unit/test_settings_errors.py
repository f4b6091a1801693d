"""Settings errors say what is wrong without printing secrets, and the CLI reports them in a
few lines instead of a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from diffq.settings import redacted_url
from service.config import GatewaySettings
from workers.config import WorkerSettings

SECRET = "s3cret-pa55"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{SECRET}@10.0.0.1:6379/0", "redis://:***@10.0.0.1:6379/0"),
        (f"rediss://app:{SECRET}@cache:6380/1", "rediss://app:***@cache:6380/1"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_urls_lose_their_password_when_shown(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


@pytest.mark.parametrize("url", [f"redis://:{SECRET}@h:notaport/0", f"http://:{SECRET}@h:6379/0"])
@pytest.mark.parametrize("settings", [GatewaySettings, WorkerSettings])
def test_an_invalid_redis_url_is_refused_without_its_password(url: str, settings: type) -> None:
    with pytest.raises(ValidationError) as info:
        settings(redis_url=url, auth="off")
    text = str(info.value)
    assert "REDIS_URL" in text and SECRET not in text and "***" in text


def test_the_cli_reports_invalid_settings_in_a_few_lines(tmp_path: object) -> None:
    env = {**os.environ, "REDIS_URL": f"redis://:{SECRET}@127.0.0.1:notaport/0", "DIFFQ_AUTH": "off"}
    out = subprocess.run(
        [sys.executable, "-m", "diffq", "gateway"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and SECRET not in out.stderr + out.stdout
    assert out.stderr.startswith("diffq: invalid settings:") and len(out.stderr.splitlines()) <= 3
