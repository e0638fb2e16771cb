"""Where the processes of ``serve`` and ``worker`` keep their metric samples.

Kept apart from ``contacts_ingest.infrastructure.metrics``: prometheus_client picks its multiprocess
mode when it is first imported, so this folder must be set up before that import, in
the process that then starts (or forks) the others.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# What prometheus_client writes there: <type>[_<gauge mode>]_<pid>.db, one per process.
_SAMPLE_FILE = re.compile(r"(counter|gauge_[a-z]+|histogram|summary)_\d+\.db")


def prepare_multiprocess_dir() -> Path:
    """Point PROMETHEUS_MULTIPROC_DIR at a folder without stale samples (a new temporary
    one if unset). Only prometheus_client's own sample files are removed from a given
    folder: anything else in it, and every subfolder, is left as it is."""
    given = os.environ.get(MULTIPROC_ENV)
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="contacts-ingest-metrics-"))
    if given and folder.exists():
        for child in folder.iterdir():  # stale samples of processes that are gone
            if _SAMPLE_FILE.fullmatch(child.name) and child.is_file():
                child.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder
