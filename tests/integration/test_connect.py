#!/usr/bin/python3
"""HTTPS_PROXY (issue 4): CONNECT, blind tunnels, TLS interception of
first-party hosts, the local CA, proxy access control.

Real clients only: curl (`-x` and `HTTPS_PROXY=`, `--cacert` on the CA that
`scopeproxy ca export` prints) and a raw socket + Python ssl client, through
the real daemon to loopback upstreams (plain, TLS, raw TCP) reached with
--resolve / --upstream-ca.

What is checked, and how the test knows independently of the daemon:
  * Interception: the certificate the client gets chains to the exported CA
    (curl --cacert on that file alone; `openssl verify`), not to the
    upstream's CA; SAN = the CONNECT host (also without SNI); ALPN
    http/1.1; TLS >= 1.2.  Inside, a first-party inference request arrives
    upstream (over verified TLS, SNI = CONNECT host) with an AgentAssertion
    whose Ed25519 signature is checked here with `openssl pkeyutl -verify
    -rawin` against the spec's public key (raw 32 bytes + SPKI prefix), and
    without the client's Authorization; a pass-through route keeps the
    client's Authorization; a missing run task is the 503 JSON inside the
    tunnel and the upstream is not even connected to; Host / SNI mismatches;
    untrusted upstream certificate -> 502 naming the host; SSE event by event.
  * The TLS handshake deadline (timeouts.tls_handshake): a client that
    sends no ClientHello, or half of one trickled, is closed within it and
    both slots come back; a client past its handshake is not affected.
  * Blind tunnels: the client sees the upstream's own certificate (DER
    fingerprint of the harness leaf), bytes pass untouched both ways,
    half-close / upstream close / client disconnect propagate, idle timeout,
    502/504 before any 200, IPv6 literal targets.
  * Access: connect_ports, malformed targets, oversized heads, proxy auth
    (Basic and Bearer, CONNECT and plain forward; Proxy-Authorization never
    reaches the upstream), allowed_hosts, CONNECT as a second request -> 405.
  * The CA: file modes, reuse across restarts, an other-readable key refused,
    `ca export`, `ca env` + bundle.pem (and curl trusting through it), a
    client that does not trust the CA fails and nothing goes upstream.
  * No key, assertion, task id, client credential or proxy credential in
    any daemon log or audit log.
"""

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import struct
import ssl
import sys
import tempfile
import threading
import time
import types
import unittest
import zlib

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (audit_records, PATTERN, SECRET, SSE, BlackholeListener, Daemon, DaemonError,  # noqa: E402
                     Download, HTTPClient, NoResponse, ProxyTestCase, Sink, clean_env, free_port,
                     main, pattern_crc, request, run_cmd, scopeproxy_bin, sse_events,
                     tls_material)
from agentid import (NO_TASK, SPEC_PUB, SPEC_SECRETS, SPEC_SIG_B64, auth_doc,  # noqa: E402
                     check_no_secrets, ed25519_verify, fingerprint, identity_record,
                     parse_assertion)


def now():
    return time.monotonic()


RUNTIME_ID = 'agent-123'
TASK_ID = 'task-connect-9f3e27c1'
ACCOUNT_ID = 'acct-connect-001'

PROXY_USER = 'proxyuser'
PROXY_PASS = 'proxy-PASS-s3cret'
PROXY_BASIC = base64.b64encode(('%s:%s' % (PROXY_USER, PROXY_PASS)).encode()).decode()
PROXY_TOKEN = 'proxy-BEARER-t0ken-77'

_scratch = tempfile.mkdtemp(prefix='scopeproxy-connect-')
_scratch_lock = threading.Lock()
_scratch_n = [0]


def scratch(suffix, data=None):
    with _scratch_lock:
        _scratch_n[0] += 1
        p = os.path.join(_scratch, '%d%s' % (_scratch_n[0], suffix))
    if data is not None:
        with open(p, 'wb') as f:
            f.write(data)
    return p


def check_assertion(value, pub=SPEC_PUB, runtime=RUNTIME_ID, task=TASK_ID, max_skew=5.0):
    """Decode and verify `AgentAssertion <token>`; AssertionError on any deviation."""
    return parse_assertion(value, runtime, task, pub, max_skew)


def auth_record(task=TASK_ID):
    return auth_doc(identity_record(runtime=RUNTIME_ID, account=ACCOUNT_ID, user='user-connect',
                                    task_id=NO_TASK if task is None else task))


# --------------------------------------------------------------------------
# Certificates (openssl CLI / ssl module, never the daemon)
# --------------------------------------------------------------------------

def der_of_pem_file(path):
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def pem_certs(text):
    return re.findall(r'-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----', text)


def x509_text(der):
    f = scratch('.crt.pem', ssl.DER_cert_to_PEM_cert(der).encode())
    r = run_cmd(['openssl', 'x509', '-in', f, '-noout', '-text'])
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


def openssl_verifies(der, cafile, name=None):
    f = scratch('.leaf.pem', ssl.DER_cert_to_PEM_cert(der).encode())
    cmd = ['openssl', 'verify', '-CAfile', cafile, '-purpose', 'sslserver']
    if name:
        cmd += ['-verify_hostname', name]
    r = run_cmd(cmd + [f])
    return r.returncode == 0


def client_ctx(cafile, check_hostname=True):
    """A client context trusting only `cafile` (no system roots)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(['http/1.1'])
    return ctx


# --------------------------------------------------------------------------
# Raw CONNECT client
# --------------------------------------------------------------------------

def connect_head(authority, host=None, extra=b''):
    a = authority.encode() if isinstance(authority, str) else authority
    h = a if host is None else host
    return b'CONNECT ' + a + b' HTTP/1.1\r\nHost: ' + h + b'\r\n' + extra + b'\r\n'


def open_tunnel(port, authority, extra=b'', timeout=10.0):
    """Send CONNECT on a fresh connection; returns (client, response head).
    For a 2xx nothing after the head has been read; else the body is read."""
    c = HTTPClient(port, timeout=timeout)
    c.send(connect_head(authority, extra=extra))
    try:
        resp = c.read_head('CONNECT')
    except Exception:
        c.close()
        raise
    if not 200 <= resp.status < 300:
        c.read_body(resp, timeout=5)
    return c, resp


def start_tls(c, ctx, server_hostname):
    """Wrap the tunnel client's socket in TLS (HTTPClient keeps working on it)."""
    assert not c.buf, 'bytes after the CONNECT answer: %r' % bytes(c.buf)
    ss = ctx.wrap_socket(c.sock, server_hostname=server_hostname)
    c.sock = ss
    return ss


def daemon_cpu(pid):
    """CPU seconds (user + system) the process has used."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def recv_until_eof(sock, timeout):
    """Read until EOF; returns (data, eof_seen, time_of_eof)."""
    data = bytearray()
    deadline = now() + timeout
    while True:
        left = deadline - now()
        if left <= 0:
            return bytes(data), False, None
        sock.settimeout(left)
        try:
            b = sock.recv(65536)
        except socket.timeout:
            return bytes(data), False, None
        except (ConnectionResetError, BrokenPipeError):
            return bytes(data), True, now()
        if not b:
            return bytes(data), True, now()
        data += b


def tunnel_recv_until_eof(c, timeout):
    """recv_until_eof on a tunnel client, counting bytes that arrived
    together with the CONNECT answer (a server that speaks first)."""
    early = bytes(c.buf)
    c.buf.clear()
    data, eof, t = recv_until_eof(c.sock, timeout)
    return early + data, eof, t


# --------------------------------------------------------------------------
# A raw TCP upstream for blind tunnels
# --------------------------------------------------------------------------

class RawConn:
    def __init__(self, server, sock):
        self.server = server
        self.sock = sock
        self.data = bytearray()
        self.eof_at = None          # when the proxy's FIN/RST arrived
        self.we_closed = False
        self.t_open = now()

    def _reader(self):
        while True:
            try:
                b = self.sock.recv(65536)
            except OSError:
                b = b''
            with self.server.cond:
                if not b:
                    if not self.we_closed and self.eof_at is None:
                        self.eof_at = now()
                    self.server.cond.notify_all()
                    return
                self.data += b
                self.server.cond.notify_all()

    def send(self, data):
        self.sock.sendall(data)

    def shutdown_wr(self):
        self.sock.shutdown(socket.SHUT_WR)

    def close(self):
        self.we_closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def wait(self, pred, timeout):
        deadline = now() + timeout
        with self.server.cond:
            while not pred():
                left = deadline - now()
                if left <= 0:
                    return pred()
                self.server.cond.wait(min(left, 0.05))
            return True

    def wait_bytes(self, n, timeout=5.0):
        return self.wait(lambda: len(self.data) >= n or self.eof_at is not None, timeout)

    def wait_eof(self, timeout=5.0):
        return self.wait(lambda: self.eof_at is not None, timeout)


class RawServer:
    """Accepts TCP connections, records what arrives; on_accept(conn) runs first."""

    def __init__(self, family=socket.AF_INET, host='127.0.0.1', on_accept=None):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.on_accept = on_accept
        self.conns = []
        self.cond = threading.Condition()
        self._closing = False
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while not self._closing:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            conn = RawConn(self, s)
            with self.cond:
                self.conns.append(conn)
                self.cond.notify_all()
            if self.on_accept:
                try:
                    self.on_accept(conn)
                except OSError:
                    pass
            threading.Thread(target=conn._reader, daemon=True).start()

    def wait_conn(self, timeout=5.0):
        deadline = now() + timeout
        with self.cond:
            while not self.conns:
                left = deadline - now()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.05))
            return self.conns[0]

    def close(self):
        self._closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in list(self.conns):
            try:
                c.close()
            except OSError:
                pass


# --------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------

class ConnectCase(ProxyTestCase):
    TIMEOUT = 40

    def setUp(self):
        super().setUp()
        self.tls = tls_material()
        self.work = tempfile.mkdtemp(prefix='scopeproxy-connect-case-')
        self.addCleanup(shutil.rmtree, self.work, True)
        self.forbidden = {SECRET, TASK_ID, 'AgentAssertion', 'eyJ', PROXY_PASS, PROXY_BASIC,
                          PROXY_TOKEN} | SPEC_SECRETS
        self._n = 0

    def _new_path(self, name):
        self._n += 1
        return os.path.join(self.work, '%s-%d' % (name, self._n))

    def write_auth(self, task=TASK_ID):
        d = self._new_path('auth')
        os.makedirs(d)
        path = os.path.join(d, 'auth.json')
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'w') as f:
            json.dump(auth_record(task), f)
        os.chmod(path, 0o600)
        return path

    def raw_upstream(self, **kw):
        s = RawServer(**kw)
        self.addCleanup(s.close)
        return s

    def start_proxy(self, *args, task=TASK_ID, config=None, ca_dir=None, upstream_ca=True,
                    resolve=()):
        """A daemon with its own auth file, CA dir, audit log; returns it with
        .ca_dir, .ca (exported CA PEM path), .audit_path."""
        auth = self.write_auth(task)
        ca_dir = ca_dir or self._new_path('ca')
        audit = self._new_path('audit') + '.jsonl'
        full = ['--auth-file', auth, '--ca-dir', ca_dir, '--audit-log', audit,
                '--log-level', 'debug']
        if upstream_ca:
            full += ['--upstream-ca', self.tls.ca]
        for host, port, up in resolve:
            full += ['--resolve', '%s:%d:127.0.0.1:%d' % (host, port, up)]
        if config is not None:
            cfg = self._new_path('config') + '.json'
            with open(cfg, 'w') as f:
                json.dump(config, f)
            full += ['--config', cfg]
        d = self.start_daemon(*(full + list(args)))
        d.ca_dir = ca_dir
        d.audit_path = audit
        d.ca_files_at_start = sorted(os.listdir(ca_dir)) if os.path.isdir(ca_dir) else []
        self.addCleanup(self._check_secrets, d)
        r = run_cmd([scopeproxy_bin(), 'ca', 'export', '--ca-dir', ca_dir], env=clean_env())
        self.assertEqual(r.returncode, 0, 'ca export failed: %s' % r.stderr.decode())
        d.ca = self._new_path('exported') + '.pem'
        with open(d.ca, 'wb') as f:
            f.write(r.stdout)
        return d

    def _check_secrets(self, d):
        d.stop()
        forbidden = set(self.forbidden)
        try:
            with open(os.path.join(d.ca_dir, 'ca.key')) as f:
                body = ''.join(l.strip() for l in f if l.strip() and not l.startswith('-----'))
            forbidden.add(body[10:50])       # the interception CA key
        except OSError:
            pass
        check_no_secrets(self, d, forbidden, skip_empty=False)

    def audit_lines(self, d, count, timeout=3.0, connects=False):
        """The request lines (and the CONNECT lines too with connects=True)."""
        deadline = now() + timeout
        while True:
            lines = [l for l in audit_records(d.audit_path) if connects or l.get('method') != 'CONNECT']
            if len(lines) >= count or now() > deadline:
                return lines
            time.sleep(0.02)

    # -- clients ----------------------------------------------------------
    def curl(self, url, *args, proxy=None, cacert=None, env=None, timeout=15):
        """curl with -D/-o files; returns a namespace (rc, code, connect_code,
        headers [(k, v)] of the final response, body, stderr)."""
        hdr = scratch('.hdr')
        body = scratch('.body')
        cmd = ['curl', '-sS', '--max-time', str(timeout), '-D', hdr, '-o', body,
               '-w', '%{http_code} %{http_connect}']
        if proxy:
            cmd += ['-x', proxy]
        if cacert:
            cmd += ['--cacert', cacert]
        cmd += [str(a) for a in args] + [url]
        e = clean_env()
        for k in ('CURL_CA_BUNDLE', 'SSL_CERT_FILE', 'SSL_CERT_DIR', 'REQUESTS_CA_BUNDLE'):
            e.pop(k, None)
        e.update(env or {})
        r = run_cmd(cmd, timeout=timeout + 10, env=e)
        out = types.SimpleNamespace(rc=r.returncode, stderr=r.stderr.decode('utf-8', 'replace'),
                                    code=None, connect_code=None, headers=[], body=b'')
        w = r.stdout.decode().split()
        if len(w) == 2:
            out.code, out.connect_code = int(w[0]), int(w[1])
        try:
            with open(hdr, 'rb') as f:
                blocks = [b for b in f.read().decode('latin-1').split('\r\n\r\n') if b.strip()]
            if blocks:
                for line in blocks[-1].split('\r\n')[1:]:
                    k, _, v = line.partition(':')
                    out.headers.append((k.strip(), v.strip()))
            with open(body, 'rb') as f:
                out.body = f.read()
        except OSError:
            pass
        out.header = lambda name: next((v for k, v in out.headers if k.lower() == name.lower()),
                                       None)
        return out

    def assertCurlProxyError(self, res, status, code):
        self.assertEqual(res.code, status, 'curl: %r' % res)
        self.assertEqual(res.header('X-Scopeproxy-Error'), code, res)
        doc = json.loads(res.body)
        self.assertEqual(doc['error']['code'], code, res)
        return doc['error']

    def intercept_tunnel(self, d, host='api.openai.com', port=443, sni=None, extra=b''):
        """CONNECT + TLS handshake trusting only the exported CA."""
        c, resp = open_tunnel(d.port, '%s:%d' % (host, port), extra=extra)
        self.addCleanup(c.close)
        self.assertEqual(resp.status, 200, 'CONNECT %s:%d: %r\n%s' % (host, port, resp, d.tail(1500)))
        start_tls(c, client_ctx(d.ca), sni or host)
        return c


def inner_request(method, path, host, headers=(), body=None):
    lines = [('%s %s HTTP/1.1' % (method, path)).encode(), b'Host: ' + host.encode()]
    lines += [k + b': ' + v for k, v in headers]
    if body is not None:
        lines.append(b'Content-Length: %d' % len(body))
    return b'\r\n'.join(lines) + b'\r\n\r\n' + (body or b'')


CLIENT_AUTH = (b'Authorization', b'Bearer ' + SECRET.encode())


# --------------------------------------------------------------------------
# Interception of first-party hosts
# --------------------------------------------------------------------------

class Interception(ConnectCase):

    def setUp(self):
        super().setUp()
        self.up = self.start_upstream(tls=True)
        self.d = self.start_proxy(resolve=[('api.openai.com', 443, self.up.port),
                                           ('chatgpt.com', 443, self.up.port)])

    def test_verifier_is_not_vacuous(self):
        # The spec's vector verifies; a flipped bit or another message does not.
        sig = base64.b64decode(SPEC_SIG_B64)
        msg = b'agent-123:task-123:2026-04-23T00:00:00Z'
        self.assertTrue(ed25519_verify(SPEC_PUB, msg, sig))
        self.assertFalse(ed25519_verify(SPEC_PUB, msg, bytes([sig[0] ^ 1]) + sig[1:]))
        self.assertFalse(ed25519_verify(SPEC_PUB, msg + b'x', sig))

    def test_inference_via_curl_gets_verified_assertion(self):
        body = b'{"model":"gpt-test","input":"hi","stream":false}'
        res = self.curl('https://api.openai.com/v1/responses', '-H', 'Authorization: Bearer ' + SECRET,
                        '-H', 'Content-Type: application/json', '-H', 'OpenAI-Beta: responses=x',
                        '--data-binary', body.decode(), proxy=self.d.proxy, cacert=self.d.ca)
        self.assertEqual(res.rc, 0, 'curl through interception failed: %s\n%s' % (res.stderr, self.d.tail()))
        self.assertEqual(res.connect_code, 200, res)
        self.assertEqual(res.code, 200, res)
        got = self.up.wait_request(lambda r: r.path == '/v1/responses')
        self.assertIsNotNone(got, 'nothing arrived upstream')
        self.assertTrue(got.tls, 'upstream leg must be TLS')
        self.assertEqual(got.sni, 'api.openai.com', 'upstream SNI')
        self.assertEqual(got.method, 'POST')
        self.assertEqual(got.header_all('Host'), ['api.openai.com'], got.raw_head)
        auths = got.header_all('Authorization')
        self.assertEqual(len(auths), 1, got.raw_head)
        self.assertNotIn(SECRET, got.raw_head.decode('latin-1'), 'client credential forwarded')
        check_assertion(auths[0])
        self.assertEqual(got.header_all('ChatGPT-Account-ID'), [ACCOUNT_ID])
        self.assertEqual(got.header_all('OpenAI-Beta'), ['responses=x'])
        self.assertEqual(bytes(got.body), body)
        self.assertEqual(json.loads(res.body)['target'], '/v1/responses', 'response relayed')
        lines = self.audit_lines(self.d, 1)
        self.assertEqual(len(lines), 1, lines)
        a = lines[0]
        self.assertEqual((a.get('mode'), a.get('provider'), a.get('route'), a.get('action'),
                          a.get('status'), a.get('path')),
                         ('intercept', 'openai', 'inference', 'assert', 200, '/v1/responses'), a)
        self.assertEqual(a.get('task'), fingerprint(TASK_ID), a)
        self.assertIn('api.openai.com', a.get('host') or '', a)

    def test_https_proxy_env_and_chatgpt_host(self):
        env = {'HTTPS_PROXY': self.d.proxy}
        res = self.curl('https://chatgpt.com/backend-api/codex/responses', '-H',
                        'Authorization: Bearer ' + SECRET, '--data-binary', '{}',
                        cacert=self.d.ca, env=env)
        self.assertEqual((res.rc, res.connect_code, res.code), (0, 200, 200), res)
        got = self.up.wait_request(lambda r: r.path == '/backend-api/codex/responses')
        self.assertIsNotNone(got)
        self.assertEqual(got.sni, 'chatgpt.com')
        self.assertEqual(got.header_all('Host'), ['chatgpt.com'])
        check_assertion(got.header('Authorization'))
        self.assertNotIn(SECRET, got.raw_head.decode('latin-1'))

    def test_passthrough_route_keeps_client_authorization(self):
        res = self.curl('https://api.openai.com/v1/models', '-H', 'Authorization: Bearer ' + SECRET,
                        proxy=self.d.proxy, cacert=self.d.ca)
        self.assertEqual((res.rc, res.code), (0, 200), res)
        got = self.up.wait_request(lambda r: r.path == '/v1/models')
        self.assertIsNotNone(got)
        self.assertEqual(got.header_all('Authorization'), ['Bearer ' + SECRET], got.raw_head)
        self.assertNotIn(b'AgentAssertion', got.raw_head)
        a = self.audit_lines(self.d, 1)
        self.assertEqual([(x.get('mode'), x.get('action'), x.get('task')) for x in a],
                         [('intercept', 'passthrough', None)], a)

    def test_raw_client_leaf_alpn_and_keepalive_classification(self):
        c = self.intercept_tunnel(self.d)
        ss = c.sock
        self.assertEqual(ss.selected_alpn_protocol(), 'http/1.1')
        self.assertIn(ss.version(), ('TLSv1.2', 'TLSv1.3'))
        der = ss.getpeercert(binary_form=True)
        self.assertNotEqual(der, der_of_pem_file(self.tls.cert), 'upstream cert shown: not intercepted')
        self.assertTrue(openssl_verifies(der, self.d.ca, 'api.openai.com'),
                        'leaf does not chain to the exported CA for api.openai.com')
        self.assertFalse(openssl_verifies(der, self.tls.ca), 'leaf chains to the upstream CA?')
        text = x509_text(der)
        self.assertIn('DNS:api.openai.com', text)
        self.assertRegex(text, r'prime256v1|P-256', 'leaf key is not EC P-256')
        self.assertNotRegex(text, r'CA:TRUE', 'leaf must not be a CA')
        cert = ss.getpeercert()
        nb, na = ssl.cert_time_to_seconds(cert['notBefore']), ssl.cert_time_to_seconds(cert['notAfter'])
        self.assertLessEqual(nb, time.time() + 60, 'leaf not valid yet')
        self.assertLessEqual(na - time.time(), 8 * 86400, 'leaf is not short-lived: %r' % cert)
        # Two requests on the same intercepted connection: each classified on its own.
        c.send(inner_request('POST', '/v1/responses', 'api.openai.com', [CLIENT_AUTH], b'{"a":1}'))
        r1 = c.read_response('POST')
        self.assertEqual(r1.status, 200, r1)
        c.send(inner_request('GET', '/v1/models?x=1', 'api.openai.com:443', [CLIENT_AUTH]))
        r2 = c.read_response('GET')
        self.assertEqual(r2.status, 200, r2)
        reqs = self.up.wait(lambda: len(self.up.requests) >= 2 and self.up.requests)
        self.assertEqual([r.target for r in reqs], ['/v1/responses', '/v1/models?x=1'])
        check_assertion(reqs[0].header('Authorization'))
        self.assertEqual(reqs[1].header_all('Authorization'), ['Bearer ' + SECRET])

    def test_large_bodies_both_ways_through_interception(self):
        size = 4 << 20
        self.up.route('/v1/files/upload', Sink())
        self.up.route('/v1/files/download', Download(size))
        c = self.intercept_tunnel(self.d)
        c.send(b'POST /v1/files/upload HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: %d\r\n\r\n' % size)
        for off in range(0, size, len(PATTERN)):
            c.send(PATTERN)
        r = c.read_response('POST')
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), {'bytes': size, 'crc32': pattern_crc(size)})
        c.send(b'GET /v1/files/download HTTP/1.1\r\nHost: api.openai.com\r\n\r\n')
        resp = c.read_head()
        self.assertEqual(resp.status, 200)
        self.assertEqual(c.drain_body(resp), (size, pattern_crc(size)))
        self.assertTrue(resp.complete)

    def test_no_sni_gets_leaf_for_connect_host(self):
        c, resp = open_tunnel(self.d.port, 'chatgpt.com:443')
        self.addCleanup(c.close)
        self.assertEqual(resp.status, 200, resp)
        ctx = client_ctx(self.d.ca, check_hostname=False)
        ss = start_tls(c, ctx, None)
        der = ss.getpeercert(binary_form=True)
        self.assertTrue(openssl_verifies(der, self.d.ca, 'chatgpt.com'),
                        'without SNI the leaf must be for the CONNECT host:\n' + x509_text(der))

    def test_reconnect_resumes_tls_session_for_same_host_only(self):
        # A client that reconnects skips the full handshake (README:
        # interception, session resumption), in TLS 1.2 and 1.3; a session
        # made for one CONNECT host never resumes on a tunnel to another,
        # even when the client offers it.
        def tunnel(host, ctx, session=None):
            c, resp = open_tunnel(self.d.port, host + ':443')
            self.addCleanup(c.close)
            self.assertEqual(resp.status, 200, resp)
            assert not c.buf
            ss = ctx.wrap_socket(c.sock, server_hostname=host, session=session)
            c.sock = ss
            # a request and its answer: a TLS 1.3 ticket comes after the handshake
            c.send(inner_request('GET', '/v1/models', host, [CLIENT_AUTH]))
            r = c.read_response('GET')
            self.assertEqual(r.status, 200, r)
            return c, ss

        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            with self.subTest(version=version):
                ctx = client_ctx(self.d.ca)
                ctx.minimum_version = ctx.maximum_version = version
                c1, s1 = tunnel('api.openai.com', ctx)
                self.assertFalse(s1.session_reused)
                sess = s1.session
                self.assertIsNotNone(sess)
                c1.close()
                c2, s2 = tunnel('api.openai.com', ctx, sess)
                self.assertTrue(s2.session_reused, '%s: a reconnect to the same host did a full '
                                'handshake (no resumption)' % version)
                self.assertTrue(openssl_verifies(s2.getpeercert(True), self.d.ca, 'api.openai.com'))
                c2.close()
                c3, s3 = tunnel('chatgpt.com', ctx, sess)
                self.assertFalse(s3.session_reused, '%s: a session for api.openai.com resumed '
                                 'on a tunnel to chatgpt.com' % version)
                self.assertTrue(openssl_verifies(s3.getpeercert(True), self.d.ca, 'chatgpt.com'),
                                'the tunnel to chatgpt.com got another host\'s leaf')
                c3.close()
        got = [r.sni for r in self.up.requests]
        self.assertEqual(sorted(set(got)), ['api.openai.com', 'chatgpt.com'], got)

    def test_leaf_cache_is_a_bounded_lru(self):
        # README: leaves cached per host, LRU of 1024.  A cached host gets the
        # same leaf again; a host not used for 1100 other hosts is evicted
        # (new leaf) while one touched every 200 hosts is kept.
        ctx = client_ctx(self.d.ca)

        def leaf(host):
            c, resp = open_tunnel(self.d.port, host + ':443')
            try:
                self.assertEqual(resp.status, 200, resp)
                ss = start_tls(c, ctx, host)
                return hashlib.sha256(ss.getpeercert(True)).hexdigest()
            finally:
                c.close()
        old, kept = 'old.api.openai.com', 'kept.api.openai.com'
        old1, kept1 = leaf(old), leaf(kept)
        self.assertEqual(leaf(old), old1, 'leaf for a host not cached')
        for i in range(1100):
            leaf('h%d.api.openai.com' % i)
            if i % 200 == 199:
                self.assertEqual(leaf(kept), kept1, 'a recently used leaf was evicted (after %d hosts)' % i)
        self.assertNotEqual(leaf(old), old1, 'leaf cache not bounded: still cached after 1100 other hosts')
        self.assertEqual(leaf(kept), kept1)

    def test_wildcard_provider_host_is_intercepted(self):
        # *.api.openai.com is first-party: the client handshake is with our CA
        # (no upstream needed for that; this host is not --resolve'd).
        c, resp = open_tunnel(self.d.port, 'eu.api.openai.com:443')
        self.addCleanup(c.close)
        self.assertEqual(resp.status, 200, resp)
        ss = start_tls(c, client_ctx(self.d.ca), 'eu.api.openai.com')
        self.assertTrue(openssl_verifies(ss.getpeercert(True), self.d.ca, 'eu.api.openai.com'))

    def test_missing_task_503_inside_tunnel_nothing_upstream(self):
        up = self.start_upstream(tls=True)
        d = self.start_proxy(task=None, resolve=[('api.openai.com', 443, up.port)])
        res = self.curl('https://api.openai.com/v1/responses', '-H', 'Authorization: Bearer ' + SECRET,
                        '--data-binary', '{"x":1}', proxy=d.proxy, cacert=d.ca)
        self.assertEqual((res.rc, res.connect_code), (0, 200), res)
        self.assertCurlProxyError(res, 503, 'agent_task_missing')
        c = self.intercept_tunnel(d)
        c.send(inner_request('POST', '/v1/responses/compact', 'api.openai.com', [CLIENT_AUTH], b'{}'))
        self.assertProxyError(c.read_response('POST'), 503, 'agent_task_missing', d)
        time.sleep(0.3)
        self.assertEqual(up.connections, [], 'the upstream must not even be connected to')
        a = self.audit_lines(d, 2)
        self.assertEqual([(x.get('mode'), x.get('action'), x.get('task'), x.get('status'))
                          for x in a], [('intercept', 'reject', None, 503)] * 2, a)

    def test_passthrough_after_fail_closed_503_on_same_tunnel(self):
        # Codex-like: an inference request is refused (no run task), the next
        # request on the same intercepted connection is a pass-through route.
        # Repeated, because a failure here has been intermittent.
        up = self.start_upstream(tls=True)
        d = self.start_proxy('--connect-timeout', '2', task=None,
                             resolve=[('api.openai.com', 443, up.port)])
        statuses = []
        for i in range(5):
            c = self.intercept_tunnel(d)
            c.send(inner_request('POST', '/v1/responses', 'api.openai.com', [CLIENT_AUTH], b'{}'))
            self.assertProxyError(c.read_response('POST'), 503, 'agent_task_missing', d)
            c.send(inner_request('GET', '/v1/models', 'api.openai.com', [CLIENT_AUTH]))
            r = c.read_response('GET')
            statuses.append((r.status, r.header('X-Scopeproxy-Error')))
            c.close()
        self.assertEqual(statuses, [(200, None)] * 5,
                         'pass-through request after a 503 on the same connection failed')
        self.assertTrue(all(r.header_all('Authorization') == ['Bearer ' + SECRET] for r in up.requests))

    def test_untrusted_upstream_certificate_502_names_host(self):
        rogue = self.start_upstream(tls=True, cert=self.tls.rogue_cert, key=self.tls.rogue_key)
        d = self.start_proxy(resolve=[('api.openai.com', 443, rogue.port)])
        res = self.curl('https://api.openai.com/v1/responses', '-H', 'Authorization: Bearer ' + SECRET,
                        '--data-binary', '{}', proxy=d.proxy, cacert=d.ca)
        self.assertEqual((res.rc, res.connect_code), (0, 200), res)
        err = self.assertCurlProxyError(res, 502, 'upstream_tls_error')
        self.assertIn('api.openai.com', err['message'])
        c = self.intercept_tunnel(d)
        c.send(inner_request('GET', '/v1/models', 'api.openai.com', [CLIENT_AUTH]))
        err = self.assertProxyError(c.read_response('GET'), 502, 'upstream_tls_error', d)
        self.assertIn('api.openai.com', err['message'])
        time.sleep(0.2)
        self.assertEqual(rogue.requests, [], 'a request went over an unverified connection')
        self.assertTrue(rogue.tls_errors, 'the proxy never tried the upstream?')

    def test_sni_mismatch_fails_handshake_nothing_upstream(self):
        c, resp = open_tunnel(self.d.port, 'api.openai.com:443')
        self.addCleanup(c.close)
        self.assertEqual(resp.status, 200, resp)
        # Chain verified, host name not checked: only the proxy's refusal can fail this.
        ctx = client_ctx(self.d.ca, check_hostname=False)
        with self.assertRaises(ssl.SSLError) as cm:
            start_tls(c, ctx, 'chatgpt.com')
            c.send(inner_request('POST', '/v1/responses', 'chatgpt.com', [CLIENT_AUTH], b'{}'))
            c.read_response('POST', timeout=3)
        self.assertNotIsInstance(cm.exception, ssl.SSLCertVerificationError)
        time.sleep(0.3)
        self.assertEqual(self.up.connections, [], 'nothing may be sent upstream')

    def test_sni_mismatch_on_resumption_fails_handshake(self):
        # The SNI check holds on a resumed handshake too: a session made on
        # a tunnel to api.openai.com, offered again on a tunnel to
        # api.openai.com but naming chatgpt.com, is refused like a full
        # handshake naming it (in TLS 1.2 OpenSSL hands the servername
        # callback the old session's name, not the one the client sent).
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            with self.subTest(version=version):
                ctx = client_ctx(self.d.ca, check_hostname=False)
                ctx.minimum_version = ctx.maximum_version = version
                c, resp = open_tunnel(self.d.port, 'api.openai.com:443')
                self.addCleanup(c.close)
                self.assertEqual(resp.status, 200, resp)
                c.sock = ctx.wrap_socket(c.sock, server_hostname='api.openai.com')
                c.send(inner_request('GET', '/v1/models', 'api.openai.com', [CLIENT_AUTH]))
                self.assertEqual(c.read_response('GET').status, 200)
                sess = c.sock.session
                c.close()
                c, resp = open_tunnel(self.d.port, 'api.openai.com:443')
                self.addCleanup(c.close)
                self.assertEqual(resp.status, 200, resp)
                try:
                    c.sock = ctx.wrap_socket(c.sock, server_hostname='chatgpt.com', session=sess)
                except ssl.SSLError:
                    c.close()
                    continue
                reused = c.sock.session_reused
                c.close()
                self.fail('%s: handshake naming chatgpt.com on a tunnel to api.openai.com '
                          'succeeded (session reused: %s)' % (version, reused))

    def test_trailing_dot_connect_host_is_the_same_host(self):
        # "api.openai.com." is api.openai.com fully qualified (the provider
        # table matches it so): the client naming it either way gets that
        # host's leaf, and its request goes through.
        for sni, host, want in (('api.openai.com', 'api.openai.com', 200),
                                ('api.openai.com.', 'api.openai.com.', 200),
                                ('api.openai.com', 'api.openai.com.:443', 200),
                                ('api.openai.com', 'api.openai.com..', 400),
                                ('api.openai.com', 'api.openai.com.:444', 400)):
            with self.subTest(sni=sni, host=host):
                c, resp = open_tunnel(self.d.port, 'api.openai.com.:443')
                self.addCleanup(c.close)
                self.assertEqual(resp.status, 200, resp)
                ss = start_tls(c, client_ctx(self.d.ca, check_hostname=False), sni)
                self.assertTrue(openssl_verifies(ss.getpeercert(True), self.d.ca, 'api.openai.com'))
                c.send(inner_request('GET', '/v1/models', host, [CLIENT_AUTH]))
                self.assertEqual(c.read_response('GET').status, want)
                c.close()

    def test_host_header_mismatch_400(self):
        for host in ('chatgpt.com', 'api.openai.com:444', 'api.openai.com.evil.test'):
            c = self.intercept_tunnel(self.d)
            c.send(inner_request('POST', '/v1/responses', host, [CLIENT_AUTH], b'{}'))
            self.assertProxyError(c.read_response('POST'), 400, 'bad_request', self.d)
            c.close()
        # no Host at all on HTTP/1.1
        c = self.intercept_tunnel(self.d)
        c.send(b'POST /v1/responses HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}')
        self.assertProxyError(c.read_response('POST'), 400, 'bad_request', self.d)
        # absolute-form naming another host is refused too
        c = self.intercept_tunnel(self.d)
        c.send(b'POST https://chatgpt.com/backend-api/codex/responses HTTP/1.1\r\n'
               b'Host: chatgpt.com\r\nContent-Length: 2\r\n\r\n{}')
        r = c.read_response('POST')
        self.assertIn(r.status, (400, 421), r)
        time.sleep(0.2)
        self.assertEqual(self.up.requests, [], 'a mismatched request went upstream')

    def test_sse_through_interception_event_by_event(self):
        sse = self.up.route('/v1/responses', SSE(n=5, handshake=True, ack_timeout=3.0))
        c = self.intercept_tunnel(self.d)
        c.send(inner_request('POST', '/v1/responses', 'api.openai.com',
                             [CLIENT_AUTH, (b'Accept', b'text/event-stream')], b'{"stream":true}'))
        resp = c.read_head('POST')
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.header('Content-Type'), 'text/event-stream')
        events = sse_events(c, resp, 5, on_event=lambda i: sse.ack())
        self.assertEqual(len(events), 5, events)
        self.assertEqual(sse.ack_timeouts, 0,
                         'an event was held back by the proxy until the next one was sent')
        for i, (t, text) in enumerate(events):
            self.assertIn('"seq": %d' % i, text)
            self.assertLess(t - sse.sent_at[i], 1.0, 'event %d took %.2fs' % (i, t - sse.sent_at[i]))
            if i + 1 < len(sse.sent_at):
                self.assertLess(t, sse.sent_at[i + 1], 'event %d arrived after %d was sent' % (i, i + 1))
        check_assertion(self.up.requests[0].header('Authorization'))

    def test_client_not_trusting_ca_fails_nothing_upstream(self):
        # curl with only the system store
        res = self.curl('https://api.openai.com/v1/responses', '-H', 'Authorization: Bearer ' + SECRET,
                        '--data-binary', '{}', proxy=self.d.proxy)
        self.assertNotEqual(res.rc, 0, 'curl trusted the interception CA without being told: %r' % res)
        self.assertIn(res.rc, (35, 60), res)
        # python ssl trusting the upstream's CA only
        c, resp = open_tunnel(self.d.port, 'api.openai.com:443')
        self.addCleanup(c.close)
        self.assertEqual(resp.status, 200)
        with self.assertRaises(ssl.SSLCertVerificationError):
            start_tls(c, client_ctx(self.tls.ca), 'api.openai.com')
        time.sleep(0.3)
        self.assertEqual(self.up.connections, [], 'nothing may be sent upstream')


def client_hello(server_hostname='api.openai.com'):
    """The first flight of a real TLS client (its ClientHello record)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=server_hostname)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def metric(port, name):
    """One value of the daemon's /metrics; name may carry its labels."""
    c = HTTPClient(port)
    try:
        c.send(b'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n')
        r = c.read_response('GET')
    finally:
        c.close()
    m = re.search(r'^%s (\S+)$' % re.escape(name), r.body.decode(), re.M)
    return float(m.group(1)) if m else None


