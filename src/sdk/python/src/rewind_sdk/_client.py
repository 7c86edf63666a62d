"""The blocking client: :class:`Rewind` and its :class:`Sandbox`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any, Dict, Generator, List, Mapping, Optional, Union

import httpx

from . import _core
from ._core import SnapshotRef, snapshot_name, vm_path
from ._models import Diff, Event, FileEntry, ReplResult, Result, SandboxInfo, Snapshot

__all__ = ["Rewind", "Sandbox"]


class Rewind:
    """A connection to one rewind server.

    Args:
        url: the server, e.g. ``http://127.0.0.1:4000`` (default: ``REWIND_URL``).
        api_key: an API key (default: ``REWIND_API_KEY``).
        timeout: seconds to wait for any one answer (``None``: no limit). A
            run waits for its command, so keep this above your runs' timeouts.

    Use it as a context manager, or call :meth:`close`, to free its
    connections::

        with Rewind("http://127.0.0.1:4000", "ws_...") as client:
            with client.create("demo") as sandbox:
                print(sandbox.run("echo hi").stdout)
    """

    def __init__(
        self,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        timeout: Optional[float] = _core.DEFAULT_TIMEOUT,
    ) -> None:
        self.url, headers = _core.settings(url, api_key)
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> "Rewind":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections (sandboxes are left as they are)."""
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return _core.check(self._http.request(method, path, **kwargs))
        except httpx.TransportError as e:
            raise _core.connection_failed(self.url, e) from e

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return _core.body_of(self._send(method, path, **kwargs))

    def create(self, name: str, *, disk_mb: Optional[int] = None) -> "Sandbox":
        """Create sandbox ``name`` (its first snapshot is ``initial``).

        Raises :class:`~rewind_sdk.Conflict` when the name is taken and
        :class:`~rewind_sdk.BadRequest` when it is not a valid name.
        """
        body: Dict[str, Any] = {"name": name}
        if disk_mb is not None:
            body["disk_mb"] = disk_mb
        info = SandboxInfo.from_json(self._json("POST", "/vms", json=body))
        return Sandbox(self, info.name)

    def sandbox(self, name: str) -> "Sandbox":
        """The existing sandbox ``name`` (checked: raises NotFound if absent)."""
        self._json("GET", vm_path(name))
        return Sandbox(self, name)

    def list(self) -> List[SandboxInfo]:
        """The caller's sandboxes."""
        return [SandboxInfo.from_json(v) for v in self._json("GET", "/vms")["vms"]]


