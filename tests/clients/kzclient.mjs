// Shared output format of the Node blind-mode test clients (see README.md), and the npm
// packages they use, loaded from KZ_NODE_MODULES (installed outside the checkout by
// scripts/test).
import { createRequire } from 'node:module';
import { join } from 'node:path';

/** Loads an npm package from KZ_NODE_MODULES. */
export function npm(name) {
  const dir = process.env.KZ_NODE_MODULES;
  if (!dir) {
    console.error('KZ_NODE_MODULES is not set: run scripts/test (it installs tests/clients/package.json)');
    process.exit(2);
  }
  return createRequire(join(dir, 'noop.js'))(join(dir, name));
}

/** An agent for https.request / ws that tunnels through HTTPS_PROXY unless NO_PROXY matches. */
export function proxyAgent(url) {
  const proxy = process.env.HTTPS_PROXY || process.env.https_proxy;
  if (!proxy) return undefined;
  const host = new URL(url).hostname.replace(/^\[|\]$/g, '');
  const noProxy = (process.env.NO_PROXY || process.env.no_proxy || '').split(',').map((s) => s.trim()).filter(Boolean);
  if (noProxy.some((n) => n === '*' || host === n || host.endsWith(n.startsWith('.') ? n : `.${n}`))) return undefined;
  const { HttpsProxyAgent } = npm('https-proxy-agent');
  return new HttpsProxyAgent(proxy);
}

function oneLine(e) {
  const parts = [];
  for (let x = e; x; x = x.cause) parts.push(`${x.name || 'Error'}: ${x.message}`);
  return parts.join(' <- ').replace(/\s+/g, ' ');
}

export class Run {
  constructor() {
    if (process.argv.length !== 3) {
      console.error(`usage: ${process.argv[1]} BASE_URL`);
      process.exit(2);
    }
    this.base = process.argv[2].replace(/\/$/, '');
    this.token = process.env.API_TOKEN;
    this.failed = false;
    console.log(`==kz== TOKEN ${this.token}`);
  }

  headers() {
    return { Authorization: `Bearer ${this.token}` };
  }

  body() {
    return JSON.stringify({ token: this.token });
  }

  /** fn() resolves to [status, text] or rejects. */
  async request(kind, fn) {
    try {
      const [status, text] = await fn();
      console.log(`==kz== ${kind} ${status}`);
      console.log(text);
    } catch (e) {
      console.log(`==kz== ${kind} ERROR ${oneLine(e)}`);
      this.failed = true;
    }
  }

  error(kind, e) {
    console.log(`==kz== ${kind} ERROR ${oneLine(e)}`);
    this.failed = true;
  }

  end() {
    console.log('==kz== END');
    process.exitCode = this.failed ? 3 : 0;
  }
}