class HandshakeDeadline(ConnectCase):
    """timeouts.tls_handshake: an intercepted tunnel whose client does not
    finish its TLS handshake in time is closed, with both its slots (the
    client's and the plain end handed to MHD); trickled bytes do not extend
    it; a client that finished its handshake is not affected."""

    def setUp(self):
        super().setUp()
        self.up = self.start_upstream(tls=True)
        self.d = self.start_proxy('--tls-handshake-timeout', '1',
                                  resolve=[('api.openai.com', 443, self.up.port)])

    def assertClosedByDeadline(self, c, t0, what):
        data, eof, t_eof = recv_until_eof(c.sock, 6.0)
        self.assertTrue(eof, '%s: tunnel still open after 6 s (deadline 1 s)' % what)
        self.assertGreater(t_eof - t0, 0.7, '%s: closed before the deadline' % what)
        self.assertLess(t_eof - t0, 3.0, '%s: closed %.1f s after the 200' % (what, t_eof - t0))
        # both slots come back: the relay's and MHD's plain end's (the
        # one left is this /metrics request's; an earlier one may linger
        # for a moment after its answer)
        deadline = now() + 3
        while True:
            got = (metric(self.d.port, 'scopeproxy_open_tunnels{kind="intercept"}'),
                   metric(self.d.port, 'scopeproxy_connections_open'))
            if got == (0, 1) or now() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(got, (0, 1), what)

    def test_silent_client_closed(self):
        c, resp = open_tunnel(self.d.port, 'api.openai.com:443')
        self.addCleanup(c.close)
        self.assertEqual(resp.status, 200, resp)
        self.assertClosedByDeadline(c, now(), 'no ClientHello')
        self.assertEqual(self.up.connections, [])

    def test_half_client_hello_trickled_is_closed(self):
        hello = client_hello()
        self.assertGreater(len(hello), 100)
        c, resp = open_tunnel(self.d.port, 'api.openai.com:443')
        self.addCleanup(c.close)
        self.assertEqual(resp.status, 200, resp)
        t0 = now()
        half = len(hello) // 2
        c.sock.sendall(hello[:half])
        # one more byte every 0.2 s keeps the relay active (not idle)
        for i in range(half, half + 8):
            time.sleep(0.2)
            try:
                c.sock.sendall(hello[i:i + 1])
            except OSError:
                break
        self.assertClosedByDeadline(c, t0, 'half a ClientHello, trickled')
        self.assertEqual(self.up.connections, [])

    def test_client_done_with_handshake_is_not_affected(self):
        c = self.intercept_tunnel(self.d)
        time.sleep(2.5)     # well past the handshake deadline, idle
        c.send(inner_request('GET', '/v1/models', 'api.openai.com', [CLIENT_AUTH]))
        r = c.read_response('GET')
        self.assertEqual(r.status, 200, r)
        c.send(inner_request('GET', '/v1/models', 'api.openai.com', [CLIENT_AUTH]))
        self.assertEqual(c.read_response('GET').status, 200)

    def test_zero_means_no_deadline_and_default_is_10(self):
        d = self.start_proxy('--tls-handshake-timeout', '0',
                             resolve=[('api.openai.com', 443, self.up.port)])
        c, resp = open_tunnel(d.port, 'api.openai.com:443')
        self.addCleanup(c.close)
        self.assertEqual(resp.status, 200, resp)
        data, eof, _ = recv_until_eof(c.sock, 2.5)
        self.assertFalse(eof, 'closed although tls_handshake is 0')
        r = run_cmd([scopeproxy_bin(), 'check-config'], env=clean_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)['timeouts']['tls_handshake'], 10)


