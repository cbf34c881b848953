#!/usr/bin/python3
"""Errors the proxy answers itself: OpenAI-shaped JSON + X-Scopeproxy-Error."""

import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (AUTH_LINE, BlackholeListener, CloseBeforeAnswer, GreetingListener, HTTPClient,  # noqa: E402
                     NoResponse, ProxyTestCase, SlowFirstByte, chunk, free_port, main, now, request,
                     tls_material)


def abs_req(hp, path=b'/', method=b'GET', extra=b'', body=b''):
    if isinstance(hp, str):
        hp = hp.encode()
    return (method + b' http://' + hp + path + b' HTTP/1.1\r\nHost: ' + hp + b'\r\n' + extra + b'\r\n' + body)


class Upstream5xx(ProxyTestCase):
    def test_unreachable_502(self):
        d = self.start_daemon()
        port = free_port()
        resp = request(d.port, abs_req('127.0.0.1:%d' % port, b'/x', extra=AUTH_LINE))
        self.assertProxyError(resp, 502, 'upstream_unreachable', d)

    def test_unreachable_gateway_route_502(self):
        port = free_port()
        d = self.start_daemon('--gateway', '/dead/=http://127.0.0.1:%d/' % port)
        resp = request(d.port, b'GET /dead/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        self.assertProxyError(resp, 502, 'upstream_unreachable', d)

    def test_tls_untrusted_certificate_502(self):
        tls = tls_material()
        up = self.start_upstream(tls=True, cert=tls.rogue_cert, key=tls.rogue_key)
        d = self.start_daemon('--upstream-ca', tls.ca)
        resp = request(d.port, b'GET https://localhost:%d/x HTTP/1.1\r\nHost: localhost:%d\r\n\r\n'
                       % (up.port, up.port))
        self.assertProxyError(resp, 502, 'upstream_tls_error', d)
        self.assertEqual(up.requests, [], 'request sent over a connection that failed verification')

    def test_tls_name_mismatch_502(self):
        tls = tls_material()
        up = self.start_upstream(tls=True)
        d = self.start_daemon('--upstream-ca', tls.ca,
                              '--resolve', 'not-in-cert.example:443:127.0.0.1:%d' % up.port)
        resp = request(d.port, b'GET https://not-in-cert.example/x HTTP/1.1\r\nHost: not-in-cert.example\r\n\r\n')
        self.assertProxyError(resp, 502, 'upstream_tls_error', d)
        self.assertEqual(up.requests, [])

    def test_tls_to_plain_http_server_502(self):
        up = GreetingListener()
        self.addCleanup(up.close)
        d = self.start_daemon()
        resp = request(d.port, b'GET https://127.0.0.1:%d/x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n'
                       % (up.port, up.port))
        self.assertProxyError(resp, 502, 'upstream_tls_error', d)

    def test_test_ca_not_trusted_without_upstream_ca(self):
        # --upstream-ca adds trust; without it our private CA is not trusted.
        up = self.start_upstream(tls=True)
        d = self.start_daemon()
        resp = request(d.port, b'GET https://localhost:%d/x HTTP/1.1\r\nHost: localhost:%d\r\n\r\n'
                       % (up.port, up.port))
        self.assertProxyError(resp, 502, 'upstream_tls_error', d)

    def test_upstream_closes_without_answer_502(self):
        up = self.start_upstream()
        up.route('/close', CloseBeforeAnswer())
        up.route('/rst', CloseBeforeAnswer(reset=True))
        d = self.start_daemon()
        for path in (b'/close', b'/rst'):
            with self.subTest(path=path):
                resp = request(d.port, abs_req('127.0.0.1:%d' % up.port, path))
                self.assertEqual(resp.status, 502, resp)
                self.assertIsNotNone(resp.header('X-Scopeproxy-Error'), resp)
                err = resp.json()['error']
                self.assertEqual(err['code'], resp.header('X-Scopeproxy-Error'))
                for k in ('message', 'type', 'param'):
                    self.assertIn(k, err)

    def test_slow_first_byte_504(self):
        up = self.start_upstream()
        up.route('/slow', SlowFirstByte(8.0))
        d = self.start_daemon('--idle-timeout', '1')
        t0 = now()
        resp = request(d.port, abs_req('127.0.0.1:%d' % up.port, b'/slow'), timeout=15)
        elapsed = now() - t0
        self.assertProxyError(resp, 504, 'upstream_timeout', d)
        self.assertGreater(elapsed, 0.8)
        self.assertLess(elapsed, 6.0, 'timeout of 1 s took %.1fs' % elapsed)
        req = up.requests[0]
        self.assertTrue(up.wait(lambda: req.conn.peer_closed_at is not None, timeout=3.0),
                        'timed-out upstream connection was not released')

    def test_connect_timeout_504(self):
        bh = BlackholeListener()
        self.addCleanup(bh.close)
        d = self.start_daemon('--connect-timeout', '1')
        t0 = now()
        resp = request(d.port, abs_req('127.0.0.1:%d' % bh.port, b'/x'), timeout=15)
        elapsed = now() - t0
        self.assertProxyError(resp, 504, 'upstream_timeout', d)
        self.assertLess(elapsed, 6.0, 'connect timeout of 1 s took %.1fs' % elapsed)

    def test_daemon_survives_errors(self):
        d = self.start_daemon()
        for _ in range(20):
            resp = request(d.port, abs_req('127.0.0.1:%d' % free_port(), b'/x'))
            self.assertEqual(resp.status, 502)
        up = self.start_upstream()
        resp = request(d.port, abs_req('127.0.0.1:%d' % up.port, b'/ok'))
        self.assertEqual(resp.status, 200)
        self.assertTrue(d.alive())


class ConnectMethod(ProxyTestCase):
    """CONNECT is handled by the acceptor (tunnels and interception are
    covered by test_connect.py); these are its error answers."""
    def test_connect_upstream_down_502(self):
        # port 443 is allowed; nothing listens on 127.0.0.1:443 here
        d = self.start_daemon()
        resp = request(d.port, b'CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n')
        self.assertProxyError(resp, 502, 'upstream_unreachable', d)

    def test_connect_port_not_allowed_403(self):
        up = self.start_upstream()
        d = self.start_daemon()
        resp = request(d.port, b'CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n'
                       % (up.port, up.port) + AUTH_LINE + b'\r\n')
        self.assertProxyError(resp, 403, 'connect_port_not_allowed', d)
        time.sleep(0.2)
        self.assertEqual(up.requests, [])

    def test_connect_after_request_on_kept_alive_connection_405(self):
        up = self.start_upstream()
        d = self.start_daemon()
        c = HTTPClient(d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(abs_req('127.0.0.1:%d' % up.port, b'/first'))
        self.assertEqual(c.read_response(timeout=5).status, 200)
        c.send(b'CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n' % (up.port, up.port))
        try:
            resp = c.read_response('CONNECT', timeout=5)
        except NoResponse as e:
            self.fail('no answer to CONNECT as a second request: %s' % e)
        self.assertProxyError(resp, 405, 'method_not_allowed', d)
        time.sleep(0.2)
        self.assertEqual([r.target for r in up.requests], ['/first'])


class SizeLimits(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.up = self.start_upstream()
        self.hp = b'127.0.0.1:%d' % self.up.port

    def test_body_over_limit_413(self):
        d = self.start_daemon('--max-body-size', '1000')
        resp = request(d.port, abs_req(self.hp, b'/big', b'POST', b'Content-Length: 1001\r\n', b'x' * 1001))
        self.assertProxyError(resp, 413, 'payload_too_large', d)

    def test_body_at_limit_ok(self):
        d = self.start_daemon('--max-body-size', '1000')
        resp = request(d.port, abs_req(self.hp, b'/ok', b'POST', b'Content-Length: 1000\r\n', b'x' * 1000))
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.json()['body_len'], 1000)

    def test_declared_length_over_limit_413_without_body(self):
        # The limit applies to the declared length: no need to send the body.
        d = self.start_daemon('--max-body-size', '1000')
        c = HTTPClient(d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(abs_req(self.hp, b'/big', b'POST', b'Content-Length: 10000000\r\n'))
        resp = c.read_response('POST', timeout=5)
        self.assertProxyError(resp, 413, 'payload_too_large', d)

    def test_chunked_body_over_limit_413(self):
        d = self.start_daemon('--max-body-size', '1000')
        body = b''.join(chunk(b'y' * 500) for _ in range(3)) + b'0\r\n\r\n'
        resp = request(d.port, abs_req(self.hp, b'/big', b'POST', b'Transfer-Encoding: chunked\r\n', body))
        self.assertProxyError(resp, 413, 'payload_too_large', d)
        time.sleep(0.3)
        complete = [r for r in self.up.requests if r.body_complete and r.body_received >= 1500]
        self.assertEqual(complete, [], 'the oversized body was forwarded in full')

    def test_gateway_body_over_limit_413(self):
        d = self.start_daemon('--max-body-size', '10',
                              '--gateway', '/gw/=http://127.0.0.1:%d/' % self.up.port)
        resp = request(d.port, b'POST /gw/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 11\r\n\r\n'
                       + b'z' * 11)
        self.assertProxyError(resp, 413, 'payload_too_large', d)

    def test_header_over_limit_431(self):
        d = self.start_daemon('--max-header-size', '2048')
        resp = request(d.port, abs_req(self.hp, b'/h', extra=b'X-Big: ' + b'a' * 3000 + b'\r\n'))
        self.assertProxyError(resp, 431, 'headers_too_large', d)
        self.assertEqual(self.up.requests, [])

    def test_header_under_limit_ok(self):
        d = self.start_daemon('--max-header-size', '2048')
        resp = request(d.port, abs_req(self.hp, b'/h', extra=b'X-Small: ' + b'a' * 1000 + b'\r\n'))
        self.assertEqual(resp.status, 200, resp)

    def test_many_headers_over_limit_431(self):
        d = self.start_daemon('--max-header-size', '2048')
        extra = b''.join(b'X-H%d: %s\r\n' % (i, b'v' * 40) for i in range(100))
        resp = request(d.port, abs_req(self.hp, b'/h', extra=extra))
        self.assertProxyError(resp, 431, 'headers_too_large', d)

    def test_huge_header_default_limit_431(self):
        d = self.start_daemon()
        resp = request(d.port, abs_req(self.hp, b'/h', extra=b'X-Huge: ' + b'a' * (1 << 20) + b'\r\n'),
                       timeout=15)
        self.assertProxyError(resp, 431, 'headers_too_large', d)
        self.assertEqual(self.up.requests, [])


    def test_refused_head_is_drained_before_close(self):
        # A client still sending a huge head when the proxy refuses it must
        # be able to finish sending and then read the 431: closing with
        # unread bytes resets the connection (EPIPE for the sender, and the
        # answer may be lost), so the proxy drains before it closes.
        d = self.start_daemon()
        head = abs_req(self.hp, b'/h', extra=b'X-Huge: ' + b'a' * (24 << 20) + b'\r\n')
        with HTTPClient(d.port, timeout=15) as c:
            c.send(head)        # BrokenPipeError here is the failure
            resp = c.read_response('GET')
        self.assertProxyError(resp, 431, 'headers_too_large', d)
        self.assertEqual(self.up.requests, [])


class ConnectionLimit(ProxyTestCase):
    def test_over_limit_connection_gets_clear_error_then_recovers(self):
        d = self.start_daemon('--max-connections', '2')
        held = []
        self.addCleanup(lambda: [c.close() for c in held])
        for _ in range(2):
            c = HTTPClient(d.port, timeout=5)
            held.append(c)
            c.send(b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
            self.assertEqual(c.read_response().status, 200)
        c3 = HTTPClient(d.port, timeout=5)
        self.addCleanup(c3.close)
        c3.send(b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        try:
            resp = c3.read_response()
        except NoResponse as e:
            self.fail('connection over --max-connections got no clear error: %s' % e)
        self.assertGreaterEqual(resp.status, 400, resp)
        code = resp.header('X-Scopeproxy-Error')
        self.assertIsNotNone(code, resp)
        self.assertProxyError(resp, resp.status, code, d)
        for c in held:
            c.close()
        time.sleep(0.3)
        c4 = HTTPClient(d.port, timeout=5)
        self.addCleanup(c4.close)
        c4.send(b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        self.assertEqual(c4.read_response().status, 200, 'slots were not released')


class BadRequests(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.d = self.start_daemon()

    def test_garbage_request_line(self):
        resp = request(self.d.port, b'HELLO\r\n\r\n')
        self.assertProxyError(resp, 400, 'bad_request', self.d)

    def test_absolute_target_without_host(self):
        resp = request(self.d.port, b'GET http:///x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        self.assertProxyError(resp, 400, 'bad_request', self.d)

    def test_absolute_target_bad_port(self):
        resp = request(self.d.port, b'GET http://127.0.0.1:99999/x HTTP/1.1\r\nHost: 127.0.0.1:99999\r\n\r\n')
        self.assertProxyError(resp, 400, 'bad_request', self.d)

    def test_error_body_does_not_echo_credentials(self):
        resp = request(self.d.port, b'GET http:///x HTTP/1.1\r\nHost: 127.0.0.1\r\n' + AUTH_LINE + b'\r\n')
        self.assertProxyError(resp, 400, 'bad_request', self.d)


if __name__ == '__main__':
    main()
