// One Responses turn with the OpenAI Node SDK, driven by test_clients.py.
//
//   E2E_NODE_MODULES  the cache's node_modules (openai, undici)
//   E2E_MODE          "proxy": undici EnvHttpProxyAgent (reads HTTPS_PROXY),
//                     trusting the proxy CA through NODE_EXTRA_CA_CERTS;
//                     "base": baseURL = E2E_BASE_URL (the proxy's /v1)
//   OPENAI_API_KEY    the client's own key (the proxy must strip it)
//
// Prints one JSON line: {"ok":true,"text":...,"types":[...]} or
// {"ok":false,"status":N,"code":...,"message":...,"headers":{...}}.
'use strict';
const path = require('path');
const nm = process.env.E2E_NODE_MODULES;
const OpenAI = require(path.join(nm, 'openai')).default || require(path.join(nm, 'openai'));
const undici = require(path.join(nm, 'undici'));

async function main() {
  const opts = {apiKey: process.env.OPENAI_API_KEY, fetch: undici.fetch,
                maxRetries: process.env.E2E_MAX_RETRIES ? Number(process.env.E2E_MAX_RETRIES) : 2,
                timeout: 30000};
  if (process.env.E2E_MODE === 'proxy') {
    opts.fetchOptions = {dispatcher: new undici.EnvHttpProxyAgent()};
  } else {
    opts.baseURL = process.env.E2E_BASE_URL;
  }
  const client = new OpenAI(opts);
  const types = [];
  let text = '';
  try {
    const stream = await client.responses.create({model: 'gpt-test', input: 'say hi', stream: true});
    for await (const ev of stream) {
      types.push(ev.type);
      if (ev.type === 'response.output_text.delta') text += ev.delta;
    }
    console.log(JSON.stringify({ok: true, text, types}));
  } catch (e) {
    const headers = {};
    if (e.headers && typeof e.headers.forEach === 'function') e.headers.forEach((v, k) => { headers[k] = v; });
    console.log(JSON.stringify({ok: false, status: e.status || null, code: e.code || null,
                                message: String(e.message || e), headers}));
  }
}
main().catch((e) => { console.log(JSON.stringify({ok: false, message: String(e && e.stack || e)})); process.exit(3); });