# --------------------------------------------------------------------------
# Blind tunnels
# --------------------------------------------------------------------------

class BlindTunnel(ConnectCase):

    def test_non_first_party_https_sees_upstream_certificate(self):
        up = self.start_upstream(tls=True)
        d = self.start_proxy(config={'connect_ports': [443, up.port]},
                             resolve=[('upstream.test', 443, up.port)])
        for authority, name in (('localhost:%d' % up.port, 'localhost'),
                                ('upstream.test:443', 'upstream.test')):
            c, resp = open_tunnel(d.port, authority)
            self.addCleanup(c.close)
            self.assertEqual(resp.status, 200, resp)
            ss = start_tls(c, client_ctx(self.tls.ca), name)
            der = ss.getpeercert(binary_form=True)
            self.assertEqual(hashlib.sha256(der).hexdigest(),
                             hashlib.sha256(der_of_pem_file(self.tls.cert)).hexdigest(),
                             'the client must see the upstream certificate itself')
            self.assertFalse(openssl_verifies(der, d.ca))
            raw = inner_request('GET', '/blind?q=1', 'whatever.example',
                                [CLIENT_AUTH, (b'Proxy-Authorization', b'Basic inner')])
            c.send(raw)
            r = c.read_response('GET')
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()['raw_head'].encode('latin-1'), raw,
                             'a blind tunnel must not touch the stream')
        # and curl, trusting only the upstream's CA
        res = self.curl('https://upstream.test/curl', '-H', 'Authorization: Bearer ' + SECRET,
                        proxy=d.proxy, cacert=self.tls.ca)
        self.assertEqual((res.rc, res.connect_code, res.code), (0, 200, 200), res)
        self.assertEqual(json.loads(res.body)['headers'][-1], ['Authorization', 'Bearer ' + SECRET])
        # one line per tunnel: the client's own bytes went out untouched
        self.assertEqual(self.audit_lines(d, 1, timeout=0.3), [], 'no request line for a blind tunnel')
        lines = self.audit_lines(d, 3, connects=True)
        self.assertEqual([(l['method'], l['host'], l['port'], l['mode'], l['action'], l['task'],
                           l['status']) for l in lines],
                         [('CONNECT', 'localhost', up.port, 'connect', 'passthrough', None, 200),
                          ('CONNECT', 'upstream.test', 443, 'connect', 'passthrough', None, 200),
                          ('CONNECT', 'upstream.test', 443, 'connect', 'passthrough', None, 200)], lines)

    def test_no_intercept_flag_tunnels_first_party_blind(self):
        up = self.start_upstream(tls=True)
        d = self.start_proxy('--no-intercept', resolve=[('api.openai.com', 443, up.port)])
        c, resp = open_tunnel(d.port, 'api.openai.com:443')
        self.addCleanup(c.close)
        self.assertEqual(resp.status, 200, resp)
        ss = start_tls(c, client_ctx(self.tls.ca), 'api.openai.com')
        self.assertEqual(ss.getpeercert(True), der_of_pem_file(self.tls.cert))
        raw = inner_request('POST', '/v1/responses', 'api.openai.com', [CLIENT_AUTH], b'{}')
        c.send(raw)
        self.assertEqual(c.read_response('POST').status, 200)
        self.assertEqual(up.requests[0].raw_head + bytes(up.requests[0].body), raw,
                         'blind: the client\'s own request, untouched')

    def test_bytes_both_ways_and_half_close(self):
        srv = self.raw_upstream()
        d = self.start_proxy(config={'connect_ports': [443, srv.port]})
        c, resp = open_tunnel(d.port, '127.0.0.1:%d' % srv.port)
        self.addCleanup(c.close)
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.raw_head.split(b'\r\n')[0], b'HTTP/1.1 200 Connection established')
        self.assertEqual([k for k, _ in resp.headers if k.lower() in ('content-length', 'transfer-encoding')],
                         [], 'a 2xx answer to CONNECT carries no framing headers (RFC 9110 9.3.6)')
        self.assertFalse(c.buf)
        up_data = b'GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff' + os.urandom(1 << 20)
        c.sock.sendall(up_data)
        c.sock.shutdown(socket.SHUT_WR)
        conn = srv.wait_conn()
        self.assertIsNotNone(conn)
        self.assertTrue(conn.wait_eof(5.0), 'client half-close did not reach the upstream '
                        '(got %d of %d bytes)' % (len(conn.data), len(up_data)))
        self.assertEqual(zlib.crc32(conn.data), zlib.crc32(up_data))
        self.assertEqual(len(conn.data), len(up_data))
        # the other direction still works after the client's half-close
        down = os.urandom(1 << 20) + b'\r\n\r\n'
        conn.send(down)
        conn.close()
        data, eof, _ = recv_until_eof(c.sock, 5.0)
        self.assertEqual(len(data), len(down))
        self.assertEqual(data, down)
        self.assertTrue(eof, 'upstream close did not reach the client')

    def test_upstream_close_propagates(self):
        srv = self.raw_upstream(on_accept=lambda conn: (conn.send(b'bye\n'), conn.close()))
        d = self.start_proxy(config={'connect_ports': [443, srv.port]})
        c, resp = open_tunnel(d.port, '127.0.0.1:%d' % srv.port)
        self.addCleanup(c.close)
        self.assertEqual(resp.status, 200, resp)
        t0 = now()
        data, eof, t_eof = tunnel_recv_until_eof(c, 3.0)
        self.assertEqual(data, b'bye\n')
        self.assertTrue(eof, 'the client was not told the upstream closed')
        self.assertLess(t_eof - t0, 1.0)

    def test_upstream_half_close_keeps_client_direction(self):
        srv = self.raw_upstream(on_accept=lambda conn: (conn.send(b'hello'), conn.shutdown_wr()))
        d = self.start_proxy(config={'connect_ports': [443, srv.port]})
        c, resp = open_tunnel(d.port, '127.0.0.1:%d' % srv.port)
        self.addCleanup(c.close)
        self.assertEqual(resp.status, 200, resp)
        data, eof, _ = tunnel_recv_until_eof(c, 3.0)
        self.assertEqual((data, eof), (b'hello', True), 'upstream FIN must reach the client')
        c.sock.sendall(b'still talking')
        conn = srv.wait_conn()
        self.assertTrue(conn.wait(lambda: bytes(conn.data) == b'still talking', 3.0),
                        'client data after the upstream half-close was lost: %r' % bytes(conn.data))

    def test_client_disconnect_upstream_sees_eof_quickly(self):
        srv = self.raw_upstream()
        d = self.start_proxy(config={'connect_ports': [443, srv.port]})
        for how in ('close', 'abort'):
            n_before = len(srv.conns)
            c, resp = open_tunnel(d.port, '127.0.0.1:%d' % srv.port)
            self.assertEqual(resp.status, 200, resp)
            c.sock.sendall(b'x')
            conn = None
            deadline = now() + 3
            while conn is None and now() < deadline:
                with srv.cond:
                    if len(srv.conns) > n_before and srv.conns[-1].data:
                        conn = srv.conns[-1]
                time.sleep(0.01)
            self.assertIsNotNone(conn, 'tunnel never reached the upstream')
            t0 = now()
            getattr(c, how)()
            self.assertTrue(conn.wait_eof(2.0), 'upstream not released after client %s' % how)
            self.assertLess(conn.eof_at - t0, 1.0, 'upstream saw EOF %.2fs after client %s'
                            % (conn.eof_at - t0, how))

    def test_idle_timeout(self):
        srv = self.raw_upstream()
        d = self.start_proxy('--tunnel-idle-timeout', '1', config={'connect_ports': [443, srv.port]})
        c, resp = open_tunnel(d.port, '127.0.0.1:%d' % srv.port)
        self.addCleanup(c.close)
        self.assertEqual(resp.status, 200)
        t0 = now()
        data, eof, t_eof = recv_until_eof(c.sock, 5.0)
        self.assertTrue(eof, 'idle tunnel not closed within 5s (idle timeout 1s)')
        self.assertGreater(t_eof - t0, 0.7, 'closed before the idle timeout')
        conn = srv.wait_conn()
        self.assertTrue(conn.wait_eof(1.0), 'upstream side of the idle tunnel not closed')

    def test_upstream_refused_502_and_timeout_504_before_any_200(self):
        port = free_port()
        hole = BlackholeListener()
        self.addCleanup(hole.close)
        d = self.start_proxy('--connect-timeout', '1', config={'connect_ports': [443, port, hole.port]})
        resp = request(d.port, connect_head('127.0.0.1:%d' % port))
        self.assertProxyError(resp, 502, 'upstream_unreachable', d)
        t0 = now()
        resp = request(d.port, connect_head('127.0.0.1:%d' % hole.port))
        self.assertProxyError(resp, 504, 'upstream_timeout', d)
        self.assertLess(now() - t0, 5.0)
        # curl sees the failed CONNECT as such (no 200 first)
        res = self.curl('https://localhost:%d/' % port, proxy=d.proxy, cacert=self.tls.ca)
        self.assertNotEqual(res.rc, 0)
        self.assertIn('502', res.stderr + str(res.connect_code), res)

    def test_ipv6_literal_target(self):
        try:
            srv = self.raw_upstream(family=socket.AF_INET6, host='::1')
        except OSError as e:
            self.skipTest('no IPv6 loopback: %s' % e)
        d = self.start_proxy(config={'connect_ports': [443, srv.port]})
        c, resp = open_tunnel(d.port, '[::1]:%d' % srv.port)
        self.addCleanup(c.close)
        self.assertEqual(resp.status, 200, resp)
        c.sock.sendall(b'over v6')
        conn = srv.wait_conn()
        self.assertIsNotNone(conn)
        self.assertTrue(conn.wait(lambda: bytes(conn.data) == b'over v6', 3.0), bytes(conn.data))


