"""Where the processes of ``serve`` and ``worker`` keep their metric samples.

Kept apart from ``contacts_ingest.infrastructure.metrics``: prometheus_client picks its multiprocess
mode when it is first imported, so this folder must be set up before that import, in
the process that then starts (or forks) the others.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir() -> Path:
    """Point PROMETHEUS_MULTIPROC_DIR at an empty folder (a new temporary one if unset)."""
    given = os.environ.get(MULTIPROC_ENV)
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="contacts-ingest-metrics-"))
    if given and folder.exists():
        for child in folder.iterdir():  # stale samples of processes that are gone
            if child.is_file():
                child.unlink()
            else:
                shutil.rmtree(child)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder
