"""The store's Lua scripts: every one compiles in a real Valkey, names its KEYS and ARGV as
valid, distinct Lua locals, and cannot be called with a name missing or extra."""

from __future__ import annotations

import keyword
import re

import pytest
import redis

from diffq.store import admission, records, work_queue
from diffq.store.lua import Script

SCRIPTS = {
    f"{module.__name__.rsplit('.', 1)[-1]}.{name}": value
    for module in (admission, records, work_queue)
    for name, value in vars(module).items()
    if isinstance(value, Script)
}
LUA_KEYWORDS = {
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "if", "in",
    "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
}  # fmt: skip


def test_there_are_scripts_to_check() -> None:
    assert {"admission.SUBMIT", "records.TRANSITION", "work_queue.CLAIM"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_script_compiles_and_names_its_inputs(name: str, valkey: str) -> None:
    script = SCRIPTS[name]
    names = [*script.keys, *script.argv]
    assert len(set(names)) == len(names), f"{name}: a name is used twice"
    for n in names:
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", n) and n not in LUA_KEYWORDS and not keyword.iskeyword(n)
    assert script.source.startswith("#!lua\n")  # a full store refuses the whole script
    r = redis.Redis.from_url(valkey)
    try:
        assert r.script_load(script.source) == script.sha  # it compiles
    finally:
        r.close()


def test_a_call_must_name_every_input_and_no_other() -> None:
    script = records.REQUEST_CANCEL
    assert script.bind({"job": "k"}, {}).keys == ["k"]
    with pytest.raises(TypeError, match="missing"):
        script.bind({}, {})
    with pytest.raises(TypeError, match="unexpected"):
        script.bind({"job": "k", "other": "x"}, {})