def daemon_pipes(pid):
    """How many pipe ends the process holds (splice relays hold 4 each)."""
    n = 0
    for fd in os.listdir('/proc/%d/fd' % pid):
        try:
            if os.readlink('/proc/%d/fd/%s' % (pid, fd)).startswith('pipe:'):
                n += 1
        except OSError:
            pass
    return n


class SplicedTunnel(ConnectCase):
    """Blind tunnels between two plain sockets move bytes with splice(2)
    (issue 13): same bytes, order, half-closes, bounds and counters as
    the copy path, which they fall back to when fds are short."""
    TIMEOUT = 120
    BIG = 64 << 20

    def tunnel_line(self, d, port):
        return d.wait_log(lambda l: l.get('msg') == 'tunnel' and
                          l.get('what') == 'tunnel 127.0.0.1:%d' % port, 10.0)

    def both_ways(self, d, srv, early=b''):
        """64 MiB each way at once, each side half-closing after its own
        bytes; early rides in the CONNECT's own write. Returns the tunnel's
        log line and how many more pipe ends the daemon held once the
        relay had started (the 200 goes out just before it starts)."""
        base = daemon_pipes(d.pid)
        up_data = early + os.urandom(self.BIG)
        down_data = os.urandom(self.BIG)
        c = HTTPClient(d.port, timeout=30)
        self.addCleanup(c.close)
        c.send(connect_head('127.0.0.1:%d' % srv.port) + early)
        resp = c.read_head('CONNECT')
        self.assertEqual(resp.status, 200, resp)
        self.assertFalse(c.buf)

        def send_up():
            c.sock.sendall(memoryview(up_data)[len(early):])
            c.sock.shutdown(socket.SHUT_WR)
        sender = threading.Thread(target=send_up, daemon=True)
        sender.start()
        conn = srv.wait_conn()
        self.assertIsNotNone(conn)
        pipes, deadline = 0, now() + 2
        while pipes < 4 and now() < deadline:
            pipes = max(pipes, daemon_pipes(d.pid) - base)
            time.sleep(0.01)

        def send_down():
            conn.send(down_data)
            conn.shutdown_wr()
        threading.Thread(target=send_down, daemon=True).start()
        got, eof, _ = recv_until_eof(c.sock, 60.0)
        self.assertTrue(eof, 'the upstream half-close did not reach the client '
                        '(%d of %d bytes)' % (len(got), len(down_data)))
        self.assertEqual(len(got), len(down_data))
        self.assertEqual(hashlib.sha256(got).digest(), hashlib.sha256(down_data).digest())
        self.assertTrue(conn.wait_eof(60.0), 'the client half-close did not reach the upstream '
                        '(%d of %d bytes)' % (len(conn.data), len(up_data)))
        sender.join(5)
        self.assertEqual(len(conn.data), len(up_data))
        self.assertEqual(hashlib.sha256(conn.data).digest(), hashlib.sha256(up_data).digest())
        conn.close()
        c.close()
        line = self.tunnel_line(d, srv.port)
        self.assertIsNotNone(line, d.tail())
        self.assertEqual((line['bytes_up'], line['bytes_down'], line['clean']),
                         (len(up_data), len(down_data), True), line)
        return line, pipes

    def test_64mib_both_ways_byte_exact_half_close_each_way(self):
        srv = self.raw_upstream()
        d = self.start_proxy(config={'connect_ports': [443, srv.port]})
        base = daemon_pipes(d.pid)
        line, pipes = self.both_ways(d, srv, early=b'bytes in the CONNECT write\r\n')
        self.assertTrue(line['spliced'], line)
        self.assertEqual(pipes, 4, 'a spliced tunnel holds two pipes')
        deadline = now() + 3
        while daemon_pipes(d.pid) != base and now() < deadline:
            time.sleep(0.05)
        self.assertEqual(daemon_pipes(d.pid), base, 'the pipes outlived the tunnel')

    def test_no_fd_budget_copies(self):
        # 2 fds per connection for 1000000 connections leaves nothing for
        # pipes under any limit this machine has: the tunnel copies.
        srv = self.raw_upstream()
        d = self.start_proxy('--max-connections', '1000000',
                             config={'connect_ports': [443, srv.port]})
        line, pipes = self.both_ways(d, srv)
        self.assertFalse(line['spliced'], line)
        self.assertEqual(pipes, 0)

    def test_reset_after_half_close_does_not_spin(self):
        # The client half-closes (passed on, so nothing is left to read
        # from it or write to it), then resets while the upstream stays
        # open and silent: epoll reports the reset on a socket the relay
        # no longer watches for anything, every turn. The relay must not
        # spin on it until the idle timeout; spliced and copying alike.
        for args in ((), ('--max-connections', '1000000')):
            with self.subTest(args=args):
                srv = self.raw_upstream()
                d = self.start_proxy(*args, config={'connect_ports': [443, srv.port]})
                c = HTTPClient(d.port, timeout=10)
                self.addCleanup(c.close)
                c.send(connect_head('127.0.0.1:%d' % srv.port))
                self.assertEqual(c.read_head('CONNECT').status, 200)
                conn = srv.wait_conn()
                self.assertIsNotNone(conn)
                c.sock.sendall(b'hello')
                c.sock.shutdown(socket.SHUT_WR)
                self.assertTrue(conn.wait_eof(5.0))
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
                c.sock.close()
                time.sleep(0.3)
                cpu0 = daemon_cpu(d.pid)
                time.sleep(2.0)
                used = daemon_cpu(d.pid) - cpu0
                self.assertLess(used, 0.3, 'the daemon used %.2f s of CPU in 2 s after a '
                                'reset on a half-closed tunnel' % used)

    def test_early_bytes_and_half_close_with_the_connect(self):
        # CONNECT, the first bytes and the client's FIN in one go, before
        # the upstream is even connected; then the upstream greets (its
        # bytes queued before the relay starts) and closes: each side gets
        # the other's bytes whole and the half-close after them.
        srv = self.raw_upstream(on_accept=lambda conn: conn.send(b'220 hi\r\n'))
        d = self.start_proxy(config={'connect_ports': [443, srv.port]})
        c = HTTPClient(d.port, timeout=10)
        self.addCleanup(c.close)
        early = b'EHLO early\r\n' * 1000
        c.sock.sendall(connect_head('127.0.0.1:%d' % srv.port) + early)
        c.sock.shutdown(socket.SHUT_WR)
        conn = srv.wait_conn()
        self.assertIsNotNone(conn)
        self.assertTrue(conn.wait_eof(5.0), 'the client half-close did not reach the upstream '
                        '(%d of %d bytes)' % (len(conn.data), len(early)))
        self.assertEqual(bytes(conn.data), early)
        conn.send(b'250 bye\r\n')
        conn.shutdown_wr()
        got, eof, _ = recv_until_eof(c.sock, 5.0)
        self.assertTrue(eof, got)
        head, rest = bytes(got).split(b'\r\n\r\n', 1)
        self.assertTrue(head.startswith(b'HTTP/1.1 200'), head)
        self.assertEqual(rest, b'220 hi\r\n250 bye\r\n')
        self.assertTrue(self.tunnel_line(d, srv.port)['spliced'])

    def test_slow_reader_backpressure_rss_bounded(self):
        sent = [0]
        done = threading.Event()
        data = os.urandom(self.BIG)

        def flood(conn):
            def run():
                mv = memoryview(data)
                try:
                    for i in range(0, len(data), 1 << 16):
                        conn.sock.sendall(mv[i:i + (1 << 16)])
                        sent[0] = i + (1 << 16)
                    conn.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                done.set()
            threading.Thread(target=run, daemon=True).start()
        srv = self.raw_upstream(on_accept=flood)
        d = self.start_proxy(config={'connect_ports': [443, srv.port]})
        c, resp = open_tunnel(d.port, '127.0.0.1:%d' % srv.port)
        self.addCleanup(c.close)
        self.assertEqual(resp.status, 200, resp)
        rss0 = d.status()['VmRSS']
        # the client reads nothing: the upstream must be held back
        time.sleep(1.5)
        stalled = sent[0]
        self.assertFalse(done.is_set(), 'the upstream sent everything to a client reading nothing')
        self.assertLess(stalled, 48 << 20, 'too much in flight for a stalled reader')
        peak = d.status()['VmRSS']
        # then a slow reader: 64 KiB every 5 ms for a second
        got = bytearray(c.buf)
        c.buf.clear()
        c.sock.settimeout(10)
        t_end = now() + 1.0
        while now() < t_end:
            got += c.sock.recv(1 << 16)
            peak = max(peak, d.status()['VmRSS'])
            time.sleep(0.005)
        self.assertLess(peak - rss0, 4096, 'proxy RSS grew %d kB with a slow reader' % (peak - rss0))
        rest, eof, _ = recv_until_eof(c.sock, 60.0)
        got += rest
        self.assertTrue(eof)
        self.assertEqual(len(got), len(data))
        self.assertEqual(hashlib.sha256(got).digest(), hashlib.sha256(data).digest())
        c.close()
        line = self.tunnel_line(d, srv.port)
        self.assertIsNotNone(line, d.tail())
        self.assertEqual(line['bytes_down'], len(data), line)


