// Blind-mode test client: npm ws with an agent that tunnels through HTTPS_PROXY (npm
// https-proxy-agent). CA from NODE_EXTRA_CA_CERTS. Prints `==kz== WS <status>`, then the
// server's first frame and the echo of `hello $API_TOKEN`.
import { Run, npm, proxyAgent } from './kzclient.mjs';

const WebSocket = npm('ws');
const run = new Run();
const url = `${run.base.replace(/^https:/, 'wss:')}/ws`;

await new Promise((done) => {
  // Settle once: a refused handshake may also emit 'error' or 'close' afterwards.
  let settled = false;
  const resolve = () => {
    settled = true;
    done();
  };
  const ws = new WebSocket(url, { headers: run.headers(), agent: proxyAgent(url), handshakeTimeout: 30000 });
  const frames = [];
  ws.on('message', (data) => {
    frames.push(data.toString('utf8'));
    if (frames.length === 1) ws.send(`hello ${run.token}`);
    if (frames.length === 2) {
      console.log('==kz== WS 101');
      console.log(frames.join('\n'));
      ws.close();
    }
  });
  ws.on('unexpected-response', (req, res) => {
    const chunks = [];
    res.on('data', (c) => chunks.push(c));
    res.on('end', () => {
      console.log(`==kz== WS ${res.statusCode}`);
      console.log(Buffer.concat(chunks).toString('utf8'));
      req.destroy();
      resolve();
    });
  });
  ws.on('close', resolve);
  ws.on('error', (e) => {
    if (settled) return;
    run.error('WS', e);
    resolve();
  });
});
run.end();
