"""`contacts-ingest dev` keeps its data folder to its owner."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from contacts_ingest.infrastructure.local_servers import private_folder


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """A umask that lets everyone in, so only the code under test can close a folder."""
    previous = os.umask(0)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("permissive_umask")
def test_a_new_data_folder_is_created_private(tmp_path: Path) -> None:
    folder = private_folder(tmp_path / "made" / "data")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.mark.usefixtures("permissive_umask")
def test_an_existing_data_folder_open_to_all_is_tightened(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir(mode=0o777)
    (folder / "kept.txt").write_text("kept")
    assert private_folder(folder) == folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert (folder / "kept.txt").read_text() == "kept"
