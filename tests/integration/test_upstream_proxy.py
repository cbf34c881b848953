#!/usr/bin/python3
"""An upstream (corporate) proxy: upstream_proxy / --upstream-proxy and
upstream_no_proxy, through a real tinyproxy on loopback.

A recording relay sits between the daemon and tinyproxy and keeps every
byte the daemon sent to the corporate proxy, so the tests can show that a
credentialed request goes through a CONNECT tunnel (the proxy sees the
CONNECT line and its Proxy-Authorization, never the request, the client's
key or the minted assertion), that a plain pass-through request is an
absolute-form request to the proxy, that blind CONNECT tunnels are chained
too, that upstream_no_proxy hosts go direct, that HTTP(S)_PROXY / NO_PROXY
in the daemon's environment change nothing, and that the proxy's password
appears in no log, error or check-config output.
"""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (SECRET, LOOPBACK, main, request, run_cmd, scopeproxy_bin,  # noqa: E402
                     clean_env, tls_material)
from test_credentials import (CODEX_HEADERS, ZSTD_BODY, CredCase, build, key,  # noqa: E402
                              record)
from test_websocket import WSCase, both_ports  # noqa: E402

PROXY_USER = 'corp-user'
PROXY_PASS = 'corp-pw-7f3a9c'


def free_port():
    s = socket.socket()
    s.bind((LOOPBACK, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Tinyproxy:
    """tinyproxy with its own configuration on a free loopback port, in
    the foreground; stopped by its pid."""

    def __init__(self, work, basic_auth=True):
        self.dir = tempfile.mkdtemp(prefix='tinyproxy-', dir=work)
        self.log = os.path.join(self.dir, 'tinyproxy.log')
        self.port = free_port()
        conf = os.path.join(self.dir, 'tinyproxy.conf')
        with open(conf, 'w') as f:
            f.write('Port %d\nListen 127.0.0.1\nTimeout 30\nMaxClients 50\n'
                    'LogFile "%s"\nLogLevel Info\nAllow 127.0.0.1\n'
                    'DisableViaHeader Yes\n' % (self.port, self.log))
            if basic_auth:
                f.write('BasicAuth %s %s\n' % (PROXY_USER, PROXY_PASS))
        self.proc = subprocess.Popen(['tinyproxy', '-d', '-c', conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError('tinyproxy did not start: ' + self.log_text())
                time.sleep(0.05)

    def log_text(self):
        try:
            with open(self.log, encoding='utf-8', errors='replace') as f:
                return f.read()
        except OSError:
            return ''

    def requests(self):
        """The request lines tinyproxy logged."""
        out = []
        for line in self.log_text().splitlines():
            if 'Request (file descriptor' in line and ': ' in line:
                out.append(line.split('): ', 1)[1].strip())
        return out

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


class Recorder:
    """A TCP relay in front of tinyproxy keeping what the daemon sent."""

    def __init__(self, target_port):
        self.target = target_port
        self.sent = []          # one bytearray per connection
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(32)
        self.port = self.sock.getsockname()[1]
        self.closing = False
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closing:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            buf = bytearray()
            with self.lock:
                self.sent.append(buf)
            try:
                u = socket.create_connection((LOOPBACK, self.target), timeout=5)
            except OSError:
                c.close()
                continue
            u.settimeout(None)
            self.conns += [c, u]
            threading.Thread(target=self._pipe, args=(c, u, buf), daemon=True).start()
            threading.Thread(target=self._pipe, args=(u, c, None), daemon=True).start()

    def _pipe(self, a, b, buf):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                if buf is not None:
                    with self.lock:
                        buf += data
                b.sendall(data)
        except OSError:
            pass
        try:
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def all_bytes(self):
        with self.lock:
            return b''.join(bytes(b) for b in self.sent)

    def close(self):
        self.closing = True
        self.sock.close()
        for s in self.conns:
            try:
                s.close()
            except OSError:
                pass


class UpstreamProxy(CredCase):
    TASK = 'task-corp-5b21e0'

    def setUp(self):
        super().setUp()
        if shutil.which('tinyproxy') is None:
            self.fail('tinyproxy is not installed (scripts/install-deps installs it)')
        self.key = key('spec')
        self.forbid_key(self.key)
        self.forbid_task(self.TASK)
        self.forbidden.add(PROXY_PASS)
        self.tls = tls_material()
        self.up = self.start_upstream(dual=True)
        self.auth = self.auth_file(record(self.key.v2, self.TASK))
        self.tp = Tinyproxy(self.work)
        self.addCleanup(self.tp.stop)
        self.rec = Recorder(self.tp.port)
        self.addCleanup(self.rec.close)

    def proxy_url(self, port=None):
        return 'http://%s:%s@127.0.0.1:%d' % (PROXY_USER, PROXY_PASS, port or self.rec.port)

    def daemon(self, *extra, proxy=None, env=None, config=None):
        args = ['--upstream-ca', self.tls.ca, '--upstream-proxy', proxy or self.proxy_url()]
        for h in ('api.openai.com', 'svc.internal.test', 'other.example.test', 'upstream.test'):
            for port in (80, 443):
                args += ['--resolve', '%s:%d:127.0.0.1:%d' % (h, port, self.up.port)]
        if config is not None:
            path = os.path.join(self.work, 'config-%d.json' % len(os.listdir(self.work)))
            with open(path, 'w') as f:
                json.dump(config, f)
            args = ['--config', path] + args
        self._n += 1
        audit = os.path.join(self.work, 'audit-%d.jsonl' % self._n)
        d = self.start_daemon('--auth-file', self.auth, '--audit-log', audit,
                              '--log-level', 'debug', *args, *extra, env=env)
        d.audit_path = audit
        d.audit_seen = 0
        self.addCleanup(self._check_secrets, d)
        return d

    def post_credentialed(self, d, target):
        tag = 'corp %s' % target
        raw = build('POST', target, 'api.openai.com', list(CODEX_HEADERS) + [(b'X-Req', tag.encode())],
                    ZSTD_BODY)
        resp = request(d.port, raw)
        self.assertEqual(resp.status, 200, '%r\n%s\n%s' % (resp, d.tail(2000), self.tp.log_text()))
        got = self.up.wait_request(lambda r: r.header('X-Req') == tag, timeout=3)
        self.check_credentialed(raw, got, ('agent-123', self.TASK), self.key.pub, host='api.openai.com')
        return got

    def assert_only_connects(self, sent):
        """What the corporate proxy saw: CONNECT heads (with the proxy's own
        credentials) and then TLS records; no request, no credential."""
        self.assertTrue(sent.startswith(b'CONNECT '), sent[:200])
        head = sent.split(b'\r\n\r\n', 1)[0].decode('latin-1')
        lines = head.split('\r\n')
        names = sorted(l.split(':', 1)[0].lower() for l in lines[1:])
        self.assertIn('proxy-authorization', names, head)
        self.assertNotIn('authorization', names, head)
        for bad in (SECRET.encode(), b'AgentAssertion', b'/v1/responses', b'POST ',
                    b'eyJ', self.TASK.encode()):
            self.assertNotIn(bad, sent, 'the corporate proxy saw %r' % bad)

    def test_credentialed_post_goes_through_connect(self):
        d = self.daemon()
        # written http:// and https:// alike: minted only on verified TLS,
        # inside a CONNECT tunnel
        for target in ('http://api.openai.com/v1/responses', 'https://api.openai.com/v1/responses'):
            self.post_credentialed(d, target)
        sent = self.rec.all_bytes()
        self.assertTrue(self.rec.sent)
        for conn in self.rec.sent:
            self.assert_only_connects(bytes(conn))
        reqs = self.tp.requests()
        self.assertTrue(reqs and all(r.startswith('CONNECT ') for r in reqs), reqs)
        self.assertNotIn('Authorization', self.tp.log_text())
        a = self.next_audit(d, 2)
        self.assertEqual([x['action'] for x in a], ['assert', 'assert'], a)
        self.assertNotIn(PROXY_PASS.encode(), sent.split(b'\r\n\r\n', 1)[1])

    def test_plain_get_goes_through_proxy(self):
        d = self.daemon()
        # no --resolve for it: an absolute-form request to the proxy (a
        # --resolve'd host is tunnelled to its mapped address instead)
        hp = '127.0.0.1:%d' % self.up.port
        raw = build('GET', 'http://%s/pass/plain?q=1' % hp, hp, [(b'Authorization', b'Bearer client-own')])
        resp = request(d.port, raw)
        self.assertEqual(resp.status, 200, '%r\n%s' % (resp, d.tail(2000)))
        got = self.up.wait_request(lambda r: r.path.startswith('/pass/plain'), timeout=3)
        self.assertIsNotNone(got)
        self.assertFalse(got.tls)
        self.assertEqual(got.header_all('Authorization'), ['Bearer client-own'])
        sent = self.rec.all_bytes()
        self.assertTrue(sent.startswith(b'GET http://'), sent[:200])
        self.assertIn('GET http://', ' '.join(self.tp.requests()))

    def test_no_proxy_host_goes_direct(self):
        d = self.daemon(config={'upstream_no_proxy': ['*.internal.test']})
        resp = request(d.port, build('GET', 'http://svc.internal.test/direct', 'svc.internal.test', []))
        self.assertEqual(resp.status, 200, '%r\n%s' % (resp, d.tail(2000)))
        self.assertIsNotNone(self.up.wait_request(lambda r: r.path == '/direct', timeout=3))
        self.assertEqual(self.rec.all_bytes(), b'', 'an upstream_no_proxy host went via the proxy')
        # a host the pattern does not cover still goes through it
        resp = request(d.port, build('GET', 'http://other.example.test/via', 'other.example.test', []))
        self.assertEqual(resp.status, 200, '%r\n%s' % (resp, d.tail(2000)))
        self.assertIn(b'GET /via', self.rec.all_bytes())
        self.assertTrue(self.rec.all_bytes().startswith(b'CONNECT 127.0.0.1:%d' % self.up.port))

    def test_blind_tunnel_goes_through_proxy(self):
        d = self.daemon()
        s = socket.create_connection((LOOPBACK, d.port), timeout=5)
        self.addCleanup(s.close)
        s.sendall(b'CONNECT upstream.test:443 HTTP/1.1\r\nHost: upstream.test:443\r\n\r\n')
        head = b''
        while b'\r\n\r\n' not in head:
            chunk = s.recv(4096)
            self.assertTrue(chunk, head)
            head += chunk
        self.assertTrue(head.startswith(b'HTTP/1.1 200'), head + d.tail(1500).encode())
        ctx = ssl.create_default_context(cafile=self.tls.ca)
        t = ctx.wrap_socket(s, server_hostname='upstream.test')
        t.sendall(b'GET /blind HTTP/1.1\r\nHost: upstream.test\r\nConnection: close\r\n\r\n')
        self.assertIsNotNone(self.up.wait_request(lambda r: r.path == '/blind', timeout=3))
        t.close()
        sent = self.rec.all_bytes()
        self.assertTrue(sent.startswith(b'CONNECT '), sent[:200])
        self.assertNotIn(b'/blind', sent)

    def test_blind_tunnel_server_speaks_first(self):
        """A server that greets at accept (SMTP-style), through tinyproxy:
        curl reads the proxy's CONNECT answer, possibly with the greeting
        in the same segment; the spliced tunnel must deliver every byte
        of it, in order (curl must have kept none back)."""
        greet = b'220 greet.test ESMTP ready\r\n' + bytes(range(256)) * 64
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((LOOPBACK, 0))
        ls.listen(4)
        self.addCleanup(ls.close)
        port = ls.getsockname()[1]

        def serve():
            try:
                c, _ = ls.accept()
            except OSError:
                return
            with c:
                c.sendall(greet)
                data = c.recv(4096)
                c.sendall(b'ECHO ' + data)
                c.shutdown(socket.SHUT_WR)
                c.recv(1)

        th = threading.Thread(target=serve, daemon=True)
        th.start()
        d = self.daemon('--resolve', 'greet.test:443:127.0.0.1:%d' % port)
        s = socket.create_connection((LOOPBACK, d.port), timeout=5)
        self.addCleanup(s.close)
        s.sendall(b'CONNECT greet.test:443 HTTP/1.1\r\nHost: greet.test:443\r\n\r\n')
        got = b''
        while b'\r\n\r\n' not in got:
            chunk = s.recv(65536)
            self.assertTrue(chunk, got + d.tail(1500).encode())
            got += chunk
        head, rest = got.split(b'\r\n\r\n', 1)
        self.assertTrue(head.startswith(b'HTTP/1.1 200'), head + d.tail(1500).encode())
        while len(rest) < len(greet):
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        self.assertEqual(rest[:len(greet)], greet,
                         'greeting lost or reordered (%d of %d bytes)\n%s'
                         % (len(rest), len(greet), d.tail(2000)))
        s.sendall(b'EHLO me\r\n')
        tail = b''
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            tail += chunk
        self.assertEqual(rest[len(greet):] + tail, b'ECHO EHLO me\r\n')
        s.close()
        th.join(5)
        deadline = time.monotonic() + 5
        while '"tunnel"' not in d.tail(4000) and time.monotonic() < deadline:
            time.sleep(0.05)
        line = [l for l in d.tail(4000).splitlines() if '"msg":"tunnel"' in l]
        self.assertTrue(line and '"spliced":true' in line[-1], d.tail(2000))

    def test_environment_proxy_variables_ignored(self):
        env = {'HTTP_PROXY': 'http://127.0.0.1:9', 'HTTPS_PROXY': 'http://127.0.0.1:9',
               'http_proxy': 'http://127.0.0.1:9', 'https_proxy': 'http://127.0.0.1:9',
               'ALL_PROXY': 'http://127.0.0.1:9', 'NO_PROXY': '*', 'no_proxy': '*'}
        d = self.daemon(env=env)
        self.post_credentialed(d, 'https://api.openai.com/v1/responses')
        self.assertTrue(self.rec.all_bytes().startswith(b'CONNECT '),
                        'NO_PROXY in the environment routed around upstream_proxy')

    def test_proxy_down_is_502_naming_it(self):
        dead = free_port()
        d = self.daemon(proxy=self.proxy_url(dead))
        shown = 'http://<redacted>@127.0.0.1:%d' % dead
        resp = request(d.port, build('GET', 'http://other.example.test/x', 'other.example.test', []))
        err = self.assertProxyError(resp, 502, 'upstream_unreachable', d)
        self.assertIn('upstream proxy ' + shown, err['message'])
        self.assertIn('other.example.test:80', err['message'])
        self.assertIn('--resolve', err['message'])
        raw = build('POST', 'https://api.openai.com/v1/responses', 'api.openai.com', CODEX_HEADERS,
                    ZSTD_BODY)
        err = self.assertProxyError(request(d.port, raw), 502, 'upstream_unreachable', d)
        self.assertIn('upstream proxy ' + shown, err['message'])
        s = socket.create_connection((LOOPBACK, d.port), timeout=5)
        self.addCleanup(s.close)
        s.sendall(b'CONNECT other.example.test:443 HTTP/1.1\r\nHost: other.example.test:443\r\n\r\n')
        s.settimeout(5)
        data = b''
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        self.assertTrue(data.startswith(b'HTTP/1.1 502'), data)
        self.assertIn(shown.encode(), data)
        self.assertEqual(self.up.requests, [])
        d.stop()
        log = d.stderr_text()
        self.assertNotIn(PROXY_PASS, log)
        # the log says why, as the client's answer does
        self.assertEqual(log.count('upstream proxy ' + shown), 3, log)

    def test_check_config_redacts_and_validates(self):
        env = clean_env()
        cmd = [scopeproxy_bin(), 'check-config', '--upstream-proxy', self.proxy_url(3128)]
        r = run_cmd(cmd, env=env)
        out = (r.stdout + r.stderr).decode()
        self.assertEqual(r.returncode, 0, out)
        self.assertNotIn(PROXY_PASS, out)
        self.assertIn('http://<redacted>@127.0.0.1:3128', out)
        for bad in ('socks5://127.0.0.1:1080', 'ftp://x', 'http://', '127.0.0.1:3128'):
            r = run_cmd([scopeproxy_bin(), 'check-config', '--upstream-proxy', bad], env=env)
            self.assertEqual(r.returncode, 2, (bad, r))
            self.assertIn(b'upstream_proxy', r.stderr)
        path = os.path.join(self.work, 'bad.json')
        with open(path, 'w') as f:
            json.dump({'upstream_no_proxy': ['host.test:80']}, f)
        r = run_cmd([scopeproxy_bin(), 'check-config', '--config', path], env=env)
        self.assertEqual(r.returncode, 2, r)
        self.assertIn(b'upstream_no_proxy[0]', r.stderr)

    def test_doctor_reaches_through_the_proxy(self):
        ca_dir = os.path.join(self.work, 'doctor-ca')
        hosts = ('api.openai.com', 'chatgpt.com', 'chat.openai.com')
        resolve = []
        for h in hosts:
            resolve += ['--resolve', '%s:443:127.0.0.1:%d' % (h, self.up.port)]

        def doctor(proxy):
            r = run_cmd([scopeproxy_bin(), 'doctor', '--network', '--listen', '127.0.0.1:0',
                         '--auth-file', self.auth, '--ca-dir', ca_dir, '--upstream-ca', self.tls.ca,
                         '--upstream-proxy', proxy, '--connect-timeout', '2'] + resolve,
                        env=clean_env(), timeout=30)
            out = r.stdout.decode()
            self.assertNotIn(PROXY_PASS, out + r.stderr.decode())
            return r, [l for l in out.splitlines() if ' reach ' in ' %s ' % l]
        r, reach = doctor(self.proxy_url())
        self.assertEqual(len(reach), 3, r)
        self.assertTrue(all(l.startswith('ok') and 'through upstream proxy http://<redacted>@' in l
                            for l in reach), reach)
        self.assertEqual(self.rec.all_bytes().count(b'CONNECT '), 3)
        self.assertEqual(self.up.requests, [], 'doctor sends nothing')
        dead = free_port()
        r, reach = doctor(self.proxy_url(dead))
        self.assertEqual(r.returncode, 1, r)
        self.assertTrue(all(l.startswith('FAIL') and 'upstream proxy http://<redacted>@127.0.0.1:%d' % dead in l
                            for l in reach), reach)


class UpstreamProxyWebSocket(WSCase):
    """A credentialed Responses WebSocket relayed through tinyproxy: the
    handshake (with its assertion) and the frames go inside CONNECT + TLS."""

    def test_credentialed_websocket_through_connect(self):
        up = self.upstream(dual=True)
        tp = Tinyproxy(self.work)
        self.addCleanup(tp.stop)
        rec = Recorder(tp.port)
        self.addCleanup(rec.close)
        self.forbidden.add(PROXY_PASS)
        d = self.proxy('--upstream-proxy', 'http://%s:%s@127.0.0.1:%d' % (PROXY_USER, PROXY_PASS, rec.port),
                       resolve=both_ports('api.openai.com', up.port))
        c = self.forward_client(d)
        resp, ws, key, sent = self.handshake(c, 'http://api.openai.com/v1/responses', 'api.openai.com')
        self.check_101(resp, key, up, d)
        conn = self.wait_upgraded(up)
        self.check_upstream_head(conn, '/v1/responses', 'api.openai.com', sent, credentialed=True)
        self.exercise(ws, conn)
        data = rec.all_bytes()
        self.assertTrue(data.startswith(b'CONNECT '), data[:200])
        for bad in (b'AgentAssertion', b'Upgrade', b'/v1/responses', SECRET.encode()):
            self.assertNotIn(bad, data)


if __name__ == '__main__':
    main()
