#!/usr/bin/python3
"""Run-task registration (issue 6; spec sections 3-4), through the real daemon.

A local registration server (real HTTPS on loopback, reached through
`--resolve chatgpt.com:443:...` and trusted through `--upstream-ca`, so both
options are shown to apply to the registration request) answers
`POST /backend-api/v1/agent/agent-123/task/register` with a scripted
sequence: a plain task id (`task_id`, `taskId`), a sealed one
(`encrypted_task_id`, `encryptedTaskId`), 429 then success, a dropped
connection then success, persistent 500, a timeout, 401, a redirect,
non-JSON, truncated JSON, no id at all, a blank id, a box sealed to another
key, a box whose plaintext is not UTF-8 and one that is not base64.  It can
hold its answer (a gate) to make "a registration is running" last as long
as a test needs.

Checked independently of the daemon:
  * every registration request: method, path, Host/SNI, no Authorization,
    a JSON body of exactly {timestamp, signature}, a fresh RFC 3339 `Z`
    timestamp, and a pure Ed25519 signature over `agent-123:<timestamp>`
    verified with `openssl pkeyutl -verify -rawin` against the public key
    that openssl derives from the spec seed (SPKI DER prefix
    302a300506032b6570032100 + the raw 32 bytes);
  * sealed ids are produced at test time by a tiny C helper built against
    libsodium (crypto_sign_seed_keypair on the spec seed,
    crypto_sign_ed25519_pk_to_curve25519, crypto_box_seal); it self-checks
    with crypto_box_seal_open and its Ed25519 public key must equal
    openssl's.  Without cc/libsodium the sealed cases are skipped (with
    the reason);
  * the credentialed request (forward `POST http://api.openai.com/v1/responses`)
    reaches a mock upstream with an AgentAssertion that is decoded and
    verified here and carries the new task id; a minted credential never
    travels on plaintext, so the daemon sends that http:// request over
    TLS to api.openai.com:443 (the mock answers plain HTTP and TLS on one
    port and stands in for both :80 and :443; each credentialed request
    must arrive over TLS with SNI api.openai.com);
  * record form: auth.json gets the task, stays mode 0600, keeps every
    other field (known and unknown, top level and nested), leaves no temp
    file behind; JWT form: auth.json is byte-identical (same inode) and
    the task lives in memory; a newer auth.json written during a slow
    registration is not clobbered;
  * retries (count and backoff), failure (exactly `attempts` requests, the
    503 message with a reason and a retry time, /readyz
    registration_failed with retry_at, nothing new before the cooldown,
    a fresh registration once it is over), waiting (requests that arrive
    during a registration wait and go out with the new task, one
    registration for all of them; one that outlives `wait` gets the 503; a
    waiting request gets a failure at once), registration at start-up and
    on an auth-file reload, none when disabled, TLS verification of the
    registration server, SIGTERM during a registration;
  * no key, task id, registration signature, JWT or `AgentAssertion` in the
    daemon's stderr, stdout or audit log.

Recovery: an upstream answer {"error":{"code":"invalid_task_id"}} to a
credentialed request triggers exactly one re-registration and one replay
with the new task (same body); a second rejection goes back to the client,
and a body too large to keep is not replayed.

Run: SCOPEPROXY_BIN=proxy/scopeproxy SCOPEPROXY_SRCDIR=. /usr/bin/python3 \
         tests/integration/test_registration.py
"""

import atexit
import base64
import datetime
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (SECRET, Behaviour, HTTPClient, NoResponse, ProxyTestCase,  # noqa: E402
                     main, request, run_cmd, tls_material)
import agentid  # noqa: E402
from agentid import (B64STD_RE, SPEC_PUB_HEX, SPEC_SEED, SPEC_SIG_B64, SPEC_V2_B64,  # noqa: E402
                     TS_RE, V2_PREFIX, auth_doc, b64url, check_no_secrets, ed25519_verify,
                     fingerprint, identity_record, key_secrets, openssl_sign, parse_assertion,
                     parse_ts, public_key, task_in_assertion)


def now():
    return time.monotonic()


RUNTIME = 'agent-123'
REG_HOST = 'chatgpt.com'
REG_BASE = 'https://chatgpt.com/backend-api'
REG_PATH = '/backend-api/v1/agent/%s/task/register' % RUNTIME

# --------------------------------------------------------------------------
# Keys (the spec identity and the openssl verifier are in agentid.py)
# --------------------------------------------------------------------------

OTHER_SEED = hashlib.sha256(b'scopeproxy registration test: some other key').digest()

# --------------------------------------------------------------------------
# Sealed boxes: a tiny libsodium helper built at test time
# --------------------------------------------------------------------------

SEALER_C = r'''
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* sealer SEEDHEX < plaintext
 * prints: hex(Ed25519 public key) NL hex(crypto_box_seal(plaintext)) NL */
int main(int argc, char **argv)
{
	unsigned char seed[32], pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
	unsigned char xpk[32], xsk[32], msg[8192], *c, *back;
	char hex[2 * (sizeof(msg) + crypto_box_SEALBYTES) + 1];
	size_t n, clen, blen;

	if (sodium_init() < 0)
		return 10;
	if (argc != 2 || sodium_hex2bin(seed, sizeof(seed), argv[1], strlen(argv[1]),
	    NULL, &blen, NULL) != 0 || blen != 32)
		return 11;
	n = fread(msg, 1, sizeof(msg), stdin);
	if (crypto_sign_seed_keypair(pk, sk, seed) != 0 ||
	    crypto_sign_ed25519_pk_to_curve25519(xpk, pk) != 0 ||
	    crypto_sign_ed25519_sk_to_curve25519(xsk, sk) != 0)
		return 12;
	clen = n + crypto_box_SEALBYTES;
	c = malloc(clen);
	back = malloc(n + 1);
	if (c == NULL || back == NULL || crypto_box_seal(c, msg, n, xpk) != 0)
		return 13;
	if (crypto_box_seal_open(back, c, clen, xpk, xsk) != 0 || memcmp(back, msg, n) != 0)
		return 14;
	printf("%s\n", sodium_bin2hex(hex, sizeof(hex), pk, sizeof(pk)));
	printf("%s\n", sodium_bin2hex(hex, sizeof(hex), c, clen));
	return 0;
}
'''

_sealer = {'done': False, 'path': None, 'why': None}
_sealer_lock = threading.Lock()


def sealer():
    """Path of the compiled helper; raises unittest.SkipTest if it cannot be built."""
    with _sealer_lock:
        if not _sealer['done']:
            _sealer['done'] = True
            cc = shutil.which(os.environ.get('CC', 'cc')) or shutil.which('gcc')
            if cc is None:
                _sealer['why'] = 'no C compiler (cc) to build the libsodium sealing helper'
            else:
                flags = ['-lsodium']
                if shutil.which('pkg-config'):
                    r = run_cmd(['pkg-config', '--cflags', '--libs', 'libsodium'])
                    if r.returncode == 0:
                        flags = r.stdout.decode().split()
                    else:
                        _sealer['why'] = 'pkg-config does not know libsodium: %s' % r.stderr.decode().strip()
                if _sealer['why'] is None:
                    d = tempfile.mkdtemp(prefix='scopeproxy-sealer-')
                    atexit.register(shutil.rmtree, d, True)
                    src = os.path.join(d, 'sealer.c')
                    with open(src, 'w') as f:
                        f.write(SEALER_C)
                    exe = os.path.join(d, 'sealer')
                    r = run_cmd([cc, '-std=c11', '-O1', '-o', exe, src] + flags, timeout=60)
                    if r.returncode == 0:
                        _sealer['path'] = exe
                    else:
                        _sealer['why'] = ('cannot build the libsodium sealing helper (libsodium-dev '
                                          'missing?): %s' % r.stderr.decode('utf-8', 'replace')[-500:])
        if _sealer['path'] is None:
            raise unittest.SkipTest('sealed task ids not tested: ' + _sealer['why'])
        return _sealer['path']