class Sandbox:
    """One sandbox. Every command and file change leaves a snapshot.

    As a context manager it deletes the sandbox on exit (even on an error).
    """

    def __init__(self, client: Rewind, name: str) -> None:
        self.client = client
        self.name = name

    def __repr__(self) -> str:
        return f"Sandbox({self.name!r})"

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def _path(self, *rest: str) -> str:
        return vm_path(self.name, *rest)

    def info(self) -> SandboxInfo:
        """Status and metadata."""
        return SandboxInfo.from_json(self.client._json("GET", self._path()))

    def delete(self) -> None:
        """Delete the sandbox and all its snapshots."""
        self.client._send("DELETE", self._path())

    def run(
        self,
        command: str,
        *,
        timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Optional[str] = None,
    ) -> Result:
        """Run ``command`` with ``/bin/sh -c`` (in ``/workspace`` unless ``cwd``).

        A non-zero exit is not an exception: check ``result.exit_code``.
        """
        body = _core.run_body(command, timeout, env, cwd, stdin)
        return Result.from_json(self.client._json("POST", self._path("run"), json=body))

    def stream(
        self,
        command: str,
        *,
        timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Optional[str] = None,
    ) -> Generator[Event, None, None]:
        """Run ``command`` and yield its output as it is written.

        Yields ``stdout``/``stderr`` events, then one ``exit`` event whose
        ``result`` has the exit code and snapshot. Leaving the loop early
        (or calling ``close()`` on the generator) closes the connection,
        which kills the command; its snapshot is still taken (exit code 137).
        """
        body = _core.run_body(command, timeout, env, cwd, stdin)
        headers = {"accept": "text/event-stream"}
        no_read_limit = httpx.Timeout(self.client._http.timeout.connect, read=None)
        http = self.client._http
        try:
            with http.stream(
                "POST", self._path("run"), json=body, headers=headers, timeout=no_read_limit
            ) as response:
                if not response.is_success:
                    response.read()
                    _core.check(response)
                decoder = _core.SseDecoder()
                for line in response.iter_lines():
                    event = decoder.feed(line)
                    if event is not None:
                        yield event
        except httpx.TransportError as e:
            raise _core.connection_failed(self.client.url, e) from e

    def repl(self, code: str, *, language: str = "python", timeout: Optional[float] = None) -> ReplResult:
        """Run ``code`` in the sandbox's long-lived interpreter (state persists)."""
        body: Dict[str, Any] = {"language": language, "code": code}
        if timeout is not None:
            body["timeout"] = timeout
        return ReplResult.from_json(self.client._json("POST", self._path("repl"), json=body))

    def snapshots(self) -> List[Snapshot]:
        """All snapshots, oldest first."""
        body = self.client._json("GET", self._path("snapshots"))
        return [Snapshot.from_json(s) for s in body["snapshots"]]

    def snapshot(self, name: str, *, description: Optional[str] = None) -> Snapshot:
        """Take a named snapshot of the workspace now."""
        body: Dict[str, Any] = {"name": name}
        if description is not None:
            body["description"] = description
        return Snapshot.from_json(self.client._json("POST", self._path("snapshots"), json=body))

    def restore(self, snapshot: SnapshotRef) -> None:
        """Put the workspace back as it was at ``snapshot`` (a name or a
        :class:`Snapshot`). Later snapshots stay; REPL memory is not restored."""
        self.client._send("POST", self._path("snapshots", snapshot_name(snapshot), "restore"))

    def fork(self, snapshot: SnapshotRef, name: str) -> "Sandbox":
        """A new sandbox ``name`` whose workspace starts as ``snapshot``."""
        path = self._path("snapshots", snapshot_name(snapshot), "fork")
        self.client._send("POST", path, json={"name": name})
        return Sandbox(self.client, name)

    def diff(
        self, snapshot: SnapshotRef, *, from_: Optional[SnapshotRef] = None, content: bool = False
    ) -> Diff:
        """What changed up to ``snapshot``: since ``from_``, or since the
        snapshot just before it. ``content`` adds unified diffs of small text files."""
        path = self._path("snapshots", snapshot_name(snapshot), "diff")
        params = _core.diff_params(from_, content)
        return Diff.from_json(self.client._json("GET", path, params=params))

    def read(self, path: str) -> bytes:
        """The bytes of file ``path`` (relative paths are in ``/workspace``)."""
        return self.client._send("GET", self._path("files"), params={"path": path}).content

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """File ``path`` decoded as text."""
        return self.read(path).decode(encoding)

    def write(self, path: str, data: Union[bytes, str, IO[bytes]], *, mode: Optional[str] = None) -> str:
        """Write ``data`` to ``path`` (parents are created); ``mode`` like ``"0755"``.

        Returns the snapshot taken after the write.
        """
        data = _core.upload_content(data)
        content = data if isinstance(data, bytes) else _core.chunks(data)
        params = _core.file_params(path, mode)
        written = self.client._json("PUT", self._path("files"), params=params, content=content)
        return _core.snapshot_of(written)

    def list(self, path: str = "/workspace", *, recursive: bool = False) -> List[FileEntry]:
        """The entries of directory ``path``."""
        params = {"path": path, "recursive": "true" if recursive else "false"}
        body = self.client._json("GET", self._path("files", "list"), params=params)
        return [FileEntry.from_json(f) for f in body["files"]]

    def remove(self, path: str, *, recursive: bool = False) -> str:
        """Delete ``path``; returns the snapshot taken after it."""
        params = {"path": path, "recursive": "true" if recursive else "false"}
        return _core.snapshot_of(self.client._json("DELETE", self._path("files"), params=params))

    def upload(self, local: Union[str, "os.PathLike[str]"], path: str, *, mode: Optional[str] = None) -> str:
        """Stream local file ``local`` to ``path``; returns the snapshot."""
        with open(local, "rb") as f:
            return self.write(path, f, mode=mode)

    def download(self, path: str, local: Union[str, "os.PathLike[str]"]) -> int:
        """Stream file ``path`` into local file ``local``; returns its size."""
        http = self.client._http
        try:
            with http.stream("GET", self._path("files"), params={"path": path}) as response:
                if not response.is_success:
                    response.read()
                    _core.check(response)
                size = 0
                with open(Path(local), "wb") as out:
                    for chunk in response.iter_bytes():
                        size += out.write(chunk)
                return size
        except httpx.TransportError as e:
            raise _core.connection_failed(self.client.url, e) from e
