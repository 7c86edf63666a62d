"""Typed views of the server's answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Mapping, Optional

__all__ = [
    "Result",
    "ReplResult",
    "Event",
    "SandboxInfo",
    "Snapshot",
    "FileEntry",
    "Change",
    "Diff",
]


@dataclass(frozen=True)
class Result:
    """What a command did, and the snapshot taken right after it.

    ``snapshot`` is the name to pass to :meth:`Sandbox.restore` to come back to
    the workspace exactly as this command left it.
    """

    stdout: str
    stderr: str
    exit_code: int
    snapshot: str
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    exec_ms: int = 0
    snapshot_ms: int = 0

    @property
    def ok(self) -> bool:
        """True when the command exited 0 and did not time out."""
        return self.exit_code == 0 and not self.timed_out

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "Result":
        return cls(
            stdout=body.get("stdout", ""),
            stderr=body.get("stderr", ""),
            exit_code=int(body["exitCode"]),
            snapshot=body["snapshot"],
            timed_out=bool(body.get("timedOut", False)),
            stdout_truncated=bool(body.get("stdoutTruncated", False)),
            stderr_truncated=bool(body.get("stderrTruncated", False)),
            exec_ms=int(body.get("execMs", 0)),
            snapshot_ms=int(body.get("snapshotMs", 0)),
        )


@dataclass(frozen=True)
class ReplResult:
    """What a REPL cell printed; ``has_error`` when it raised or timed out."""

    stdout: str
    stderr: str
    has_error: bool
    timed_out: bool
    snapshot: str

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "ReplResult":
        return cls(
            stdout=body.get("stdout", ""),
            stderr=body.get("stderr", ""),
            has_error=bool(body.get("hasError", False)),
            timed_out=bool(body.get("timedOut", False)),
            snapshot=body.get("snapshot", ""),
        )


@dataclass(frozen=True)
class Event:
    """One event of a streamed run.

    ``type`` is ``"stdout"`` or ``"stderr"`` (``data`` holds the text, as the
    command wrote it) or ``"exit"``, always last, whose ``result`` carries the
    exit code and snapshot (its ``stdout``/``stderr`` are empty: the output
    came in the events before it).
    """

    type: Literal["stdout", "stderr", "exit"]
    data: str = ""
    result: Optional[Result] = None


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the server lists it."""

    name: str
    status: str
    created_at: str
    runtime: Optional[str] = None
    status_reason: Optional[str] = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "SandboxInfo":
        return cls(
            name=body["name"],
            status=body["status"],
            created_at=body.get("created_at", ""),
            runtime=body.get("runtime"),
            status_reason=body.get("status_reason"),
        )


@dataclass(frozen=True)
class Snapshot:
    """One snapshot of a sandbox's workspace.

    ``kind`` is ``initial``, ``command`` (taken after a run or file change) or
    ``named`` (taken on request); ``command`` and ``exit_code`` describe the
    step that made it.
    """

    name: str
    kind: str
    created_at: str
    command: Optional[str] = None
    exit_code: Optional[int] = None
    description: Optional[str] = None
    pinned: bool = False

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "Snapshot":
        return cls(
            name=body.get("snapshot_name") or body["name"],
            kind=body.get("kind", "named"),
            created_at=body.get("created_at", ""),
            command=body.get("command"),
            exit_code=body.get("exit_code"),
            description=body.get("description"),
            pinned=bool(body.get("pinned", False)),
        )


@dataclass(frozen=True)
class FileEntry:
    """One entry of a directory listing."""

    name: str
    path: str
    size_bytes: int
    is_directory: bool
    permissions: str
    modified_at: str
    type: str
    symlink_target: Optional[str] = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "FileEntry":
        return cls(
            name=body["name"],
            path=body["path"],
            size_bytes=int(body["size_bytes"]),
            is_directory=bool(body["is_directory"]),
            permissions=body["permissions"],
            modified_at=body["modified_at"],
            type=body["type"],
            symlink_target=body.get("symlink_target"),
        )


@dataclass(frozen=True)
class Change:
    """One path that differs between two snapshots."""

    path: str
    change: Literal["added", "modified", "deleted"]
    type: str
    size_before: Optional[int] = None
    size_after: Optional[int] = None
    diff: Optional[str] = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "Change":
        return cls(
            path=body["path"],
            change=body["change"],
            type=body["type"],
            size_before=body.get("size_before"),
            size_after=body.get("size_after"),
            diff=body.get("diff"),
        )


@dataclass(frozen=True)
class Diff:
    """The changes from snapshot ``from_`` to snapshot ``to``."""

    from_: str
    to: str
    added: int
    modified: int
    deleted: int
    changes: List[Change] = field(default_factory=list)

    def paths(self, change: Optional[str] = None) -> List[str]:
        """The changed paths (only those ``added``/``modified``/``deleted`` if given)."""
        return [c.path for c in self.changes if change is None or c.change == change]

    @classmethod
    def from_json(cls, body: Dict[str, Any]) -> "Diff":
        return cls(
            from_=body["from"],
            to=body["to"],
            added=int(body["added"]),
            modified=int(body["modified"]),
            deleted=int(body["deleted"]),
            changes=[Change.from_json(c) for c in body.get("changes", [])],
        )
