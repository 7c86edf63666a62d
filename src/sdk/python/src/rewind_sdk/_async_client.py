"""The asyncio client: :class:`AsyncRewind` and its :class:`AsyncSandbox`.

Same methods as the blocking client, as coroutines; ``stream`` is an async
iterator and both classes are async context managers.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import IO, Any, AsyncGenerator, AsyncIterator, Dict, List, Mapping, Optional, Union

import httpx

from . import _core
from ._core import SnapshotRef, snapshot_name, vm_path
from ._models import Diff, Event, FileEntry, ReplResult, Result, SandboxInfo, Snapshot

__all__ = ["AsyncRewind", "AsyncSandbox"]


class AsyncRewind:
    """An asyncio connection to one rewind server (see :class:`~rewind_sdk.Rewind`).

    ::

        async with AsyncRewind(url, key) as client:
            async with await client.create("demo") as sandbox:
                result = await sandbox.run("echo hi")
    """

    def __init__(
        self,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        timeout: Optional[float] = _core.DEFAULT_TIMEOUT,
    ) -> None:
        self.url, headers = _core.settings(url, api_key)
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> "AsyncRewind":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections (sandboxes are left as they are)."""
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return _core.check(await self._http.request(method, path, **kwargs))
        except httpx.TransportError as e:
            raise _core.connection_failed(self.url, e) from e

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return _core.body_of(await self._send(method, path, **kwargs))

    async def create(self, name: str, *, disk_mb: Optional[int] = None) -> "AsyncSandbox":
        """Create sandbox ``name`` (its first snapshot is ``initial``)."""
        body: Dict[str, Any] = {"name": name}
        if disk_mb is not None:
            body["disk_mb"] = disk_mb
        info = SandboxInfo.from_json(await self._json("POST", "/vms", json=body))
        return AsyncSandbox(self, info.name)

    async def sandbox(self, name: str) -> "AsyncSandbox":
        """The existing sandbox ``name`` (checked: raises NotFound if absent)."""
        await self._json("GET", vm_path(name))
        return AsyncSandbox(self, name)

    async def list(self) -> List[SandboxInfo]:
        """The caller's sandboxes."""
        body = await self._json("GET", "/vms")
        return [SandboxInfo.from_json(v) for v in body["vms"]]


async def _achunks(file: IO[bytes]) -> AsyncIterator[bytes]:
    """A binary file in pieces, read off the event loop."""
    while True:
        piece = await asyncio.to_thread(file.read, _core.CHUNK)
        if not piece:
            return
        yield piece


