#!/usr/bin/python3
"""End to end: real clients through the real daemon to a local stand-in of
the Responses API.

Clients (installed once with npm into $SCOPEPROXY_E2E_CACHE, default
~/.cache/scopeproxy-e2e, and reused; exact versions in CLIENTS):
  * the Codex CLI (`codex exec`), through HTTPS_PROXY with TLS interception
    and through the gateway (`-c openai_base_url=http://PROXY/v1`), with the
    Responses WebSocket relayed and with `--websocket refuse` (Codex must
    fall back to HTTP and still complete the turn);
  * the OpenAI Node SDK (openai 6 + undici), through an EnvHttpProxyAgent
    dispatcher (HTTPS_PROXY) and through baseURL;
  * Python's urllib through HTTPS_PROXY (needs nothing from npm).

The stand-in (standin.py) is a TLS server on 127.0.0.1 with the
integration harness's test CA; the daemon reaches it for api.openai.com
and chatgpt.com through --resolve/--upstream-ca.  Each case asserts:
  * the turn completed (the client printed the stand-in's text);
  * the stand-in saw at least one credentialed request (POST or WebSocket
    GET of /v1/responses) and every one of them carried an AgentAssertion
    that verifies with the test identity's public key for the task;
  * the client's own key never reached the stand-in on a credentialed
    route (head or body, WebSocket messages included);
  * the audit log has an `assert` line with the task's fingerprint for the
    credentialed route, and nothing else on it but the expected 426s;
  * neither the key, nor the task id, nor the identity's key material is
    in the daemon's stderr or audit log.

When npm, the registry or the native Codex binary is not usable, the npm
cases are skipped with a `SKIP: <why>` line on stdout (never a silent
pass); the Python case still runs.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
import ssl

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, '..', 'integration'))

import standin  # noqa: E402
from harness import (Daemon, ProxyTestCase, hermetic_env, run_cmd,  # noqa: E402
                     scopeproxy_bin, tls_material)
from agentid import (SPEC_PUB, SPEC_RUNTIME, SPEC_SECRETS, auth_doc,  # noqa: E402
                     check_no_secrets, fingerprint, identity_record, write_auth)

CLIENTS = {'@openai/codex': '0.169.0', 'openai': '6.49.0', 'undici': '6.29.1'}
CODEX_VERSION_LINE = 'codex-cli 0.169.0'

TASK_ID = 'task-e2e-7c41d09a'
CLIENT_KEY = 'sk-e2e-CLIENT-OWN-KEY-0123456789'
STANDIN_TEXT = 'Hello from the stand-in.'
CREDENTIALED = standin.CREDENTIALED


def log(msg):
    sys.stdout.write(msg + '\n')
    sys.stdout.flush()


# --------------------------------------------------------------------------
# The client cache
# --------------------------------------------------------------------------

def cache_dir():
    return os.path.abspath(os.environ.get('SCOPEPROXY_E2E_CACHE') or
                           os.path.join(os.path.expanduser('~'), '.cache', 'scopeproxy-e2e'))


class Clients:
    """What is usable: codex (path or None), node_modules (or None), why not."""
    codex = None
    node_modules = None
    why_no_node = None
    why_no_codex = None
    install_seconds = None


def _installed(root):
    nm = os.path.join(root, 'node_modules')
    for name, ver in CLIENTS.items():
        try:
            with open(os.path.join(nm, name, 'package.json')) as f:
                if json.load(f).get('version') != ver:
                    return False
        except (OSError, ValueError):
            return False
    return True


def ensure_clients():
    c = Clients()
    npm = shutil.which('npm')
    node = shutil.which('node')
    if not npm or not node:
        c.why_no_node = c.why_no_codex = 'npm/node not found on PATH'
        return c
    root = cache_dir()
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, '.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # one installer at a time
        if not _installed(root):
            with open(os.path.join(root, 'package.json'), 'w') as f:
                json.dump({'name': 'scopeproxy-e2e-clients', 'private': True,
                           'dependencies': CLIENTS}, f, indent=1)
            t0 = time.monotonic()
            log('installing %s into %s (once; reused afterwards)'
                % (' '.join('%s@%s' % kv for kv in CLIENTS.items()), root))
            try:
                r = subprocess.run([npm, 'install', '--no-audit', '--no-fund', '--no-save',
                                    '--loglevel=error', '--fetch-retries=1',
                                    '--fetch-retry-mintimeout=1000',
                                    '--fetch-retry-maxtimeout=3000',
                                    '--fetch-timeout=60000'],
                                   cwd=root, stdin=subprocess.DEVNULL, capture_output=True,
                                   timeout=900, env=dict(os.environ, npm_config_update_notifier='false'))
                rc, err = r.returncode, (r.stderr or b'').decode('utf-8', 'replace')
            except subprocess.TimeoutExpired:
                rc, err = -1, 'npm install timed out after 900s'
            c.install_seconds = time.monotonic() - t0
            if rc != 0 or not _installed(root):
                lines = [ln for ln in err.strip().splitlines() if ln.strip(' npmerror')]
                key = [ln for ln in lines if ' code ' in ln or 'errno' in ln or 'request to' in ln]
                tail = ' | '.join((key or lines[-2:])[:3])
                c.why_no_node = c.why_no_codex = (
                    'npm install into %s failed (registry unreachable?): %s' % (root, tail[:400]))
                return c
            log('installed in %.1fs' % c.install_seconds)
    nm = os.path.join(root, 'node_modules')
    c.node_modules = nm
    codex = os.path.join(nm, '.bin', 'codex')
    try:
        r = subprocess.run([codex, '--version'], capture_output=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        out = r.stdout.decode('utf-8', 'replace').strip()
        if r.returncode == 0 and out == CODEX_VERSION_LINE:
            c.codex = codex
        else:
            c.why_no_codex = 'codex --version gave %r (status %s): %s' % (
                out, r.returncode, r.stderr.decode('utf-8', 'replace')[-300:])
    except (OSError, subprocess.TimeoutExpired) as e:
        c.why_no_codex = 'codex --version failed: %s' % e
    return c


_clients = None


def clients():
    global _clients
    if _clients is None:
        _clients = ensure_clients()
        if _clients.why_no_node:
            log('SKIP: Node SDK cases: %s' % _clients.why_no_node)
        if _clients.why_no_codex:
            log('SKIP: Codex cases: %s' % _clients.why_no_codex)
    return _clients


# --------------------------------------------------------------------------
# One case: a stand-in, a daemon, a client
# --------------------------------------------------------------------------

class E2ECase(ProxyTestCase):
    TIMEOUT = 150

    def setUp(self):
        ProxyTestCase.setUp(self)
        self.tmp = tempfile.mkdtemp(prefix='scopeproxy-e2e-')
        if not os.environ.get('SCOPEPROXY_KEEP_TMP'):
            self.addCleanup(shutil.rmtree, self.tmp, True)
        self.tls = tls_material()
        self.server, self.api = standin.start(SPEC_RUNTIME, TASK_ID, SPEC_PUB,
                                              forbidden=[CLIENT_KEY])
        self.addCleanup(self._finish_upstream, self.server)
        self.t0 = time.monotonic()

    def tearDown(self):
        log('  %s: %.1fs' % (self.id().rsplit('.', 1)[-1], time.monotonic() - self.t0))

    def start_proxy(self, *extra, task=TASK_ID):
        self.auth = os.path.join(self.tmp, 'daemon-auth.json')
        rec = identity_record(task_id=task) if task else identity_record()
        write_auth(self.auth, auth_doc(rec))
        self.ca_dir = os.path.join(self.tmp, 'ca')
        self.audit = os.path.join(self.tmp, 'audit.jsonl')
        port = self.server.port
        self.daemon = self.start_daemon(
            '--ca-dir', self.ca_dir, '--auth-file', self.auth, '--audit-log', self.audit,
            '--resolve', 'api.openai.com:443:127.0.0.1:%d' % port,
            '--resolve', 'chatgpt.com:443:127.0.0.1:%d' % port,
            '--upstream-ca', self.tls.ca, *extra)
        self.daemon.audit_path = self.audit          # for agentid.check_no_secrets
        r = run_cmd([scopeproxy_bin(), 'ca', 'export', '--ca-dir', self.ca_dir])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.proxy_ca = os.path.join(self.tmp, 'proxy-ca.pem')
        with open(self.proxy_ca, 'wb') as f:
            f.write(r.stdout)
        return self.daemon

    def audit_lines(self):
        try:
            with open(self.audit) as f:
                return [json.loads(line) for line in f if line.strip()]
        except OSError:
            return []

    def context(self, out=''):
        return ('\n--- client output (tail) ---\n%s\n--- stand-in saw ---\n%s\n'
                '--- audit ---\n%s\n--- daemon stderr (tail) ---\n%s'
                % (out[-3000:], self.api.describe(),
                   '\n'.join(json.dumps(a) for a in self.audit_lines())[-3000:],
                   self.daemon.tail(2500)))

    def check_credentialed(self, out='', kinds=None, allowed_rejects=()):
        """The assertions every case shares (see the module docstring)."""
        ctx = self.context(out)
        cred = self.api.credentialed()
        self.assertTrue(cred, 'the stand-in saw no credentialed request' + ctx)
        for e in cred:
            self.assertTrue(e['verified'], 'unverified credentialed request: %r%s' % (e, ctx))
            self.assertTrue(e['tls'], ctx)
            self.assertEqual(e['leaks'], [], 'the client key reached the stand-in%s' % ctx)
        if kinds is not None:
            self.assertEqual(sorted({e['kind'] for e in cred}), sorted(kinds), ctx)
        lines = [a for a in self.audit_lines() if a.get('route') in ('inference', 'compaction')]
        asserted = [a for a in lines if a.get('action') == 'assert']
        self.assertTrue(asserted, 'no assert line in the audit log' + ctx)
        for a in lines:
            if a.get('action') == 'assert':
                self.assertEqual(a.get('task'), fingerprint(TASK_ID), ctx)
            else:
                self.assertIn((a.get('action'), a.get('status'), a.get('error')), allowed_rejects,
                              'unexpected audit line %r%s' % (a, ctx))
        self.daemon.stop()
        check_no_secrets(self, self.daemon, {CLIENT_KEY, TASK_ID} | set(SPEC_SECRETS))
        passthrough_leaks = [e for e in self.api.leaks() if not e['credentialed']]
        if passthrough_leaks:
            # Pass-through routes (e.g. Codex's GET /backend-api/codex/models)
            # keep the client's own headers by design; say so, don't fail.
            log('  note: the client key went upstream on pass-through route(s) %s'
                % sorted({e['path'] for e in passthrough_leaks}))
        return asserted


# --------------------------------------------------------------------------
# Codex CLI
# --------------------------------------------------------------------------

class CodexCases(E2ECase):
    @classmethod
    def setUpClass(cls):
        clients()               # installs outside the per-test time limit

    def setUp(self):
        c = clients()
        if not c.codex:
            self.skipTest(c.why_no_codex)
        E2ECase.setUp(self)

    def run_codex(self, mode, extra_config=(), timeout=120):
        home = os.path.join(self.tmp, 'home')
        codex_home = os.path.join(home, '.codex')
        os.makedirs(codex_home, exist_ok=True)
        write_auth(os.path.join(codex_home, 'auth.json'), {'OPENAI_API_KEY': CLIENT_KEY})
        work = os.path.join(self.tmp, 'work')
        os.makedirs(work, exist_ok=True)
        env = hermetic_env(home, {'CODEX_HOME': codex_home, 'PATH': os.environ.get('PATH', '')})
        env.pop('OPENAI_API_KEY', None)
        env.pop('CODEX_API_KEY', None)
        last = os.path.join(self.tmp, 'last-message.txt')
        cmd = [clients().codex, 'exec', '--skip-git-repo-check', '--ephemeral', '-s', 'read-only',
               '--color', 'never', '-o', last, '-c', 'check_for_update_on_startup=false']
        if mode == 'proxy':
            env.update(HTTPS_PROXY=self.daemon.proxy, SSL_CERT_FILE=self.proxy_ca,
                       CODEX_CA_CERTIFICATE=self.proxy_ca, NO_PROXY='')
        else:
            cmd += ['-c', 'openai_base_url="%s/v1"' % self.daemon.url,
                    '-c', 'chatgpt_base_url="%s/backend-api/"' % self.daemon.url]
        for kv in extra_config:
            cmd += ['-c', kv]
        cmd.append('Say hi.')
        r = run_cmd(cmd, timeout=timeout, env=env)
        out = (r.stdout + r.stderr).decode('utf-8', 'replace')
        try:
            with open(last) as f:
                final = f.read().strip()
        except OSError:
            final = None
        return r.returncode, final, out

    def codex_turn(self, mode, kinds, allowed_rejects=()):
        rc, final, out = self.run_codex(mode)
        self.assertEqual(rc, 0, 'codex exec failed' + self.context(out))
        self.assertEqual(final, STANDIN_TEXT, 'codex did not complete the turn' + self.context(out))
        self.check_credentialed(out, kinds=kinds, allowed_rejects=allowed_rejects)

    def test_codex_https_proxy_websocket(self):
        """HTTPS_PROXY + interception: Codex uses the Responses WebSocket, relayed."""
        self.start_proxy()
        self.codex_turn('proxy', ['websocket'])

    def test_codex_https_proxy_websocket_refused(self):
        """HTTPS_PROXY, --websocket refuse: 426, Codex falls back to HTTP/SSE."""
        self.start_proxy('--websocket', 'refuse')
        self.codex_turn('proxy', ['http'],
                        allowed_rejects=[('reject', 426, 'websocket_not_supported')])

    def test_codex_gateway_websocket(self):
        """openai_base_url=http://PROXY/v1 (gateway): WebSocket relayed."""
        self.start_proxy()
        self.codex_turn('gateway', ['websocket'])

    def test_codex_gateway_websocket_refused(self):
        """openai_base_url through the gateway, --websocket refuse: HTTP fallback."""
        self.start_proxy('--websocket', 'refuse')
        self.codex_turn('gateway', ['http'],
                        allowed_rejects=[('reject', 426, 'websocket_not_supported')])


