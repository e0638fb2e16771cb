"""fakeredis as the unit tests use it: running the real Lua scripts.

Its Lua does not read the flags line Redis 7 scripts may start with (``#!lua
flags=...``), so that line is left out; the flags only say what Redis does while over
maxmemory, which the fake never is (the fault tests run a real Redis that is).
"""

from __future__ import annotations

from typing import Any

import fakeredis
from redis.commands.core import Script


class FakeRedis(fakeredis.FakeRedis):
    def register_script(self, script: Any) -> Script:
        text = script.decode() if isinstance(script, bytes) else str(script)
        if text.startswith("#!"):
            text = text.split("\n", 1)[1]
        return super().register_script(text)