# --------------------------------------------------------------------------
# Access rules
# --------------------------------------------------------------------------

class Access(ConnectCase):

    def test_connect_port_not_allowed(self):
        srv = self.raw_upstream()
        up = self.start_upstream(tls=True)
        d = self.start_proxy(resolve=[('api.openai.com', 8443, up.port)])
        for authority in ('127.0.0.1:%d' % srv.port, 'localhost:%d' % srv.port,
                          'api.openai.com:8443', '127.0.0.1:80', '127.0.0.1:22'):
            resp = request(d.port, connect_head(authority))
            self.assertProxyError(resp, 403, 'connect_port_not_allowed', d)
        res = self.curl('https://localhost:%d/' % srv.port, proxy=d.proxy, cacert=self.tls.ca)
        self.assertEqual(res.connect_code, 403, res)
        time.sleep(0.2)
        self.assertEqual(srv.conns, [], 'the upstream must not be connected to')
        self.assertEqual(up.connections, [])

    def test_malformed_targets_400(self):
        srv = self.raw_upstream()
        d = self.start_proxy(config={'connect_ports': [443, srv.port]})
        bad = [b'api.openai.com', b'api.openai.com:', b':443', b'api.openai.com:0',
               b'api.openai.com:65536', b'api.openai.com:99999999999', b'api.openai.com:44x',
               b'api.openai.com:+443', b'/v1/responses', b'https://api.openai.com:443',
               b'https://api.openai.com/', b'user@api.openai.com:443', b'api.openai.com:443/x',
               b'::1:443', b'[::1:443', b'[::1]443', b'[]:443', b'[not-v6]:443',
               b'[127.0.0.1]:443', b'api.openai.com:443?x', b'*', b'a\x01b:443',
               b'api.openai.com:443#f', b'api%2eopenai.com:443', b'exa mple.com:443',
               b'api.openai.com:443 extra']
        failures = []
        for target in bad:
            with HTTPClient(d.port, timeout=5) as c:
                c.send(b'CONNECT ' + target + b' HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n')
                try:
                    resp = c.read_response('CONNECT')
                except NoResponse as e:
                    failures.append('CONNECT %r: no answer (%s)' % (target, e))
                    continue
                if resp.status != 400:
                    failures.append('CONNECT %r: %s %s' % (target, resp.status, resp.body[:150]))
                    continue
                self.assertProxyError(resp, 400, 'bad_request', d)
        self.assertEqual(failures, [], 'malformed CONNECT targets not refused with 400')
        time.sleep(0.2)
        self.assertEqual(srv.conns, [])
        # and a well-formed one still works on the same daemon
        c, resp = open_tunnel(d.port, '127.0.0.1:%d' % srv.port)
        c.close()
        self.assertEqual(resp.status, 200, resp)

    def test_connect_head_host_rules(self):
        # Same rules as for every other HTTP/1.1 request (README: missing Host
        # on HTTP/1.1 -> 400; RFC 9112 3.2: no Host or more than one -> 400).
        srv = self.raw_upstream()
        d = self.start_proxy(config={'connect_ports': [443, srv.port]})
        t = b'127.0.0.1:%d' % srv.port
        results = {}
        for name, head in (('no Host on HTTP/1.1', b'CONNECT ' + t + b' HTTP/1.1\r\n\r\n'),
                           ('two Host fields', b'CONNECT ' + t + b' HTTP/1.1\r\nHost: ' + t +
                            b'\r\nHost: evil.example:443\r\n\r\n')):
            with HTTPClient(d.port, timeout=5) as c:
                c.send(head)
                r = c.read_head('CONNECT')
                results[name] = (r.status, r.header('X-Scopeproxy-Error'))
        self.assertEqual(results, {'no Host on HTTP/1.1': (400, 'bad_request'),
                                   'two Host fields': (400, 'bad_request')})
        # HTTP/1.0 needs no Host
        with HTTPClient(d.port, timeout=5) as c:
            c.send(b'CONNECT ' + t + b' HTTP/1.0\r\n\r\n')
            self.assertEqual(c.read_head('CONNECT').status, 200)

    def test_oversized_connect_head_431(self):
        d = self.start_proxy('--max-header-size', '4096')
        with HTTPClient(d.port, timeout=5) as c:
            c.send(b'CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n'
                   b'X-Pad: ' + b'a' * 8000 + b'\r\n\r\n')
            resp = c.read_response('CONNECT')
        self.assertProxyError(resp, 431, 'headers_too_large', d)

    def test_slow_connect_head_is_cut_without_blocking_others(self):
        srv = self.raw_upstream()
        d = self.start_proxy(config={'connect_ports': [443, srv.port]})
        t0 = now()
        stalled = HTTPClient(d.port, timeout=15)
        self.addCleanup(stalled.close)
        stalled.send(b'CONNECT 127.0.0.1:%d HTTP/1.1\r\n' % srv.port)
        dripper = HTTPClient(d.port, timeout=15)
        self.addCleanup(dripper.close)
        dripper.send(b'CONNECT 127.0.0.1:%d HTTP/1.1\r\nX-Drip: ' % srv.port)
        stop = threading.Event()

        def drip():
            while not stop.wait(0.4):
                try:
                    dripper.sock.send(b'a')
                except OSError:
                    return
        th = threading.Thread(target=drip, daemon=True)
        th.start()
        self.addCleanup(th.join, 2)
        self.addCleanup(stop.set)
        # others are served meanwhile
        time.sleep(0.5)
        t1 = now()
        c, resp = open_tunnel(d.port, '127.0.0.1:%d' % srv.port, timeout=3)
        c.close()
        self.assertEqual(resp.status, 200, resp)
        self.assertLess(now() - t1, 1.0)
        ends = {}
        for name, cl in (('stalled', stalled), ('dripping', dripper)):
            closed = cl.wait_closed(max(0.1, t0 + 13.0 - now()))
            ends[name] = now() - t0 if closed else None
        stop.set()
        for name, t in ends.items():
            self.assertIsNotNone(t, 'a %s CONNECT head was kept open for more than 13 s' % name)
            self.assertGreater(t, 8.5, 'a %s CONNECT head was cut after %.1fs (< 10 s)' % (name, t))
        self.assertEqual(len(srv.conns), 1, 'only the complete CONNECT may reach the upstream')

    def test_connect_as_second_request_405(self):
        up = self.start_upstream()
        d = self.start_proxy()
        hp = ('127.0.0.1:%d' % up.port).encode()
        with HTTPClient(d.port) as c:
            c.send(b'GET http://' + hp + b'/first HTTP/1.1\r\nHost: ' + hp + b'\r\n\r\n')
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            c.send(connect_head('127.0.0.1:443'))
            r = c.read_response('CONNECT')
            self.assertProxyError(r, 405, 'method_not_allowed', d)
        with HTTPClient(d.port) as c:
            c.send(b'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n')
            self.assertEqual(c.read_response().status, 200)
            c.send(connect_head('api.openai.com:443'))
            self.assertProxyError(c.read_response('CONNECT'), 405, 'method_not_allowed', d)
        self.assertEqual(len(up.requests), 1)

    # -- proxy authentication ---------------------------------------------
    def check_407(self, resp, scheme, d):
        self.assertProxyError(resp, 407, 'proxy_auth_required', d)
        pa = resp.header('Proxy-Authenticate')
        self.assertIsNotNone(pa, 'Proxy-Authenticate missing: %r' % resp)
        self.assertTrue(pa.startswith(scheme + ' '), pa)
        self.assertIn('realm=', pa)

    def test_proxy_auth_basic(self):
        up = self.start_upstream(tls=True)
        plain = self.start_upstream()
        d = self.start_proxy(config={'proxy_auth': {'basic': '%s:%s' % (PROXY_USER, PROXY_PASS)}},
                             resolve=[('api.openai.com', 443, up.port), ('upstream.test', 443, up.port)])
        good = b'Proxy-Authorization: Basic ' + PROXY_BASIC.encode() + b'\r\n'
        wrong = [b'',
                 b'Proxy-Authorization: Basic ' + base64.b64encode(b'proxyuser:wrong') + b'\r\n',
                 b'Proxy-Authorization: Basic ' + PROXY_BASIC.encode()[:-2] + b'\r\n',
                 b'Proxy-Authorization: Bearer ' + PROXY_PASS.encode() + b'\r\n',
                 b'Proxy-Authorization: Basic\r\n',
                 b'Authorization: Basic ' + PROXY_BASIC.encode() + b'\r\n']
        for extra in wrong:
            resp = request(d.port, connect_head('api.openai.com:443', extra=extra))
            self.check_407(resp, 'Basic', d)
            hp = ('127.0.0.1:%d' % plain.port).encode()
            resp = request(d.port, b'GET http://' + hp + b'/p HTTP/1.1\r\nHost: ' + hp + b'\r\n' + extra + b'\r\n')
            self.check_407(resp, 'Basic', d)
        time.sleep(0.2)
        self.assertEqual((up.connections, plain.connections), ([], []), 'refused requests went upstream')
        # accepted: intercepted CONNECT (raw), with Proxy-Authorization also smuggled inside
        c = self.intercept_tunnel(d, extra=good)
        c.send(inner_request('GET', '/v1/models', 'api.openai.com',
                             [CLIENT_AUTH, (b'Proxy-Authorization', b'Basic ' + PROXY_BASIC.encode())]))
        self.assertEqual(c.read_response().status, 200)
        # accepted: curl, -x with credentials (intercepted) and HTTPS_PROXY (blind)
        proxy_url = 'http://%s:%s@127.0.0.1:%d' % (PROXY_USER, PROXY_PASS, d.port)
        res = self.curl('https://api.openai.com/v1/responses', '-H', 'Authorization: Bearer ' + SECRET,
                        '--data-binary', '{}', proxy=proxy_url, cacert=d.ca)
        self.assertEqual((res.rc, res.connect_code, res.code), (0, 200, 200), res)
        res = self.curl('https://upstream.test/blind', cacert=self.tls.ca, env={'HTTPS_PROXY': proxy_url})
        self.assertEqual((res.rc, res.connect_code, res.code), (0, 200, 200), res)
        # curl without credentials: 407
        res = self.curl('https://upstream.test/blind', proxy=d.proxy, cacert=self.tls.ca)
        self.assertEqual(res.connect_code, 407, res)
        # plain forward with credentials (raw and curl)
        hp = ('127.0.0.1:%d' % plain.port).encode()
        resp = request(d.port, b'GET http://' + hp + b'/plain HTTP/1.1\r\nHost: ' + hp + b'\r\n' + good + b'\r\n')
        self.assertEqual(resp.status, 200, resp)
        res = self.curl('http://127.0.0.1:%d/plain-curl' % plain.port, proxy=proxy_url)
        self.assertEqual((res.rc, res.code), (0, 200), res)
        seen = up.requests + plain.requests
        self.assertEqual(len(seen), 5, [r.raw_head for r in seen])
        for r in seen:
            self.assertEqual(r.header_all('Proxy-Authorization'), [], r.raw_head)
            self.assertNotIn(PROXY_BASIC.encode(), r.raw_head)
            self.assertNotIn(PROXY_PASS.encode(), r.raw_head)
        check_assertion(next(r for r in seen if r.path == '/v1/responses').header('Authorization'))

    def test_proxy_auth_scheme_is_case_insensitive(self):
        # RFC 9110 11.1: the auth-scheme token is case-insensitive.
        srv = self.raw_upstream()
        d = self.start_proxy(config={'proxy_auth': {'basic': '%s:%s' % (PROXY_USER, PROXY_PASS)},
                                     'connect_ports': [443, srv.port]})
        for scheme in (b'basic', b'BASIC'):
            c, resp = open_tunnel(d.port, '127.0.0.1:%d' % srv.port,
                                  extra=b'Proxy-Authorization: ' + scheme + b' ' + PROXY_BASIC.encode() + b'\r\n')
            c.close()
            self.assertEqual(resp.status, 200, 'scheme %r: %r' % (scheme, resp))

    def test_proxy_auth_bearer(self):
        srv = self.raw_upstream()
        plain = self.start_upstream()
        d = self.start_proxy(config={'proxy_auth': {'bearer': PROXY_TOKEN},
                                     'connect_ports': [443, srv.port]})
        target = '127.0.0.1:%d' % srv.port
        for extra in (b'', b'Proxy-Authorization: Basic ' + base64.b64encode(PROXY_TOKEN.encode()) + b'\r\n',
                      b'Proxy-Authorization: Bearer ' + PROXY_TOKEN.encode() + b'x\r\n'):
            resp = request(d.port, connect_head(target, extra=extra))
            self.check_407(resp, 'Bearer', d)
        time.sleep(0.2)
        self.assertEqual(srv.conns, [])
        c, resp = open_tunnel(d.port, target, extra=b'Proxy-Authorization: Bearer ' + PROXY_TOKEN.encode() + b'\r\n')
        self.addCleanup(c.close)
        self.assertEqual(resp.status, 200, resp)
        c.sock.sendall(b'tunnel payload')
        conn = srv.wait_conn()
        self.assertTrue(conn.wait(lambda: bytes(conn.data) == b'tunnel payload', 3.0), bytes(conn.data))
        hp = ('127.0.0.1:%d' % plain.port).encode()
        resp = request(d.port, b'GET http://' + hp + b'/b HTTP/1.1\r\nHost: ' + hp + b'\r\n'
                       b'Proxy-Authorization: Bearer ' + PROXY_TOKEN.encode() + b'\r\n\r\n')
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(plain.requests[0].header_all('Proxy-Authorization'), [])
        self.assertNotIn(PROXY_TOKEN.encode(), plain.requests[0].raw_head)

    # -- allowlist ----------------------------------------------------------
    def test_allowed_hosts(self):
        up = self.start_upstream(tls=True)
        plain = self.start_upstream()
        d = self.start_proxy(config={'allowed_hosts': ['api.openai.com', '*.allowed.test', 'localhost']},
                             resolve=[('api.openai.com', 443, up.port), ('x.allowed.test', 443, up.port),
                                      ('chatgpt.com', 443, up.port), ('evil-allowed.test', 443, up.port)])
        for authority in ('chatgpt.com:443', 'evil-allowed.test:443', 'allowed.test.evil:443',
                          '127.0.0.1:443'):
            resp = request(d.port, connect_head(authority))
            self.assertProxyError(resp, 403, 'destination_not_allowed', d)
        hp = ('127.0.0.1:%d' % plain.port).encode()
        resp = request(d.port, b'GET http://' + hp + b'/no HTTP/1.1\r\nHost: ' + hp + b'\r\n\r\n')
        self.assertProxyError(resp, 403, 'destination_not_allowed', d)
        time.sleep(0.2)
        self.assertEqual((up.connections, plain.connections), ([], []))
        # allowed: intercepted, blind (wildcard) and plain
        res = self.curl('https://api.openai.com/v1/models', proxy=d.proxy, cacert=d.ca)
        self.assertEqual((res.rc, res.code), (0, 200), res)
        c, resp = open_tunnel(d.port, 'x.allowed.test:443')
        c.close()
        self.assertEqual(resp.status, 200, resp)
        res = self.curl('http://localhost:%d/yes' % plain.port, proxy=d.proxy)
        self.assertEqual((res.rc, res.code), (0, 200), res)


