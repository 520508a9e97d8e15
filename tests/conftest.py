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


# Backend parameters of the storage contracts, and the marker each one's tests get.
_SERVICE_MARKERS = {"postgresql": "postgres", "mysql": "mysql"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a service, so `pytest -m postgres` (or `-m "not mysql"`)
    selects all of them: those using the `postgres_url` fixture, the storage contracts'
    `postgresql`/`mysql` backend parameters, and the browser tests."""
    for item in items:
        marks = set()
        if "postgres_url" in getattr(item, "fixturenames", ()):
            marks.add("postgres")
        params = getattr(getattr(item, "callspec", None), "params", {})
        marks.update(_SERVICE_MARKERS[v] for v in params.values()
                     if isinstance(v, str) and v in _SERVICE_MARKERS)
        if item.path.name == "test_browser.py":
            marks.add("browser")
        for m in sorted(marks - {mk.name for mk in item.iter_markers()}):
            item.add_marker(getattr(pytest.mark, m))


@pytest.fixture
def mysql_url() -> str:
    """CSEARCH_TEST_MYSQL_URL, or a skip that says what is missing."""
    url = os.environ.get("CSEARCH_TEST_MYSQL_URL")
    if not url:
        missing_service("MySQL/MariaDB (set CSEARCH_TEST_MYSQL_URL, e.g. "
                        "mysql://root@127.0.0.1:3306/test)")
    return url  # type: ignore[return-value]


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get("CSEARCH_TEST_POSTGRES_URL")
    if not url:
        missing_service("PostgreSQL (set CSEARCH_TEST_POSTGRES_URL, e.g. "
                        "postgresql://postgres@127.0.0.1:5432/test)")
    return url  # type: ignore[return-value]


@pytest.fixture
def study_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def digits():
    """The digits workload, built once for the whole test session."""
    from objectives import load_workload

    return load_workload("digits-cnn")