def seal(seed, plaintext):
    """(libsodium's Ed25519 public key of seed, base64 sealed box of plaintext)."""
    if isinstance(plaintext, str):
        plaintext = plaintext.encode('utf-8')
    r = run_cmd([sealer(), seed.hex()], input=plaintext)
    if r.returncode != 0:
        raise RuntimeError('sealer failed with %d: %s' % (r.returncode, r.stderr.decode()))
    pk_hex, box_hex = r.stdout.decode().split()
    box = bytes.fromhex(box_hex)
    assert len(box) == len(plaintext) + 48, 'sealed box length'
    return bytes.fromhex(pk_hex), base64.b64encode(box).decode()


# --------------------------------------------------------------------------
# Auth files
# --------------------------------------------------------------------------

def record_doc(task_id=None, runtime=RUNTIME, key_b64=SPEC_V2_B64, **extra):
    """A Codex-style auth.json with a record identity and unknown fields
    (top level and inside the record, nested, unicode, numbers) that must
    survive the write-back."""
    r = identity_record(key_b64, runtime, account='acct-reg-001', user='user-reg-001',
                        future_field={'nested': [1, 2.5, {'x': None, 'y': [True, False]}],
                                      'note': 'h\u00e9llo \u2713'},
                        zz_unknown_last='kept')
    if task_id is not None:
        r['task_id'] = task_id
    r.update(extra)
    return auth_doc(r, tokens={'id_token': 'not-a-real-id-token', 'refresh_token': 'not-a-real-refresh'},
                    last_refresh='2026-04-22T10:11:12.123456Z',
                    x_unknown_top={'list': ['a', 'b'], 'n': 42, 'f': 0.1, 'empty': {}})


def jwt_token(runtime=RUNTIME, key_b64=SPEC_V2_B64):
    return agentid.jwt_token(key_b64, runtime, 'acct-reg-jwt', 'user-reg-jwt',
                             header={'alg': 'RS256', 'typ': 'JWT', 'kid': 'test'}, sig=b'\x02' * 256,
                             iat=1776902400, exp=4102444800)


def write_auth(path, doc, mode=0o600):
    """Atomically replace `path`; returns the bytes written."""
    return agentid.write_auth(path, doc, mode, ensure_ascii=False, tmp_tag='test-tmp')


def read_bytes(path):
    with open(path, 'rb') as f:
        return f.read()


# --------------------------------------------------------------------------
# Independent checkers
# --------------------------------------------------------------------------

