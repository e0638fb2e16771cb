"""Waiting on the network never holds back the work.

granian hands each request to a Python thread as soon as its head has arrived,
before its body. The application authenticates from the head first and reads the
body only then, so a request without a valid key costs no body at all. A client that
trickles its body holds its own thread only, waiting on the socket without the GIL:
``ActiveRequests`` lets at most ``active`` requests work at once (the CPU-bound
part), and a request steps out of that gate while it waits for its body or for its
job (``Prefer: wait``). The server runs many threads (cheap while they wait), the
work runs on few, so the threads do not fight over the GIL.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


# The environ key of a context manager under which a request waits outside the gate
# (for ``Prefer: wait``), so a waiting request does not hold back working ones.
STEP_OUT = "contacts_ingest.step_out"


class _InputOutsideGate:
    """``wsgi.input`` whose reads wait for the network outside the gate."""

    def __init__(self, stream: Any, step_out: Callable[[], AbstractContextManager[None]]) -> None:
        self._stream = stream
        self._step_out = step_out

    def read(self, size: int | None = -1) -> bytes:
        with self._step_out():
            whole = size is None or size < 0
            data: bytes = self._stream.read() if whole else self._stream.read(size)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        with self._step_out():
            line: bytes = self._stream.readline(size)
        return line

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class ActiveRequests:
    """Wraps a WSGI app: at most ``active`` requests run it at once, not counting the
    time they spend reading their bodies or waiting under ``STEP_OUT``."""

    def __init__(self, app: WSGIApplication, *, active: int) -> None:
        self._app = app
        # One token per request that may work; a request takes one, and gives it back.
        # (A SimpleQueue waits in C: threading's semaphores cost a Condition per call.)
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(active):
            self._tokens.put(None)
        self._stepping_out = _StepOut(self._tokens)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ["wsgi.input"] = _InputOutsideGate(environ["wsgi.input"], self._step_out)
        environ[STEP_OUT] = self._step_out
        self._tokens.get()
        try:
            body: Any = self._app(environ, start_response)
            # Falcon answers with a list; anything lazier is drained inside the gate.
            return body if isinstance(body, list) else list(body)
        finally:
            self._tokens.put(None)

    def _step_out(self) -> _StepOut:
        return self._stepping_out


class _StepOut:
    """Gives the request's token back for the block's duration, then waits for one."""

    def __init__(self, tokens: queue.SimpleQueue[None]) -> None:
        self._tokens = tokens

    def __enter__(self) -> None:
        self._tokens.put(None)

    def __exit__(self, *exc: object) -> None:
        self._tokens.get()
