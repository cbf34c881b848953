#!/usr/bin/python3
"""Scoped credentials (issue 3), through the real daemon to real loopback
upstreams standing in for every provider (--resolve).

What is checked, and how the test checks it independently of the daemon:
  * AgentAssertion: the token is base64url-decoded here, the envelope must be
    exactly compact JSON with sorted keys, the timestamp fresh RFC 3339 `Z`,
    and the Ed25519 signature is verified with `openssl pkeyutl -verify`
    against a public key derived by openssl from the seed (never by the
    daemon).  Spec test identity (PKCS#8 v2 and v1) and other keys.
  * Header edits: client Authorization (and duplicates) gone, ChatGPT-Account-ID
    / X-OpenAI-Fedramp from the record, every other header line byte-identical
    and in order, body byte-identical.
  * Confinement: every credentialed request arrives over TLS verified for
    the provider's host (SNI = Host), also when the client wrote http://
    (then sent to HOST:443; the stand-ins answer plain HTTP and TLS on one
    port); pass-through routes keep the client's scheme.
  * The matrix providers x routes x methods (forward and gateway): every
    non-credentialed cell arrives byte-identical (but Host) with the client's
    own Authorization; near-miss spellings of a credentialed route on an
    asserting host are refused (400 noncanonical_route, nothing upstream);
    the audit log classifies each cell.
  * Fail closed: missing / no-task / blank-task / malformed / bad key /
    insecure-mode / JWT identities give the 503 JSON, and the upstream sees
    not even a TCP connection; pass-through keeps working; /readyz follows.
  * Rotation (inotify and SIGHUP), last-good-state on garbage, an SSE stream
    surviving a rotation.
  * --audit-log lines, and no secret in the daemon's logs or the audit log.
  * `scopeproxy classify`.
"""

import base64
import datetime
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (audit_records, SECRET, SSE, Fixed, HTTPClient, ProxyTestCase,  # noqa: E402
                     main, request, run_cmd, scopeproxy_bin, clean_env, tls_material)
from agentid import (NO_TASK, SPEC_HEADER, SPEC_PUB_HEX, SPEC_SEED, SPEC_SIG_B64,  # noqa: E402
                     SPEC_V1_B64, SPEC_V2_B64, V2_PREFIX, auth_doc, check_no_secrets,
                     ed25519_verify, fingerprint, identity_record, jwt_token, key_of,
                     parse_assertion, write_auth)


def now():
    return time.monotonic()


# --------------------------------------------------------------------------
# Keys and auth files (the shared helpers are in agentid.py)
# --------------------------------------------------------------------------

_seeds = {'spec': SPEC_SEED,
          'other': hashlib.sha256(b'scopeproxy test key other').digest(),
          'third': hashlib.sha256(b'scopeproxy test key third').digest()}


def key(name):
    return key_of(_seeds[name])


def record(key_b64, task_id=NO_TASK, runtime='agent-123', account='acct-test-001',
           fedramp=False, **extra):
    r = identity_record(key_b64, runtime, account=None, fedramp=fedramp,
                        future_field={'ignored': True})      # unknown keys are ignored
    if account is not None:
        r['account_id'] = account
    if task_id is not NO_TASK:
        r['task_id'] = task_id
    r.update(extra)
    return auth_doc(r, last_refresh=None)


def jwt_identity(key_b64, runtime='agent-jwt-1'):
    return {'agent_identity': jwt_token(key_b64, runtime)}


# --------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------

# A zstd frame magic followed by every byte value: CR, LF, NUL included.
ZSTD_BODY = b'\x28\xb5\x2f\xfd\x24\x00' + bytes((i * 37 + 11) % 256 for i in range(3000)) + b'\r\n\r\n\x00'

CODEX_HEADERS = [
    (b'session-id', b'0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b'),
    (b'Authorization', b'Bearer ' + SECRET.encode()),
    (b'x-codex-turn-state', b'ts-opaque-abc123=='),
    (b'OpenAI-Beta', b'responses=experimental'),
    (b'authorization', b'Bearer sk-test-SECRET-duplicate'),
    (b'originator', b'codex_cli_rs'),
    (b'version', b'0.169.0'),
    (b'ChatGPT-Account-ID', b'client-chosen-account'),
    (b'X-OpenAI-Fedramp', b'true'),
    (b'Content-Type', b'application/json'),
    (b'Content-Encoding', b'zstd'),
    (b'Accept', b'text/event-stream'),
    (b'X-Tail', b'last'),
]

REPLACED = (b'authorization', b'chatgpt-account-id', b'x-openai-fedramp')


def build(method, target, host, headers, body=None):
    lines = [method.encode() + b' ' + target.encode() + b' HTTP/1.1', b'Host: ' + host.encode()]
    lines += [k + b': ' + v for k, v in headers]
    if body is not None:
        lines.append(b'Content-Length: %d' % len(body))
    return b'\r\n'.join(lines) + b'\r\n\r\n' + (body or b'')


def head_lines(raw):
    """Header lines (bytes) of a raw request, without the request line."""
    head = raw.split(b'\r\n\r\n', 1)[0]
    return head.split(b'\r\n')[1:]


def name_of(line):
    return line.split(b':', 1)[0].strip().lower()


def without(lines, names):
    return [l for l in lines if name_of(l) not in names]


def readyz(d):
    return request(d.port, b'GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')


# --------------------------------------------------------------------------
# Base class: daemons with an auth file, an audit log, and a secrets check
# --------------------------------------------------------------------------

