"""The asyncio client against the real service."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from rewind_sdk import AsyncRewind, AsyncSandbox, Conflict, NotFound


@pytest.mark.asyncio
async def test_async_run_restore_snapshots(aclient: AsyncRewind, name: str) -> None:
    async with await aclient.create(name) as sb:
        first = await sb.run("echo one > f.txt")
        second = await sb.run("echo two > f.txt; exit 5")
        await sb.restore(first.snapshot)
        back = await sb.run("cat f.txt")
        names = [s.name for s in await sb.snapshots()]

    assert (first.exit_code, second.exit_code) == (0, 5)
    assert back.stdout == "one\n"
    assert names[:3] == ["initial", first.snapshot, second.snapshot]
    assert name not in [s.name for s in await aclient.list()]


@pytest.mark.asyncio
async def test_async_stream_and_files(aclient: AsyncRewind, name: str, tmp_path: Path) -> None:
    data = os.urandom(1024 * 1024 + 3)
    (tmp_path / "up.bin").write_bytes(data)
    async with await aclient.create(name) as sb:
        events = [e async for e in sb.stream("echo a; echo b >&2; exit 2")]
        await sb.write("notes/x.txt", "text")
        await sb.upload(tmp_path / "up.bin", "notes/up.bin")
        size = await sb.download("notes/up.bin", tmp_path / "down.bin")
        listed = sorted(e.name for e in await sb.list("notes"))
        text = await sb.read_text("notes/x.txt")
        diff = await sb.diff((await sb.snapshots())[-1], from_="initial")

    assert [(e.type, e.data) for e in events[:-1]] in (
        [("stdout", "a\n"), ("stderr", "b\n")],
        [("stderr", "b\n"), ("stdout", "a\n")],
    )
    assert events[-1].result is not None and events[-1].result.exit_code == 2
    assert size == len(data) and (tmp_path / "down.bin").read_bytes() == data
    assert (listed, text) == (["up.bin", "x.txt"], "text")
    assert sorted(diff.paths("added")) == [
        "/workspace/notes",
        "/workspace/notes/up.bin",
        "/workspace/notes/x.txt",
    ]


@pytest.mark.asyncio
async def test_async_sandboxes_work_concurrently_and_errors_raise(
    aclient: AsyncRewind, name: str
) -> None:
    names = [f"{name}-{i}" for i in range(3)]
    boxes = await asyncio.gather(*(aclient.create(n) for n in names))
    try:
        results = await asyncio.gather(*(b.run(f"echo {b.name}") for b in boxes))
        with pytest.raises(Conflict):
            await aclient.create(names[0])
    finally:
        await asyncio.gather(*(b.delete() for b in boxes))
    with pytest.raises(NotFound) as gone:
        await aclient.sandbox(names[0])

    assert [r.stdout for r in results] == [n + "\n" for n in names]
    assert all(isinstance(b, AsyncSandbox) for b in boxes)
    assert gone.value.status == 404 and names[0] in gone.value.message