# --------------------------------------------------------------------------
# The local CA
# --------------------------------------------------------------------------

class LocalCA(ConnectCase):

    def test_files_modes_export_and_reuse(self):
        up = self.start_upstream(tls=True)
        ca_dir = self._new_path('ca-reuse')
        d1 = self.start_proxy(ca_dir=ca_dir, resolve=[('api.openai.com', 443, up.port)])
        key, crt = os.path.join(ca_dir, 'ca.key'), os.path.join(ca_dir, 'ca.crt')
        self.assertTrue({'ca.key', 'ca.crt'} <= set(d1.ca_files_at_start),
                        'the CA must exist once the daemon listens: %r' % d1.ca_files_at_start)
        self.assertEqual(os.stat(key).st_mode & 0o777, 0o600, 'ca.key mode')
        self.assertEqual(os.stat(crt).st_mode & 0o777, 0o644, 'ca.crt mode')
        with open(crt, 'rb') as f:
            crt1 = f.read()
        with open(key, 'rb') as f:
            key1 = hashlib.sha256(f.read()).hexdigest()
        with open(d1.ca, 'rb') as f:
            self.assertEqual(f.read(), crt1, '`ca export` must print ca.crt')
        self.assertNotIn(b'PRIVATE KEY', crt1)
        self.assertEqual(len(pem_certs(crt1.decode())), 1)
        text = x509_text(der_of_pem_file(crt))
        self.assertIn('CA:TRUE', text)
        self.assertRegex(text, r'prime256v1|P-256')
        res = self.curl('https://api.openai.com/v1/models', proxy=d1.proxy, cacert=d1.ca)
        self.assertEqual((res.rc, res.code), (0, 200), res)
        self.assertEqual(d1.stop(), 0)
        d2 = self.start_proxy(ca_dir=ca_dir, resolve=[('api.openai.com', 443, up.port)])
        with open(crt, 'rb') as f:
            self.assertEqual(f.read(), crt1, 'the CA certificate changed across a restart')
        with open(key, 'rb') as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), key1, 'the CA key changed')
        # a client holding the first export still trusts the restarted proxy
        res = self.curl('https://api.openai.com/v1/models', proxy=d2.proxy, cacert=d1.ca)
        self.assertEqual((res.rc, res.code), (0, 200), res)

    def test_ca_key_readable_by_others_refused(self):
        ca_dir = self._new_path('ca-insecure')
        d = self.start_proxy(ca_dir=ca_dir)
        self.assertEqual(d.stop(), 0)
        key = os.path.join(ca_dir, 'ca.key')
        os.chmod(key, 0o644)
        d2 = Daemon('--auth-file', self.write_auth(), '--ca-dir', ca_dir)
        self.addCleanup(d2.cleanup)
        with self.assertRaises(DaemonError):
            d2.start()
        self.assertNotIn(d2.died_early, (None, 0), 'daemon must exit non-zero')
        self.assertIn(key, d2.stderr_text(), 'the refusal must name the key file')
        self.assertFalse(any(m in d2.stderr_text() for m in ('BEGIN', 'PRIVATE KEY')))

    def test_ca_env_and_bundle(self):
        up = self.start_upstream(tls=True)
        d = self.start_proxy(resolve=[('api.openai.com', 443, up.port)])
        r = run_cmd([scopeproxy_bin(), 'ca', 'env', '--ca-dir', d.ca_dir], env=clean_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        env = {}
        for line in r.stdout.decode().splitlines():
            if not line.strip() or line.startswith('#'):
                continue
            m = re.match(r'^export ([A-Z_]+)=(.*)$', line)
            self.assertIsNotNone(m, 'not an export line: %r' % line)
            vals = shlex.split(m.group(2))
            self.assertEqual(len(vals), 1, line)
            env[m.group(1)] = vals[0]
        for k in ('SSL_CERT_FILE', 'CURL_CA_BUNDLE', 'REQUESTS_CA_BUNDLE', 'NODE_EXTRA_CA_CERTS',
                  'CODEX_CA_CERTIFICATE'):
            self.assertIn(k, env, r.stdout.decode())
        with open(d.ca) as f:
            ca_pem = pem_certs(f.read())[0]
        bundle = os.path.join(d.ca_dir, 'bundle.pem')
        self.assertTrue(os.path.exists(bundle))
        with open(bundle) as f:
            bcerts = pem_certs(f.read())
        self.assertIn(ca_pem, bcerts, 'bundle.pem lacks the CA')
        if os.path.exists('/etc/ssl/certs/ca-certificates.crt'):
            self.assertGreater(len(bcerts), 10, 'bundle.pem lacks the system roots')
        for k, v in env.items():
            with open(v) as f:
                self.assertIn(ca_pem, pem_certs(f.read()), '%s=%s does not hold the CA' % (k, v))
        # SSL_CERT_FILE-style variables replace the system store: they must be the bundle
        for k in ('SSL_CERT_FILE', 'CURL_CA_BUNDLE', 'REQUESTS_CA_BUNDLE'):
            self.assertEqual(os.path.realpath(env[k]), os.path.realpath(bundle), k)
        # curl picks the bundle up from CURL_CA_BUNDLE alone
        res = self.curl('https://api.openai.com/v1/models', proxy=d.proxy,
                        env={'CURL_CA_BUNDLE': env['CURL_CA_BUNDLE']})
        self.assertEqual((res.rc, res.code), (0, 200), res)


if __name__ == '__main__':
    main()
