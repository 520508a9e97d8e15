"""Shared fixtures. Tests that need a service skip without it, except under .ci/run,
which sets CSEARCH_REQUIRE_SERVICES so that a missing service fails the run."""

from __future__ import annotations

import os
import uuid

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _require() -> bool:
    return bool(os.environ.get("CSEARCH_REQUIRE_SERVICES"))


def missing_service(what: str) -> None:
    """Skip (or, under CI, fail) a test whose service is absent."""
    if _require():
        pytest.fail(f"{what} is required under .ci/run but not available")
    pytest.skip(f"{what} not available")


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get("CSEARCH_TEST_POSTGRES_URL")
    if not url:
        missing_service("PostgreSQL (CSEARCH_TEST_POSTGRES_URL)")
    return url  # type: ignore[return-value]


@pytest.fixture
def study_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def digits():
    """The digits workload, built once for the whole test session."""
    from objectives import load_workload

    return load_workload("digits-cnn")