TS_IN_TEXT_RE = re.compile(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ')


def check_reg_body(body, runtime, pub, at_wall=None, max_skew=5.0):
    """A registration body: exactly {"timestamp","signature"}, the signature
    pure Ed25519 over '<runtime>:<timestamp>'.  Returns (timestamp, signature b64)."""
    def need(cond, what):
        if not cond:
            raise AssertionError('registration body: %s (body %r)' % (what, body[:400]))
    try:
        doc = json.loads(bytes(body).decode('utf-8'))
    except ValueError as e:
        raise AssertionError('registration body is not JSON (%s): %r' % (e, body[:400]))
    need(isinstance(doc, dict), 'not an object')
    need(sorted(doc) == ['signature', 'timestamp'], 'members %r, want exactly timestamp and signature'
         % sorted(doc))
    ts, sig_b64 = doc['timestamp'], doc['signature']
    need(isinstance(ts, str) and len(ts) == 20 and TS_RE.match(ts), 'timestamp format %r' % (ts,))
    if at_wall is not None:
        need(abs(parse_ts(ts) - at_wall) <= max_skew, 'timestamp %s is %.1fs from the arrival time'
             % (ts, at_wall - parse_ts(ts)))
    need(isinstance(sig_b64, str) and len(sig_b64) == 88 and B64STD_RE.match(sig_b64),
         'signature is not 88 chars of padded standard base64: %r' % (sig_b64,))
    sig = base64.b64decode(sig_b64, validate=True)
    need(len(sig) == 64, 'signature length %d' % len(sig))
    need(ed25519_verify(pub, ('%s:%s' % (runtime, ts)).encode('utf-8'), sig),
         "Ed25519 signature does not verify over '%s:%s' with the identity's public key" % (runtime, ts))
    return ts, sig_b64


# --------------------------------------------------------------------------
# The registration server
# --------------------------------------------------------------------------

def answer_json(status, obj, reason=None):
    return {'status': status, 'body': json.dumps(obj).encode(), 'ctype': 'application/json',
            'reason': reason}


def answer_raw(status, body, ctype='text/html', headers=()):
    return {'status': status, 'body': body, 'ctype': ctype, 'reason': None, 'headers': list(headers)}


def answer_close():
    return {'close': True}


REASONS = {200: 'OK', 201: 'Created', 400: 'Bad Request', 429: 'Too Many Requests',
           500: 'Internal Server Error', 502: 'Bad Gateway', 503: 'Service Unavailable'}


class RegScript(Behaviour):
    """Answers registration requests from `queue` (first in, first out), then
    `default`.  While `gate` is clear, the answer is held (up to 30 s)."""

    def __init__(self, default):
        self.default = default
        self.queue = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()
        self.arrivals = []          # (monotonic, wall) per request
        self.answered = 0

    def hold(self):
        self.gate.clear()

    def release(self):
        self.gate.set()

    def handle(self, ctx):
        ctx.read_body()
        with self.lock:
            self.arrivals.append((now(), time.time()))
            ans = self.queue.pop(0) if self.queue else self.default
        self.gate.wait(30)
        with self.lock:
            self.answered += 1
        if ans.get('close'):
            ctx.conn.close()
            return False
        body = ans['body']
        extra = ''.join('%s: %s\r\n' % kv for kv in ans.get('headers', ()))
        head = ('HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n'
                % (ans['status'], ans.get('reason') or REASONS.get(ans['status'], 'Whatever'),
                   ans['ctype'], len(body), extra)).encode()
        ctx.send(head + body)
        return True


def readyz(d):
    r = request(d.port, b'GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
    try:
        doc = r.json()
    except ValueError:
        doc = None
    return r, doc


# --------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------

class RegCase(ProxyTestCase):
    TIMEOUT = 45
    REG = {'cooldown': 30, 'wait': 10, 'timeout': 5, 'attempts': 3, 'backoff': 0.1}

    def setUp(self):
        super().setUp()
        self.work = tempfile.mkdtemp(prefix='scopeproxy-regt-')
        self.addCleanup(shutil.rmtree, self.work, True)
        self.pub = public_key(SPEC_SEED)
        self.forbidden = {SECRET, 'AgentAssertion'} | key_secrets(SPEC_SEED)
        self.tls = tls_material()
        # api.openai.com:80 and :443 (Echo).  Credentialed requests written
        # as http:// go upstream over TLS to :443; plain :80 stays resolvable
        # so a regression would land here on plaintext and be caught.
        self.up = self.start_upstream(dual=True)
        self.regsrv = self.start_upstream(tls=True)     # chatgpt.com:443
        self.script = self.regsrv.route('/', RegScript(answer_json(500, {'error': 'unscripted'})))
        # Registered after start_upstream: runs before the server closes.
        self.addCleanup(self.script.release)
        self.authdir = os.path.join(self.work, 'codex')
        os.makedirs(self.authdir)
        self.auth = os.path.join(self.authdir, 'auth.json')
        self.nreq = 0
        self.reg_checked = 0

    def forbid(self, *strings):
        for s in strings:
            self.forbidden.add(s)
            self.forbidden.add(json.dumps(s)[1:-1])

    def daemon(self, reg=None, extra=(), upstream_ca=True):
        cfg = {'task_registration': dict(self.REG, base_url=REG_BASE, **(reg or {}))}
        cfgpath = os.path.join(self.work, 'config-%d.json' % len(os.listdir(self.work)))
        with open(cfgpath, 'w') as f:
            json.dump(cfg, f)
        audit = os.path.join(self.work, 'audit-%d.jsonl' % len(os.listdir(self.work)))
        d = self.start_daemon('--config', cfgpath, '--auth-file', self.auth, '--audit-log', audit,
                              '--log-level', 'debug',
                              *(('--upstream-ca', self.tls.ca) if upstream_ca else ()),
                              '--resolve', '%s:443:127.0.0.1:%d' % (REG_HOST, self.regsrv.port),
                              '--resolve', 'api.openai.com:80:127.0.0.1:%d' % self.up.port,
                              '--resolve', 'api.openai.com:443:127.0.0.1:%d' % self.up.port,
                              *extra)
        d.audit_path = audit
        # Runs before the harness's own daemon cleanup: stop, then grep.
        self.addCleanup(self._check_secrets, d)
        return d

    def _check_secrets(self, d):
        d.stop()
        check_no_secrets(self, d, self.forbidden)

    # -- registration requests ---------------------------------------------
    def reg_requests(self):
        return [r for r in self.regsrv.requests]

    def wait_reg_count(self, n, timeout=5.0):
        self.regsrv.wait(lambda: len(self.regsrv.requests) >= n, timeout)
        return len(self.regsrv.requests)

    def check_reg_requests(self, runtime=RUNTIME, count=None):
        """Check the registration requests not checked yet (the next `count`,
        or all), as registrations for `runtime`."""
        reqs = self.reg_requests()
        end = len(reqs) if count is None else min(len(reqs), self.reg_checked + count)
        for i, req in enumerate(reqs[self.reg_checked:end], self.reg_checked):
            ctx = 'registration request %d: %r' % (i, req.raw_head)
            self.assertTrue(self.regsrv.wait_done(req, 10), 'request never completed: ' + ctx)
            self.assertEqual(req.method, 'POST', ctx)
            self.assertEqual(req.target, '/backend-api/v1/agent/%s/task/register' % runtime, ctx)
            self.assertEqual(req.header_all('Host'), [REG_HOST], ctx)
            self.assertTrue(req.tls, 'registration must go over TLS to the resolved address: ' + ctx)
            self.assertEqual(req.sni, REG_HOST, 'SNI: ' + ctx)
            self.assertEqual(req.header_all('Authorization'), [], 'registration carries no Authorization: '
                             + ctx)
            self.assertNotIn(SECRET, req.raw_head.decode('latin-1'), ctx)
            ctype = req.header('Content-Type') or ''
            self.assertTrue(ctype.lower().startswith('application/json'), 'Content-Type: ' + ctx)
            self.assertTrue(req.body_complete, ctx)
            wall = time.time() - (now() - req.t_head)
            ts, sig = check_reg_body(req.body, runtime, self.pub, at_wall=wall)
            self.forbid(sig)
        self.reg_checked = end
        return reqs

    # -- credentialed requests -----------------------------------------------
    def send(self, d, tag=None, timeout=20.0):
        self.nreq += 1
        tag = tag or 'req-%d' % self.nreq
        body = b'{"model":"gpt-test","input":"hi","stream":true}'
        raw = (b'POST http://api.openai.com/v1/responses HTTP/1.1\r\nHost: api.openai.com\r\n'
               b'Authorization: Bearer ' + SECRET.encode() + b'\r\nContent-Type: application/json\r\n'
               b'X-Req: ' + tag.encode() + b'\r\nContent-Length: %d\r\n\r\n' % len(body) + body)
        t0 = now()
        try:
            resp = request(d.port, raw, timeout=timeout)
        except (socket.timeout, NoResponse) as e:
            self.fail('credentialed request %s: no answer after %.1fs (%s)\n%s'
                      % (tag, now() - t0, e, d.tail(2000)))
        resp.elapsed = now() - t0
        resp.got = None
        if resp.status == 200:
            resp.got = self.up.wait_request(lambda r: r.header('X-Req') == tag, timeout=3)
        return resp

    def assertOverTLS(self, got):
        """A credentialed request reached the upstream over TLS verified for
        api.openai.com (the http:// it was written as is upgraded)."""
        ctx = repr(got.raw_head)
        self.assertTrue(got.tls, 'credentialed request arrived over plaintext: ' + ctx)
        self.assertEqual(got.sni, 'api.openai.com', 'TLS name: ' + ctx)
        self.assertEqual(got.header_all('Host'), ['api.openai.com'], 'Host: ' + ctx)

    def assertCredentialed(self, resp, task, d, runtime=RUNTIME):
        self.assertEqual(resp.status, 200, 'credentialed request: %r\n%s' % (resp, d.tail(2000)))
        got = resp.got
        self.assertIsNotNone(got, 'the upstream never saw the request')
        self.assertOverTLS(got)
        auths = got.header_all('Authorization')
        self.assertEqual(len(auths), 1, 'exactly one Authorization upstream: %r' % got.raw_head)
        self.assertNotIn(SECRET, got.raw_head.decode('latin-1'), 'client credential forwarded')
        parse_assertion(auths[0], runtime, task, self.pub)
        return got

    def assertTaskMissing(self, resp, d):
        err = self.assertProxyError(resp, 503, 'agent_task_missing', d)
        body = resp.body.decode('utf-8', 'replace')
        for s in self.forbidden:
            self.assertNotIn(s, body, 'secret in the error body')
        return err

    def wait_readyz(self, d, status, timeout=5.0):
        deadline = now() + timeout
        while True:
            r, doc = readyz(d)
            if (doc or {}).get('status') == status or now() > deadline:
                return r, doc
            time.sleep(0.05)

    def wait_auth_task(self, timeout=5.0):
        deadline = now() + timeout
        while True:
            try:
                doc = json.loads(read_bytes(self.auth))
                t = doc.get('agent_identity', {}).get('task_id')
                if t:
                    return doc
            except (OSError, ValueError):
                pass
            if now() > deadline:
                return None
            time.sleep(0.05)

    def audit(self, d):
        try:
            return [json.loads(l) for l in read_bytes(d.audit_path).decode().splitlines()]
        except OSError:
            return []

    def assertPersisted(self, original, task):
        """auth.json now carries `task`, everything else unchanged, 0600, no leftovers."""
        doc = self.wait_auth_task()
        self.assertIsNotNone(doc, 'the registered task was never written into auth.json:\n%r'
                             % read_bytes(self.auth)[:2000])
        self.assertEqual(doc['agent_identity'].get('task_id'), task, 'task_id written back')
        want = json.loads(json.dumps(original))
        want['agent_identity']['task_id'] = task
        self.assertEqual(doc, want, 'every other field (known and unknown) must be kept')
        self.assertEqual(list(doc), list(want), 'top-level key order')
        self.assertEqual([k for k in doc['agent_identity'] if k != 'task_id'],
                         [k for k in want['agent_identity'] if k != 'task_id'], 'record key order')
        st = os.stat(self.auth)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600, 'auth.json mode after the write-back')
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(sorted(os.listdir(self.authdir)), ['auth.json'],
                         'temp files left next to auth.json')
        return doc


# --------------------------------------------------------------------------
# 0. The test's own tools can fail
# --------------------------------------------------------------------------

class Sanity(RegCase):

    def test_checkers_reject_what_they_must(self):
        pub = self.pub
        self.assertEqual(pub.hex(), SPEC_PUB_HEX, 'openssl-derived public key of the spec seed')
        self.assertEqual(base64.b64encode(V2_PREFIX + SPEC_SEED + b'\x81\x21\x00' + pub).decode(),
                         SPEC_V2_B64)
        self.assertTrue(ed25519_verify(pub, b'agent-123:task-123:2026-04-23T00:00:00Z',
                                       base64.b64decode(SPEC_SIG_B64)), 'spec vector')
        ts = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
        sig = openssl_sign(SPEC_SEED, ('agent-123:%s' % ts).encode())
        good = json.dumps({'timestamp': ts, 'signature': base64.b64encode(sig).decode()}).encode()
        self.assertEqual(check_reg_body(good, RUNTIME, pub, at_wall=time.time())[0], ts)
        bad_sig = bytearray(sig)
        bad_sig[5] ^= 1
        other_sig = openssl_sign(OTHER_SEED, ('agent-123:%s' % ts).encode())
        wrong_msg = openssl_sign(SPEC_SEED, ('agent-123:task-1:%s' % ts).encode())
        old_ts = '2020-01-01T00:00:00Z'
        old_sig = openssl_sign(SPEC_SEED, ('agent-123:%s' % old_ts).encode())
        for name, body in (
                ('tampered', {'timestamp': ts, 'signature': base64.b64encode(bytes(bad_sig)).decode()}),
                ('other key', {'timestamp': ts, 'signature': base64.b64encode(other_sig).decode()}),
                ('wrong message', {'timestamp': ts, 'signature': base64.b64encode(wrong_msg).decode()}),
                ('stale', {'timestamp': old_ts, 'signature': base64.b64encode(old_sig).decode()}),
                ('urlsafe b64', {'timestamp': ts, 'signature': base64.urlsafe_b64encode(sig).decode()
                                 .replace('=', '')}),
                ('extra member', {'timestamp': ts, 'signature': base64.b64encode(sig).decode(),
                                  'agent_runtime_id': RUNTIME}),
                ('fractional ts', {'timestamp': ts[:-1] + '.000Z', 'signature': base64.b64encode(sig).decode()})):
            with self.subTest(name=name):
                with self.assertRaises(AssertionError):
                    check_reg_body(json.dumps(body).encode(), RUNTIME, pub, at_wall=time.time())
        with self.assertRaises(AssertionError):
            check_reg_body(good, 'agent-124', pub, at_wall=time.time())
        # The assertion checker: a wrong task id is refused.
        tok = {'agent_runtime_id': RUNTIME, 'task_id': 'task-a', 'timestamp': ts}
        tok['signature'] = base64.b64encode(openssl_sign(SPEC_SEED, ('agent-123:task-a:%s' % ts).encode())).decode()
        hdr = 'AgentAssertion ' + b64url(json.dumps(tok, separators=(',', ':'), sort_keys=True).encode())
        parse_assertion(hdr, RUNTIME, 'task-a', pub)
        with self.assertRaises(AssertionError):
            parse_assertion(hdr, RUNTIME, 'task-b', pub)
        self.assertEqual(task_in_assertion(hdr), 'task-a')
        # The JWT builder carries the record's claims.
        payload = jwt_token().split('.')[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + '=' * (-len(payload) % 4)))
        self.assertEqual(claims['agent_runtime_id'], RUNTIME)
        self.assertEqual(claims['agent_private_key'], SPEC_V2_B64)

    def test_sealer_agrees_with_openssl(self):
        pk, box = seal(SPEC_SEED, 'task-sanity')
        self.assertEqual(pk, self.pub, "libsodium's and openssl's public key of the spec seed differ")
        self.assertEqual(len(base64.b64decode(box)), len('task-sanity') + 48)
        pk2, box2 = seal(SPEC_SEED, 'task-sanity')
        self.assertNotEqual(box, box2, 'sealed boxes must use a fresh ephemeral key')
        pk3, _ = seal(OTHER_SEED, 'x')
        self.assertEqual(pk3, public_key(OTHER_SEED))
        self.assertNotEqual(pk3, pk)


