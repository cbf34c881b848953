"""Agent identity helpers shared by the integration tests (stdlib only).

The spec's test identity (shared/spec/agent-identity.md), auth.json records
and JWT identities, Ed25519 keys derived and checked with the openssl CLI
(never the daemon), the test's own AgentAssertion verifier, task
fingerprints, and the key encodings that must never appear in a log.
"""

import atexit
import base64
import calendar
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time

from harness import run_cmd

# --------------------------------------------------------------------------
# The spec's test identity (spec section 7 / test vectors)
# --------------------------------------------------------------------------

SPEC_SEED = b'\x07' * 32
SPEC_PUB_HEX = 'ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c'
SPEC_PUB = bytes.fromhex(SPEC_PUB_HEX)
SPEC_RUNTIME = 'agent-123'
SPEC_V1_B64 = 'MC4CAQAwBQYDK2VwBCIEIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH'
SPEC_V2_B64 = ('MFECAQEwBQYDK2VwBCIEIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHgSEA'
               '6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw=')
SPEC_SIG_B64 = ('+GlrOKR/FHxxhkmOhg5hj19+5O7hM2MgxNrgTfRgIX8CYn13AJESv5yXkwwUC9jDd8cvQRM'
                'u1f8Pybf6/LBgDw==')        # over 'agent-123:task-123:2026-04-23T00:00:00Z'
SPEC_HEADER = ('AgentAssertion eyJhZ2VudF9ydW50aW1lX2lkIjoiYWdlbnQtMTIzIiwic2lnbmF0dXJlIjoiK0dsck9LUi9G'
               'SHh4aGttT2hnNWhqMTkrNU83aE0yTWd4TnJnVGZSZ0lYOENZbjEzQUpFU3Y1eVhrd3dVQzlqRGQ4Y3ZRUk11'
               'MWY4UHliZjYvTEJnRHc9PSIsInRhc2tfaWQiOiJ0YXNrLTEyMyIsInRpbWVzdGFtcCI6IjIwMjYtMDQtMjNU'
               'MDA6MDA6MDBaIn0')

V1_PREFIX = bytes.fromhex('302e020100300506032b657004220420')
V2_PREFIX = bytes.fromhex('3051020101300506032b657004220420')
V2A1_PREFIX = bytes.fromhex('3053020101300506032b657004220420')
SPKI_PREFIX = bytes.fromhex('302a300506032b6570032100')

TS_RE = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$')
B64URL_RE = re.compile(r'^[A-Za-z0-9_-]+$')
B64STD_RE = re.compile(r'^[A-Za-z0-9+/]+={0,2}$')

# --------------------------------------------------------------------------
# Scratch files for the openssl CLI
# --------------------------------------------------------------------------

_work = tempfile.mkdtemp(prefix='scopeproxy-agentid-')
atexit.register(shutil.rmtree, _work, True)
_work_lock = threading.Lock()
_work_n = [0]


def _tmpfile(suffix, data):
    with _work_lock:
        _work_n[0] += 1
        p = os.path.join(_work, 'f%d%s' % (_work_n[0], suffix))
    with open(p, 'wb') as f:
        f.write(data)
    return p


def _unlink(*paths):
    for p in paths:
        try:
            os.unlink(p)
        except OSError:
            pass


def pem(label, der):
    b = base64.b64encode(der).decode()
    return ('-----BEGIN %s-----\n%s\n-----END %s-----\n'
            % (label, '\n'.join(b[i:i + 64] for i in range(0, len(b), 64)), label)).encode()


# --------------------------------------------------------------------------
# Keys and the independent verifier (openssl CLI)
# --------------------------------------------------------------------------

def openssl_public_key(seed):
    """Raw 32-byte Ed25519 public key of `seed`, derived by openssl."""
    priv = _tmpfile('.key.pem', pem('PRIVATE KEY', V1_PREFIX + seed))
    out = priv + '.pub.der'
    try:
        r = run_cmd(['openssl', 'pkey', '-in', priv, '-pubout', '-outform', 'DER', '-out', out])
        if r.returncode != 0:
            raise RuntimeError('openssl pkey failed: %s' % r.stderr.decode())
        with open(out, 'rb') as f:
            der = f.read()
    finally:
        _unlink(priv, out)
    if len(der) != 44 or not der.startswith(SPKI_PREFIX):
        raise RuntimeError('unexpected SPKI from openssl: %s' % der.hex())
    return der[len(SPKI_PREFIX):]


def openssl_sign(seed, msg):
    """Ed25519 signature by openssl (used only to test the test's own checker)."""
    priv = _tmpfile('.key.pem', pem('PRIVATE KEY', V1_PREFIX + seed))
    msg_f = _tmpfile('.msg', msg)
    out = msg_f + '.sig'
    try:
        r = run_cmd(['openssl', 'pkeyutl', '-sign', '-rawin', '-inkey', priv, '-in', msg_f, '-out', out])
        if r.returncode != 0:
            raise RuntimeError('openssl pkeyutl -sign failed: %s' % r.stderr.decode())
        with open(out, 'rb') as f:
            return f.read()
    finally:
        _unlink(priv, msg_f, out)


def ed25519_verify(pub, msg, sig):
    """True iff `openssl pkeyutl -verify -rawin` accepts `sig` as pure Ed25519
    over `msg` for the raw key `pub`."""
    pub_pem = _tmpfile('.pub.pem', pem('PUBLIC KEY', SPKI_PREFIX + pub))
    msg_f = _tmpfile('.msg', msg)
    sig_f = _tmpfile('.sig', sig)
    try:
        r = run_cmd(['openssl', 'pkeyutl', '-verify', '-pubin', '-inkey', pub_pem, '-rawin',
                     '-in', msg_f, '-sigfile', sig_f])
    finally:
        _unlink(pub_pem, msg_f, sig_f)
    return r.returncode == 0 and b'Signature Verified Successfully' in r.stdout


