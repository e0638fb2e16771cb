"""A test needing a newer Redis than the run's is skipped with its reason, never passed."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_a_test_needing_a_newer_redis_is_skipped_with_its_reason_and_runs_where_it_can(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(
        "[pytest]\nmarkers =\n    needs_redis(version, feature): needs a newer Redis\n"
    )
    pytester.makeconftest(
        """
import pytest
from tests.conftest import skip_without_redis_feature  # noqa: F401

@pytest.fixture(scope="session")
def redis_version():
    return (6, 2, 14)
"""
    )
    pytester.makepyfile(
        """
import pytest

@pytest.mark.needs_redis((7, 0), "LMPOP")
def test_newer():
    raise AssertionError("ran on a Redis without LMPOP")

@pytest.mark.needs_redis((6, 2), "LMOVE")
def test_available():
    raise AssertionError("ran, as it must")
"""
    )
    result = pytester.runpytest("-ra")
    result.assert_outcomes(skipped=1, failed=1)
    result.stdout.fnmatch_lines(
        ["SKIPPED [[]1[]] *: LMPOP needs Redis 7.0 or later; this run's is 6.2.14"]
    )