# --------------------------------------------------------------------------
# 1. Successful registration
# --------------------------------------------------------------------------

class Success(RegCase):

    def run_success(self, answer, task, tasks_forbidden=()):
        """Start with a record without task, the server answering `answer`;
        check the request, the write-back and the credentialed request."""
        self.forbid(task, *tasks_forbidden)
        self.script.default = answer
        original = record_doc()
        write_auth(self.auth, original)
        d = self.daemon()
        self.assertEqual(self.wait_reg_count(1), 1, 'no registration at start-up\n' + d.tail(2000))
        self.assertPersisted(original, task)
        r, doc = self.wait_readyz(d, 'ready')
        self.assertEqual(r.status, 200, 'readyz after registration: %r\n%s' % (r, d.tail(2000)))
        self.assertEqual(doc, {'status': 'ready'})
        resp = self.send(d)
        self.assertCredentialed(resp, task, d)
        resp = self.send(d)
        self.assertCredentialed(resp, task, d)
        time.sleep(0.3)
        reqs = self.check_reg_requests()
        self.assertEqual(len(reqs), 1, 'exactly one registration')
        lines = [a for a in self.audit(d) if a.get('action') == 'assert']
        self.assertEqual([a.get('task') for a in lines], [fingerprint(task)] * 2, 'audit task fingerprints')
        self.assertEqual([(a.get('host'), a.get('port')) for a in lines], [('api.openai.com', 443)] * 2,
                         'audit host: the http:// request went upstream over TLS to :443')
        self.assertIn('auth.json', d.stderr_text(), 'the write-back should be logged, naming the file')
        return d

    def test_plain_task_id(self):
        self.run_success(answer_json(200, {'task_id': 'task-reg-plain-5a0c9e'}), 'task-reg-plain-5a0c9e')

    def test_plain_task_id_camel_case(self):
        self.run_success(answer_json(200, {'taskId': 'task-reg-camel-77e1d2', 'created': True}),
                         'task-reg-camel-77e1d2')

    def test_sealed_task_id(self):
        task = 'task-reg-sealed-\u00e9-31b7f0'        # non-ASCII UTF-8 plaintext
        _, box = seal(SPEC_SEED, task)
        self.run_success(answer_json(200, {'encrypted_task_id': box}), task)

    def test_sealed_task_id_camel_case(self):
        task = 'task-reg-sealed-camel-90ac44'
        _, box = seal(SPEC_SEED, task)
        self.run_success(answer_json(200, {'encryptedTaskId': box}), task)

    def test_task_id_needing_json_escapes(self):
        task = 'task-"q"\\b/\u00e9-5e6f'
        self.run_success(answer_json(200, {'task_id': task}), task)

    def test_plain_id_comes_first(self):
        # "the first present of task_id, taskId, encrypted_task_id, encryptedTaskId"
        task, other = 'task-reg-first-1c2d3e', 'task-reg-second-4f5a6b'
        _, box = seal(SPEC_SEED, other)
        self.run_success(answer_json(200, {'encrypted_task_id': box, 'taskId': task}), task,
                         tasks_forbidden=(other,))

    def test_429_then_success(self):
        task = 'task-reg-after429-d41c'
        self.forbid(task)
        self.script.queue = [answer_json(429, {'error': {'message': 'slow down'}})]
        self.script.default = answer_json(200, {'task_id': task})
        original = record_doc()
        write_auth(self.auth, original)
        d = self.daemon(reg={'backoff': 0.4})
        self.assertPersisted(original, task)
        self.assertCredentialed(self.send(d), task, d)
        time.sleep(0.3)
        reqs = self.check_reg_requests()
        self.assertEqual(len(reqs), 2, '429 must be retried once, then stop: %r' % reqs)
        gap = self.script.arrivals[1][0] - self.script.arrivals[0][0]
        self.assertGreaterEqual(gap, 0.3, 'retry after 429 came %.3fs after the first try (backoff 0.4s)' % gap)

    def test_network_error_then_success(self):
        task = 'task-reg-afterdrop-0b9e'
        self.forbid(task)
        self.script.queue = [answer_close()]
        self.script.default = answer_json(200, {'task_id': task})
        original = record_doc()
        write_auth(self.auth, original)
        d = self.daemon()
        self.assertPersisted(original, task)
        self.assertCredentialed(self.send(d), task, d)
        time.sleep(0.3)
        self.assertEqual(len(self.check_reg_requests()), 2, 'a dropped connection is retried once')

    def test_jwt_identity_keeps_task_in_memory(self):
        task = 'task-reg-jwt-6e21aa'
        tok = jwt_token()
        self.forbid(task, tok, tok.split('.')[1])
        self.forbidden.add('eyJ')
        self.script.default = answer_json(200, {'task_id': task})
        data = write_auth(self.auth, {'OPENAI_API_KEY': None, 'agent_identity': tok,
                                      'x_unknown_top': [1, 2, 3]})
        st0 = os.stat(self.auth)
        d = self.daemon()
        self.assertEqual(self.wait_reg_count(1), 1, 'no registration for the JWT identity\n' + d.tail(2000))
        r, doc = self.wait_readyz(d, 'ready')
        self.assertEqual(r.status, 200, 'readyz: %r\n%s' % (r, d.tail(2000)))
        self.assertCredentialed(self.send(d), task, d)
        self.assertCredentialed(self.send(d), task, d)
        time.sleep(0.5)
        self.assertEqual(read_bytes(self.auth), data, 'a JWT auth.json must not be rewritten')
        st1 = os.stat(self.auth)
        self.assertEqual((st1.st_ino, st1.st_mtime_ns, stat.S_IMODE(st1.st_mode)),
                         (st0.st_ino, st0.st_mtime_ns, 0o600), 'auth.json touched')
        self.assertEqual(sorted(os.listdir(self.authdir)), ['auth.json'])
        self.assertEqual(len(self.check_reg_requests()), 1, 'exactly one registration')

    def test_reload_without_task_registers(self):
        first, task = 'task-reg-initial-aa01', 'task-reg-onreload-bb02'
        self.forbid(first, task)
        self.script.default = answer_json(200, {'task_id': task})
        write_auth(self.auth, record_doc(first))
        d = self.daemon()
        r, _ = readyz(d)
        self.assertEqual(r.status, 200, r)
        self.assertCredentialed(self.send(d), first, d)
        time.sleep(0.5)
        self.assertEqual(self.regsrv.requests, [], 'no registration when the identity has a task')
        # The agent (or a person) rewrites auth.json without a task.
        original = record_doc(plan_type='pro')
        write_auth(self.auth, original)
        self.assertEqual(self.wait_reg_count(1), 1, 'no registration after the reload\n' + d.tail(2000))
        self.assertPersisted(original, task)
        deadline = now() + 3
        while True:
            resp = self.send(d)
            if resp.status != 200 or task_in_assertion(resp.got.header('Authorization')) == task \
                    or now() > deadline:
                break
            time.sleep(0.05)
        self.assertCredentialed(resp, task, d)
        self.assertEqual(len(self.check_reg_requests()), 1)


