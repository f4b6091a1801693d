"""Readers for the deployment files (Grafana dashboard, Dockerfiles, .dockerignore) used by tests.

Plain functions over the files in the repository: no Docker engine, Grafana or Prometheus needed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "diffq.json"
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))

# A histogram family is exposed as <name>_bucket, <name>_sum and <name>_count.
HISTOGRAM_SERIES_SUFFIXES = ("_bucket", "_sum", "_count")
_STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_DIFFQ_NAME = re.compile(r"(?<![A-Za-z0-9_:$])diffq_[A-Za-z0-9_:]*")


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, with the panels of collapsed rows after their row."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """The PromQL of every panel target and of every query variable."""
    exprs = [
        target["expr"]
        for panel in iter_panels(dashboard.get("panels", []))
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and isinstance(query, str) and query:
            exprs.append(query)
    return exprs


def metric_names(expr: str) -> set[str]:
    """Metric family names starting with ``diffq_`` in one PromQL expression.

    String literals are dropped first, so label values and regexes never count as names;
    histogram series (``_bucket``, ``_sum``, ``_count``) are reported as their family.
    """
    names = set()
    for name in _DIFFQ_NAME.findall(_STRING_LITERAL.sub('""', expr)):
        for suffix in HISTOGRAM_SERIES_SUFFIXES:
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
                break
        names.add(name)
    return names


def dashboard_metric_names(path: Path = DASHBOARD) -> set[str]:
    """Every ``diffq_`` metric family the dashboard at ``path`` queries."""
    return {name for expr in dashboard_exprs(load_dashboard(path)) for name in metric_names(expr)}


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, USER, ...
    args: str


def dockerfile_stages(path: Path) -> list[list[Instruction]]:
    """The instructions of each build stage, in order; a stage starts at its FROM.

    Comments and blank lines are dropped and backslash continuations joined (enough for our
    Dockerfiles, which use no heredocs and no other escape character).
    """
    stages: list[list[Instruction]] = []
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    for line in logical:
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        if stages:  # instructions before the first FROM are ARGs for the FROM lines
            stages[-1].append(instruction)
    return stages


def exec_form(args: str) -> list[str] | None:
    """The argument list of an exec-form (JSON array) instruction, or None for shell form."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and value and all(isinstance(a, str) for a in value):
        return value
    return None


def dockerignore_patterns(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def dockerignore_excludes(patterns: list[str], relpath: str) -> bool:
    """Whether a build context leaves ``relpath`` (a file, ``/``-separated) out.

    Docker's rules: the last pattern matching the path or one of its parent directories
    decides, ``!`` re-includes, ``*`` stays within one path segment and ``**`` spans any number.
    """
    parts = relpath.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _dockerignore_regex(pattern.removeprefix("!"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out = []
    segments = pattern.strip("/").split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "**":
            out.append(".*" if last else "(?:.*/)?")
            continue
        out.append(_glob_segment(segment))
        if not last:
            out.append("/")
    return re.compile("".join(out))


def _glob_segment(segment: str) -> str:
    """One path segment of a glob as a regex: ``*`` and ``?`` never match ``/``."""
    out = []
    i = 0
    while i < len(segment):
        c = segment[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in segment[i + 1 :]:
            end = segment.index("]", i + 1)
            body = segment[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)