class Key:
    """An Ed25519 identity key in every encoding the tests use.  The public
    key is derived by openssl unless given."""

    def __init__(self, seed, pub=None):
        self.seed = seed
        self.pub = openssl_public_key(seed) if pub is None else pub
        self.v1_der = V1_PREFIX + seed
        self.v2_der = V2_PREFIX + seed + b'\x81\x21\x00' + self.pub
        self.v2a1_der = V2A1_PREFIX + seed + b'\xa1\x23\x03\x21\x00' + self.pub
        self.v1 = base64.b64encode(self.v1_der).decode()
        self.v2 = base64.b64encode(self.v2_der).decode()
        self.v2a1 = base64.b64encode(self.v2a1_der).decode()

    def secrets(self):
        """Strings that must never appear in a log."""
        out = {self.v1, self.v2, self.v2a1, self.seed.hex(),
               base64.b64encode(self.seed).decode().rstrip('=')}
        for b in (self.v1, self.v2, self.v2a1):
            out.add(b[len(b) // 2 - 8:len(b) // 2 + 8])     # distinctive substrings
            out.add(b[20:44])
            out.add(b[30:50])
        return out


_keys = {}
_keys_lock = threading.Lock()


def key_of(seed):
    """The (cached) Key of `seed`, its public key derived by openssl."""
    with _keys_lock:
        if seed not in _keys:
            _keys[seed] = Key(seed)
        return _keys[seed]


def public_key(seed):
    return key_of(seed).pub


def key_secrets(seed):
    """Encodings of a private key that must never appear in a log."""
    return key_of(seed).secrets()


# The spec key's secrets, without running openssl (its public key is known).
SPEC_SECRETS = frozenset(Key(SPEC_SEED, SPEC_PUB).secrets())


def fingerprint(task_id):
    """The audit log's task: the first 8 hex digits of SHA-256 of the task id."""
    return hashlib.sha256(task_id.encode()).hexdigest()[:8]


# --------------------------------------------------------------------------
# Auth files
# --------------------------------------------------------------------------

NO_TASK = object()      # identity_record: no task_id member (None writes null)
OMIT = object()         # auth_doc: no last_refresh member


def identity_record(key_b64=SPEC_V2_B64, runtime=SPEC_RUNTIME, task_id=NO_TASK,
                    account='acct-test-001', user='user-test-001', fedramp=False, **extra):
    """An auth.json `agent_identity` record; `account=None` leaves account_id out."""
    r = {'agent_runtime_id': runtime, 'agent_private_key': key_b64}
    if account is not None:
        r['account_id'] = account
    r.update({'chatgpt_user_id': user, 'email': '', 'plan_type': 'plus',
              'chatgpt_account_is_fedramp': fedramp})
    if task_id is not NO_TASK:
        r['task_id'] = task_id
    r.update(extra)
    return r


def auth_doc(identity, tokens=None, last_refresh=OMIT, **top):
    """A Codex-style auth.json around `identity` (a record or a JWT string)."""
    doc = {'OPENAI_API_KEY': None, 'tokens': tokens}
    if last_refresh is not OMIT:
        doc['last_refresh'] = last_refresh
    doc['agent_identity'] = identity
    doc.update(top)
    return doc


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode()


def jwt_token(key_b64=SPEC_V2_B64, runtime=SPEC_RUNTIME, account='acct-jwt', user='user-jwt',
              header=None, sig=b'\x01' * 256, **claims):
    """An agent-identity JWT carrying the record's claims (the signature is junk)."""
    c = {'iss': 'https://chatgpt.com/codex-backend/agent-identity', 'aud': 'codex-app-server',
         'agent_runtime_id': runtime, 'agent_private_key': key_b64,
         'account_id': account, 'chatgpt_user_id': user, 'email': '',
         'plan_type': 'plus', 'chatgpt_account_is_fedramp': False}
    c.update(claims)
    return (b64url(json.dumps(header or {'alg': 'RS256', 'typ': 'JWT'}).encode()) + '.' +
            b64url(json.dumps(c).encode()) + '.' + b64url(sig))


def write_auth(path, doc, mode=0o600, ensure_ascii=True, tmp_tag='tmp'):
    """Atomically replace `path` (temp file with `mode`, fsync, rename);
    returns the bytes written."""
    data = doc if isinstance(doc, bytes) else (
        doc.encode() if isinstance(doc, str)
        else json.dumps(doc, indent=2, ensure_ascii=ensure_ascii).encode())
    tmp = '%s.%s-%d-%d' % (path, tmp_tag, os.getpid(), int(time.time() * 1e6))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    return data


# --------------------------------------------------------------------------
# AgentAssertion checking (the test's own implementation of the spec)
# --------------------------------------------------------------------------

def parse_ts(ts):
    return calendar.timegm(time.strptime(ts, '%Y-%m-%dT%H:%M:%SZ'))


def parse_assertion(value, runtime_id, task_id, pub, max_skew=5.0, check_time=True):
    """Decode and verify an `Authorization: AgentAssertion <token>` value (spec
    section 1).  Raises AssertionError with a reason on any deviation."""
    def need(cond, what):
        if not cond:
            raise AssertionError('AgentAssertion: %s (header %r)' % (what, value))

    need(isinstance(value, str) and value.startswith('AgentAssertion '), 'scheme')
    token = value[len('AgentAssertion '):]
    need(B64URL_RE.match(token) is not None, 'token is not unpadded base64url')
    need(len(token) % 4 != 1, 'impossible base64 length')
    raw = base64.urlsafe_b64decode(token + '=' * (-len(token) % 4))
    need(b64url(raw) == token, 'non-canonical base64url')
    try:
        env = json.loads(raw.decode('utf-8'))
    except ValueError as e:
        raise AssertionError('AgentAssertion: envelope is not JSON (%s): %r' % (e, raw))
    need(isinstance(env, dict), 'envelope is not an object')
    need(list(env) == ['agent_runtime_id', 'signature', 'task_id', 'timestamp'],
         'envelope keys/order %r' % list(env))
    need(all(isinstance(v, str) for v in env.values()), 'non-string member')
    canonical = json.dumps(env, separators=(',', ':'), sort_keys=True, ensure_ascii=False).encode()
    need(raw == canonical, 'envelope is not compact sorted JSON: %r != %r' % (raw, canonical))
    need(env['agent_runtime_id'] == runtime_id, 'agent_runtime_id %r' % env['agent_runtime_id'])
    need(env['task_id'] == task_id, 'task_id %r, expected %r' % (env['task_id'], task_id))
    ts = env['timestamp']
    need(len(ts) == 20 and TS_RE.match(ts) is not None, 'timestamp format %r' % ts)
    if check_time:
        t = parse_ts(ts)
        need(abs(time.time() - t) <= max_skew, 'timestamp %s is %.1fs from now' % (ts, time.time() - t))
    sig_b64 = env['signature']
    need(len(sig_b64) == 88 and B64STD_RE.match(sig_b64) is not None,
         'signature is not 88 chars of padded standard base64: %r' % sig_b64)
    sig = base64.b64decode(sig_b64, validate=True)
    need(len(sig) == 64, 'signature length %d' % len(sig))
    msg = ('%s:%s:%s' % (env['agent_runtime_id'], env['task_id'], ts)).encode('utf-8')
    need(ed25519_verify(pub, msg, sig), 'Ed25519 signature does not verify with the public key')
    env['_token'] = token
    return env


def task_in_assertion(value):
    """The task_id of an AgentAssertion header value, unverified."""
    tok = (value or '').split(' ', 1)[-1]
    return json.loads(base64.urlsafe_b64decode(tok + '=' * (-len(tok) % 4)))['task_id']


# --------------------------------------------------------------------------
# Secrets in the daemon's output
# --------------------------------------------------------------------------

def daemon_texts(d):
    """A stopped daemon's stderr, stdout and audit log (`d.audit_path`) by name."""
    texts = {'stderr': d.stderr_text(), 'stdout': d.stdout_text()}
    try:
        with open(d.audit_path, 'rb') as f:
            texts['audit log'] = f.read().decode('utf-8', 'replace')
    except OSError:
        texts['audit log'] = ''
    return texts


def check_no_secrets(test, d, forbidden, skip_empty=True):
    """Fail `test` if any string of `forbidden` appears in the daemon's
    stderr, stdout or audit log (stop the daemon first).  The message shows
    only the start of the secret and the text before it."""
    for where, text in daemon_texts(d).items():
        for s in sorted(forbidden):
            if (s or not skip_empty) and s in text:
                i = text.index(s)
                test.fail('secret %r... appears in the daemon %s: ...%s<HERE>'
                          % (s[:6], where, text[max(0, i - 300):i]))


def start_audited_daemon(case, route_args, extra, auth=None, config=None):
    """Start case's daemon with its auth file, its TLS upstream's CA, an
    audit log of its own and, when given, a config file written from the
    config dict; at cleanup it is stopped and its outputs are searched for
    case.forbidden. case needs work, auth, tls, forbidden and
    start_daemon. The daemon's audit_path names its audit log."""
    args = ['--auth-file', auth or case.auth, '--upstream-ca', case.tls.ca] + list(route_args)
    if config is not None:
        path = os.path.join(case.work, 'config-%d.json' % len(os.listdir(case.work)))
        with open(path, 'w') as f:
            json.dump(config, f)
        args += ['--config', path]
    audit_path = os.path.join(case.work, 'audit-%d.jsonl' % len(os.listdir(case.work)))
    d = case.start_daemon(*args, '--audit-log', audit_path, *extra)
    d.audit_path = audit_path

    def stop_and_check():
        d.stop()
        check_no_secrets(case, d, case.forbidden)
    case.addCleanup(stop_and_check)
    return d
