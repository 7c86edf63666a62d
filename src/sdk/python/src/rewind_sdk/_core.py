"""What the sync and async clients share: settings, request bodies, answer
parsing and the server-sent-events decoder. No I/O here."""

from __future__ import annotations

import json
import os
from typing import IO, Any, Dict, Iterator, List, Mapping, Optional, Union
from urllib.parse import quote

import httpx

from ._errors import ConnectionFailed, RewindError, error_for
from ._models import Event, Result, Snapshot

DEFAULT_URL = "http://127.0.0.1:4000"
DEFAULT_TIMEOUT = 300.0
USER_AGENT = "rewind-sdk-python/0.1.0"

SnapshotRef = Union[str, Snapshot]


def settings(
    url: Optional[str], api_key: Optional[str]
) -> "tuple[str, Dict[str, str]]":
    """Base URL and headers: arguments first, then ``REWIND_URL`` /
    ``REWIND_API_KEY``, then ``http://127.0.0.1:4000`` and no key."""
    base = (url or os.environ.get("REWIND_URL") or DEFAULT_URL).rstrip("/")
    headers = {"user-agent": USER_AGENT}
    key = api_key if api_key is not None else os.environ.get("REWIND_API_KEY")
    if key:
        headers["x-api-key"] = key
    return base, headers


def vm_path(name: str, *rest: str) -> str:
    """``/vms/<name>/<rest...>`` with every segment escaped."""
    parts = [quote(name, safe="")] + [quote(r, safe="") for r in rest]
    return "/vms/" + "/".join(parts)


def snapshot_name(snapshot: SnapshotRef) -> str:
    return snapshot.name if isinstance(snapshot, Snapshot) else snapshot


def run_body(
    command: str,
    timeout: Optional[float],
    env: Optional[Mapping[str, str]],
    cwd: Optional[str],
    stdin: Optional[str],
) -> Dict[str, Any]:
    """The JSON body of ``POST /vms/:name/run`` (unset fields left out)."""
    body: Dict[str, Any] = {"command": command}
    if timeout is not None:
        body["timeout"] = timeout
    if env:
        body["env"] = dict(env)
    if cwd is not None:
        body["cwd"] = cwd
    if stdin is not None:
        body["stdin"] = stdin
    return body


CHUNK = 256 * 1024


def chunks(file: IO[bytes]) -> Iterator[bytes]:
    """A binary file in pieces, for a streamed (chunked) upload."""
    while True:
        piece = file.read(CHUNK)
        if not piece:
            return
        yield piece


def upload_content(data: Union[bytes, str, IO[bytes]]) -> Union[bytes, IO[bytes]]:
    """Bytes as they are, text as UTF-8, a file as it is (to be streamed)."""
    return data.encode() if isinstance(data, str) else data


def snapshot_of(body: Any) -> str:
    """The ``snapshot`` field of a file change's answer."""
    return str(body["snapshot"])


def file_params(path: str, mode: Optional[str]) -> Dict[str, str]:
    return {"path": path} if mode is None else {"path": path, "mode": mode}


def diff_params(from_: Optional[SnapshotRef], content: bool) -> Dict[str, str]:
    params = {"content": "true" if content else "false"}
    if from_ is not None:
        params["from"] = snapshot_name(from_)
    return params


def body_of(response: httpx.Response) -> Any:
    """The parsed JSON of an answer (its text when it is not JSON; None when empty)."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


def check(response: httpx.Response) -> httpx.Response:
    """The response when it is a 2xx; else raises the matching :class:`RewindError`.

    A streamed response must have been read first.
    """
    if response.is_success:
        return response
    raise error_for(response.status_code, body_of(response))


def connection_failed(base: str, error: httpx.TransportError) -> ConnectionFailed:
    return ConnectionFailed(0, f"cannot reach the rewind server at {base}: {error}")


class SseDecoder:
    """Turns the lines of a ``text/event-stream`` body into :class:`Event`\\ s.

    The server's events (see ``src/api/run_stream.rs``): ``stdout``/``stderr``
    with ``{"type", "data"}``, then exactly one ``exit`` with the run's
    fields, or one ``error`` with ``{"status", "error"}`` (raised here).
    """

    def __init__(self) -> None:
        self._data: List[str] = []

    def feed(self, line: str) -> Optional[Event]:
        """One line (without its newline); an event when ``line`` ends one."""
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # comment / keep-alive
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        return None

    def _dispatch(self) -> Optional[Event]:
        if not self._data:
            return None
        payload = json.loads("\n".join(self._data))
        self._data = []
        return event_from(payload)


def event_from(payload: Mapping[str, Any]) -> Event:
    """An :class:`Event` from one wire event; raises on an ``error`` event."""
    kind = payload.get("type")
    if kind in ("stdout", "stderr"):
        return Event(type=kind, data=payload.get("data", ""))
    if kind == "exit":
        return Event(type="exit", result=Result.from_json(payload))
    if kind == "error":
        raise error_for(int(payload.get("status", 500)), payload)
    raise RewindError(0, f"unexpected stream event {payload!r}")
