// Blind-mode test client: Node's https.request with an agent that tunnels through HTTPS_PROXY
// (npm https-proxy-agent; Node 20's https module ignores the proxy variables). CA from
// NODE_EXTRA_CA_CERTS.
import https from 'node:https';

import { Run, proxyAgent } from './kzclient.mjs';

const run = new Run();

function send(method, url, body) {
  return new Promise((resolve, reject) => {
    const headers = { ...run.headers() };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = Buffer.byteLength(body);
    }
    const req = https.request(url, { method, headers, agent: proxyAgent(url), timeout: 30000 }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve([res.statusCode, Buffer.concat(chunks).toString('utf8')]));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

await run.request('GET', () => send('GET', `${run.base}/get?kz=1`));
await run.request('POST', () => send('POST', `${run.base}/post`, run.body()));
run.end();
