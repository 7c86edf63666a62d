"""The blocking client against the real service."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rewind_sdk import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    NotFound,
    Rewind,
    RewindError,
    Sandbox,
    Snapshot,
)


def test_run_restore_snapshots(client: Rewind, name: str) -> None:
    with client.create(name) as sb:
        first = sb.run("echo one > f.txt")
        second = sb.run("echo two > f.txt; echo err >&2; exit 3")
        sb.restore(first.snapshot)
        back = sb.run("cat f.txt")
        snaps = sb.snapshots()

    assert (first.exit_code, first.ok, first.stdout) == (0, True, "")
    assert (second.exit_code, second.stderr, second.ok) == (3, "err\n", False)
    assert first.snapshot != second.snapshot
    assert back.stdout == "one\n"
    names = [s.name for s in snaps]
    assert names[0] == "initial"
    assert [first.snapshot, second.snapshot, back.snapshot] == names[1:4]
    assert snaps[2].exit_code == 3 and snaps[2].command is not None


def test_run_env_cwd_stdin_and_timeout(client: Rewind, name: str) -> None:
    with client.create(name) as sb:
        sb.run("mkdir sub")
        env = sb.run('echo "$GREETING"; pwd', env={"GREETING": "hi"}, cwd="/workspace/sub")
        fed = sb.run("cat", stdin="from stdin")
        slow = sb.run("sleep 30", timeout=1)

    assert env.stdout == "hi\n/workspace/sub\n"
    assert fed.stdout == "from stdin"
    assert slow.timed_out and not slow.ok


def test_context_manager_deletes_even_on_error(client: Rewind, name: str) -> None:
    with pytest.raises(ZeroDivisionError):
        with client.create(name) as sb:
            sb.run("true")
            1 / 0

    assert name not in [s.name for s in client.list()]
    with pytest.raises(NotFound):
        client.sandbox(name)


def test_named_snapshot_fork_and_diff(client: Rewind, name: str) -> None:
    fork_name = name + "-fork"
    with client.create(name) as sb:
        sb.run("echo a > keep.txt; echo b > gone.txt")
        named = sb.snapshot("before", description="two files")
        after = sb.run("rm gone.txt; echo changed > keep.txt; echo new > added.txt")
        diff = sb.diff(after.snapshot, content=True)
        since_initial = sb.diff(after.snapshot, from_="initial")
        with sb.fork(named, fork_name) as fork:
            forked = fork.run("cat keep.txt gone.txt")

    assert isinstance(named, Snapshot) and named.name == "before"
    assert (diff.from_, diff.to) == ("before", after.snapshot)
    assert (diff.added, diff.modified, diff.deleted) == (1, 1, 1)
    assert diff.paths("added") == ["/workspace/added.txt"]
    assert diff.paths("deleted") == ["/workspace/gone.txt"]
    modified = [c for c in diff.changes if c.change == "modified"][0]
    assert modified.diff is not None and "+changed" in modified.diff
    assert sorted(since_initial.paths()) == ["/workspace/added.txt", "/workspace/keep.txt"]
    assert forked.stdout == "a\nb\n"


def test_files_write_read_list_remove(client: Rewind, name: str) -> None:
    with client.create(name) as sb:
        snap = sb.write("dir/hello.txt", "hello\n")
        sb.write("dir/tool.sh", b"#!/bin/sh\necho tool\n", mode="0755")
        text = sb.read_text("dir/hello.txt")
        entries = sb.list("dir")
        ran = sb.run("./dir/tool.sh")
        removed = sb.remove("dir", recursive=True)
        gone = sb.run("ls")
        with pytest.raises(NotFound) as missing:
            sb.read("dir/hello.txt")
        snaps = [s.name for s in sb.snapshots()]

    assert snap in snaps and removed in snaps and removed != snap
    assert text == "hello\n"
    assert sorted((e.name, e.permissions) for e in entries) == [
        ("hello.txt", "0644"),
        ("tool.sh", "0755"),
    ]
    assert ran.stdout == "tool\n"
    assert gone.stdout == ""
    assert missing.value.status == 404 and "dir/hello.txt" in missing.value.message


def test_upload_and_download_stream_a_binary_file(client: Rewind, name: str, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    local = tmp_path / "blob.bin"
    local.write_bytes(data)
    back = tmp_path / "back.bin"
    with client.create(name) as sb:
        snap = sb.upload(local, "blob.bin")
        size = sb.download("blob.bin", back)
        listed = sb.list()
        snaps = [s.name for s in sb.snapshots()]

    assert snap == snaps[-1]
    assert size == len(data) and back.read_bytes() == data
    assert [(e.name, e.size_bytes) for e in listed] == [("blob.bin", len(data))]


def test_stream_yields_output_then_exit(client: Rewind, name: str) -> None:
    with client.create(name) as sb:
        events = list(sb.stream("echo out; echo err >&2; echo more; exit 4"))
        snaps = [s.name for s in sb.snapshots()]

    assert events[-1].type == "exit"
    result = events[-1].result
    assert result is not None and result.exit_code == 4 and result.snapshot in snaps
    out = "".join(e.data for e in events if e.type == "stdout")
    err = "".join(e.data for e in events if e.type == "stderr")
    assert (out, err) == ("out\nmore\n", "err\n")
    assert [e.type for e in events].count("exit") == 1


def test_stream_gives_output_before_the_end_and_leaving_kills(client: Rewind, name: str) -> None:
    command = "echo started; sleep 30; touch finished"
    with client.create(name) as sb:
        stream = sb.stream(command)
        first = next(stream)
        stream.close()  # leave early: the server kills the command
        # The next run queues on the sandbox's lock, so it sees the aftermath.
        after = sb.run("ls finished")
        abandoned = [s for s in sb.snapshots() if s.command == command]

    assert (first.type, first.data) == ("stdout", "started\n")
    assert after.exit_code != 0, after
    assert [s.exit_code for s in abandoned] == [137]


def test_errors_carry_status_and_message(client: Rewind, name: str) -> None:
    with pytest.raises(BadRequest) as bad:
        client.create("no spaces allowed")
    with pytest.raises(NotFound) as missing:
        client.sandbox("no-such-sandbox")
    with client.create(name) as sb:
        with pytest.raises(Conflict) as taken:
            client.create(name)
        with pytest.raises(NotFound) as no_snapshot:
            sb.restore("cmd_999999")
        with pytest.raises(BadRequest) as bad_path:
            sb.read("")
        with pytest.raises(BadRequest) as bad_stream:
            next(sb.stream(""))
        untouched = len(sb.snapshots())
    with pytest.raises(NotFound) as stream_missing:
        list(Sandbox(client, "no-such-sandbox").stream("true"))
    with Rewind(api_key="ws_not_a_key") as wrong:
        with pytest.raises(Forbidden) as forbidden:
            wrong.list()
    with Rewind("http://127.0.0.1:9", "x") as nowhere:
        with pytest.raises(ConnectionFailed) as unreachable:
            nowhere.list()

    assert (bad.value.status, "name" in bad.value.message) == (400, True)
    assert missing.value.status == 404 and "no-such-sandbox" in missing.value.message
    assert taken.value.status == 409
    assert no_snapshot.value.status == 404
    assert bad_path.value.status == 400 and "path" in bad_path.value.message
    assert bad_stream.value.status == 400 and "command" in bad_stream.value.message
    assert untouched == 1  # refused requests left no snapshot
    assert stream_missing.value.status == 404
    assert forbidden.value.status == 403
    assert unreachable.value.status == 0 and "127.0.0.1:9" in str(unreachable.value)
    assert all(isinstance(e.value, RewindError) for e in (bad, missing, taken, forbidden))


@pytest.mark.skipif(
    not os.environ.get("REWIND_SANDBOX_HAS_PYTHON"),
    reason="the sandbox image has no python3 (busybox rootfs): REPL not testable",
)
def test_repl_keeps_state(client: Rewind, name: str) -> None:
    with client.create(name) as sb:
        sb.repl("x = 20")
        out = sb.repl("x + 22")
        boom = sb.repl("1/0")

    assert out.stdout == "42\n" and not out.has_error
    assert boom.has_error and "ZeroDivisionError" in boom.stderr