# --------------------------------------------------------------------------
# 2. Requests during a registration
# --------------------------------------------------------------------------

class Waiting(RegCase):

    def test_requests_wait_for_a_slow_registration(self):
        task = 'task-reg-slow-4471ce'
        self.forbid(task)
        self.script.default = answer_json(200, {'task_id': task})
        self.script.hold()
        original = record_doc()
        write_auth(self.auth, original)
        d = self.daemon(reg={'wait': 10})
        self.assertEqual(self.wait_reg_count(1), 1, 'no registration at start-up\n' + d.tail(2000))
        r, doc = readyz(d)
        self.assertEqual(r.status, 503, 'readyz during registration: %r' % r)
        self.assertEqual((doc or {}).get('status'), 'registering', r)
        results = [None] * 3
        t_release = [None]

        def client(i):
            results[i] = self.send(d, tag='waiter-%d' % i)
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        self.assertEqual([r for r in results if r is not None], [], 'requests must wait for the registration')
        self.assertEqual(self.up.requests, [], 'nothing may go upstream before the task exists')
        t_release[0] = now()
        self.script.release()
        for t in threads:
            t.join(15)
        for i, resp in enumerate(results):
            with self.subTest(waiter=i):
                self.assertIsNotNone(resp, 'waiter %d never answered' % i)
                self.assertCredentialed(resp, task, d)
                self.assertGreaterEqual(resp.got.t_head, t_release[0])
        self.assertPersisted(original, task)
        time.sleep(0.3)
        self.assertEqual(len(self.check_reg_requests()), 1, 'one registration in flight, not one per request')

    def test_wait_runs_out(self):
        task = 'task-reg-late-e2f7'
        self.forbid(task)
        self.script.default = answer_json(200, {'task_id': task})
        self.script.hold()
        write_auth(self.auth, record_doc())
        d = self.daemon(reg={'wait': 1, 'timeout': 20})
        self.assertEqual(self.wait_reg_count(1), 1)
        resp = self.send(d)
        err = self.assertTaskMissing(resp, d)
        self.assertGreaterEqual(resp.elapsed, 0.8, 'answered before task_registration.wait ran out')
        self.assertLess(resp.elapsed, 4.0, 'waited far longer than task_registration.wait (1s)')
        self.assertIn('regist', err['message'].lower(), err)
        self.assertEqual(self.up.requests, [])
        self.script.release()
        r, doc = self.wait_readyz(d, 'ready')
        self.assertEqual(r.status, 200, '%r\n%s' % (r, d.tail(2000)))
        self.assertCredentialed(self.send(d), task, d)
        time.sleep(0.3)
        self.assertEqual(len(self.check_reg_requests()), 1, 'a timed-out wait must not start another registration')


