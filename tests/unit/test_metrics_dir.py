"""PROMETHEUS_MULTIPROC_DIR loses its stale samples at start, and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from contacts_ingest.infrastructure.metrics_dir import MULTIPROC_ENV, prepare_multiprocess_dir

# Another process recording one metric of every kind, as a gateway or pool process would.
RECORD_SAMPLES = """
from prometheus_client import Counter, Gauge, Histogram, Summary
Counter("c", "c").inc()
Gauge("g", "g", multiprocess_mode="livesum").set(1)
Gauge("m", "m", multiprocess_mode="max").set(1)
Histogram("h", "h").observe(1)
Summary("s", "s").observe(1)
"""


def record_samples(folder: Path) -> set[str]:
    """The files prometheus_client itself writes into ``folder``."""
    before = set(os.listdir(folder))
    env = {**os.environ, MULTIPROC_ENV: str(folder)}
    subprocess.run([sys.executable, "-c", RECORD_SAMPLES], env=env, check=True)
    return set(os.listdir(folder)) - before


def test_stale_samples_go_and_everything_else_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "metrics"
    (folder / "keep").mkdir(parents=True)
    foreign = {
        folder / "notes.txt": "someone's notes",
        folder / "app.db": "someone's database",
        folder / "keep" / "counter_1.db": "a subfolder is never ours",
    }
    for path, text in foreign.items():
        path.write_text(text)
    samples = record_samples(folder)
    assert len(samples) >= 5  # counter, two gauges, histogram, summary
    monkeypatch.setenv(MULTIPROC_ENV, str(folder))

    assert prepare_multiprocess_dir() == folder

    assert not samples & set(os.listdir(folder))
    assert {path: path.read_text() for path in foreign} == foreign


def test_an_unset_folder_is_a_fresh_empty_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, "")  # restored after the test, whatever it was
    folder = prepare_multiprocess_dir()
    assert os.environ[MULTIPROC_ENV] == str(folder)
    assert list(folder.iterdir()) == []
    folder.rmdir()
