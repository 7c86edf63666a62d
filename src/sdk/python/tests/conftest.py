"""Fixtures: clients for the real rewind server named by ``REWIND_URL`` and
``REWIND_API_KEY`` (``tests/python_sdk.rs`` starts one and runs this suite;
without those variables every test is skipped, by name, with the reason)."""

from __future__ import annotations

import os
import uuid
from typing import AsyncIterator, Iterator, List

import pytest
import pytest_asyncio

from rewind_sdk import AsyncRewind, Rewind


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    if os.environ.get("REWIND_URL") and os.environ.get("REWIND_API_KEY"):
        return
    skip = pytest.mark.skip(reason="REWIND_URL / REWIND_API_KEY not set: no server to test against")
    for item in items:
        item.add_marker(skip)


@pytest.fixture
def name() -> str:
    """A sandbox name no other test uses."""
    return "sdk-" + uuid.uuid4().hex[:12]


@pytest.fixture
def client() -> Iterator[Rewind]:
    with Rewind() as client:
        yield client


@pytest_asyncio.fixture
async def aclient() -> AsyncIterator[AsyncRewind]:
    async with AsyncRewind() as client:
        yield client
