#!/usr/bin/python3
"""What a new user sees first: the start-up lines (CA created or reused,
with the `ca env` hint; the auth file; the address); the warning when
a client aborts the TLS handshake of an intercepted tunnel because it does
not trust the proxy's CA (real `openssl s_client` and Python ssl clients
without the CA; one warning per host per interval; none for a client that
trusts the CA or leaves before the handshake); and the audit lines of
CONNECTs (blind, intercepted, refused), in the request lines' format.
(The WebSocket's 101 and close lines are in test_websocket.py.)"""

import json
import os
import shutil
import socket
import ssl
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (LOOPBACK, SSE, ProxyTestCase, Raw, chunk, main, request, run_cmd,  # noqa: E402
                     clean_env, tls_material)

WARN = 'a client aborted the TLS handshake'


def connect_tunnel(port, host):
    s = socket.create_connection((LOOPBACK, port), timeout=5)
    s.sendall(('CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n' % (host, host)).encode())
    head = b''
    while b'\r\n\r\n' not in head:
        chunk = s.recv(1)
        if not chunk:
            raise AssertionError('CONNECT answered %r' % head)
        head += chunk
    assert head.startswith(b'HTTP/1.1 200'), head
    return s


class Case(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.work = tempfile.mkdtemp(prefix='scopeproxy-firstrun-')
        self.addCleanup(shutil.rmtree, self.work, True)
        self.ca_dir = os.path.join(self.work, 'ca')
        self.auth = os.path.join(self.work, 'auth.json')

    def daemon(self, *args):
        return self.start_daemon('--ca-dir', self.ca_dir, '--auth-file', self.auth, *args)

    def warnings(self, d):
        return [l for l in d.logs() if l.get('level') == 'warn' and l.get('msg', '').startswith(WARN)]


class StartupLines(Case):

    def test_ca_created_then_reused(self):
        d = self.daemon()
        msgs = {l['msg']: l for l in d.logs()}
        created = [l for m, l in msgs.items() if m.startswith('interception CA created')]
        self.assertEqual(len(created), 1, d.stderr_text())
        self.assertEqual(created[0]['certificate'], os.path.join(self.ca_dir, 'ca.crt'))
        self.assertIn('eval "$(scopeproxy ca env --ca-dir \'%s\')"' % self.ca_dir, created[0]['hint'])
        self.assertNotIn('interception CA reused', msgs)
        d.stop()
        d2 = self.daemon()
        msgs = [l['msg'] for l in d2.logs()]
        self.assertIn('interception CA reused', msgs, d2.stderr_text())
        self.assertFalse([m for m in msgs if m.startswith('interception CA created')], msgs)

    def test_listening_names_address_and_auth_file(self):
        d = self.daemon()
        line = [l for l in d.logs() if l.get('msg') == 'listening']
        self.assertEqual(len(line), 1, d.stderr_text())
        self.assertEqual(line[0]['address'], '127.0.0.1')
        self.assertEqual(line[0]['port'], d.port)
        self.assertEqual(line[0]['auth_file'], self.auth)


class TLSAbortWarning(Case):

    def setUp(self):
        super().setUp()
        self.d = self.daemon()
        self.ca = os.path.join(self.ca_dir, 'ca.crt')
        # a CA that is not the proxy's: the client trusts something, not us
        self.other_ca = tls_material().ca

    def s_client(self, host):
        r = run_cmd(['openssl', 's_client', '-proxy', '127.0.0.1:%d' % self.d.port,
                     '-connect', '%s:443' % host, '-servername', host, '-CAfile', self.other_ca,
                     '-verify_return_error', '-brief'], env=clean_env(), input=b'')
        self.assertNotEqual(r.returncode, 0, 'openssl trusted the proxy without its CA')
        return r

    def wait_warnings(self, n, timeout=3.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.warnings(self.d)) < n:
            time.sleep(0.05)
        time.sleep(0.3)     # and no more than n
        return self.warnings(self.d)

    def test_openssl_without_ca_warns_once_per_host(self):
        self.s_client('api.openai.com')
        self.s_client('api.openai.com')
        self.s_client('chatgpt.com')
        w = self.wait_warnings(2)
        self.assertEqual(sorted(l['host'] for l in w), ['api.openai.com', 'chatgpt.com'],
                         self.d.stderr_text())
        for l in w:
            self.assertEqual(l['certificate'], self.ca)
            self.assertIn('scopeproxy ca env', l['fix'])
            self.assertIn(self.ca, l['fix'])
            self.assertEqual(l['reason'], 'alert', l)

    def test_python_without_ca_warns(self):
        s = connect_tunnel(self.d.port, 'api.openai.com')
        ctx = ssl.create_default_context(cafile=self.other_ca)
        with self.assertRaises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(s, server_hostname='api.openai.com')
        s.close()
        w = self.wait_warnings(1)
        self.assertEqual([l['host'] for l in w], ['api.openai.com'], self.d.stderr_text())

    def test_close_right_after_server_hello_warns(self):
        s = connect_tunnel(self.d.port, 'api.openai.com')
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, out, server_hostname='api.openai.com')
        with self.assertRaises(ssl.SSLWantReadError):
            obj.do_handshake()
        s.sendall(out.read())           # ClientHello
        self.assertTrue(s.recv(65536))  # ServerHello and the rest of the flight
        s.close()                       # no alert: gone
        w = self.wait_warnings(1)
        self.assertEqual([(l['host'], l['reason']) for l in w],
                         [('api.openai.com', 'closed after ServerHello')], self.d.stderr_text())

    def test_no_warning_for_trusting_or_silent_clients(self):
        # trusts the proxy's CA: a full handshake, then a close at once
        # (before the TLS 1.3 session tickets: still a trusting client)
        ctx = ssl.create_default_context(cafile=self.ca)
        for _ in range(10):
            s = connect_tunnel(self.d.port, 'api.openai.com')
            ctx.wrap_socket(s, server_hostname='api.openai.com').close()
        # leaves before its ClientHello; sends something that is not TLS
        connect_tunnel(self.d.port, 'api.openai.com').close()
        s = connect_tunnel(self.d.port, 'chatgpt.com')
        s.sendall(b'GET / HTTP/1.1\r\nHost: chatgpt.com\r\n\r\n')
        s.close()
        # names another host in its SNI than it CONNECTed to (refused by us)
        s = connect_tunnel(self.d.port, 'api.openai.com')
        with self.assertRaises(ssl.SSLError):
            ssl.create_default_context(cafile=self.ca).wrap_socket(s, server_hostname='chatgpt.com')
        s.close()
        self.assertEqual(self.wait_warnings(1, timeout=1.0), [], self.d.stderr_text())


