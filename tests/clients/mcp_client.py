"""An MCP client for keyzero's tests: the official Python SDK (`mcp`) over stdio.

Usage: python mcp_client.py PLAN.json

PLAN: {"command": "...", "args": [...], "env": {...}, "calls": [{"tool": ..., "arguments": {...}}]}
for stdio: the server is started by the SDK with only PLAN's `env` over the SDK's safe defaults
(an MCP client does not pass its own environment on). Or {"url": "...", "headers": {...}, "calls":
[...]} for Streamable HTTP: the headers (the bearer token) go with every request. Prints one JSON object: the server's name and
version, the negotiated protocol, the tools with their input schemas, and one result per call
(`is_error`, the text content, the structured content).
"""

import asyncio
import json
import sys

import contextlib

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main(plan_path: str) -> None:
    with open(plan_path, encoding="utf-8") as f:
        plan = json.load(f)
    out = {"client": "python-mcp", "results": []}
    async with contextlib.AsyncExitStack() as stack:
        if "url" in plan:
            http = await stack.enter_async_context(
                create_mcp_http_client(headers=plan.get("headers") or {})
            )
            streams = await stack.enter_async_context(
                streamable_http_client(plan["url"], http_client=http)
            )
        else:
            params = StdioServerParameters(
                command=plan["command"], args=plan["args"], env=plan.get("env") or {}
            )
            streams = await stack.enter_async_context(stdio_client(params))
        read, write = streams[0], streams[1]
        session = await stack.enter_async_context(ClientSession(read, write))
        init = await session.initialize()
        out["server"] = {"name": init.server_info.name, "version": init.server_info.version}
        out["protocol"] = init.protocol_version
        tools = await session.list_tools()
        out["tools"] = [{"name": t.name, "input_schema": t.input_schema} for t in tools.tools]
        for call in plan["calls"]:
            r = await session.call_tool(call["tool"], call.get("arguments") or {})
            out["results"].append(
                {
                    "is_error": bool(r.is_error),
                    "text": "".join(getattr(c, "text", "") for c in r.content),
                    "structured": r.structured_content,
                }
            )
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
