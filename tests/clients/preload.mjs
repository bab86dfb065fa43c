// Preload for Node's built-in fetch under blind mode: NODE_OPTIONS=--import=/abs/preload.mjs
//
// Node honours NODE_USE_ENV_PROXY=1 (HTTPS_PROXY/NO_PROXY for fetch) only from 22.21 and 24 on;
// Node 20 ignores it and fetch goes direct. There, install undici's EnvHttpProxyAgent (npm
// `undici@6`, from KZ_NODE_MODULES) as the global dispatcher, which the built-in fetch uses.
import { createRequire } from 'node:module';
import { join } from 'node:path';

const [major, minor] = process.versions.node.split('.').map(Number);
const builtin = major >= 24 || (major === 22 && minor >= 21);
if (!(builtin && process.env.NODE_USE_ENV_PROXY === '1')) {
  const dir = process.env.KZ_NODE_MODULES;
  if (!dir) {
    console.error('preload.mjs: KZ_NODE_MODULES is not set (the directory holding undici)');
    process.exit(2);
  }
  const { EnvHttpProxyAgent, setGlobalDispatcher } = createRequire(join(dir, 'noop.js'))(join(dir, 'undici'));
  setGlobalDispatcher(new EnvHttpProxyAgent());
}