class LogLines(Case):
    """The request log: no libmicrohttpd chatter at debug; an event stream
    the client closed between events is 'closed', not 'aborted'; an
    upstream error says where it went."""

    def test_no_libmicrohttpd_noise_at_debug(self):
        up = self.start_upstream()
        d = self.daemon('--log-level', 'debug')
        hp = '127.0.0.1:%d' % up.port
        self.assertEqual(request(d.port, ('GET http://%s/x HTTP/1.1\r\nHost: %s\r\n\r\n'
                                          % (hp, hp)).encode()).status, 200)
        request(d.port, b'GARBAGE\r\n\r\n')
        d.stop()
        noise = [l for l in d.logs() if l.get('msg') == 'libmicrohttpd']
        self.assertEqual(noise, [], d.stderr_text())

    def sse_closed_by_client(self, behaviour, read_until):
        up = self.start_upstream()
        up.route('/sse', behaviour)
        d = self.daemon()
        hp = '127.0.0.1:%d' % up.port
        s = socket.create_connection((LOOPBACK, d.port), timeout=5)
        s.sendall(('GET http://%s/sse HTTP/1.1\r\nHost: %s\r\n\r\n' % (hp, hp)).encode())
        got = b''
        while read_until not in got:
            data = s.recv(65536)
            self.assertTrue(data, got)
            got += data
        s.close()
        line = d.wait_log(lambda l: l.get('msg') == 'request' and l.get('path') == '/sse')
        self.assertIsNotNone(line, d.stderr_text())
        return line

    def test_sse_closed_after_final_event_is_not_an_abort(self):
        # the upstream keeps the stream open after its last event
        line = self.sse_closed_by_client(SSE(n=3, hold=5), b'"seq": 2')
        self.assertNotIn('aborted', line)
        self.assertEqual(line.get('closed'), 'client', line)

    def test_sse_cut_mid_event_is_an_abort(self):
        head = (b'HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n'
                b'Transfer-Encoding: chunked\r\n\r\n')
        line = self.sse_closed_by_client(Raw(head + chunk(b'data: {"half":'), close=False), b'half')
        self.assertEqual(line.get('aborted'), 'client', line)
        self.assertNotIn('closed', line)

    def test_upstream_error_names_host_and_resolve(self):
        dead = socket.socket()
        dead.bind((LOOPBACK, 0))
        port = dead.getsockname()[1]
        dead.close()
        d = self.daemon('--resolve', 'api.example.test:80:127.0.0.1:%d' % port)
        r = request(d.port, b'GET http://api.example.test/x HTTP/1.1\r\nHost: api.example.test\r\n\r\n')
        self.assertEqual(r.status, 502, r)
        want = 'upstream api.example.test:80 (--resolve to 127.0.0.1:%d): ' % port
        self.assertIn(want, json.loads(r.body)['error']['message'])
        line = d.wait_log(lambda l: l.get('msg') == 'request' and l.get('status') == 502)
        self.assertIn(want, line.get('detail', ''), line)