# --------------------------------------------------------------------------
# 3. Failures
# --------------------------------------------------------------------------

class Failure(RegCase):

    def test_persistent_500(self):
        task = 'task-reg-eventually-7d3a'
        self.forbid(task)
        self.script.default = answer_json(500, {'error': {'message': 'registration backend down'}})
        original = record_doc()
        data = write_auth(self.auth, original)
        cooldown, backoff = 5, 0.2
        t_start = time.time()
        d = self.daemon(reg={'attempts': 3, 'backoff': backoff, 'cooldown': cooldown})
        r, doc = self.wait_readyz(d, 'registration_failed', timeout=8)
        self.assertEqual(r.status, 503, 'readyz after the failure: %r\n%s' % (r, d.tail(2000)))
        self.assertEqual(doc.get('status'), 'registration_failed', doc)
        self.assertIn('500', str(doc.get('reason')), 'readyz reason should name the HTTP status: %r' % doc)
        self.assertIsInstance(doc.get('retry_at'), str, doc)
        self.assertRegex(doc['retry_at'], TS_RE)
        retry_at = parse_ts(doc['retry_at'])
        self.assertGreaterEqual(retry_at, t_start + cooldown - 1.5, 'retry_at earlier than the cooldown: %r' % doc)
        self.assertLessEqual(retry_at, time.time() + cooldown + 1, 'retry_at later than the cooldown: %r' % doc)
        reqs = self.check_reg_requests()
        self.assertEqual(len(reqs), 3, 'exactly `attempts` (3) registration requests')
        a = [t for t, _ in self.script.arrivals]
        self.assertGreaterEqual(a[1] - a[0], 0.8 * backoff, 'first backoff %.3fs' % (a[1] - a[0]))
        self.assertGreaterEqual(a[2] - a[1], 1.6 * backoff, 'second backoff should double: %.3fs' % (a[2] - a[1]))
        # Credentialed requests: 503 saying why and when, nothing upstream.
        resp = self.send(d)
        err = self.assertTaskMissing(resp, d)
        msg = err['message']
        self.assertLess(resp.elapsed, 1.0, 'a failed registration must not make requests wait')
        self.assertIn('registration', msg.lower(), msg)
        self.assertIn('fail', msg.lower(), msg)
        self.assertIn('500', msg, 'the message should carry a short reason (the HTTP status)')
        when = TS_IN_TEXT_RE.findall(msg)
        self.assertTrue(when, 'the message should say when registration is retried: %r' % msg)
        self.assertIn(doc['retry_at'], when, 'message and readyz disagree on the retry time: %r' % msg)
        # Nothing new before the cooldown is over.
        while time.time() < retry_at - 1.0:
            self.assertTaskMissing(self.send(d), d)
            self.assertEqual(readyz(d)[1].get('status'), 'registration_failed')
            time.sleep(0.4)
        self.assertEqual(len(self.regsrv.requests), 3, 'a registration was retried before the cooldown')
        self.assertEqual(self.up.requests, [], 'nothing may go upstream without a task')
        self.assertEqual(read_bytes(self.auth), data, 'auth.json must be untouched after a failure')
        # After the cooldown the next credentialed request registers again and waits for it.
        self.script.default = answer_json(200, {'task_id': task})
        time.sleep(max(0.0, retry_at + 0.5 - time.time()))
        resp = self.send(d)
        self.assertCredentialed(resp, task, d)
        self.assertEqual(len(self.check_reg_requests()), 4, 'one new registration after the cooldown')
        self.assertPersisted(original, task)

    def run_bad_answer(self, answer, hint, secrets=()):
        """A 200 answer that carries no usable task: one request (not retried),
        503 with a reason, readyz registration_failed, auth.json untouched."""
        self.forbid(*secrets)
        self.script.default = answer
        data = write_auth(self.auth, record_doc())
        d = self.daemon(reg={'attempts': 3, 'backoff': 0.1, 'cooldown': 30})
        r, doc = self.wait_readyz(d, 'registration_failed', timeout=5)
        self.assertEqual((doc or {}).get('status'), 'registration_failed', '%r\n%s' % (r, d.tail(2000)))
        self.assertEqual(r.status, 503)
        self.assertTrue(doc.get('reason'), doc)
        self.assertRegex(doc.get('retry_at') or '', TS_RE)
        time.sleep(0.5)
        self.assertEqual(len(self.check_reg_requests()), 1,
                         'a 200 without a usable task is not a 429/5xx/network error: no retry')
        resp = self.send(d)
        err = self.assertTaskMissing(resp, d)
        self.assertIn('registration', err['message'].lower(), err)
        self.assertIn('fail', err['message'].lower(), err)
        if hint:
            self.assertIn(hint, err['message'].lower(), 'reason in the message')
        self.assertTrue(TS_IN_TEXT_RE.search(err['message']), 'retry time in the message: %r' % err)
        time.sleep(0.3)
        self.assertEqual(len(self.regsrv.requests), 1, 'retried during the cooldown')
        self.assertEqual(self.up.requests, [])
        self.assertEqual(read_bytes(self.auth), data, 'auth.json must be untouched')
        self.assertEqual(sorted(os.listdir(self.authdir)), ['auth.json'])
        return err

    def test_non_json(self):
        # general terms for the agent: the answer's text is in the log only
        err = self.run_bad_answer(answer_raw(200, b'<html><body>Welcome to the portal</body></html>'),
                                  'no usable run task')
        self.assertNotIn('portal', err['message'])

    def test_missing_id(self):
        self.run_bad_answer(answer_json(200, {'status': 'ok', 'id': 'not-a-task-field'}), None)

    def test_sealed_for_wrong_key(self):
        task = 'task-reg-wrongkey-a9d2'
        _, box = seal(OTHER_SEED, task)
        self.run_bad_answer(answer_json(200, {'encrypted_task_id': box}), None, secrets=(task,))

    def test_sealed_non_utf8(self):
        plain = b'task-\xff\xfe-bad'
        _, box = seal(SPEC_SEED, plain)
        self.run_bad_answer(answer_json(200, {'encrypted_task_id': box}), None)

    def test_sealed_not_base64(self):
        self.run_bad_answer(answer_json(200, {'encrypted_task_id': '%%%not base64%%%'}), None)

    def test_blank_task_id(self):
        self.run_bad_answer(answer_json(200, {'task_id': ' \t '}), None)

    def test_truncated_json_hides_the_task(self):
        task = 'task-reg-torn-0f1e2d3c'
        self.run_bad_answer(answer_raw(200, b'{"task_id":"' + task.encode(), ctype='application/json'),
                            None, secrets=(task, task[:12], task[-12:]))

    def test_4xx_not_retried(self):
        self.run_bad_answer(answer_json(401, {'error': {'message': 'bad signature'}}), '401')

    def test_redirect_not_followed(self):
        self.run_bad_answer(answer_raw(302, b'', headers=[('Location', REG_BASE + '/elsewhere')]), '302')

    def test_timeout_counts_as_network_error(self):
        self.script.default = answer_json(200, {'task_id': 'task-reg-toolate-99'})
        self.forbid('task-reg-toolate-99')
        self.script.hold()
        data = write_auth(self.auth, record_doc())
        d = self.daemon(reg={'attempts': 2, 'timeout': 0.5, 'backoff': 0.1, 'cooldown': 30})
        r, doc = self.wait_readyz(d, 'registration_failed', timeout=6)
        self.assertEqual((doc or {}).get('status'), 'registration_failed', '%r\n%s' % (r, d.tail(2000)))
        self.assertIn('time', doc.get('reason', '').lower(), 'reason should say it timed out: %r' % doc)
        self.assertEqual(len(self.regsrv.requests), 2, 'a timeout is retried up to `attempts` (2)')
        self.script.release()
        time.sleep(0.3)
        self.assertEqual(len(self.check_reg_requests()), 2)
        self.assertEqual(read_bytes(self.auth), data)

    def test_waiting_request_gets_the_failure(self):
        self.script.default = answer_json(503, {'error': 'maintenance'})
        self.script.hold()
        write_auth(self.auth, record_doc())
        d = self.daemon(reg={'attempts': 1, 'wait': 10, 'cooldown': 30})
        self.assertEqual(self.wait_reg_count(1), 1)
        out = {}
        th = threading.Thread(target=lambda: out.update(resp=self.send(d)), daemon=True)
        th.start()
        time.sleep(0.7)
        self.assertNotIn('resp', out, 'the request must wait while the registration runs')
        t_rel = now()
        self.script.release()
        th.join(12)
        resp = out.get('resp')
        self.assertIsNotNone(resp, 'no answer')
        err = self.assertTaskMissing(resp, d)
        self.assertLess(now() - t_rel, 3.0, 'the waiting request must get the failure at once, '
                        'not after task_registration.wait')
        self.assertIn('503', err['message'], err)
        self.assertIn('fail', err['message'].lower(), err)
        self.assertEqual(self.up.requests, [])
        self.assertEqual(len(self.check_reg_requests()), 1, 'attempts = 1')

    def test_sigterm_during_registration(self):
        self.script.default = answer_json(200, {'task_id': 'task-reg-never-31'})
        self.forbid('task-reg-never-31')
        self.script.hold()
        data = write_auth(self.auth, record_doc())
        d = self.daemon(reg={'timeout': 30})
        self.assertEqual(self.wait_reg_count(1), 1)
        t0 = now()
        rc = d.stop(timeout=10)
        took = now() - t0
        self.script.release()
        self.assertEqual(rc, 0, 'exit status after SIGTERM during a registration\n' + d.tail(2000))
        self.assertLess(took, 3.0, 'SIGTERM must not wait for the registration to finish')
        self.assertEqual(read_bytes(self.auth), data)

    def test_registration_verifies_tls(self):
        # Without --upstream-ca the test CA is not trusted: the registration
        # must fail the TLS handshake rather than send anything.
        self.script.default = answer_json(200, {'task_id': 'task-reg-untrusted-5b'})
        self.forbid('task-reg-untrusted-5b')
        data = write_auth(self.auth, record_doc())
        d = self.daemon(reg={'attempts': 1}, upstream_ca=False)
        r, doc = self.wait_readyz(d, 'registration_failed', timeout=5)
        self.assertEqual((doc or {}).get('status'), 'registration_failed', '%r\n%s' % (r, d.tail(2000)))
        self.assertTrue(self.regsrv.tls_errors or self.regsrv.connections,
                        'the registration never reached the (resolved) server')
        time.sleep(0.2)
        self.assertEqual(self.regsrv.requests, [], 'a request was sent over an unverified TLS connection')
        self.assertEqual(read_bytes(self.auth), data)

    def test_disabled(self):
        write_auth(self.auth, record_doc())
        d = self.daemon(reg={'enabled': False})
        resp = self.send(d)
        err = self.assertTaskMissing(resp, d)
        self.assertEqual(err['message'], 'agent identity run task is not initialized')
        r, doc = readyz(d)
        self.assertEqual(r.status, 503)
        self.assertNotIn(doc.get('status'), ('registering', 'registration_failed'), doc)
        time.sleep(0.3)
        self.assertEqual(self.regsrv.requests, [], 'registration disabled: nothing may be sent')


