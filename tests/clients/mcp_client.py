"""An AI application's side of MCP, with the official Python SDK: connects to an agora host's
`/mcp`, lists its tools, and calls one. Prints one JSON document for the test to check.

Usage: mcp_client.py URL MODE TOOL_PREFIX ACTION PAYLOAD_JSON
  MODE: "legacy" (the initialize handshake of 2025-11-25) or "auto" (server/discover, 2026-07-28)
"""

import asyncio
import json
import sys

from mcp import Client


async def main(url: str, mode: str, prefix: str, action: str, payload: str) -> None:
    async with Client(url, mode=mode, cache=None) as client:
        listed = await client.list_tools()
        tools = [
            {
                "name": tool.name,
                "description": tool.description,
                "input_schema": tool.input_schema,
                "meta": tool.meta,
            }
            for tool in listed.tools
        ]
        name = next(tool["name"] for tool in tools if tool["name"].startswith(prefix + "."))
        called = await client.call_tool(name, {"action": action, "payload": json.loads(payload)})
        wrong = await client.call_tool(name, {"action": "no-such-action"})
        print(
            json.dumps(
                {
                    "protocol_version": client.protocol_version,
                    "server": client.server_info.name if client.server_info else None,
                    "tools": tools,
                    "call": {
                        "is_error": called.is_error,
                        "text": [block.text for block in called.content],
                        "meta": called.meta,
                    },
                    "wrong_action": {
                        "is_error": wrong.is_error,
                        "text": [block.text for block in wrong.content],
                    },
                }
            )
        )


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
