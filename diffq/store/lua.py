"""Lua scripts with named KEYS and ARGV, and how they are sent.

A ``Script`` declares the names of its keys and arguments once. Its source begins by binding
each to a local (``local job = KEYS[1]``), and ``bind`` builds the positional lists from a
mapping with exactly those names, so the Lua and the Python call cannot drift apart. A script
with a variable tail reads it from ``more_keys``/``more_argv``, the first index past the named
ones.

Every script starts with the ``#!lua`` shebang: a server past ``maxmemory`` (noeviction) then
refuses the whole script up front. Without it a script is refused only at its first write that
may grow memory, after earlier writes have run, and Lua has no rollback.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

# Take ``n`` off a counter; one at zero or below is deleted (a missing counter reads as 0).
TAKE_FN = """
local function take(counter, n)
  if redis.call('DECRBY', counter, n) <= 0 then redis.call('DEL', counter) end
end
"""


@dataclass(frozen=True)
class Script:
    keys: tuple[str, ...]
    argv: tuple[str, ...]
    body: str
    shared: str = ""  # Lua functions the body calls (they see the named locals)
    source: str = field(init=False)
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        lines = ["#!lua"]
        lines += [f"local {name} = KEYS[{i}]" for i, name in enumerate(self.keys, 1)]
        lines += [f"local {name} = ARGV[{i}]" for i, name in enumerate(self.argv, 1)]
        lines += [f"local more_keys = {len(self.keys) + 1}", f"local more_argv = {len(self.argv) + 1}"]
        source = "\n".join(lines) + "\n" + self.shared + self.body
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "sha", hashlib.sha1(source.encode()).hexdigest())

    def bind(
        self,
        keys: Mapping[str, str],
        argv: Mapping[str, Any],
        more_keys: Sequence[str] = (),
        more_argv: Sequence[Any] = (),
    ) -> Call:
        """The positional KEYS and ARGV for these named values (every name, no other)."""
        for kind, declared, given in (("KEYS", self.keys, keys), ("ARGV", self.argv, argv)):
            if set(declared) != set(given):
                missing, extra = set(declared) - set(given), set(given) - set(declared)
                raise TypeError(f"{kind}: missing {sorted(missing)}, unexpected {sorted(extra)}")
        return Call(
            self,
            [*(keys[k] for k in self.keys), *more_keys],
            [*(argv[a] for a in self.argv), *more_argv],
        )


@dataclass(frozen=True)
class Call:
    """One script run: the script and its positional KEYS and ARGV."""

    script: Script
    keys: list[str]
    args: list[Any]


def run(client: Any, call: Call) -> Any:
    """Run ``call`` (EVALSHA; loads the script once if the server lacks it)."""
    try:
        return client.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
    except redis.exceptions.NoScriptError:
        client.script_load(call.script.source)
        return client.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)


async def run_async(client: Any, call: Call) -> Any:
    """``run`` on an asyncio client."""
    try:
        return await client.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
    except redis.exceptions.NoScriptError:
        await client.script_load(call.script.source)
        return await client.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)


def run_many(client: Any, calls: Sequence[Call]) -> list[Any]:
    """Many runs in one round trip (one pipeline of EVALSHA; redis-py's own script objects
    would ask SCRIPT EXISTS first, a second round trip). A server that lost its script cache
    (a restart) answers NOSCRIPT and runs none of them: load it, send them again. One script
    per pipeline: with two, a retry could run the calls of the one the server had twice."""
    if len({c.script.sha for c in calls}) > 1:
        raise ValueError("run_many sends the calls of one script")

    def send() -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for c in calls:
            pipe.evalsha(c.script.sha, len(c.keys), *c.keys, *c.args)
        return list(pipe.execute())

    try:
        return send()
    except redis.exceptions.NoScriptError:
        if calls:
            client.script_load(calls[0].script.source)
        return send()
