"""Schemathesis drives the live gateway from its own OpenAPI document.

Every answer must be documented and match its schema, and none may be a 5xx.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Service

pytestmark = pytest.mark.e2e

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
]


def test_the_live_gateway_conforms_to_its_document_and_never_answers_5xx(
    service: Service, tmp_path: Path
) -> None:
    _, auth = service.new_user()
    run = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{service.base}/openapi.json",
            "--header",
            f"Authorization: {auth['Authorization']}",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            "40",
            "--seed",
            "20261126",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
