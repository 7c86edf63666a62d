"""Drives rewind's /mcp with the official MCP Python SDK (`mcp` on PyPI).

Env: REWIND_URL, REWIND_API_KEY, SANDBOX. Exits non-zero on any failure.
"""
import asyncio
import json
import os

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

TOOLS = {
    "create_sandbox", "run_command", "run_code", "read_file", "write_file",
    "list_snapshots", "restore_snapshot", "diff", "delete_sandbox",
}


async def main():
    url = os.environ["REWIND_URL"] + "/mcp"
    headers = {"Authorization": "Bearer " + os.environ["REWIND_API_KEY"]}
    name = os.environ["SANDBOX"]
    async with streamablehttp_client(url, headers=headers) as (read, write, _):
        async with ClientSession(read, write) as session:
            info = await session.initialize()
            assert info.capabilities.tools is not None, info

            tools = {t.name for t in (await session.list_tools()).tools}
            assert TOOLS <= tools, tools
            prompts = {p.name for p in (await session.list_prompts()).prompts}
            assert {"create_python_sandbox", "create_node_sandbox"} <= prompts, prompts
            prompt = await session.get_prompt("create_python_sandbox", {"name": name})
            assert name in prompt.messages[0].content.text, prompt

            async def call(tool, **args):
                result = await session.call_tool(tool, args)
                assert not result.isError, (tool, result)
                return json.loads(result.content[0].text)

            await call("create_sandbox", sandbox=name)
            first = await call("run_command", sandbox=name, command="echo one > f.txt")
            second = await call("run_command", sandbox=name, command="echo two > f.txt && touch extra")
            assert first["snapshot"] != second["snapshot"], (first, second)
            assert (await call("read_file", sandbox=name, path="f.txt"))["content"] == "two\n"

            step = await call("diff", sandbox=name, snapshot=second["snapshot"], content=True)
            assert (step["from"], step["to"]) == (first["snapshot"], second["snapshot"]), step
            assert (step["added"], step["modified"], step["deleted"]) == (1, 1, 0), step
            changed = {c["path"]: c for c in step["changes"]}
            assert changed["/workspace/extra"]["change"] == "added", step
            assert "+two" in changed["/workspace/f.txt"]["diff"], step
            whole = await call("diff", sandbox=name, snapshot=second["snapshot"], **{"from": "initial"})
            assert sorted(c["path"] for c in whole["changes"]) == ["/workspace/extra", "/workspace/f.txt"], whole
            bad = await session.call_tool("diff", {"sandbox": name, "snapshot": "no-such-snapshot"})
            assert bad.isError and "no-such-snapshot" in bad.content[0].text, bad

            await call("restore_snapshot", sandbox=name, snapshot=first["snapshot"])
            back = await call("run_command", sandbox=name, command="cat f.txt; ls")
            assert back["stdout"] == "one\nf.txt\n", back

            written = await call("write_file", sandbox=name, path="notes/a.txt", content="hi")
            assert written["snapshot"].startswith("cmd_"), written
            await call("run_code", sandbox=name, language="python", code="x = 21")
            code = await call("run_code", sandbox=name, language="python", code="x * 2")
            assert code["stdout"] == "42\n", code

            snapshots = [s["name"] for s in await call("list_snapshots", sandbox=name)]
            assert snapshots[0] == "initial" and first["snapshot"] in snapshots, snapshots

            failed = await session.call_tool("run_command", {"sandbox": "no-such-sandbox", "command": "true"})
            assert failed.isError, failed

            await call("delete_sandbox", sandbox=name)
    print("MCP SDK OK")


asyncio.run(main())