class AsyncSandbox:
    """One sandbox (see :class:`~rewind_sdk.Sandbox`); ``async with`` deletes it on exit."""

    def __init__(self, client: AsyncRewind, name: str) -> None:
        self.client = client
        self.name = name

    def __repr__(self) -> str:
        return f"AsyncSandbox({self.name!r})"

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.delete()

    def _path(self, *rest: str) -> str:
        return vm_path(self.name, *rest)

    async def info(self) -> SandboxInfo:
        """Status and metadata."""
        return SandboxInfo.from_json(await self.client._json("GET", self._path()))

    async def delete(self) -> None:
        """Delete the sandbox and all its snapshots."""
        await self.client._send("DELETE", self._path())

    async def run(
        self,
        command: str,
        *,
        timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Optional[str] = None,
    ) -> Result:
        """Run ``command`` with ``/bin/sh -c``; a non-zero exit is not an exception."""
        body = _core.run_body(command, timeout, env, cwd, stdin)
        return Result.from_json(await self.client._json("POST", self._path("run"), json=body))

    async def stream(
        self,
        command: str,
        *,
        timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Optional[str] = None,
    ) -> AsyncGenerator[Event, None]:
        """Run ``command``; ``async for`` over its events as they come (see
        :meth:`rewind_sdk.Sandbox.stream`)."""
        body = _core.run_body(command, timeout, env, cwd, stdin)
        headers = {"accept": "text/event-stream"}
        http = self.client._http
        no_read_limit = httpx.Timeout(http.timeout.connect, read=None)
        try:
            async with http.stream(
                "POST", self._path("run"), json=body, headers=headers, timeout=no_read_limit
            ) as response:
                if not response.is_success:
                    await response.aread()
                    _core.check(response)
                decoder = _core.SseDecoder()
                async for line in response.aiter_lines():
                    event = decoder.feed(line)
                    if event is not None:
                        yield event
        except httpx.TransportError as e:
            raise _core.connection_failed(self.client.url, e) from e

    async def repl(
        self, code: str, *, language: str = "python", timeout: Optional[float] = None
    ) -> ReplResult:
        """Run ``code`` in the sandbox's long-lived interpreter (state persists)."""
        body: Dict[str, Any] = {"language": language, "code": code}
        if timeout is not None:
            body["timeout"] = timeout
        return ReplResult.from_json(await self.client._json("POST", self._path("repl"), json=body))

    async def snapshots(self) -> List[Snapshot]:
        """All snapshots, oldest first."""
        body = await self.client._json("GET", self._path("snapshots"))
        return [Snapshot.from_json(s) for s in body["snapshots"]]

    async def snapshot(self, name: str, *, description: Optional[str] = None) -> Snapshot:
        """Take a named snapshot of the workspace now."""
        body: Dict[str, Any] = {"name": name}
        if description is not None:
            body["description"] = description
        created = await self.client._json("POST", self._path("snapshots"), json=body)
        return Snapshot.from_json(created)

    async def restore(self, snapshot: SnapshotRef) -> None:
        """Put the workspace back as it was at ``snapshot``."""
        path = self._path("snapshots", snapshot_name(snapshot), "restore")
        await self.client._send("POST", path)

    async def fork(self, snapshot: SnapshotRef, name: str) -> "AsyncSandbox":
        """A new sandbox ``name`` whose workspace starts as ``snapshot``."""
        path = self._path("snapshots", snapshot_name(snapshot), "fork")
        await self.client._send("POST", path, json={"name": name})
        return AsyncSandbox(self.client, name)

    async def diff(
        self, snapshot: SnapshotRef, *, from_: Optional[SnapshotRef] = None, content: bool = False
    ) -> Diff:
        """What changed up to ``snapshot`` (since ``from_`` or the snapshot before it)."""
        path = self._path("snapshots", snapshot_name(snapshot), "diff")
        params = _core.diff_params(from_, content)
        return Diff.from_json(await self.client._json("GET", path, params=params))

    async def read(self, path: str) -> bytes:
        """The bytes of file ``path``."""
        response = await self.client._send("GET", self._path("files"), params={"path": path})
        return response.content

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """File ``path`` decoded as text."""
        return (await self.read(path)).decode(encoding)

    async def write(
        self, path: str, data: Union[bytes, str, IO[bytes]], *, mode: Optional[str] = None
    ) -> str:
        """Write ``data`` to ``path`` (parents are created); returns the snapshot."""
        data = _core.upload_content(data)
        content = data if isinstance(data, bytes) else _achunks(data)
        params = _core.file_params(path, mode)
        written = await self.client._json("PUT", self._path("files"), params=params, content=content)
        return _core.snapshot_of(written)

    async def list(self, path: str = "/workspace", *, recursive: bool = False) -> List[FileEntry]:
        """The entries of directory ``path``."""
        params = {"path": path, "recursive": "true" if recursive else "false"}
        body = await self.client._json("GET", self._path("files", "list"), params=params)
        return [FileEntry.from_json(f) for f in body["files"]]

    async def remove(self, path: str, *, recursive: bool = False) -> str:
        """Delete ``path``; returns the snapshot taken after it."""
        params = {"path": path, "recursive": "true" if recursive else "false"}
        removed = await self.client._json("DELETE", self._path("files"), params=params)
        return _core.snapshot_of(removed)

    async def upload(
        self, local: Union[str, "os.PathLike[str]"], path: str, *, mode: Optional[str] = None
    ) -> str:
        """Stream local file ``local`` to ``path``; returns the snapshot."""
        with open(local, "rb") as f:
            return await self.write(path, f, mode=mode)

    async def download(self, path: str, local: Union[str, "os.PathLike[str]"]) -> int:
        """Stream file ``path`` into local file ``local``; returns its size."""
        http = self.client._http
        try:
            async with http.stream("GET", self._path("files"), params={"path": path}) as response:
                if not response.is_success:
                    await response.aread()
                    _core.check(response)
                size = 0
                with open(Path(local), "wb") as out:
                    async for chunk in response.aiter_bytes():
                        size += out.write(chunk)
                return size
        except httpx.TransportError as e:
            raise _core.connection_failed(self.client.url, e) from e
