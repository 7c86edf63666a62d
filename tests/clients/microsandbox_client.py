"""Drives rewind's /api/v1/rpc with microsandbox's own Python SDK (PyPI
`microsandbox==0.1.8`, a release that speaks /api/v1/rpc).

Env: REWIND_URL, REWIND_API_KEY, SANDBOX. Exits non-zero on any failure.
"""
import asyncio
import os

from microsandbox import NodeSandbox, PythonSandbox


async def main():
    url = os.environ["REWIND_URL"]
    key = os.environ["REWIND_API_KEY"]
    name = os.environ["SANDBOX"]
    async with PythonSandbox.create(server_url=url, api_key=key, name=name) as sb:
        await sb.run("counter = 41")
        execution = await sb.run("counter += 1\nprint(counter)")
        assert await execution.output() == "42", await execution.output()
        assert not execution.has_error()

        failed = await sb.run("1/0")
        assert failed.has_error() and "ZeroDivisionError" in await failed.error()

        command = await sb.command.run("sh", ["-c", "echo hi; exit 4"])
        assert (command.exit_code, await command.output()) == (4, "hi"), command.exit_code

        metrics = await sb.metrics.is_running()
        assert metrics is True, metrics

    async with NodeSandbox.create(server_url=url, api_key=key, name=name + "-js") as js:
        await js.run("var a = 20")
        execution = await js.run("console.log(a + 1)")
        assert await execution.output() == "21", await execution.output()
    print("microsandbox SDK OK")


asyncio.run(main())
