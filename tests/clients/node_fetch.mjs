// Blind-mode test client: Node's built-in fetch (CA from NODE_EXTRA_CA_CERTS; proxy from
// HTTPS_PROXY with NODE_USE_ENV_PROXY=1 on Node >= 22.21/24, else through preload.mjs).
import { Run } from './kzclient.mjs';

const run = new Run();
await run.request('GET', async () => {
  const r = await fetch(`${run.base}/get?kz=1`, { headers: run.headers() });
  return [r.status, await r.text()];
});
await run.request('POST', async () => {
  const r = await fetch(`${run.base}/post`, {
    method: 'POST',
    headers: { ...run.headers(), 'Content-Type': 'application/json' },
    body: run.body(),
  });
  return [r.status, await r.text()];
});
run.end();