# --------------------------------------------------------------------------
# OpenAI Node SDK
# --------------------------------------------------------------------------

class NodeSDKCases(E2ECase):
    @classmethod
    def setUpClass(cls):
        clients()

    def setUp(self):
        c = clients()
        if not c.node_modules:
            self.skipTest(c.why_no_node)
        E2ECase.setUp(self)

    def run_sdk(self, mode, extra_env=None):
        env = hermetic_env(os.path.join(self.tmp, 'home'),
                           {'PATH': os.environ.get('PATH', ''), 'OPENAI_API_KEY': CLIENT_KEY,
                            'E2E_NODE_MODULES': clients().node_modules, 'E2E_MODE': mode})
        os.makedirs(env['HOME'], exist_ok=True)
        if mode == 'proxy':
            env.update(HTTPS_PROXY=self.daemon.proxy, NODE_EXTRA_CA_CERTS=self.proxy_ca)
        else:
            env['E2E_BASE_URL'] = self.daemon.url + '/v1'
        env.update(extra_env or {})
        r = run_cmd(['node', os.path.join(HERE, 'sdk_client.cjs')], timeout=60, env=env)
        out = (r.stdout + r.stderr).decode('utf-8', 'replace')
        try:
            res = json.loads(r.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.fail('sdk_client.cjs printed no result' + self.context(out))
        return res, out

    def sdk_turn(self, mode):
        self.start_proxy()
        res, out = self.run_sdk(mode)
        self.assertTrue(res.get('ok'), 'SDK turn failed: %r%s' % (res, self.context(out)))
        self.assertEqual(res['text'], STANDIN_TEXT, self.context(out))
        self.assertEqual(res['types'][0], 'response.created')
        self.assertEqual(res['types'][-1], 'response.completed')
        self.check_credentialed(out, kinds=['http'])

    def test_node_sdk_https_proxy(self):
        """openai + undici EnvHttpProxyAgent (HTTPS_PROXY), NODE_EXTRA_CA_CERTS."""
        self.sdk_turn('proxy')

    def test_node_sdk_base_url(self):
        """openai with baseURL = the proxy's /v1 (gateway)."""
        self.sdk_turn('base')

    def test_node_sdk_task_missing(self):
        """No run task: the SDK gets the proxy's own 503 agent_task_missing and
        nothing reaches the stand-in.  Reports how often the SDK asked (it
        retries a 503 unless the answer says x-should-retry: false)."""
        self.start_proxy(task=None)
        res, out = self.run_sdk('base')
        self.assertFalse(res.get('ok'), res)
        self.assertEqual(res.get('status'), 503, res)
        self.assertEqual(res.get('code'), 'agent_task_missing', res)
        self.assertEqual(self.api.seen, [], 'nothing may reach the stand-in')
        rejects = [a for a in self.audit_lines() if a.get('error') == 'agent_task_missing']
        log('  note: the Node SDK sent %d request(s) for one call (x-should-retry: %s)'
            % (len(rejects), res.get('headers', {}).get('x-should-retry')))
        # the proxy says x-should-retry: false, so the SDK asks once
        self.assertEqual(res.get('headers', {}).get('x-should-retry'), 'false', res)
        want = 1
        self.assertEqual(len(rejects), want, self.context(out))


# --------------------------------------------------------------------------
# Python urllib
# --------------------------------------------------------------------------

class PythonCases(E2ECase):
    def test_python_urllib_https_proxy(self):
        """urllib.request with HTTPS_PROXY (ProxyHandler from the environment)."""
        self.start_proxy()
        saved = {k: os.environ.get(k) for k in ('HTTPS_PROXY', 'https_proxy', 'NO_PROXY', 'no_proxy')}
        for k in saved:
            os.environ.pop(k, None)
        os.environ['HTTPS_PROXY'] = self.daemon.proxy
        try:
            handler = urllib.request.ProxyHandler()       # reads HTTPS_PROXY
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        ctx = ssl.create_default_context(cafile=self.proxy_ca)
        opener = urllib.request.build_opener(handler, urllib.request.HTTPSHandler(context=ctx))
        body = json.dumps({'model': 'gpt-test', 'input': 'say hi', 'stream': True}).encode()
        req = urllib.request.Request('https://api.openai.com/v1/responses', data=body, method='POST',
                                     headers={'Authorization': 'Bearer ' + CLIENT_KEY,
                                              'Content-Type': 'application/json',
                                              'Accept': 'text/event-stream'})
        with opener.open(req, timeout=30) as resp:
            self.assertEqual(resp.status, 200)
            raw = resp.read().decode()
        events = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith('data: ')]
        self.assertEqual(events[-1]['type'], 'response.completed', raw)
        self.assertEqual(''.join(e.get('delta', '') for e in events
                                 if e['type'] == 'response.output_text.delta'), STANDIN_TEXT)
        self.check_credentialed(raw, kinds=['http'])


if __name__ == '__main__':
    t0 = time.monotonic()
    prog = unittest.main(verbosity=2, exit=False)
    log('e2e total %.1fs' % (time.monotonic() - t0))
    sys.exit(0 if prog.result.wasSuccessful() else 1)