AUDIT_KEYS = ['time', 'method', 'host', 'port', 'path', 'mode', 'provider', 'route', 'action',
              'task', 'status']


class ConnectAudit(Case):
    """Every CONNECT decision is an audit line, with the request lines'
    fields in the same order: host and port apart, one action vocabulary."""

    def setUp(self):
        super().setUp()
        self.up = self.start_upstream(tls=True)
        self.audit = os.path.join(self.work, 'audit.jsonl')
        self.d = self.daemon('--audit-log', self.audit, '--upstream-ca', tls_material().ca,
                             '--resolve', 'upstream.test:443:127.0.0.1:%d' % self.up.port,
                             '--resolve', 'api.openai.com:443:127.0.0.1:%d' % self.up.port)

    def lines(self, n, timeout=3.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(self.audit) as f:
                    out = [json.loads(l) for l in f.read().splitlines()]
            except OSError:
                out = []
            if len(out) >= n or time.monotonic() > deadline:
                return out
            time.sleep(0.02)

    def test_blind_intercepted_and_refused_connects(self):
        s = connect_tunnel(self.d.port, 'upstream.test')           # blind
        s.close()
        s = connect_tunnel(self.d.port, 'api.openai.com')          # intercepted
        s.close()
        r = request(self.d.port, b'CONNECT upstream.test:8443 HTTP/1.1\r\nHost: upstream.test:8443\r\n\r\n')
        self.assertEqual(r.status, 403)
        got = self.lines(3)
        self.assertEqual(len(got), 3, got)
        for l in got:
            self.assertEqual(list(l)[:len(AUDIT_KEYS)], AUDIT_KEYS, l)
        want = [('CONNECT', 'upstream.test', 443, None, 'connect', 'custom', None, 'passthrough', None, 200),
                ('CONNECT', 'api.openai.com', 443, None, 'connect', 'openai', None, 'intercept', None, 200),
                # refused before classification: no provider
                ('CONNECT', 'upstream.test', 8443, None, 'connect', None, None, 'reject', None, 403)]
        # written by whichever worker took each CONNECT: in any order
        key = lambda t: (t[1], t[2])  # noqa: E731
        self.assertEqual(sorted((tuple(l[k] for k in AUDIT_KEYS[1:]) for l in got), key=key),
                         sorted(want, key=key), got)
        self.assertEqual([l.get('error') for l in got if l['status'] == 403], ['connect_port_not_allowed'])

    def test_request_lines_have_host_and_port_apart(self):
        r = request(self.d.port, ('GET https://upstream.test/x?q=1 HTTP/1.1\r\nHost: upstream.test\r\n\r\n')
                    .encode())
        self.assertEqual(r.status, 200, r)
        got = self.lines(1)
        self.assertEqual(len(got), 1, got)
        self.assertEqual(list(got[0])[:len(AUDIT_KEYS)], AUDIT_KEYS, got)
        self.assertEqual((got[0]['host'], got[0]['port'], got[0]['path'], got[0]['action']),
                         ('upstream.test', 443, '/x', 'passthrough'), got)


if __name__ == '__main__':
    main()
