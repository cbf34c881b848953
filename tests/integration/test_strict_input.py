#!/usr/bin/python3
"""Strict input: what libmicrohttpd 0.9.75 lets through must be rejected
(400 bad_request, nothing reaches the upstream)."""

import os
import sys
import time
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import AUTH_LINE, Fixed, HTTPClient, NoResponse, ProxyTestCase, main, request  # noqa: E402


class StrictInput(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.up = self.start_upstream()
        self.d = self.start_daemon('--gateway', '/gw/=http://127.0.0.1:%d/' % self.up.port)
        self.hp = b'127.0.0.1:%d' % self.up.port

    def fwd(self, extra, body=b'', method=b'POST', path=b'/strict'):
        return (method + b' http://' + self.hp + path + b' HTTP/1.1\r\nHost: ' + self.hp + b'\r\n'
                + extra + b'\r\n' + body)

    def rejected(self, raw):
        resp = request(self.d.port, raw, timeout=10)
        self.assertProxyError(resp, 400, 'bad_request', self.d)
        time.sleep(0.2)
        self.assertEqual(self.up.requests, [], 'a rejected request reached the upstream: %r'
                         % [r.raw_head for r in self.up.requests])
        return resp

    # -- framing ------------------------------------------------------------
    def test_content_length_and_transfer_encoding(self):
        self.rejected(self.fwd(b'Content-Length: 5\r\nTransfer-Encoding: chunked\r\n', b'0\r\n\r\n'))

    def test_transfer_encoding_and_content_length(self):
        self.rejected(self.fwd(b'Transfer-Encoding: chunked\r\nContent-Length: 5\r\n', b'0\r\n\r\n'))

    def test_cl_te_in_gateway_mode(self):
        self.rejected(b'POST /gw/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n'
                      b'Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n')

    def test_differing_content_lengths(self):
        self.rejected(self.fwd(b'Content-Length: 5\r\nContent-Length: 6\r\n', b'hello!'))

    def test_differing_content_lengths_in_one_field(self):
        self.rejected(self.fwd(b'Content-Length: 5, 6\r\n', b'hello!'))

    def test_non_numeric_content_length(self):
        self.rejected(self.fwd(b'Content-Length: abc\r\n', b'hello'))

    def test_negative_content_length(self):
        self.rejected(self.fwd(b'Content-Length: -1\r\n', b'hello'))

    # -- header names ---------------------------------------------------------
    def test_space_before_colon(self):
        self.rejected(self.fwd(b'Foo : bar\r\n', method=b'GET'))

    def test_obs_fold(self):
        self.rejected(self.fwd(b'X-Fold: a\r\n  b\r\n', method=b'GET'))

    def test_obs_fold_tab(self):
        self.rejected(self.fwd(b'X-Fold: a\r\n\tb\r\n', method=b'GET'))

    def test_space_inside_name(self):
        self.rejected(self.fwd(b'Foo Bar: x\r\n', method=b'GET'))

    def test_non_token_chars_in_name(self):
        for name in (b'Fo@o', b'Foo(bar)', b'Foo/bar', b'Foo"', b'X\x01Y', b'\xc3\xa9t\xc3\xa9', b'[x]'):
            with self.subTest(name=name):
                self.rejected(self.fwd(name + b': x\r\n', method=b'GET'))

    def test_empty_header_name(self):
        self.rejected(self.fwd(b': x\r\n', method=b'GET'))

    def test_bad_name_in_gateway_mode(self):
        self.rejected(b'GET /gw/x HTTP/1.1\r\nHost: 127.0.0.1\r\nFoo : bar\r\n\r\n')

    # -- Host ------------------------------------------------------------------
    def test_missing_host_origin_form(self):
        self.rejected(b'GET /gw/x HTTP/1.1\r\n' + AUTH_LINE + b'\r\n')

    def test_missing_host_healthz(self):
        resp = request(self.d.port, b'GET /healthz HTTP/1.1\r\n\r\n')
        self.assertProxyError(resp, 400, 'bad_request', self.d)

    def test_two_host_headers(self):
        # RFC 9112 3.2: more than one Host field -> 400.
        self.rejected(b'GET /gw/x HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: other.example\r\n\r\n')

    # -- field values ------------------------------------------------------------
    def check_value_rejected_or_cleaned(self, value):
        """RFC 9110 5.5: CR, LF or NUL in a value -> reject, or replace with SP."""
        resp = request(self.d.port, self.fwd(b'X-Bad: ' + value + b'\r\n', method=b'GET'))
        if resp.status == 400:
            self.assertProxyError(resp, 400, 'bad_request', self.d)
            return
        self.assertEqual(resp.status, 200, resp)
        req = self.up.wait_request(timeout=2)
        for line in req.header_lines:
            self.assertNotIn(b'\r', line, 'bare CR forwarded: %r' % req.raw_head)
            self.assertNotIn(b'\x00', line, 'NUL forwarded: %r' % req.raw_head)

    def test_bare_cr_in_value(self):
        self.check_value_rejected_or_cleaned(b'a\rb')

    def test_nul_in_value(self):
        self.check_value_rejected_or_cleaned(b'a\x00b')

    # -- what must still pass ----------------------------------------------------
    def test_all_token_characters_accepted(self):
        name = b"X-!#$%&'*+-.^_`|~09azAZ"
        resp = request(self.d.port, self.fwd(name + b': ok\r\n', method=b'GET'))
        self.assertEqual(resp.status, 200, resp)
        self.assertIn([name.decode(), 'ok'], resp.json()['headers'])

    def test_value_with_inner_spaces_and_obs_text(self):
        resp = request(self.d.port, self.fwd(b'X-V: a  b\t c \xe9\r\n', method=b'GET'))
        self.assertEqual(resp.status, 200, resp)
        self.assertIn(['X-V', 'a  b\t c \xe9'], resp.json()['headers'])

    def test_http10_without_host_absolute_form(self):
        # Host is only mandatory for HTTP/1.1.
        resp = request(self.d.port, b'GET http://' + self.hp + b'/ok HTTP/1.0\r\n\r\n')
        self.assertEqual(resp.status, 200, resp)

    def test_rejection_closes_or_keeps_connection_sane(self):
        # After a 400 the proxy must not interpret the rejected body as a new request.
        raw = self.fwd(b'Content-Length: 5\r\nTransfer-Encoding: chunked\r\n',
                       b'0\r\n\r\nGET http://' + self.hp + b'/smuggled HTTP/1.1\r\nHost: ' + self.hp + b'\r\n\r\n')
        self.rejected(raw)
        time.sleep(0.3)
        self.assertEqual([r.target for r in self.up.requests], [], 'request smuggled past the proxy')



class ConnectionOptions(ProxyTestCase):
    """Connection options are parsed once and capped at 32 (request: 400
    naming the header, nothing upstream; response: 502); the headers they
    name are dropped both ways."""

    def setUp(self):
        super().setUp()
        self.up = self.start_upstream()
        # room for the 16 KB list and 450 headers in MHD's pool
        self.d = self.start_daemon('--max-header-size', '65536')
        self.hp = b'127.0.0.1:%d' % self.up.port

    def get(self, extra, path=b'/conn'):
        return request(self.d.port, b'GET http://' + self.hp + path + b' HTTP/1.1\r\nHost: ' +
                       self.hp + b'\r\n' + extra + b'\r\n', timeout=10)

    def refused(self, extra):
        resp = self.get(extra)
        err = self.assertProxyError(resp, 400, 'bad_request', self.d)
        self.assertIn("'Connection'", err['message'])
        time.sleep(0.2)
        self.assertEqual(self.up.requests, [], 'a refused request reached the upstream')

    def test_33_options_refused(self):
        opts = b', '.join(b'x-%d' % i for i in range(33))
        self.refused(b'Connection: ' + opts + b'\r\n')

    def test_33_options_over_two_headers_refused(self):
        opts = b', '.join(b'x-%d' % i for i in range(30))
        self.refused(b'Connection: ' + opts + b'\r\nX-A: 1\r\nconnection: keep-alive,,Upgrade , te\r\n')

    def test_16k_list_with_450_headers_refused(self):
        opts = b', '.join(b'x-opt-%d' % i for i in range(1450))
        many = b''.join(b'X-H%d: v\r\n' % i for i in range(450))
        self.refused(b'Connection: ' + opts + b'\r\n' + many)

    def test_32_options_and_empty_elements_pass_named_headers_dropped(self):
        opts = [b'X-Drop', b'CONTENT-TYPE', b'close'] + [b'x-%d' % i for i in range(29)]
        resp = self.get(b'Connection: ,\t' + b' , ,'.join(opts) + b' ,,\r\n'
                        b'X-Drop: 1\r\nContent-Type: a/b\r\nX-Keep: 2\r\nx-28: 3\r\n')
        self.assertEqual(resp.status, 200, resp)
        got = [k.lower() for k, _ in resp.json()['headers']]
        self.assertIn('x-keep', got)
        for name in ('x-drop', 'content-type', 'x-28', 'connection'):
            self.assertNotIn(name, got)

    def test_response_options_dropped_and_capped(self):
        self.up.route('/ok', Fixed(200, [('Connection', 'X-Hop, , keep-alive'), ('X-Hop', '1'),
                                         ('X-End', '2')], b'{}'))
        resp = self.get(b'', b'/ok')
        self.assertEqual(resp.status, 200, resp)
        self.assertIsNone(resp.header('X-Hop'))
        self.assertEqual(resp.header('X-End'), '2')
        self.up.route('/many', Fixed(200, [('Connection', ', '.join('x-%d' % i for i in range(33)))],
                                     b'{}'))
        resp = self.get(b'', b'/many')
        self.assertProxyError(resp, 502, 'upstream_protocol_error', self.d)


class StrictInputKeepAlive(ProxyTestCase):
    """Rejections for the second request on a kept-alive connection.

    Every head on a connection is checked raw before libmicrohttpd sees it
    (net/headgate.c), the later ones as the first: the same JSON answers,
    the connection closed after a refusal."""

    JSON_CASES = {
        'cl_te': (b'Content-Length: 5\r\nTransfer-Encoding: chunked\r\n', b'0\r\n\r\n'),
        'differing_cl': (b'Content-Length: 5\r\nContent-Length: 6\r\n', b'hello!'),
        'space_before_colon': (b'Foo : bar\r\n', b''),
        'non_token_name': (b'Fo@o: x\r\n', b''),
    }

    def setUp(self):
        super().setUp()
        self.up = self.start_upstream()
        self.d = self.start_daemon('--gateway', '/gw/=http://127.0.0.1:%d/' % self.up.port)
        self.hp = b'127.0.0.1:%d' % self.up.port

    def first(self):
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(b'GET http://' + self.hp + b'/first HTTP/1.1\r\nHost: ' + self.hp + b'\r\n\r\n')
        r1 = c.read_response(timeout=5)
        self.assertEqual(r1.status, 200, r1)
        return c

    def assertNotForwarded(self):
        time.sleep(0.2)
        self.assertEqual([r.target for r in self.up.requests], ['/first'],
                         'the malformed second request reached the upstream: %r'
                         % [r.raw_head for r in self.up.requests[1:]])

    def second(self, extra, body=b''):
        method = b'POST' if body else b'GET'
        return (method + b' http://' + self.hp + b'/second HTTP/1.1\r\nHost: ' + self.hp
                + b'\r\n' + extra + b'\r\n' + body)

    def test_second_request_rejections(self):
        for name, (extra, body) in self.JSON_CASES.items():
            with self.subTest(case=name):
                self.up.requests.clear()
                c = self.first()
                raw2 = self.second(extra, body)
                c.send(raw2)
                try:
                    resp = c.read_response(raw2.split(b' ', 1)[0].decode('latin-1'), timeout=5)
                except NoResponse as e:
                    self.fail('no answer to the malformed second request: %s' % e)
                self.assertProxyError(resp, 400, 'bad_request', self.d)
                self.assertNotForwarded()

    def test_second_request_bad_length_refused(self):
        c = self.first()
        c.send(self.second(b'Content-Length: abc\r\n', b'hello'))
        resp = c.read_response('POST', timeout=5)
        self.assertEqual(resp.status, 400, resp)
        self.assertNotForwarded()

    def test_second_request_missing_host(self):
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(b'GET /gw/first HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        self.assertEqual(c.read_response(timeout=5).status, 200)
        c.send(b'GET /gw/second HTTP/1.1\r\n\r\n')
        resp = c.read_response(timeout=5)
        self.assertProxyError(resp, 400, 'bad_request', self.d)
        self.assertNotForwarded()

    def test_second_request_bad_request_line_refused(self):
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(b'GET /gw/first HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        self.assertEqual(c.read_response(timeout=5).status, 200)
        c.send(b'HELLO\r\n\r\n')
        resp = c.read_response(timeout=5)
        self.assertProxyError(resp, 400, 'bad_request', self.d)
        self.assertNotForwarded()

    def test_second_request_obs_fold_and_empty_name_rejected(self):
        for extra in (b'X-Fold: a\r\n  b\r\n', b': x\r\n'):
            self.up.requests.clear()
            c = self.first()
            c.send(self.second(extra))
            resp = c.read_response('GET', timeout=5)
            self.assertProxyError(resp, 400, 'bad_request', self.d)
            self.assertNotForwarded()


class PoolCost(ProxyTestCase):
    """Heads our validator passes must fit libmicrohttpd 0.9.75's
    per-connection pool (core/headers.h HEAD_POOL_*): the client gets the
    upstream's answer or our JSON 431, never MHD's HTML page or a bare
    close. max_header_size is the default (16384)."""

    def setUp(self):
        super().setUp()
        self.up = self.start_upstream()
        self.d = self.start_daemon()
        self.hp = b'127.0.0.1:%d' % self.up.port

    def head(self, target=b'/p', extra=b'', method=b'GET'):
        return (method + b' http://' + self.hp + target + b' HTTP/1.1\r\nHost: ' + self.hp
                + b'\r\n' + extra + b'\r\n')

    def answered(self, raw, what):
        try:
            resp = request(self.d.port, raw, timeout=10)
        except NoResponse as e:
            self.fail('%s (%d bytes): no answer (%s)\n%s' % (what, len(raw), e, self.d.tail(800)))
        if resp.status == 431:
            self.assertProxyError(resp, 431, 'headers_too_large', self.d)
        else:
            self.assertEqual(resp.status, 200, '%s: %r\n%s' % (what, resp, self.d.tail(800)))
        return resp

    def test_cookie_commas(self):
        # 0.9.75 splits cookies at ',' as at ';': a record (64 bytes) each
        for n in (300, 500, 1000, 4000):
            with self.subTest(n=n):
                self.answered(self.head(extra=b'Cookie: ' + b'a,' * n + b'a\r\n'),
                              'Cookie of %d commas' % n)

    def test_cookie_commas_and_equals(self):
        for n in (500, 2000):
            with self.subTest(n=n):
                self.answered(self.head(extra=b'Cookie: ' + b'a=1,' * n + b'a=1\r\n'),
                              'Cookie of %d comma-separated pairs' % n)
    def upstream_head(self, nbytes):
        """A route whose 200 carries nbytes of header lines (100 each)."""
        path = '/big%d' % nbytes
        self.up.route(path, Fixed(200, [('X-H%03d' % i, 'v' * 90) for i in range(nbytes // 100)],
                                  b'hello'))
        return path.encode()

    def full_cost(self, target):
        """A head that costs exactly max_header_size + 4096 by head_scan's
        count: 64 fields 'a: b' and padding."""
        pre = self.head(target, b'a: b\r\n' * 64)[:-2]
        # records: the 64 fields, Host, the padding field
        pad = 16384 + 4096 - 66 * 64 - len(pre) - len(b'p: \r\n\r\n')
        return pre + b'p: ' + b'x' * pad + b'\r\n\r\n'

    def upstream_answer(self, raw, what, big):
        """The upstream's 200, or for a head over HEAD_REPLY_MAX (7680)
        our JSON 502; never a bare close."""
        try:
            resp = request(self.d.port, raw, timeout=10)
        except NoResponse as e:
            self.fail('%s: no answer (%s)\n%s' % (what, e, self.d.tail(800)))
        if big:
            self.assertProxyError(resp, 502, 'upstream_protocol_error', self.d)
        else:
            self.assertEqual(resp.status, 200, '%s: %r' % (what, resp))
            self.assertEqual(resp.body, b'hello')
        return resp

    def test_large_upstream_head_after_costly_request(self):
        # MHD builds the response head in what the request left of the
        # pool (HEAD_POOL_REPLY): a larger upstream head was a bare close
        for n in (4000, 7000, 10000, 14000):
            with self.subTest(upstream_head=n):
                raw = self.full_cost(self.upstream_head(n))
                self.assertEqual(len(self.head(b'/x')) < len(raw), True)
                self.upstream_answer(raw, 'a full-cost request and a %d-byte upstream head' % n,
                                     n > 7680)

    def test_large_upstream_head(self):
        for n in (20000, 40000):
            with self.subTest(upstream_head=n):
                self.upstream_answer(self.head(self.upstream_head(n)),
                                     'a %d-byte upstream head' % n, True)

    @unittest.skip('bug: a pipelined head MHD reads with a full-cost head takes the pool '
                   'room kept for the response head (HEAD_POOL_REPLY): the first request '
                   'gets no answer (RST); head_scan counts each head alone')
    def test_pipelined_full_cost_heads_and_large_upstream_head(self):
        # both heads checked by the gate (15 KB together, within the
        # peek window), each at head_scan's full cost by records: 200
        # fields; the upstream head (7500 bytes) is under HEAD_REPLY_MAX
        path = self.upstream_head(7500)
        pre = self.head(path, b'a: b\r\n' * 200)[:-2]
        pad = 16384 + 4096 - 202 * 64 - len(pre) - len(b'p: \r\n\r\n')
        one = pre + b'p: ' + b'x' * pad + b'\r\n\r\n'
        self.assertLess(2 * len(one), 16384)
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(one + one)
        for i in (1, 2):
            try:
                r = c.read_response('GET', timeout=5)
            except NoResponse as e:
                self.fail('pipelined request %d: no answer (%s)' % (i, e))
            self.assertEqual(r.status, 200, r)



if __name__ == '__main__':
    main()