# --------------------------------------------------------------------------
# 4. A newer auth.json written during the registration
# --------------------------------------------------------------------------

class NoClobber(RegCase):

    def test_newer_file_with_task_is_kept(self):
        task, newer_task = 'task-reg-mine-51c0', 'task-from-agent-8e4d'
        self.forbid(task, newer_task)
        self.script.default = answer_json(200, {'task_id': task})
        self.script.hold()
        write_auth(self.auth, record_doc())
        d = self.daemon()
        self.assertEqual(self.wait_reg_count(1), 1)
        time.sleep(0.2)
        newer = write_auth(self.auth, record_doc(newer_task, written_by='the agent'))
        time.sleep(0.5)             # the daemon sees the new file (inotify)
        self.script.release()
        self.regsrv.wait(lambda: self.script.answered >= 1, 5)
        time.sleep(1.0)
        self.assertEqual(read_bytes(self.auth), newer, 'the newer auth.json was overwritten')
        self.assertEqual(sorted(os.listdir(self.authdir)), ['auth.json'])
        resp = self.send(d)
        self.assertEqual(resp.status, 200, '%r\n%s' % (resp, d.tail(2000)))
        used = task_in_assertion(resp.got.header('Authorization'))
        self.assertEqual(used, newer_task, 'the daemon loaded the newer auth.json (task %r) but then put '
                         'its own registered task %r over it in memory; file and proxy now disagree'
                         % (newer_task, task))
        self.assertCredentialed(resp, newer_task, d)

    def test_newer_file_for_another_agent(self):
        # The identity is rotated while agent-123's registration runs: the
        # file is kept, and agent-123's task must not be attached to agent-456.
        task, task456 = 'task-reg-old-agent-c3', 'task-reg-agent456-d4'
        self.forbid(task, task456)
        self.script.default = answer_json(200, {'task_id': task})
        self.script.hold()
        write_auth(self.auth, record_doc())
        d = self.daemon()
        self.assertEqual(self.wait_reg_count(1), 1)
        time.sleep(0.2)
        newer_doc = record_doc(runtime='agent-456')
        newer = write_auth(self.auth, newer_doc)
        time.sleep(0.5)
        self.script.default = answer_json(200, {'task_id': task456})
        self.script.release()
        self.regsrv.wait(lambda: self.script.answered >= 1, 5)
        time.sleep(1.0)
        cur = read_bytes(self.auth)
        if cur != newer:
            # Only acceptable change: agent-456's own task written back.
            self.assertEqual(json.loads(cur)['agent_identity'].get('task_id'), task456,
                             'the newer auth.json was overwritten: %r' % cur[:600])
            self.assertPersisted(newer_doc, task456)
        resp = self.send(d)
        self.assertEqual(resp.status, 200, '%r\n%s' % (resp, d.tail(2000)))
        used = task_in_assertion(resp.got.header('Authorization'))
        self.assertNotEqual(used, task, "agent-123's registered task was attached to agent-456's identity "
                            '(assertion signed as agent-456 with task %r)' % used)
        self.assertCredentialed(resp, task456, d, runtime='agent-456')
        reqs = self.regsrv.requests
        self.assertEqual([r.target for r in reqs],
                         [REG_PATH, '/backend-api/v1/agent/agent-456/task/register'])
        self.check_reg_requests(RUNTIME, count=1)
        self.check_reg_requests('agent-456', count=1)


