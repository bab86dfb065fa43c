// An MCP client for keyzero's tests: the official TypeScript SDK (@modelcontextprotocol/sdk)
// over stdio.
//
// Usage: node mcp_client.mjs PLAN.json   (NODE_PATH names the installed node_modules)
//
// PLAN and the printed JSON are as for mcp_client.py: over stdio the server gets only PLAN's
// `env` over the SDK's default environment; with `url`, Streamable HTTP with PLAN's `headers`.

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(process.env.KZ_NODE_MODULES + "/");
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StdioClientTransport, getDefaultEnvironment } = require(
  "@modelcontextprotocol/sdk/client/stdio.js",
);

const { StreamableHTTPClientTransport } = require(
  "@modelcontextprotocol/sdk/client/streamableHttp.js",
);

const plan = JSON.parse(readFileSync(process.argv[2], "utf8"));
const transport = plan.url
  ? new StreamableHTTPClientTransport(new URL(plan.url), {
      requestInit: { headers: plan.headers || {} },
    })
  : new StdioClientTransport({
      command: plan.command,
      args: plan.args,
      env: { ...getDefaultEnvironment(), ...(plan.env || {}) },
      stderr: "inherit",
    });
const client = new Client({ name: "kz-test-node", version: "1.0.0" });
await client.connect(transport);
const out = { client: "node-sdk", results: [] };
const info = client.getServerVersion();
out.server = { name: info.name, version: info.version };
const tools = await client.listTools();
out.tools = tools.tools.map((t) => ({ name: t.name, input_schema: t.inputSchema }));
for (const call of plan.calls) {
  const r = await client.callTool({ name: call.tool, arguments: call.arguments || {} });
  out.results.push({
    is_error: Boolean(r.isError),
    text: (r.content || []).map((c) => c.text || "").join(""),
    structured: r.structuredContent ?? null,
  });
}
await client.close();
console.log(JSON.stringify(out));