class CredCase(ProxyTestCase):

    def setUp(self):
        super().setUp()
        self.work = tempfile.mkdtemp(prefix='scopeproxy-cred-')
        self.addCleanup(shutil.rmtree, self.work, True)
        self.forbidden = {SECRET, 'AgentAssertion', 'eyJ'}
        self._n = 0

    def forbid_key(self, k):
        self.forbidden |= k.secrets()

    def forbid_task(self, task_id):
        self.forbidden.add(task_id)
        self.forbidden.add(json.dumps(task_id, ensure_ascii=False)[1:-1])
        self.forbidden.add(json.dumps(task_id)[1:-1])

    def auth_file(self, doc=None, mode=0o600, name='auth.json', subdir=None):
        d = os.path.join(self.work, subdir) if subdir else self.work
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, name)
        if doc is not None:
            write_auth(path, doc, mode)
        return path

    def start_cred(self, auth, *args):
        self._n += 1
        audit = os.path.join(self.work, 'audit-%d.jsonl' % self._n)
        d = self.start_daemon('--auth-file', auth, '--audit-log', audit, '--log-level', 'debug', *args)
        d.audit_path = audit
        d.audit_seen = 0
        # Registered after start_daemon's own cleanup, so it runs first:
        # stop the daemon, then grep everything it wrote.
        self.addCleanup(self._check_secrets, d)
        return d

    def _check_secrets(self, d):
        d.stop()
        check_no_secrets(self, d, self.forbidden)

    # -- audit log --------------------------------------------------------
    def audit(self, d):
        return audit_records(d.audit_path)

    def next_audit(self, d, count=1, timeout=3.0):
        """The next `count` audit lines after the ones already consumed."""
        deadline = now() + timeout
        while True:
            lines = self.audit(d)
            if len(lines) >= d.audit_seen + count or now() > deadline:
                break
            time.sleep(0.005)
        new = lines[d.audit_seen:]
        self.assertEqual(len(new), count, 'expected %d new audit line(s), got %r' % (count, new))
        d.audit_seen = len(lines)
        return new

    def resync_audit(self, d):
        """After a failed request: skip its audit line, so that one failure
        does not cascade into the following checks."""
        time.sleep(0.2)
        d.audit_seen = len(self.audit(d))

    def assertAudit(self, line, **want):
        for k in ('time', 'method', 'host', 'port', 'path', 'mode', 'provider', 'route', 'action',
                  'task', 'status'):
            self.assertIn(k, line, 'audit line lacks %r: %r' % (k, line))
        if ':' in want.get('host', ''):
            # host='name:port' is checked as the two fields it is written as
            want['host'], port = want['host'].rsplit(':', 1)
            want['port'] = int(port)
        for k, v in want.items():
            self.assertEqual(line.get(k), v, 'audit %s in %r' % (k, line))
        self.assertRegex(line['time'], r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d')
        if line['action'] == 'assert':
            self.assertRegex(line['task'] or '', r'^[0-9a-f]{8}$', line)
        else:
            self.assertIsNone(line['task'], 'no credential added: task must be null: %r' % line)
        self.assertNotIn('?', line['path'], 'the query string must not be logged: %r' % line)

    # -- credentialed request checks -------------------------------------
    def check_credentialed(self, sent, got, ident, pub, account='acct-test-001', fedramp=False, *,
                           host):
        """`sent`: raw client request; `got`: UpstreamRequest.  ident: (runtime, task).
        host: the provider host the request is for; a minted credential travels
        only on TLS verified for it, whatever scheme the client wrote."""
        self.assertIsNotNone(got, 'upstream never saw the credentialed request %r' % sent[:300])
        ctx = '\nsent: %r\nupstream got: %r' % (sent[:600], got.raw_head)
        self.assertTrue(got.tls, 'credentialed request arrived over plaintext' + ctx)
        self.assertEqual(got.sni, host, 'TLS server name' + ctx)
        self.assertEqual(got.header_all('Host'), [host], 'Host' + ctx)
        auths = got.header_all('Authorization')
        self.assertEqual(len(auths), 1, 'exactly one Authorization upstream' + ctx)
        self.assertNotIn(SECRET, got.raw_head.decode('latin-1'), 'client credential forwarded' + ctx)
        env = parse_assertion(auths[0], ident[0], ident[1], pub)
        self.assertEqual(got.header_all('ChatGPT-Account-ID'), [account] if account else [],
                         'ChatGPT-Account-ID' + ctx)
        self.assertEqual(got.header_all('X-OpenAI-Fedramp'), ['true'] if fedramp else [],
                         'X-OpenAI-Fedramp' + ctx)
        self.assertEqual(without(head_lines(got.raw_head), REPLACED + (b'host',)),
                         without(head_lines(sent), REPLACED + (b'host',)),
                         'every other client header line must pass unchanged and in order' + ctx)
        self.assertEqual(bytes(got.body), sent.split(b'\r\n\r\n', 1)[1], 'body changed' + ctx)
        return env


# --------------------------------------------------------------------------
# 0. The test's own verifier can fail
# --------------------------------------------------------------------------

class VerifierSanity(CredCase):

    def test_spec_vectors_and_tampering(self):
        k = key('spec')
        self.assertEqual(k.pub.hex(), SPEC_PUB_HEX, 'openssl-derived public key of the spec seed')
        self.assertEqual(k.v1, SPEC_V1_B64)
        self.assertEqual(k.v2, SPEC_V2_B64)
        msg = b'agent-123:task-123:2026-04-23T00:00:00Z'
        sig = base64.b64decode(SPEC_SIG_B64)
        self.assertTrue(ed25519_verify(k.pub, msg, sig))
        bad = bytearray(sig)
        bad[10] ^= 0x01
        self.assertFalse(ed25519_verify(k.pub, msg, bytes(bad)), 'tampered signature accepted')
        self.assertFalse(ed25519_verify(k.pub, msg.replace(b'123:2026', b'124:2026'), sig),
                         'signature accepted for another message')
        self.assertFalse(ed25519_verify(key('other').pub, msg, sig), 'signature accepted for another key')
        env = parse_assertion(SPEC_HEADER, 'agent-123', 'task-123', k.pub, check_time=False)
        self.assertEqual(env['timestamp'], '2026-04-23T00:00:00Z')
        # The checker rejects: a stale timestamp, a wrong task, a re-serialised
        # envelope (spaces, key order), padding, and a forged signature.
        with self.assertRaises(AssertionError):
            parse_assertion(SPEC_HEADER, 'agent-123', 'task-123', k.pub)          # 2026-04-23 is not now
        with self.assertRaises(AssertionError):
            parse_assertion(SPEC_HEADER, 'agent-123', 'task-999', k.pub, check_time=False)
        doc = json.loads(base64.urlsafe_b64decode(SPEC_HEADER.split()[1] + '=='))

        def tok(raw):
            return 'AgentAssertion ' + base64.urlsafe_b64encode(raw).rstrip(b'=').decode()
        for raw in (json.dumps(doc).encode(),
                    json.dumps(dict(reversed(list(doc.items()))), separators=(',', ':')).encode()):
            with self.assertRaises(AssertionError):
                parse_assertion(tok(raw), 'agent-123', 'task-123', k.pub, check_time=False)
        with self.assertRaises(AssertionError):
            parse_assertion(SPEC_HEADER + '==', 'agent-123', 'task-123', k.pub, check_time=False)
        forged = dict(doc, task_id='task-124')
        with self.assertRaises(AssertionError):
            parse_assertion(tok(json.dumps(forged, separators=(',', ':')).encode()),
                            'agent-123', 'task-124', k.pub, check_time=False)


# --------------------------------------------------------------------------
# 1. Credentialed requests
# --------------------------------------------------------------------------

class Credentialed(CredCase):
    TASK = 'task-cred-9d1e47'

    def setUp(self):
        super().setUp()
        self.key = key('spec')
        self.forbid_key(self.key)
        self.forbid_task(self.TASK)
        self.tls = tls_material()
        # One stand-in answering plain HTTP and TLS on one port for every
        # host on :80 and :443; each request says which way it came.
        self.up = self.start_upstream(dual=True)
        self.auth = self.auth_file(record(self.key.v2, self.TASK))

    def daemon(self, auth=None):
        args = []
        for h in ('api.openai.com', 'eu.api.openai.com', 'chatgpt.com', 'chat.openai.com'):
            for port in (80, 443):
                args += ['--resolve', '%s:%d:127.0.0.1:%d' % (h, port, self.up.port)]
        return self.start_cred(
            auth or self.auth, '--upstream-ca', self.tls.ca, *args,
            '--gateway', '/v1/=http://api.openai.com/v1/')

    def send(self, d, up, method, target, host, headers=CODEX_HEADERS, body=ZSTD_BODY, tag=None):
        tag = tag or '%s %s' % (method, target)
        hdrs = list(headers) + [(b'X-Req', tag.encode())]
        raw = build(method, target, host, hdrs, body)
        try:
            resp = request(d.port, raw)
        except Exception:
            self.resync_audit(d)
            raise
        if resp.status != 200:
            self.resync_audit(d)
        self.assertEqual(resp.status, 200, '%s: %r\n%s' % (tag, resp, d.tail(1500)))
        got = up.wait_request(lambda r: r.header('X-Req') == tag, timeout=3)
        self.assertIsNotNone(got, 'upstream never saw ' + tag)
        return raw, got

    def test_forward_http_inference_spec_v2_key(self):
        d = self.daemon()
        raw, got = self.send(d, self.up, 'POST', 'http://api.openai.com/v1/responses', 'api.openai.com')
        self.assertEqual(got.request_line(), b'POST /v1/responses HTTP/1.1')
        self.assertEqual(got.header_all('Host'), ['api.openai.com'])
        # written as http://, sent over TLS to api.openai.com:443
        env = self.check_credentialed(raw, got, ('agent-123', self.TASK), self.key.pub,
                                      host='api.openai.com')
        self.assertEqual(got.header_all('Content-Length'), [str(len(ZSTD_BODY))])
        a = self.next_audit(d)[0]
        self.assertAudit(a, method='POST', provider='openai', route='inference', action='assert',
                         task=fingerprint(self.TASK), status=200, mode='forward', path='/v1/responses',
                         host='api.openai.com:443')
        self.assertNotIn(env['_token'], json.dumps(a))

    def test_forward_https_compaction_and_chatgpt(self):
        d = self.daemon()
        # https:// and http:// alike arrive over TLS at HOST:443
        cases = [('https://api.openai.com/v1/responses/compact', 'api.openai.com',
                  'openai', 'compaction', '/v1/responses/compact'),
                 ('https://chatgpt.com/backend-api/codex/responses', 'chatgpt.com',
                  'chatgpt', 'inference', '/backend-api/codex/responses'),
                 ('http://chat.openai.com/backend-api/codex/responses/compact', 'chat.openai.com',
                  'chatgpt', 'compaction', '/backend-api/codex/responses/compact'),
                 ('http://eu.api.openai.com/v1/responses', 'eu.api.openai.com',
                  'openai', 'inference', '/v1/responses')]
        for target, host, provider, kind, path in cases:
            with self.subTest(target=target):
                raw, got = self.send(d, self.up, 'POST', target, host)
                self.assertEqual(got.request_line(), b'POST ' + path.encode() + b' HTTP/1.1')
                self.assertEqual(got.header_all('Host'), [host])
                self.assertTrue(got.tls)
                self.assertEqual(got.sni, host)
                self.check_credentialed(raw, got, ('agent-123', self.TASK), self.key.pub, host=host)
                self.assertAudit(self.next_audit(d)[0], provider=provider, route=kind, action='assert',
                                 task=fingerprint(self.TASK), status=200, method='POST',
                                 host=host + ':443')

    def test_gateway_mode(self):
        d = self.daemon()
        host = '127.0.0.1:%d' % d.port
        # --gateway /v1/=http://api.openai.com/v1/ (written plain: a credentialed
        # route is still sent over TLS to api.openai.com:443, resolved), and the
        # built-in /backend-api/codex/ -> https://chatgpt.com (TLS, resolved).
        for target, up_host, upath, provider, kind in (
                ('/v1/responses', 'api.openai.com', '/v1/responses', 'openai', 'inference'),
                ('/v1/responses/compact', 'api.openai.com', '/v1/responses/compact', 'openai',
                 'compaction'),
                ('/backend-api/codex/responses', 'chatgpt.com', '/backend-api/codex/responses',
                 'chatgpt', 'inference')):
            with self.subTest(target=target):
                raw, got = self.send(d, self.up, 'POST', target, host, tag='gw ' + target)
                self.assertEqual(got.request_line(), b'POST ' + upath.encode() + b' HTTP/1.1')
                self.assertEqual(got.header_all('Host'), [up_host])
                self.check_credentialed(raw, got, ('agent-123', self.TASK), self.key.pub, host=up_host)
                self.assertAudit(self.next_audit(d)[0], provider=provider, route=kind, action='assert',
                                 task=fingerprint(self.TASK), status=200, mode='gateway',
                                 host=up_host + ':443')

    def test_fresh_assertion_per_request_on_one_connection(self):
        d = self.daemon()
        c = HTTPClient(d.port)
        self.addCleanup(c.close)
        envs = []
        for i in range(3):
            tag = 'fresh-%d' % i
            raw = build('POST', 'http://api.openai.com/v1/responses', 'api.openai.com',
                        CODEX_HEADERS + [(b'X-Req', tag.encode())], b'{"i":%d}' % i)
            c.send(raw)
            resp = c.read_response('POST')
            self.assertEqual(resp.status, 200, resp)
            got = self.up.wait_request(lambda r, tag=tag: r.header('X-Req') == tag, timeout=3)
            env = self.check_credentialed(raw, got, ('agent-123', self.TASK), self.key.pub,
                                          host='api.openai.com')
            envs.append(env)
            if i < 2:
                # Cross a second boundary (per the wall clock) before the next one.
                ts = datetime.datetime.strptime(env['timestamp'], '%Y-%m-%dT%H:%M:%SZ').replace(
                    tzinfo=datetime.timezone.utc).timestamp()
                time.sleep(max(0.0, ts + 1.05 - time.time()))
        for a, b in zip(envs, envs[1:]):
            self.assertLess(a['timestamp'], b['timestamp'], 'assertion reused across seconds')
            self.assertNotEqual(a['signature'], b['signature'])
            self.assertNotEqual(a['_token'], b['_token'])

    def test_v1_key_fedramp_and_escaped_task(self):
        k = key('spec')
        task = 'task-"quoted"\\back/slash-\u00e9t\u00e9-7f21'      # JSON escapes, UTF-8
        self.forbid_task(task)
        auth = self.auth_file(record(k.v1, task, runtime='agent-v1-runtime', account='acct-fed-42',
                                     fedramp=True), name='auth-v1.json')
        d = self.daemon(auth)
        for target in ('http://api.openai.com/v1/responses', 'https://chatgpt.com/backend-api/codex/responses'):
            with self.subTest(target=target):
                host = target.split('/')[2]
                raw, got = self.send(d, self.up, 'POST', target, host)
                env = self.check_credentialed(raw, got, ('agent-v1-runtime', task), k.pub,
                                              account='acct-fed-42', fedramp=True, host=host)
                self.assertEqual(env['task_id'], task)
                self.assertAudit(self.next_audit(d)[0], action='assert', task=fingerprint(task))

    def test_chunked_upload_on_credentialed_route(self):
        d = self.daemon()
        pieces = [ZSTD_BODY[:1000], ZSTD_BODY[1000:1001], ZSTD_BODY[1001:]]
        head = build('POST', 'http://api.openai.com/v1/responses', 'api.openai.com',
                     CODEX_HEADERS + [(b'X-Req', b'chunked'), (b'Transfer-Encoding', b'chunked')])
        raw = head + b''.join(b'%x\r\n' % len(p) + p + b'\r\n' for p in pieces) + b'0\r\n\r\n'
        resp = request(d.port, raw)
        self.assertEqual(resp.status, 200, resp)
        got = self.up.wait_request(lambda r: r.header('X-Req') == 'chunked', timeout=3)
        self.assertIsNotNone(got, 'upstream never saw the chunked upload')
        self.assertTrue(got.tls, 'credentialed request arrived over plaintext: %r' % got.raw_head)
        self.assertEqual(got.sni, 'api.openai.com')
        self.assertEqual(bytes(got.body), ZSTD_BODY, 'chunked body changed')
        framing = (b'host', b'transfer-encoding', b'content-length') + REPLACED
        self.assertEqual(without(head_lines(got.raw_head), framing), without(head_lines(raw), framing),
                         got.raw_head)
        parse_assertion(got.header('Authorization'), 'agent-123', self.TASK, self.key.pub)
        self.assertEqual(len(got.header_all('Authorization')), 1)

    def test_other_keys_v2_a1_form_without_account(self):
        k = key('other')
        self.forbid_key(k)
        task = 'task-a1-5c0b'
        self.forbid_task(task)
        auth = self.auth_file(record(k.v2a1, task, runtime='agent-a1', account=None), name='auth-a1.json')
        d = self.daemon(auth)
        hdrs = [h for h in CODEX_HEADERS if h[0].lower() not in (b'chatgpt-account-id', b'x-openai-fedramp')]
        raw, got = self.send(d, self.up, 'POST', 'http://api.openai.com/v1/responses/compact',
                             'api.openai.com', headers=hdrs)
        self.check_credentialed(raw, got, ('agent-a1', task), k.pub, account=None,
                                host='api.openai.com')
        # The signature must be by *this* key, not the spec key.
        with self.assertRaises(AssertionError):
            parse_assertion(got.header('Authorization'), 'agent-a1', task, key('spec').pub)

    def test_websocket_upgrade_on_credentialed_route(self):
        # This version refuses WebSocket (426, nothing upstream).  Should the
        # handshake be relayed instead, it must carry a fresh AgentAssertion,
        # never the client's key: either way the credential rule holds.
        d = self.daemon()
        raw = (b'GET http://api.openai.com/v1/responses HTTP/1.1\r\nHost: api.openai.com\r\n'
               b'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n'
               b'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n'
               b'OpenAI-Beta: responses_websockets=2026-02-06\r\n' + b'Authorization: Bearer ' +
               SECRET.encode() + b'\r\nX-Req: ws\r\n\r\n')
        resp = request(d.port, raw, timeout=5)
        got = self.up.wait_request(lambda r: r.header('X-Req') == 'ws', timeout=0.5)
        if got is None:
            self.check_ws_refused(d, resp)
        else:
            self.assertEqual(len(got.header_all('Authorization')), 1, got.raw_head)
            self.assertNotIn(SECRET, got.raw_head.decode('latin-1'))
            parse_assertion(got.header('Authorization'), 'agent-123', self.TASK, self.key.pub)
            # a handshake written as http:// is sent over TLS to api.openai.com:443
            self.assertTrue(got.tls, 'credentialed handshake arrived over plaintext: %r' % got.raw_head)
            self.assertEqual(got.sni, 'api.openai.com')
            self.assertEqual(got.header_all('Host'), ['api.openai.com'])
            self.assertAudit(self.next_audit(d)[0], provider='openai', route='inference',
                             action='assert', task=fingerprint(self.TASK), host='api.openai.com:443')

    def check_ws_refused(self, d, resp):
        self.assertProxyError(resp, 426, 'websocket_not_supported', d)
        self.assertEqual(self.up.connections, [], 'nothing may reach the upstream')
        line = self.next_audit(d)[0]
        self.assertAudit(line, provider='openai', route='inference', status=426,
                         error='websocket_not_supported')
        # README: a request "carried a credential" exactly when its audit line
        # has action assert and a non-null task.  This one carried nothing.
        self.assertFalse(line['action'] == 'assert' and line['task'] is not None,
                         'a refused handshake that sent nothing upstream is audited as '
                         'credentialed: %r' % line)

    def test_websocket_refused_by_config(self):
        cfg = os.path.join(self.work, 'ws-refuse.json')
        with open(cfg, 'w') as f:
            f.write('{"websocket": "refuse"}\n')
        r = run_cmd([scopeproxy_bin(), 'check-config', '--config', cfg], env=clean_env())
        if r.returncode != 0:
            self.skipTest('this daemon has no "websocket" setting (it always refuses)')
        d = self.start_cred(self.auth, '--config', cfg, '--upstream-ca', self.tls.ca,
                            '--resolve', 'api.openai.com:80:127.0.0.1:%d' % self.up.port,
                            '--resolve', 'api.openai.com:443:127.0.0.1:%d' % self.up.port)
        raw = (b'GET http://api.openai.com/v1/responses HTTP/1.1\r\nHost: api.openai.com\r\n'
               b'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n'
               b'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' + b'Authorization: Bearer ' +
               SECRET.encode() + b'\r\n\r\n')
        self.check_ws_refused(d, request(d.port, raw, timeout=5))


# --------------------------------------------------------------------------
# 2. The matrix: providers x routes x methods, forward and gateway
# --------------------------------------------------------------------------

class Matrix(CredCase):
    TASK = 'task-matrix-3b8a0c'
    TIMEOUT = 90

    # (URL authority, provider, base, credentialed)
    FORWARD = [
        ('api.openai.com', 'openai', '/v1', True),
        ('chatgpt.com', 'chatgpt', '/backend-api/codex', True),
        ('chatgpt.com', 'chatgpt', '/v1', False),              # not chatgpt's base
        ('x.openai.azure.com', 'azure-openai', '/v1', False),
        ('x.openai.azure.com', 'azure-openai', '/openai/v1', False),
        ('bedrock-runtime.us-east-1.amazonaws.com', 'bedrock', '/v1', False),
        ('localhost:11434', 'ollama', '/v1', False),
        ('localhost:1234', 'lmstudio', '/v1', False),
        ('api.anthropic.com', 'anthropic', '/v1', False),
        ('upstream.test', 'custom', '/v1', False),
        ('api.openai.com.evil.test', 'custom', '/v1', False),   # lookalikes
        ('evilapi.openai.com', 'custom', '/v1', False),
        ('api.openai.com:8080', 'custom', '/v1', False),        # not the provider's ports
    ]
    ROUTES = ['/responses', '/responses/compact', '/models', '/chat/completions', '/responses/',
              '/%72esponses']
    METHODS = ['POST', 'GET', 'PUT']

    def setUp(self):
        super().setUp()
        self.key = key('spec')
        self.forbid_key(self.key)
        self.forbid_task(self.TASK)
        # plain HTTP and TLS on one port: every host's :80 and :443 land here,
        # and each request says whether it came over TLS
        self.up = self.start_upstream(dual=True)
        self.auth = self.auth_file(record(self.key.v2, self.TASK))
        args = ['--upstream-ca', tls_material().ca]
        for host in sorted({a for a, _, _, _ in self.FORWARD} | {'spoof.test', 'eu.api.openai.com'}):
            for hp in ([host] if ':' in host else [host + ':80', host + ':443']):
                args += ['--resolve', '%s:127.0.0.1:%d' % (hp, self.up.port)]
        args += ['--gateway', '/v1/=http://api.openai.com/v1/',
                 '--gateway', '/anthropic/=http://api.anthropic.com/v1/',
                 '--gateway', '/ollama/=http://localhost:11434/v1/',
                 '--gateway', '/custom/=http://upstream.test/api/v1/']
        self.d = self.start_cred(self.auth, *args)
        self.n = 0
        self.refused = 0

    def cell(self, method, target, host_hdr, up_target, up_host, provider, credentialed, mode,
             extra=()):
        self.n += 1
        tag = 'cell-%d' % self.n
        body = None
        if method in ('POST', 'PUT'):
            body = b'{"cell":%d,"bin":"' % self.n + bytes(range(0x80, 0x90)) + b'"}\r\n'
        headers = [(b'Authorization', b'Bearer ' + SECRET.encode()),
                   (b'session-id', b'sess-%d' % self.n),
                   (b'X-Cell', tag.encode()),
                   (b'OpenAI-Beta', b'responses=experimental')] + list(extra)
        if body is not None:
            headers.append((b'Content-Type', b'application/json'))
        raw = build(method, target, host_hdr, headers, body)
        desc = '%s %s (Host: %s) [%s]' % (method, target, host_hdr, tag)
        try:
            resp = request(self.d.port, raw)
        except Exception:
            self.resync_audit(self.d)
            raise
        if resp.status != 200:
            self.resync_audit(self.d)
        self.assertEqual(resp.status, 200, '%s: %r\n%s' % (desc, resp, self.d.tail(1500)))
        got = self.up.wait_request(lambda r: r.header('X-Cell') == tag, timeout=3)
        self.assertIsNotNone(got, desc + ': never reached the upstream')
        self.assertEqual(got.request_line(), ('%s %s HTTP/1.1' % (method, up_target)).encode(),
                         desc + ': request line')
        self.assertEqual(got.header_all('Host'), [up_host], desc + ': Host')
        line = self.next_audit(self.d)[0]
        if credentialed:
            # every cell is written http://: a credentialed one is sent over
            # TLS to HOST:443
            self.check_credentialed(raw, got, ('agent-123', self.TASK), self.key.pub, host=up_host)
            kind = 'compaction' if up_target.endswith('/compact') else 'inference'
            self.assertAudit(line, provider=provider, action='assert', route=kind,
                             task=fingerprint(self.TASK), status=200, method=method, mode=mode,
                             host=up_host + ':443')
        else:
            # a pass-through cell goes the way the client wrote it: plain, to
            # the port it names (80 by default)
            self.assertFalse(got.tls, desc + ': a pass-through route keeps the client\'s scheme')
            self.assertAudit(line, host=up_host if ':' in up_host else up_host + ':80')
            ctx = '%s\nsent: %r\nupstream got: %r' % (desc, raw, got.raw_head)
            self.assertEqual(without(head_lines(got.raw_head), (b'host',)),
                             without(head_lines(raw), (b'host',)),
                             'pass-through must forward the head byte-identical (but Host): ' + ctx)
            self.assertEqual(got.header_all('Authorization'), ['Bearer ' + SECRET], ctx)
            self.assertEqual(bytes(got.raw_body) if got.framing == 'length' else bytes(got.body),
                             raw.split(b'\r\n\r\n', 1)[1], 'body: ' + ctx)
            self.assertAudit(line, provider=provider, action='passthrough', status=200,
                             method=method, mode=mode)
            self.assertIn(line['route'], ('other',), line)

    def refused_cell(self, method, target, host_hdr, up_host, provider, canonical, mode):
        """A near-miss spelling of a credentialed route on a host whose
        provider asserts: 400 noncanonical_route, nothing upstream."""
        self.n += 1
        self.refused += 1
        tag = 'cell-%d' % self.n
        body = b'{"cell":%d}' % self.n
        headers = [(b'Authorization', b'Bearer ' + SECRET.encode()),
                   (b'session-id', b'sess-%d' % self.n),
                   (b'X-Cell', tag.encode()),
                   (b'Content-Type', b'application/json')]
        raw = build(method, target, host_hdr, headers, body)
        desc = '%s %s (Host: %s) [%s]' % (method, target, host_hdr, tag)
        try:
            resp = request(self.d.port, raw)
        except Exception:
            self.resync_audit(self.d)
            raise
        if resp.status != 400:
            self.resync_audit(self.d)
        err = self.assertProxyError(resp, 400, 'noncanonical_route', self.d)
        self.assertIn(canonical, err['message'], desc + ': the error names the canonical route')
        self.assertIsNone(self.up.wait_request(lambda r: r.header('X-Cell') == tag, timeout=0.3),
                          desc + ': a refused near-miss must send nothing upstream')
        line = self.next_audit(self.d)[0]
        self.assertAudit(line, provider=provider, action='reject', route='inference', task=None,
                         status=400, error='noncanonical_route', method=method, mode=mode,
                         host=up_host if ':' in up_host else up_host + ':80')

    def test_forward_matrix(self):
        for authority, provider, base, cred in self.FORWARD:
            for route in self.ROUTES:
                for method in self.METHODS:
                    path = base + route
                    credentialed = (cred and method == 'POST'
                                    and route in ('/responses', '/responses/compact'))
                    near_miss = (cred and method == 'POST'
                                 and route in ('/responses/', '/%72esponses'))
                    with self.subTest(host=authority, method=method, path=path):
                        if near_miss:
                            self.refused_cell(method, 'http://%s%s' % (authority, path), authority,
                                              authority, provider, 'POST %s/responses' % base,
                                              'forward')
                        else:
                            self.cell(method, 'http://%s%s' % (authority, path), authority, path,
                                      authority, provider, credentialed, 'forward')
        self.assertEqual(self.refused, 4, 'POST /responses/ and /%72esponses on two asserting hosts')
        self.assertEqual(len(self.up.requests), self.n - self.refused,
                         'one upstream request per forwarded cell, no retries')

    def test_forward_destination_not_host_header(self):
        # A client-chosen Host never makes a request credentialed ...
        self.cell('POST', 'http://spoof.test/v1/responses', 'api.openai.com', '/v1/responses',
                  'spoof.test', 'custom', False, 'forward')
        self.cell('POST', 'http://spoof.test/backend-api/codex/responses', 'chatgpt.com',
                  '/backend-api/codex/responses', 'spoof.test', 'custom', False, 'forward')
        # ... nor makes a first-party one pass through with the client's key.
        self.cell('POST', 'http://eu.api.openai.com/v1/responses', 'upstream.test', '/v1/responses',
                  'eu.api.openai.com', 'openai', True, 'forward')
        # A query string does not hide a credentialed route from the log.
        self.cell('GET', 'http://api.openai.com/v1/models?api_key=' + SECRET, 'api.openai.com',
                  '/v1/models?api_key=' + SECRET, 'api.openai.com', 'openai', False, 'forward')

    def test_gateway_matrix(self):
        gw = [('/v1', 'api.openai.com', '/v1', 'openai', True),
              ('/anthropic', 'api.anthropic.com', '/v1', 'anthropic', False),
              ('/ollama', 'localhost:11434', '/v1', 'ollama', False),
              ('/custom', 'upstream.test', '/api/v1', 'custom', False)]
        host = '127.0.0.1:%d' % self.d.port
        for prefix, up_host, up_base, provider, cred in gw:
            for route in self.ROUTES:
                for method in self.METHODS:
                    credentialed = (cred and method == 'POST'
                                    and route in ('/responses', '/responses/compact'))
                    near_miss = (cred and method == 'POST'
                                 and route in ('/responses/', '/%72esponses'))
                    with self.subTest(prefix=prefix, method=method, route=route):
                        if near_miss:
                            self.refused_cell(method, prefix + route, host, up_host, provider,
                                              'POST %s/responses' % up_base, 'gateway')
                        else:
                            self.cell(method, prefix + route, host, up_base + route, up_host,
                                      provider, credentialed, 'gateway')
        self.assertEqual(self.refused, 2, 'POST /v1/responses/ and /v1/%72esponses')
        self.assertEqual(len(self.up.requests), self.n - self.refused)


# --------------------------------------------------------------------------
# 3. Fail closed
# --------------------------------------------------------------------------

class FailClosed(CredCase):
    TASK = 'task-recovered-e61f'

    def run_state(self, doc, code, reasons, mode=0o600, create=True, extra=()):
        """Start with the auth file in a bad state, check fail-closed behaviour,
        then put a good file in place and check recovery."""
        k = key('spec')
        self.forbid_key(k)
        self.forbid_task(self.TASK)
        tls = tls_material()
        # up: the hosts' :80 (pass-through routes stay plain); tup: their :443,
        # where every credentialed route goes, http:// or https://
        up = self.start_upstream()
        tup = self.start_upstream(tls=True)
        auth = self.auth_file(doc if create else None, mode=mode)
        d = self.start_cred(auth, '--upstream-ca', tls.ca,
                            '--resolve', 'api.openai.com:80:127.0.0.1:%d' % up.port,
                            '--resolve', 'api.openai.com:443:127.0.0.1:%d' % tup.port,
                            '--resolve', 'chatgpt.com:80:127.0.0.1:%d' % up.port,
                            '--resolve', 'chatgpt.com:443:127.0.0.1:%d' % tup.port,
                            '--resolve', 'api.anthropic.com:80:127.0.0.1:%d' % up.port,
                            '--gateway', '/v1/=http://api.openai.com/v1/', *extra)
        host = '127.0.0.1:%d' % d.port
        r = readyz(d)
        self.assertEqual(r.status, 503, 'readyz with a bad identity: %r' % r)
        doc_r = r.json()
        self.assertIn(doc_r.get('reason'), reasons, 'readyz reason: %r' % doc_r)
        # Credentialed routes: 503, nothing upstream, client key never used.
        creds = [('POST', 'http://api.openai.com/v1/responses', 'api.openai.com', 'openai', 'inference', 'forward'),
                 ('POST', 'http://api.openai.com/v1/responses/compact', 'api.openai.com', 'openai', 'compaction', 'forward'),
                 ('POST', 'http://chatgpt.com/backend-api/codex/responses', 'chatgpt.com', 'chatgpt', 'inference', 'forward'),
                 ('POST', 'https://chatgpt.com/backend-api/codex/responses/compact', 'chatgpt.com', 'chatgpt',
                  'compaction', 'forward'),
                 ('POST', '/v1/responses', host, 'openai', 'inference', 'gateway'),
                 ('POST', '/backend-api/codex/responses', host, 'chatgpt', 'inference', 'gateway')]
        for method, target, h, provider, kind, mode_ in creds:
            with self.subTest(target=target):
                raw = build(method, target, h, CODEX_HEADERS, ZSTD_BODY)
                resp = request(d.port, raw)
                err = self.assertProxyError(resp, 503, code, d)
                self.assertEqual(err['type'], 'agent_identity_error', err)
                if code == 'agent_task_missing':
                    self.assertEqual(err['message'], 'agent identity run task is not initialized')
                body = resp.body.decode('utf-8', 'replace')
                for s in self.forbidden:
                    self.assertNotIn(s, body, 'secret in the error body')
                self.assertAudit(self.next_audit(d)[0], provider=provider, route=kind, action='reject',
                                 task=None, status=503, error=code, mode=mode_, method=method)
        # The WebSocket handshake gets the fail-closed answer before the 426.
        ws = (b'GET http://api.openai.com/v1/responses HTTP/1.1\r\nHost: api.openai.com\r\n'
              b'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n'
              b'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' + b'Authorization: Bearer ' +
              SECRET.encode() + b'\r\n\r\n')
        self.assertProxyError(request(d.port, ws), 503, code, d)
        self.assertAudit(self.next_audit(d)[0], action='reject', status=503, error=code)
        time.sleep(0.3)
        self.assertEqual(up.requests, [], 'the upstream must receive nothing')
        self.assertEqual(up.connections, [], 'the upstream must not even be connected to')
        self.assertEqual(tup.connections, [], 'the TLS upstream must not even be connected to')
        # Pass-through routes are unaffected, the client's key kept.
        for method, target, h, provider in (
                ('GET', 'http://api.openai.com/v1/models', 'api.openai.com', 'openai'),
                ('POST', 'http://api.openai.com/v1/chat/completions', 'api.openai.com', 'openai'),
                ('GET', 'http://api.openai.com/v1/responses', 'api.openai.com', 'openai'),
                ('POST', 'http://api.anthropic.com/v1/messages', 'api.anthropic.com', 'anthropic'),
                ('GET', '/v1/models', host, 'openai')):
            tag = 'pt %s %s' % (method, target)
            body = b'{"x":1}' if method == 'POST' else None
            raw = build(method, target, h, [(b'Authorization', b'Bearer ' + SECRET.encode()),
                                            (b'X-Req', tag.encode())], body)
            resp = request(d.port, raw)
            self.assertEqual(resp.status, 200, '%s: %r' % (tag, resp))
            got = up.wait_request(lambda r: r.header('X-Req') == tag, timeout=3)
            self.assertIsNotNone(got, 'upstream never saw ' + tag)
            self.assertFalse(got.tls, tag)
            self.assertEqual(got.header_all('Authorization'), ['Bearer ' + SECRET])
            self.assertAudit(self.next_audit(d)[0], provider=provider, action='passthrough', task=None,
                             status=200)
        # A good file: ready within a couple of seconds, requests credentialed.
        write_auth(auth, record(k.v2, self.TASK))
        deadline = now() + 3.0
        while True:
            r = readyz(d)
            if r.status == 200 or now() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(r.status, 200, 'readyz after a good auth file: %r\n%s' % (r, d.tail(1500)))
        self.assertEqual(r.json().get('status'), 'ready')
        raw = build('POST', 'http://api.openai.com/v1/responses', 'api.openai.com',
                    CODEX_HEADERS + [(b'X-Req', b'recovered')], ZSTD_BODY)
        resp = request(d.port, raw)
        self.assertEqual(resp.status, 200, resp)
        # written as http://, sent over TLS to api.openai.com:443
        got = tup.wait_request(lambda r: r.header('X-Req') == 'recovered', timeout=3)
        self.check_credentialed(raw, got, ('agent-123', self.TASK), k.pub, host='api.openai.com')
        self.assertAudit(self.next_audit(d)[0], action='assert', task=fingerprint(self.TASK), status=200,
                         host='api.openai.com:443')
        self.assertEqual([r.header('X-Req') for r in up.requests],
                         ['pt %s %s' % (m, t) for m, t in (
                             ('GET', 'http://api.openai.com/v1/models'),
                             ('POST', 'http://api.openai.com/v1/chat/completions'),
                             ('GET', 'http://api.openai.com/v1/responses'),
                             ('POST', 'http://api.anthropic.com/v1/messages'),
                             ('GET', '/v1/models'))],
                         'the plain upstream sees only the pass-through requests')
        return d

    MISSING = ('missing', 'agent_identity_missing')
    NOTASK = ('no-task', 'agent_task_missing')
    INVALID = ('invalid', 'agent_identity_invalid')

    def test_missing_file(self):
        self.run_state(None, 'agent_identity_missing', self.MISSING, create=False)

    def test_no_agent_identity_in_file(self):
        self.run_state({'OPENAI_API_KEY': SECRET, 'tokens': None}, 'agent_identity_missing', self.MISSING)

    def test_no_task_id(self):
        self.run_state(record(key('spec').v2), 'agent_task_missing', self.NOTASK)

    def test_empty_task_id(self):
        self.run_state(record(key('spec').v2, ''), 'agent_task_missing', self.NOTASK)

    def test_whitespace_task_id(self):
        self.run_state(record(key('spec').v2, ' \t \n'), 'agent_task_missing', self.NOTASK)

    def test_null_task_id(self):
        self.run_state(record(key('spec').v2, None), 'agent_task_missing', self.NOTASK)

    def test_jwt_identity_has_no_task(self):
        self.run_state(jwt_identity(key('spec').v2), 'agent_task_missing', self.NOTASK)

    def test_malformed_json(self):
        good = json.dumps(record(key('spec').v2, 'task-torn-0001'))
        self.forbid_task('task-torn-0001')
        self.run_state(good[:len(good) // 2], 'agent_identity_invalid', self.INVALID)

    def test_bad_private_key(self):
        self.run_state(record('bm90IGEga2V5IGF0IGFsbA==', 'task-badkey-1'), 'agent_identity_invalid',
                       self.INVALID)

    def test_v2_key_with_mismatched_public_key(self):
        k, o = key('spec'), key('other')
        self.forbid_key(o)
        bad = base64.b64encode(V2_PREFIX + k.seed + b'\x81\x21\x00' + o.pub).decode()
        self.forbidden.add(bad)
        self.run_state(record(bad, 'task-mismatch-1'), 'agent_identity_invalid', self.INVALID)

    def test_world_readable_file_refused(self):
        self.forbid_task('task-insecure-1')
        d = self.run_state(record(key('spec').v2, 'task-insecure-1'), 'agent_identity_invalid',
                           self.INVALID, mode=0o644)
        self.assertIn('auth.json', d.stderr_text(), 'the refusal must be logged naming the file')

    def test_world_readable_file_allowed_with_flag(self):
        k = key('spec')
        self.forbid_key(k)
        task = 'task-insecure-ok-2'
        self.forbid_task(task)
        up = self.start_upstream(dual=True)
        auth = self.auth_file(record(k.v2, task), mode=0o644)
        d = self.start_cred(auth, '--allow-insecure-auth-file', '--upstream-ca', tls_material().ca,
                            '--resolve', 'api.openai.com:80:127.0.0.1:%d' % up.port,
                            '--resolve', 'api.openai.com:443:127.0.0.1:%d' % up.port)
        self.assertEqual(readyz(d).status, 200)
        raw = build('POST', 'http://api.openai.com/v1/responses', 'api.openai.com', CODEX_HEADERS, ZSTD_BODY)
        self.assertEqual(request(d.port, raw).status, 200)
        self.check_credentialed(raw, up.wait_request(timeout=3), ('agent-123', task), k.pub,
                                host='api.openai.com')


# --------------------------------------------------------------------------
# 4. Rotation
# --------------------------------------------------------------------------

class Rotation(CredCase):

    def setUp(self):
        super().setUp()
        self.ka, self.kb = key('spec'), key('other')
        self.forbid_key(self.ka)
        self.forbid_key(self.kb)
        # plain HTTP and TLS on one port, for the hosts' :80 and :443
        self.up = self.start_upstream(dual=True)
        self.n = 0

    def daemon(self, auth):
        args = []
        for h in ('api.openai.com', 'chatgpt.com'):
            for port in (80, 443):
                args += ['--resolve', '%s:%d:127.0.0.1:%d' % (h, port, self.up.port)]
        return self.start_cred(auth, '--upstream-ca', tls_material().ca, *args)

    def probe(self, d):
        """One credentialed request; returns (status, UpstreamRequest or None, raw)."""
        self.n += 1
        tag = 'probe-%d' % self.n
        raw = build('POST', 'http://api.openai.com/v1/responses', 'api.openai.com',
                    CODEX_HEADERS + [(b'X-Req', tag.encode())], ZSTD_BODY)
        resp = request(d.port, raw)
        got = None
        if resp.status == 200:
            got = self.up.wait_request(lambda r: r.header('X-Req') == tag, timeout=3)
            # written as http://, sent over TLS to api.openai.com:443
            self.assertIsNotNone(got, 'upstream never saw ' + tag)
            self.assertTrue(got.tls, 'credentialed request arrived over plaintext: %r' % got.raw_head)
            self.assertEqual(got.sni, 'api.openai.com')
        return resp, got, raw

    def task_of(self, got):
        v = got.header('Authorization') or ''
        tok = v.split(' ', 1)[1] if ' ' in v else ''
        return json.loads(base64.urlsafe_b64decode(tok + '=' * (-len(tok) % 4)))['task_id']

    def poll_task(self, d, task, limit=2.0):
        t0 = now()
        while True:
            resp, got, raw = self.probe(d)
            self.assertEqual(resp.status, 200, 'a request failed during rotation: %r' % resp)
            if self.task_of(got) == task or now() - t0 > limit:
                return got, raw, now() - t0
            time.sleep(0.03)

    def test_atomic_rotation_keeps_inflight_stream(self):
        ta, tb = 'task-rot-A-7d02', 'task-rot-B-e4c9'
        self.forbid_task(ta)
        self.forbid_task(tb)
        sse = self.up.route('/backend-api/codex/responses', SSE(n=4, handshake=True, ack_timeout=10))
        auth = self.auth_file(record(self.ka.v2, ta))
        d = self.daemon(auth)
        c = HTTPClient(d.port, timeout=15)
        self.addCleanup(c.close)
        sraw = build('POST', 'http://chatgpt.com/backend-api/codex/responses', 'chatgpt.com',
                     CODEX_HEADERS, b'{"stream":true}')
        c.send(sraw)
        resp = c.read_head('POST')
        self.assertEqual(resp.status, 200, resp)
        body = c.iter_body(resp, timeout=15)
        pending = b''
        events = []

        def read_event():
            nonlocal pending
            while b'\n\n' not in pending:
                _, data = next(body)
                pending += data
            ev, pending = pending.split(b'\n\n', 1)
            events.append(ev + b'\n\n')

        read_event()
        sreq = self.up.wait_request(lambda r: r.path == '/backend-api/codex/responses', timeout=3)
        self.check_credentialed(sraw, sreq, ('agent-123', ta), self.ka.pub, host='chatgpt.com')

        # Rotate (new key, runtime, account and task) while the stream is open.
        write_auth(auth, record(self.kb.v1, tb, runtime='agent-rotated-B', account='acct-rot-B'))
        got, raw, took = self.poll_task(d, tb, limit=2.0)
        self.assertEqual(self.task_of(got), tb, 'new task not used %.1fs after the rotation' % took)
        self.check_credentialed(raw, got, ('agent-rotated-B', tb), self.kb.pub, account='acct-rot-B',
                                host='api.openai.com')

        # The stream opened before the rotation runs to completion.
        for i in range(1, 4):
            sse.ack()
            read_event()
        for _ in body:
            pass
        self.assertTrue(resp.complete, 'stream did not end cleanly after the rotation: %r' % resp)
        self.assertEqual(b''.join(events), b''.join(SSE.event_bytes(i) for i in range(4)))
        self.assertEqual(sse.ack_timeouts, 0)
        # The stream's audit line is written once the exchange is finished.
        deadline = now() + 3.0
        while True:
            lines = self.audit(d)
            stream = [l for l in lines if l['provider'] == 'chatgpt']
            if stream or now() > deadline:
                break
            time.sleep(0.02)
        self.assertEqual(len(stream), 1, lines)
        self.assertAudit(stream[0], action='assert', task=fingerprint(ta), status=200,
                         host='chatgpt.com:443')
        self.assertIn(fingerprint(tb), [l['task'] for l in lines])

    def test_rotation_under_load_is_atomic(self):
        # Clients hammer a credentialed route while the identity (key, runtime
        # and task together) is replaced 15 times: every request succeeds and
        # every assertion is a consistent triple of one single record.
        keys = [self.ka, self.kb]
        recs = {}
        for i in range(16):
            recs['task-load-%02d-c3' % i] = ('agent-load-%02d' % i, keys[i % 2])
            self.forbid_task('task-load-%02d-c3' % i)
        order = sorted(recs)
        auth = self.auth_file(record(keys[0].v2, order[0], runtime=recs[order[0]][0]))
        d = self.daemon(auth)
        stop = threading.Event()
        statuses = []

        def client(n):
            i = 0
            while not stop.is_set():
                i += 1
                raw = build('POST', 'http://api.openai.com/v1/responses', 'api.openai.com',
                            [(b'Authorization', b'Bearer ' + SECRET.encode()),
                             (b'X-Load', b'%d-%d' % (n, i))], b'{}')
                try:
                    statuses.append(request(d.port, raw, timeout=5).status)
                except Exception as e:      # noqa: BLE001 -- reported below
                    statuses.append(repr(e))
        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(6)]
        for t in threads:
            t.start()
        for i, task in enumerate(order[1:], 1):
            time.sleep(0.06)
            runtime, k = recs[task]
            write_auth(auth, record(k.v2 if i % 3 else k.v1, task, runtime=runtime))
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(10)
        bad = [s for s in statuses if s != 200]
        self.assertEqual(bad, [], 'requests failed during rotations')
        self.assertGreater(len(statuses), 50)
        loads = [r for r in self.up.requests if r.header('X-Load')]
        self.assertEqual(len(loads), len(statuses))
        seen = {}
        for r in loads:
            self.assertTrue(r.tls, 'credentialed request arrived over plaintext: %r' % r.raw_head)
            self.assertEqual(r.sni, 'api.openai.com', r.raw_head)
            self.assertEqual(len(r.header_all('Authorization')), 1, r.raw_head)
            seen[r.header('Authorization')] = r
        tasks = set()
        for value in seen:
            tok = value.split(' ', 1)[1]
            env = json.loads(base64.urlsafe_b64decode(tok + '=' * (-len(tok) % 4)))
            self.assertIn(env['task_id'], recs, env)
            runtime, k = recs[env['task_id']]
            parse_assertion(value, runtime, env['task_id'], k.pub)
            tasks.add(env['task_id'])
        self.assertIn(order[-1], tasks, 'the last rotation was never used')
        self.assertGreater(len(tasks), 3, 'rotations were not picked up while loaded')

    def test_invalid_files_keep_last_good_state(self):
        ta, tb, tc = 'task-keep-A-11aa', 'task-keep-B-22bb', 'task-keep-C-33cc'
        for t in (ta, tb, tc):
            self.forbid_task(t)
        auth = self.auth_file(record(self.ka.v2, ta))
        d = self.daemon(auth)
        resp, got, raw = self.probe(d)
        self.check_credentialed(raw, got, ('agent-123', ta), self.ka.pub, host='api.openai.com')
        good_b = json.dumps(record(self.kb.v2, tb, runtime='agent-B'))

        def bad_writes():
            yield 'garbage renamed over', lambda: write_auth(auth, b'\x00garbage{{{ not json')
            yield 'torn in-place write', lambda: self._write_in_place(auth, good_b[:len(good_b) * 2 // 3])
            yield 'valid record, mode 0644', lambda: write_auth(auth, good_b, mode=0o644)
            yield 'record with a non-string task_id', lambda: write_auth(
                auth, record(self.kb.v2, 12345, runtime='agent-B'))
            yield 'record with an undecodable key', lambda: write_auth(
                auth, record('!!!' + self.kb.v2, tb, runtime='agent-B'))
        for what, do in bad_writes():
            with self.subTest(what=what):
                before = len(d.stderr_text())
                do()
                os.kill(d.pid, signal.SIGHUP)      # and make sure it is re-read
                # The reason is logged, naming the file.
                deadline = now() + 2.0
                while auth not in d.stderr_text()[before:] and now() < deadline:
                    time.sleep(0.02)
                self.assertIn(auth, d.stderr_text()[before:], 'no log line about the bad file (%s)' % what)
                time.sleep(0.1)
                resp, got, raw = self.probe(d)
                self.assertEqual(resp.status, 200, '%s replaced the good state: %r' % (what, resp))
                self.check_credentialed(raw, got, ('agent-123', ta), self.ka.pub, host='api.openai.com')
                self.assertEqual(readyz(d).status, 200)
        # A valid file without a task is a state, not a torn file: fail closed,
        # never keep signing for a task the file no longer names.
        write_auth(auth, record(self.kb.v2, runtime='agent-B'))
        deadline = now() + 2.0
        while True:
            resp, got, raw = self.probe(d)
            if resp.status != 200 or now() > deadline:
                break
            time.sleep(0.05)
        self.assertProxyError(resp, 503, 'agent_task_missing', d)
        # And a good one again.
        write_auth(auth, record(self.kb.v2, tc, runtime='agent-C'))
        got, raw, took = self.poll_task_after_503(d, tc)
        self.check_credentialed(raw, got, ('agent-C', tc), self.kb.pub, host='api.openai.com')

    def poll_task_after_503(self, d, task, limit=2.0):
        t0 = now()
        while True:
            resp, got, raw = self.probe(d)
            if resp.status == 200 and self.task_of(got) == task:
                return got, raw, now() - t0
            self.assertLess(now() - t0, limit, 'task %r not picked up: %r' % (task, resp))
            time.sleep(0.05)

    @staticmethod
    def _write_in_place(path, text):
        with open(path, 'w') as f:
            f.write(text)

    def test_sighup_rereads_symlinked_file(self):
        # auth.json is a symlink into another directory (as with mounted
        # secrets); the target is rewritten there, then SIGHUP.
        ta, tb = 'task-hup-A-4e4e', 'task-hup-B-5f5f'
        self.forbid_task(ta)
        self.forbid_task(tb)
        real = self.auth_file(record(self.ka.v2, ta), subdir='secret', name='identity.json')
        link = os.path.join(self.work, 'auth.json')
        os.symlink(real, link)
        d = self.daemon(link)
        resp, got, raw = self.probe(d)
        self.check_credentialed(raw, got, ('agent-123', ta), self.ka.pub, host='api.openai.com')
        write_auth(real, record(self.kb.v2, tb, runtime='agent-hup'))
        time.sleep(0.2)
        os.kill(d.pid, signal.SIGHUP)
        got, raw, took = self.poll_task(d, tb, limit=2.0)
        self.assertEqual(self.task_of(got), tb, 'SIGHUP did not re-read the auth file')
        self.check_credentialed(raw, got, ('agent-hup', tb), self.kb.pub, host='api.openai.com')
        self.assertTrue(d.alive())


# --------------------------------------------------------------------------
# 5. Audit log contents
# --------------------------------------------------------------------------

class Audit(CredCase):

    def test_audit_lines(self):
        k = key('spec')
        self.forbid_key(k)
        task = 'task-audit-0c0ffee'
        self.forbid_task(task)
        up = self.start_upstream(dual=True)
        up.route('/v1/responses/compact', Fixed(429, [('Content-Type', 'application/json')],
                                                b'{"error":{"code":"rate_limit_exceeded"}}'))
        auth = self.auth_file(record(k.v2, task))
        d = self.start_cred(auth, '--upstream-ca', tls_material().ca,
                            '--resolve', 'api.openai.com:80:127.0.0.1:%d' % up.port,
                            '--resolve', 'api.openai.com:443:127.0.0.1:%d' % up.port,
                            '--resolve', 'api.anthropic.com:80:127.0.0.1:%d' % up.port,
                            '--gateway', '/v1/=http://api.openai.com/v1/')
        host = '127.0.0.1:%d' % d.port

        def go(method, target, h, body=None):
            return request(d.port, build(method, target, h, [(b'Authorization', b'Bearer ' + SECRET.encode())],
                                         body))

        self.assertEqual(go('POST', 'http://api.openai.com/v1/responses?trace=1', 'api.openai.com', b'{}').status, 200)
        self.assertEqual(go('POST', '/v1/responses/compact', host, b'{}').status, 429)
        self.assertEqual(go('GET', 'http://api.openai.com/v1/models?key=' + SECRET, 'api.openai.com').status, 200)
        self.assertEqual(go('POST', 'http://api.anthropic.com/v1/messages', 'api.anthropic.com', b'{}').status, 200)
        lines = self.next_audit(d, 4)
        fp = fingerprint(task)
        self.assertEqual(fp, hashlib.sha256(task.encode()).hexdigest()[:8])
        # credentialed routes written http:// (forward, and the gateway's
        # http:// base) went over TLS to :443; pass-through kept plain :80
        self.assertAudit(lines[0], method='POST', path='/v1/responses', mode='forward', provider='openai',
                         route='inference', action='assert', task=fp, status=200,
                         host='api.openai.com:443')
        self.assertAudit(lines[1], method='POST', mode='gateway', provider='openai',
                         route='compaction', action='assert', task=fp, status=429,
                         host='api.openai.com:443')
        self.assertAudit(lines[2], method='GET', path='/v1/models', provider='openai', route='other',
                         action='passthrough', task=None, status=200, host='api.openai.com:80')
        self.assertAudit(lines[3], method='POST', provider='anthropic', route='other',
                         action='passthrough', task=None, status=200, host='api.anthropic.com:80')
        self.assertEqual([(r.tls, r.sni, r.path) for r in up.requests],
                         [(True, 'api.openai.com', '/v1/responses'),
                          (True, 'api.openai.com', '/v1/responses/compact'),
                          (False, None, '/v1/models'),
                          (False, None, '/v1/messages')])
        for l in lines:
            self.assertNotIn('error', l, 'upstream answers are not proxy errors: %r' % l)
            self.assertIn(l['host'], ('api.openai.com', 'api.anthropic.com'), l)
        # Now no task: a reject line.
        write_auth(auth, record(k.v2))
        deadline = now() + 2.0
        while readyz(d).status == 200 and now() < deadline:
            time.sleep(0.05)
        r = go('POST', 'http://api.openai.com/v1/responses', 'api.openai.com', b'{}')
        self.assertProxyError(r, 503, 'agent_task_missing', d)
        self.assertAudit(self.next_audit(d)[0], method='POST', provider='openai', route='inference',
                         action='reject', task=None, status=503, error='agent_task_missing')
        # /readyz and /healthz are the proxy's own: no audit line.
        request(d.port, b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        time.sleep(0.2)
        self.assertEqual(len(self.audit(d)), d.audit_seen, 'proxy-local endpoints audited: %r' % self.audit(d))


# --------------------------------------------------------------------------
# 7. scopeproxy classify
# --------------------------------------------------------------------------

class Classify(CredCase):

    def classify(self, auth, method, url, *headers):
        cmd = [scopeproxy_bin(), 'classify', '--auth-file', auth, method, url]
        for h in headers:
            cmd += ['--header', h]
        r = run_cmd(cmd, env=clean_env())
        self.assertEqual(r.returncode, 0, '%r: %s' % (cmd, r.stderr.decode()))
        out = r.stdout.decode()
        for s in self.forbidden:
            self.assertNotIn(s, out + r.stderr.decode())
        return json.loads(out)

    def expect(self, got, provider, route, action, reason=None):
        self.assertEqual((got.get('provider'), got.get('route'), got.get('action')),
                         (provider, route, action), got)
        self.assertIsInstance(got.get('reason'), str, got)
        if reason is not None:
            self.assertEqual(got['reason'], reason, got)

    def test_classify(self):
        k = key('spec')
        self.forbid_key(k)
        self.forbid_task('task-classify-77')
        good = self.auth_file(record(k.v2, 'task-classify-77'), name='good.json')
        notask = self.auth_file(record(k.v2), name='notask.json')
        blank = self.auth_file(record(k.v2, '   '), name='blank.json')
        torn = self.auth_file('{"agent_identity": {"agent_runtime_id": "a", "agent_priv', name='torn.json')
        missing = os.path.join(self.work, 'does-not-exist.json')
        ws = ('Upgrade: websocket', 'Connection: Upgrade')
        cases = [
            (good, 'POST', 'https://api.openai.com/v1/responses', (), 'openai', 'inference', 'assert'),
            (good, 'POST', 'https://api.openai.com/v1/responses/compact', (), 'openai', 'compaction', 'assert'),
            (good, 'POST', 'https://chatgpt.com/backend-api/codex/responses', (), 'chatgpt', 'inference', 'assert'),
            (good, 'POST', 'http://chat.openai.com/backend-api/codex/responses/compact', (), 'chatgpt',
             'compaction', 'assert'),
            (good, 'POST', 'https://eu.api.openai.com/v1/responses', (), 'openai', 'inference', 'assert'),
            (good, 'POST', 'https://API.OpenAI.COM./v1/responses', (), 'openai', 'inference', 'assert'),
            (good, 'GET', 'https://api.openai.com/v1/responses', ws, 'openai', 'inference', 'assert'),
            (good, 'GET', 'https://api.openai.com/v1/responses', (), 'openai', 'other', 'passthrough'),
            (good, 'PUT', 'https://api.openai.com/v1/responses', (), 'openai', 'other', 'passthrough'),
            # near-misses of a credentialed route on a host whose provider asserts
            (good, 'POST', 'https://api.openai.com/v1/responses/', (), 'openai', 'inference', 'reject'),
            (good, 'POST', 'https://api.openai.com/v1/%72esponses', (), 'openai', 'inference', 'reject'),
            (good, 'GET', 'https://api.openai.com/v1/models', (), 'openai', 'other', 'passthrough'),
            (good, 'POST', 'https://chatgpt.com/v1/responses', (), 'chatgpt', 'other', 'passthrough'),
            (good, 'POST', 'https://x.openai.azure.com/openai/v1/responses', (), 'azure-openai', 'other',
             'passthrough'),
            (good, 'POST', 'https://bedrock-runtime.us-east-1.amazonaws.com/v1/responses', (), 'bedrock',
             'other', 'passthrough'),
            (good, 'POST', 'http://localhost:11434/v1/responses', (), 'ollama', 'other', 'passthrough'),
            (good, 'POST', 'http://127.0.0.1:11434/v1/responses', (), 'ollama', 'other', 'passthrough'),
            (good, 'POST', 'http://[::1]:11434/v1/responses', (), 'ollama', 'other', 'passthrough'),
            (good, 'POST', 'http://localhost:1234/v1/responses', (), 'lmstudio', 'other', 'passthrough'),
            (good, 'POST', 'http://localhost:11435/v1/responses', (), 'custom', 'other', 'passthrough'),
            (good, 'POST', 'https://api.anthropic.com/v1/messages', (), 'anthropic', 'other', 'passthrough'),
            (good, 'POST', 'https://api.openai.com.evil.test/v1/responses', (), 'custom', 'other', 'passthrough'),
            (good, 'POST', 'https://evilapi.openai.com/v1/responses', (), 'custom', 'other', 'passthrough'),
            (good, 'POST', 'https://example.test/v1/responses', ('Host: api.openai.com',), 'custom', 'other',
             'passthrough'),
        ]
        for auth, method, url, hdrs, provider, route, action in cases:
            with self.subTest(method=method, url=url, headers=hdrs):
                self.expect(self.classify(auth, method, url, *hdrs), provider, route, action,
                            {'assert': 'credentialed route',
                             'reject': 'non-canonical spelling of a credentialed route'}.get(action))
        rejects = [(notask, 'agent_task_missing'), (blank, 'agent_task_missing'),
                   (missing, 'agent_identity_missing'), (torn, 'agent_identity_invalid')]
        for auth, reason in rejects:
            with self.subTest(auth=os.path.basename(auth)):
                self.expect(self.classify(auth, 'POST', 'https://api.openai.com/v1/responses'),
                            'openai', 'inference', 'reject', reason)
                self.expect(self.classify(auth, 'POST', 'https://chatgpt.com/backend-api/codex/responses/compact'),
                            'chatgpt', 'compaction', 'reject', reason)
                self.expect(self.classify(auth, 'GET', 'https://api.openai.com/v1/responses', *ws),
                            'openai', 'inference', 'reject', reason)
                # pass-through is unaffected by the identity state
                self.expect(self.classify(auth, 'GET', 'https://api.openai.com/v1/models'),
                            'openai', 'other', 'passthrough')


if __name__ == '__main__':
    main()
