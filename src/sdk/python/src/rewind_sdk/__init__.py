"""Python client for rewind, the snapshot-first sandbox service.

Every command run in a rewind sandbox leaves a Btrfs snapshot of its
workspace; :meth:`Sandbox.restore` puts the workspace back to any of them.

>>> from rewind_sdk import Rewind
>>> with Rewind("http://127.0.0.1:4000", "ws_...") as client:     # doctest: +SKIP
...     with client.create("demo") as sandbox:
...         good = sandbox.run("echo one > f")
...         sandbox.run("rm f")
...         sandbox.restore(good.snapshot)
...         assert sandbox.read_text("f") == "one\\n"
"""

from ._async_client import AsyncRewind, AsyncSandbox
from ._client import Rewind, Sandbox
from ._errors import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RewindError,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
)
from ._models import Change, Diff, Event, FileEntry, ReplResult, Result, SandboxInfo, Snapshot

__version__ = "0.1.0"

__all__ = [
    "Rewind",
    "Sandbox",
    "AsyncRewind",
    "AsyncSandbox",
    "Result",
    "ReplResult",
    "Event",
    "SandboxInfo",
    "Snapshot",
    "FileEntry",
    "Change",
    "Diff",
    "RewindError",
    "ConnectionFailed",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "RateLimited",
    "ServerError",
    "ServiceUnavailable",
]
