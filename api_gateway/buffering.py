"""Slow clients cost a thread, not the service.

granian hands each request to a Python thread before its body has arrived, so a
client that trickles its body holds that thread while it waits on the network.
``BufferedBodies`` reads the body first (waiting on the socket without the GIL),
and only then lets the request into the application, a few at a time. The server
runs many threads (cheap while they wait), while the CPU-bound part of the work runs
on few, so the threads do not fight over the GIL.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


# The environ key of a context manager under which a request waits outside the gate
# (for ``Prefer: wait``), so a waiting request does not hold back working ones.
STEP_OUT = "contacts_ingest.step_out"


class BufferedBodies:
    """Wraps a WSGI app: read bodies up to ``max_body(path) + 1`` bytes, then run at most
    ``active`` requests at once.

    A body declared larger than ``max_body`` is not read at all: the application
    refuses it (413) from its Content-Length alone. A chunked body is read to its end
    or to ``max_body + 1`` bytes, whichever comes first, so the application still sees
    that it is too large.
    """

    def __init__(
        self, app: WSGIApplication, *, max_body: Callable[[str], int], active: int
    ) -> None:
        self._app = app
        self._max_body = max_body
        self._gate = threading.BoundedSemaphore(active)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        to_read = self._bytes_to_read(environ)
        if to_read:
            environ["wsgi.input"] = io.BytesIO(environ["wsgi.input"].read(to_read))
        environ[STEP_OUT] = self._step_out
        with self._gate:
            body: Any = self._app(environ, start_response)
            # Falcon answers with a list; anything lazier is drained inside the gate.
            return body if isinstance(body, list) else list(body)

    def _bytes_to_read(self, environ: WSGIEnvironment) -> int:
        limit = self._max_body(environ.get("PATH_INFO", ""))
        length = environ.get("CONTENT_LENGTH") or ""
        if length.isdigit():
            declared = int(length)
            return declared if declared <= limit else 0
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            return limit + 1
        return 0

    @contextmanager
    def _step_out(self) -> Iterator[None]:
        self._gate.release()
        try:
            yield
        finally:
            self._gate.acquire()