class TaskCheck(Behaviour):
    """A Responses stand-in that rejects the tasks in `bad` with the
    upstream's invalid_task_id error and answers 200 otherwise."""

    def __init__(self, bad):
        self.bad = set(bad)
        self.seen = []          # (task, body) per request

    def handle(self, ctx):
        ctx.read_body()
        task = task_in_assertion(ctx.req.header('Authorization') or '')
        self.seen.append((task, bytes(ctx.req.body)))
        if task in self.bad:
            body = json.dumps({'error': {'message': 'task is not valid', 'type':
                              'invalid_request_error', 'code': 'invalid_task_id',
                              'param': None}}).encode()
            status = b'401 Unauthorized'
        else:
            body = json.dumps({'ok': True, 'task': task}).encode()
            status = b'200 OK'
        ctx.send(b'HTTP/1.1 ' + status + b'\r\nContent-Type: application/json\r\n'
                 b'Content-Length: %d\r\n\r\n' % len(body) + body)
        return True


class Recovery(RegCase):
    def setUp(self):
        super().setUp()
        write_auth(self.auth, record_doc('task-old-rej'))
        self.forbid('task-old-rej', 'task-new-ok')

    def assertUpstreamOverTLS(self, count):
        """The first request and any replay: each over TLS to api.openai.com."""
        reqs = self.up.requests
        self.assertEqual(len(reqs), count, [r.raw_head for r in reqs])
        for r in reqs:
            self.assertTrue(self.up.wait_done(r, 5), r.raw_head)
            self.assertOverTLS(r)

    def test_invalid_task_id_reregisters_once_and_replays(self):
        tc = self.up.route('/v1/responses', TaskCheck({'task-old-rej'}))
        self.script.queue.append(answer_json(200, {'task_id': 'task-new-ok'}))
        d = self.daemon()
        resp = self.send(d)
        self.assertEqual(resp.status, 200, '%r\n%s' % (resp, d.tail(2000)))
        self.assertEqual(json.loads(resp.body)['task'], 'task-new-ok')
        self.assertEqual(len(self.check_reg_requests()), 1, 'exactly one re-registration')
        self.assertEqual([t for t, _ in tc.seen], ['task-old-rej', 'task-new-ok'],
                         'one rejected request, one replay with the new task')
        self.assertEqual(tc.seen[0][1], tc.seen[1][1], 'the replay carries the same body')
        self.assertUpstreamOverTLS(2)
        self.assertEqual(self.wait_auth_task()['agent_identity']['task_id'], 'task-new-ok')
        lines = [l for l in self.audit(d) if l.get('path') == '/v1/responses']
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].get('retried'), lines)
        self.assertEqual(lines[0]['task'], fingerprint('task-new-ok'))
        self.assertEqual(lines[0]['status'], 200)
        self.assertEqual((lines[0]['host'], lines[0]['port']), ('api.openai.com', 443), lines)

    def test_second_rejection_goes_back_without_a_loop(self):
        tc = self.up.route('/v1/responses', TaskCheck({'task-old-rej', 'task-new-ok'}))
        self.script.queue.append(answer_json(200, {'task_id': 'task-new-ok'}))
        d = self.daemon()
        resp = self.send(d)
        self.assertEqual(resp.status, 401, resp)
        self.assertEqual(json.loads(resp.body)['error']['code'], 'invalid_task_id')
        time.sleep(0.5)
        self.assertEqual(len(self.reg_requests()), 1, 'never more than one re-registration')
        self.assertEqual(len(tc.seen), 2, 'never more than one replay')
        self.assertUpstreamOverTLS(2)

    def test_body_too_large_to_keep_is_not_replayed(self):
        tc = self.up.route('/v1/responses', TaskCheck({'task-old-rej'}))
        d = self.daemon(reg={'replay_max_body': 8})
        resp = self.send(d)
        self.assertEqual(resp.status, 401, resp)
        time.sleep(0.5)
        self.assertEqual(len(self.reg_requests()), 0, 'no registration without a replay')
        self.assertEqual(len(tc.seen), 1)
        self.assertUpstreamOverTLS(1)

    def test_replay_budget_past_it_not_replayed(self):
        # Budget 64 bytes: A's first 40 bytes are kept while its body is
        # still arriving; B's 47 do not fit next to them, so B goes
        # upstream once and its 401 comes back as it is. Once B is done,
        # A's 60 fit and A is replayed with a new task.
        tc = self.up.route('/v1/responses', TaskCheck({'task-old-rej'}))
        self.script.queue.append(answer_json(200, {'task_id': 'task-new-ok'}))
        d = self.daemon(reg={'replay_budget': 64})
        body = b'{"model":"gpt-test","input":"' + b'x' * 23 + b'","n":1}'
        self.assertEqual(len(body), 60)
        a = HTTPClient(d.port, timeout=20)
        self.addCleanup(a.close)
        a.send(b'POST http://api.openai.com/v1/responses HTTP/1.1\r\nHost: api.openai.com\r\n'
               b'Authorization: Bearer ' + SECRET.encode() + b'\r\nContent-Type: application/json\r\n'
               b'X-Req: A\r\nContent-Length: 60\r\n\r\n' + body[:40])
        self.up.wait_request(lambda r: r.header('X-Req') == 'A', timeout=5)
        time.sleep(0.3)
        b = self.send(d, 'B')
        self.assertEqual(b.status, 401, '%r\n%s' % (b, d.tail(2000)))
        self.assertEqual(json.loads(b.body)['error']['code'], 'invalid_task_id')
        time.sleep(0.3)
        self.assertEqual(len(self.reg_requests()), 0, 'B was not replayable: no registration')
        a.send(body[40:])
        ra = a.read_response('POST')
        self.assertEqual(ra.status, 200, '%r\n%s' % (ra, d.tail(2000)))
        self.assertEqual(json.loads(ra.body)['task'], 'task-new-ok')
        self.assertEqual(len(self.check_reg_requests()), 1, 'exactly one re-registration (for A)')
        self.assertEqual(sorted(t for t, _ in tc.seen),
                         ['task-new-ok', 'task-old-rej', 'task-old-rej'])
        self.assertEqual([b for t, b in tc.seen if t == 'task-new-ok'], [body])


if __name__ == '__main__':
    main()
