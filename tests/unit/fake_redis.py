"""fakeredis as the unit tests use it: running the real Lua scripts.

Its Lua, like Redis before 7.0, cannot read the flags line our scripts start with
(``#!lua flags=...``), and it does not answer INFO: asked, it says it is a Redis 6.2,
so the line is left out for it as for such a server (contacts_ingest/infrastructure/
redis_scripts.py). The flags only say what Redis does while over maxmemory, which the
fake never is; the fault tests run a real Redis that is.
"""

from __future__ import annotations

from typing import Any

import fakeredis


class FakeRedis(fakeredis.FakeRedis):
    def info(self, section: Any = None, *args: Any, **kwargs: Any) -> Any:
        if section == "server":
            return {"redis_version": "6.2.0"}
        return super().info(section, *args, **kwargs)
