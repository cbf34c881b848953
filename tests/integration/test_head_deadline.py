#!/usr/bin/python3
"""Request-head deadlines and cheap denial of service: every head on a
connection, the first and the later ones, must arrive whole within
timeouts.request_head (--head-timeout); a client that sends part of a head
and hangs up holds no slot."""

import os
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import LOOPBACK, HTTPClient, NoResponse, ProxyTestCase, main, tls_material  # noqa: E402


class HeadDeadline(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.up = self.start_upstream()
        self.hp = b'127.0.0.1:%d' % self.up.port
        self.d = self.start_daemon('--head-timeout', '1', '--client-idle-timeout', '20')

    def req(self, path):
        return b'GET http://' + self.hp + path + b' HTTP/1.1\r\nHost: ' + self.hp + b'\r\n\r\n'

    def first(self):
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(self.req(b'/first'))
        self.assertEqual(c.read_response(timeout=5).status, 200)
        return c

    def trickle(self, c, data, seconds):
        """One byte every 0.2 s until the proxy answers or closes, or
        `seconds` pass; returns the seconds it took."""
        t0 = time.monotonic()
        c.sock.setblocking(False)
        for b in data:
            if time.monotonic() - t0 > seconds:
                break
            try:
                if c.sock.recv(1, socket.MSG_PEEK) is not None:
                    break       # an answer, or the close
            except BlockingIOError:
                pass
            except OSError:
                break
            try:
                c.sock.send(bytes([b]))
            except OSError:
                break
            time.sleep(0.2)
        c.sock.setblocking(True)
        return time.monotonic() - t0

    def test_slow_later_head_is_answered_408_and_closed(self):
        c = self.first()
        took = self.trickle(c, self.req(b'/second') * 4, 8)
        self.assertLess(took, 4, 'a later head trickled for %.1f s was not cut' % took)
        resp = c.read_response(timeout=5)
        self.assertProxyError(resp, 408, 'request_timeout', self.d)
        with self.assertRaises(NoResponse):
            c.read_response(timeout=2)
        self.assertTrue(c.eof, 'connection left open after the 408')
        self.assertEqual([r.target for r in self.up.requests], ['/first'])

    def test_slow_first_head_is_cut(self):
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        took = self.trickle(c, self.req(b'/slow') * 4, 8)
        self.assertLess(took, 4, 'a first head trickled for %.1f s was not cut' % took)
        self.assertEqual(self.up.requests, [])

    def test_idle_keepalive_is_not_a_slow_head(self):
        # The head deadline runs from the head's first byte: an idle
        # kept-alive connection stays for timeouts.client_idle.
        c = self.first()
        time.sleep(2.5)
        c.send(self.req(b'/after-idle'))
        self.assertEqual(c.read_response(timeout=5).status, 200)
        self.assertEqual([r.target for r in self.up.requests], ['/first', '/after-idle'])


class TunnelHeadDeadline(ProxyTestCase):
    """The same inside an intercepted tunnel (CONNECT api.openai.com:443,
    TLS with the proxy's CA): the first and every later head must arrive
    whole within --head-timeout, and a refused head ends the TLS session
    (the proxy does not keep it open for a client that stays silent)."""

    def setUp(self):
        super().setUp()
        tls = tls_material()
        self.up = self.start_upstream(tls=True)
        ca_dir = tempfile.mkdtemp(prefix='scopeproxy-headca-')
        self.addCleanup(shutil.rmtree, ca_dir, True)
        self.d = self.start_daemon('--head-timeout', '1', '--client-idle-timeout', '20',
                                   '--ca-dir', ca_dir, '--upstream-ca', tls.ca,
                                   '--resolve', 'api.openai.com:443:127.0.0.1:%d' % self.up.port)
        self.ctx = ssl.create_default_context(cafile=os.path.join(ca_dir, 'ca.crt'))

    @staticmethod
    def req(path):
        return b'GET ' + path + b' HTTP/1.1\r\nHost: api.openai.com\r\n\r\n'

    def tunnel(self):
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(b'CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n')
        self.assertEqual(c.read_head('CONNECT', timeout=5).status, 200)
        c.sock = self.ctx.wrap_socket(c.sock, server_hostname='api.openai.com')
        return c

    @staticmethod
    def answered(c):
        """True once the proxy has sent application data or closed (TLS
        records that carry none, such as session tickets, do not count)."""
        c.sock.setblocking(False)
        try:
            data = c.sock.recv(65536)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False
        except OSError:
            c.eof = True
            return True
        finally:
            c.sock.settimeout(c.timeout)
        if not data:
            c.eof = True
        c.buf += data
        return True

    def trickle(self, c, data, seconds):
        t0 = time.monotonic()
        for b in data:
            if time.monotonic() - t0 > seconds or self.answered(c):
                break
            try:
                c.sock.sendall(bytes([b]))
            except OSError:
                break
            time.sleep(0.2)
        return time.monotonic() - t0

    def test_slow_later_head_in_tunnel_is_answered_408_and_closed(self):
        c = self.tunnel()
        c.send(self.req(b'/first'))
        self.assertEqual(c.read_response(timeout=5).status, 200)
        took = self.trickle(c, self.req(b'/second') * 4, 8)
        self.assertLess(took, 4, 'a later head trickled in a tunnel for %.1f s was not cut' % took)
        resp = c.read_response(timeout=5)
        self.assertProxyError(resp, 408, 'request_timeout', self.d)
        with self.assertRaises(NoResponse):
            c.read_response(timeout=2)
        self.assertTrue(c.eof, 'TLS session left open after the 408')
        self.assertEqual([r.target for r in self.up.requests], ['/first'])

    def test_slow_first_head_in_tunnel_is_cut(self):
        c = self.tunnel()
        took = self.trickle(c, self.req(b'/slow') * 4, 8)
        self.assertLess(took, 4, 'a first head trickled in a tunnel for %.1f s was not cut' % took)
        self.assertEqual(self.up.requests, [])

    def open_intercepts(self):
        c = HTTPClient(self.d.port, timeout=5)
        try:
            c.send(b'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
            body = c.read_response(timeout=5).body.decode()
        finally:
            c.close()
        for line in body.splitlines():
            if line.startswith('scopeproxy_open_tunnels{kind="intercept"}'):
                return float(line.split()[-1])
        return 0.0

    def test_refused_head_in_tunnel_ends_the_session(self):
        # The JSON answer reaches the client through TLS, then the session
        # ends, even while the client keeps its socket open and silent.
        c = self.tunnel()
        c.send(self.req(b'/first'))
        self.assertEqual(c.read_response(timeout=5).status, 200)
        c.send(b'GET /bad HTTP/1.1\r\nHost: api.openai.com\r\nX-A: a\x00b\r\n\r\n')
        resp = c.read_response(timeout=5)
        self.assertProxyError(resp, 400, 'bad_request', self.d)
        with self.assertRaises(NoResponse):
            c.read_response(timeout=2)
        self.assertTrue(c.eof, 'TLS session left open after a refused head')
        deadline = time.monotonic() + 8
        while self.open_intercepts() > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(self.open_intercepts(), 0, 'the proxy kept the refused TLS session')
        self.assertEqual([r.target for r in self.up.requests], ['/first'])


class HalfHeads(ProxyTestCase):
    """4,096 connections that each send part of a head and hang up (half
    of them after one good request) must not lock out a normal client: the
    slots are given back at the hang-up, not at the head deadline."""

    N = 4096
    SLOTS = 256

    def test_half_heads_and_close_do_not_lock_out(self):
        up = self.start_upstream()
        hp = b'127.0.0.1:%d' % up.port
        d = self.start_daemon('--max-connections', str(self.SLOTS))
        partial = b'GET http://' + hp + b'/half HTTP/1.1\r\nHost: '
        good = b'GET http://' + hp + b'/good HTTP/1.1\r\nHost: ' + hp + b'\r\n\r\n'
        stop = threading.Event()
        errors = []

        def attacker(k):
            for i in range(k, self.N, 4):
                if stop.is_set():
                    return
                try:
                    s = socket.create_connection((LOOPBACK, d.port), timeout=5)
                    if i % 2:
                        s.sendall(good)
                        got = b''
                        while b'\r\n\r\n' not in got:     # the answer's head
                            b = s.recv(65536)
                            if not b:
                                break
                            got += b
                    s.sendall(partial)
                    s.close()
                except OSError as e:
                    errors.append(repr(e))

        threads = [threading.Thread(target=attacker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        worst = 0.0
        served = 0
        try:
            while any(t.is_alive() for t in threads):
                t0 = time.monotonic()
                c = HTTPClient(d.port, timeout=5)
                try:
                    c.send(b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
                    r = c.read_response(timeout=5)
                finally:
                    c.close()
                took = time.monotonic() - t0
                worst = max(worst, took)
                self.assertEqual(r.status, 200, 'a normal client was refused while '
                                 'half-heads came and went: %r' % r)
                served += 1
                time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join()
        self.assertGreater(served, 0)
        self.assertLess(worst, 1.0, 'a normal client waited %.2f s' % worst)
        # nothing of a half head went upstream
        self.assertNotIn('/half', [r.target for r in up.requests])


if __name__ == '__main__':
    main()
