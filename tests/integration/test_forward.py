#!/usr/bin/python3
"""Forward mode (HTTP_PROXY): absolute-form targets, header and target fidelity."""

import json
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (AUTH_LINE, SECRET, CloseBeforeAnswer, EarlyAnswer, Fixed, HTTPClient,  # noqa: E402
                     ProxyTestCase, main, request, tls_material, curl)


def get(host_port, path, extra=b'', method=b'GET'):
    return (method + b' http://' + host_port + path + b' HTTP/1.1\r\nHost: ' + host_port + b'\r\n'
            + extra + b'\r\n')


class ForwardHeaders(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.up = self.start_upstream()
        self.d = self.start_daemon()
        self.hp = ('127.0.0.1:%d' % self.up.port).encode()

    def upstream_head(self, resp):
        self.assertEqual(resp.status, 200, resp)
        return resp.json()

    def test_end_to_end_headers_order_case_duplicates(self):
        raw = (b'GET http://' + self.hp + b'/echo/e2e HTTP/1.1\r\n'
               b'Host: ' + self.hp + b'\r\n'
               b'X-Mixed-CASE: Alpha\r\n'
               b'x-dup: 1\r\n'
               b'X-Dup: 2\r\n'
               b'x-dup: 3\r\n'
               + AUTH_LINE +
               b'accept: text/plain\r\n'
               b'User-Agent: exact-agent/1.0\r\n'
               b'X-Z-Last: z\r\n\r\n')
        resp = request(self.d.port, raw)
        doc = self.upstream_head(resp)
        names = [h for h in doc['headers'] if h[0].lower() != 'host']
        self.assertEqual(names, [['X-Mixed-CASE', 'Alpha'], ['x-dup', '1'], ['X-Dup', '2'],
                                 ['x-dup', '3'], ['Authorization', 'Bearer ' + SECRET],
                                 ['accept', 'text/plain'], ['User-Agent', 'exact-agent/1.0'],
                                 ['X-Z-Last', 'z']],
                         'end-to-end headers must arrive in order, with case and duplicates, '
                         'and nothing added; upstream saw:\n' + doc['raw_head'])

    def test_host_rebuilt_from_target(self):
        raw = (b'GET http://' + self.hp + b'/echo/host HTTP/1.1\r\n'
               b'Host: evil.example:1234\r\nX-A: 1\r\n\r\n')
        doc = self.upstream_head(request(self.d.port, raw))
        hosts = [v for k, v in doc['headers'] if k.lower() == 'host']
        self.assertEqual(hosts, [self.hp.decode()], doc['raw_head'])

    def test_no_headers_added(self):
        # A bare GET: upstream must see Host and nothing else (no Accept: */*,
        # no User-Agent, no Content-Length / Transfer-Encoding / Expect).
        raw = b'GET http://' + self.hp + b'/echo/bare HTTP/1.1\r\nHost: ' + self.hp + b'\r\n\r\n'
        doc = self.upstream_head(request(self.d.port, raw))
        self.assertEqual([k.lower() for k, v in doc['headers']], ['host'], doc['raw_head'])

    def test_post_no_headers_added(self):
        body = b'a=1&b=2'
        raw = (b'POST http://' + self.hp + b'/echo/post HTTP/1.1\r\nHost: ' + self.hp + b'\r\n'
               b'Content-Length: 7\r\n\r\n' + body)
        doc = self.upstream_head(request(self.d.port, raw))
        rest = [h for h in doc['headers'] if h[0].lower() != 'host']
        self.assertEqual(rest, [['Content-Length', '7']],
                         'no Content-Type/Expect/Accept may be added; upstream saw:\n' + doc['raw_head'])
        self.assertEqual(doc['body'], body.decode())

    def test_hop_by_hop_dropped(self):
        raw = (b'GET http://' + self.hp + b'/echo/hop HTTP/1.1\r\n'
               b'Host: ' + self.hp + b'\r\n'
               b'X-Before: 1\r\n'
               b'Connection: keep-alive, X-Hop-One, x-hop-two\r\n'
               b'X-Hop-One: must-go\r\n'
               b'x-hop-two: must-go\r\n'
               b'Keep-Alive: timeout=5\r\n'
               b'Proxy-Connection: keep-alive\r\n'
               b'Proxy-Authorization: Basic c2NvcGVwcm94eTpzZWNyZXQ=\r\n'
               b'TE: trailers\r\n'
               b'Trailer: X-Checksum\r\n'
               b'Upgrade: h2c\r\n'
               b'X-After: 2\r\n\r\n')
        doc = self.upstream_head(request(self.d.port, raw))
        rest = [h for h in doc['headers'] if h[0].lower() != 'host']
        self.assertEqual(rest, [['X-Before', '1'], ['X-After', '2']],
                         'hop-by-hop headers must be dropped; upstream saw:\n' + doc['raw_head'])

    def test_connection_close_from_client_not_forwarded(self):
        raw = (b'GET http://' + self.hp + b'/echo/cc HTTP/1.1\r\nHost: ' + self.hp + b'\r\n'
               b'Connection: close\r\nX-K: v\r\n\r\n')
        doc = self.upstream_head(request(self.d.port, raw))
        rest = [h for h in doc['headers'] if h[0].lower() != 'host']
        self.assertEqual(rest, [['X-K', 'v']], doc['raw_head'])

    def test_empty_header_value_kept(self):
        raw = (b'GET http://' + self.hp + b'/echo/empty HTTP/1.1\r\nHost: ' + self.hp + b'\r\n'
               b'X-Empty:\r\nX-Other: o\r\n\r\n')
        doc = self.upstream_head(request(self.d.port, raw))
        rest = [h for h in doc['headers'] if h[0].lower() != 'host']
        self.assertEqual(rest, [['X-Empty', ''], ['X-Other', 'o']], doc['raw_head'])

    def test_client_content_type_accept_expect_handling(self):
        # Client-sent Content-Type / Accept pass through unchanged; Expect is
        # answered by the proxy and not forwarded.
        body = b'{"x":1}'
        c = HTTPClient(self.d.port)
        self.addCleanup(c.close)
        c.send(b'POST http://' + self.hp + b'/echo/expect HTTP/1.1\r\nHost: ' + self.hp + b'\r\n'
               b'Content-Type: application/json\r\nAccept: */*\r\nExpect: 100-continue\r\n'
               b'Content-Length: 7\r\n\r\n')
        # Like curl: wait up to 1 s for 100 Continue, then send the body anyway.
        c.sock.settimeout(1.0)
        try:
            c._fill(1.0)
        except OSError:
            pass
        c.send(body)
        resp = c.read_response('POST')
        doc = self.upstream_head(resp)
        rest = [h for h in doc['headers'] if h[0].lower() != 'host']
        self.assertEqual(rest, [['Content-Type', 'application/json'], ['Accept', '*/*'],
                                ['Content-Length', '7']], doc['raw_head'])
        self.assertEqual(doc['body'], body.decode())

    def test_chunked_upload_reframed_chunked(self):
        raw = (b'POST http://' + self.hp + b'/echo/chunked HTTP/1.1\r\nHost: ' + self.hp + b'\r\n'
               b'Transfer-Encoding: chunked\r\nX-K: v\r\n\r\n'
               b'5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n')
        doc = self.upstream_head(request(self.d.port, raw))
        self.assertEqual(doc['framing'], 'chunked', doc['raw_head'])
        self.assertEqual(doc['body'], 'hello world')
        lower = [k.lower() for k, v in doc['headers']]
        self.assertNotIn('content-length', lower, doc['raw_head'])
        self.assertEqual(lower.count('transfer-encoding'), 1, doc['raw_head'])
        rest = [h for h in doc['headers'] if h[0].lower() not in ('host', 'transfer-encoding')]
        self.assertEqual(rest, [['X-K', 'v']], doc['raw_head'])

    def test_content_length_zero_forwarded(self):
        raw = (b'POST http://' + self.hp + b'/echo/cl0 HTTP/1.1\r\nHost: ' + self.hp + b'\r\n'
               b'Content-Length: 0\r\n\r\n')
        doc = self.upstream_head(request(self.d.port, raw))
        rest = [h for h in doc['headers'] if h[0].lower() != 'host']
        self.assertEqual(rest, [['Content-Length', '0']], doc['raw_head'])
        self.assertEqual(doc['body_len'], 0)

    def test_binary_body_intact(self):
        body = bytes(range(256)) * 400
        raw = (b'PUT http://' + self.hp + b'/echo/bin HTTP/1.1\r\nHost: ' + self.hp + b'\r\n'
               b'Content-Length: %d\r\n\r\n' % len(body)) + body
        doc = self.upstream_head(request(self.d.port, raw))
        self.assertEqual(doc['method'], 'PUT')
        self.assertEqual(doc['body'].encode('latin-1'), body)

    def test_methods_pass_through(self):
        for m in (b'DELETE', b'PATCH', b'OPTIONS', b'PROPFIND'):
            with self.subTest(method=m):
                extra = b'Content-Length: 2\r\n' if m == b'PATCH' else b''
                raw = (m + b' http://' + self.hp + b'/echo/m HTTP/1.1\r\nHost: ' + self.hp + b'\r\n'
                       + extra + b'\r\n' + (b'{}' if m == b'PATCH' else b''))
                doc = self.upstream_head(request(self.d.port, raw))
                self.assertEqual(doc['method'], m.decode())
                self.assertEqual(doc['raw_head'].split('\r\n')[0], m.decode() + ' /echo/m HTTP/1.1')

    def test_head_then_keepalive(self):
        c = HTTPClient(self.d.port)
        self.addCleanup(c.close)
        c.send(b'HEAD http://' + self.hp + b'/echo/head HTTP/1.1\r\nHost: ' + self.hp + b'\r\n\r\n')
        r1 = c.read_response('HEAD', timeout=5)
        self.assertEqual(r1.status, 200, r1)
        self.assertEqual(r1.body, b'')
        c.send(get(self.hp, b'/echo/after-head'))
        r2 = c.read_response('GET', timeout=5)
        self.assertEqual(r2.status, 200, r2)
        self.assertEqual(r2.json()['target'], '/echo/after-head')

    def test_keepalive_many_requests_one_connection(self):
        c = HTTPClient(self.d.port)
        self.addCleanup(c.close)
        for i in range(5):
            c.send(get(self.hp, b'/echo/ka/%d' % i))
            r = c.read_response('GET', timeout=5)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()['target'], '/echo/ka/%d' % i)


class ForwardTargets(ProxyTestCase):
    """The raw target path+query is forwarded byte for byte."""

    def setUp(self):
        super().setUp()
        self.up = self.start_upstream()
        self.d = self.start_daemon()
        self.hp = ('127.0.0.1:%d' % self.up.port).encode()

    def check_target(self, sent, expected):
        raw = b'GET http://' + self.hp + sent + b' HTTP/1.1\r\nHost: ' + self.hp + b'\r\n\r\n'
        resp = request(self.d.port, raw)
        self.assertEqual(resp.status, 200, resp)
        req = self.up.wait_request(lambda r: True, timeout=2)
        line = self.up.requests[-1].request_line()
        self.assertEqual(line, b'GET ' + expected + b' HTTP/1.1',
                         'sent target %r' % sent)
        self.assertIsNotNone(req)

    def test_encoded_slash_and_dotdot_preserved(self):
        t = b'/a%2Fb/../c/./d//e'
        self.check_target(t, t)

    def test_odd_query_preserved(self):
        t = b'/q?x=%2F..%20&y=a+b&&z=%zz&empty=&=v&k=%E2%82%AC&s=/..//'
        self.check_target(t, t)

    def test_percent_encoded_dots_and_case_preserved(self):
        t = b'/%2e%2E/%2f%2F/%7Euser/A%41'
        self.check_target(t, t)

    def test_empty_query_preserved(self):
        self.check_target(b'/p?', b'/p?')

    def test_no_path_becomes_slash(self):
        self.check_target(b'', b'/')

    def test_query_without_path(self):
        self.check_target(b'?x=1', b'/?x=1')


class ForwardResponses(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.up = self.start_upstream()
        self.other = self.start_upstream()
        self.d = self.start_daemon()
        self.hp = ('127.0.0.1:%d' % self.up.port).encode()

    def test_response_headers_order_case_duplicates(self):
        hdrs = [('X-Mixed-CASE', 'Value'), ('set-cookie', 'a=1; Path=/'), ('Set-Cookie', 'b=2; HttpOnly'),
                ('X-Dup', '1'), ('x-dup', '2'), ('Content-Type', 'application/json'),
                ('Date', 'Mon, 01 Jan 2024 00:00:00 GMT'), ('openai-processing-ms', '12')]
        self.up.route('/fixed', Fixed(201, hdrs, b'{"ok":true}'))
        resp = request(self.d.port, get(self.hp, b'/fixed'))
        self.assertEqual(resp.status, 201, resp)
        self.assertEqual(resp.body, b'{"ok":true}')
        framing = ('content-length', 'transfer-encoding', 'connection', 'keep-alive')
        got = [(k, v) for k, v in resp.headers if k.lower() not in framing]
        self.assertEqual(got, hdrs, 'response headers must come back in order with case and duplicates')

    def test_response_hop_by_hop_dropped(self):
        hdrs = [('Connection', 'X-Resp-Hop'), ('X-Resp-Hop', 'private'), ('Keep-Alive', 'timeout=99'),
                ('X-End', 'e')]
        self.up.route('/hop', Fixed(200, hdrs, b'ok'))
        resp = request(self.d.port, get(self.hp, b'/hop'))
        self.assertEqual(resp.status, 200, resp)
        names = [k.lower() for k, v in resp.headers]
        self.assertNotIn('x-resp-hop', names, resp)
        self.assertNotIn('timeout=99', [v for k, v in resp.headers], resp)
        self.assertIn('x-end', names, resp)
        self.assertEqual(resp.body, b'ok')

    def test_redirects_returned_not_followed(self):
        for status in (301, 302, 303, 307, 308):
            with self.subTest(status=status):
                loc = self.other.url('/elsewhere/%d?x=%%2F' % status)
                self.up.route('/redir/%d' % status,
                              Fixed(status, [('Location', loc), ('X-R', str(status))], b'moved'))
                raw = (b'POST http://' + self.hp + b'/redir/%d HTTP/1.1\r\nHost: ' % status + self.hp +
                       b'\r\nContent-Length: 4\r\n\r\nbody')
                resp = request(self.d.port, raw)
                self.assertEqual(resp.status, status, resp)
                self.assertEqual(resp.header('Location'), loc, resp)
                self.assertEqual(resp.header('X-R'), str(status))
                self.assertEqual(resp.body, b'moved')
        time.sleep(0.3)
        self.assertEqual(self.other.requests, [], 'the redirect target must never be contacted')

    def test_304_without_body_keeps_connection_usable(self):
        self.up.route('/nm', Fixed(304, [('ETag', '"abc"')]))
        c = HTTPClient(self.d.port)
        self.addCleanup(c.close)
        c.send(get(self.hp, b'/nm', b'If-None-Match: "abc"\r\n'))
        r = c.read_response('GET', timeout=5)
        self.assertEqual(r.status, 304, r)
        self.assertEqual(r.header('ETag'), '"abc"')
        c.send(get(self.hp, b'/echo/after-304'))
        r2 = c.read_response('GET', timeout=5)
        self.assertEqual(r2.status, 200, r2)

    def test_upstream_answers_before_reading_upload(self):
        # An origin that refuses an upload at once (e.g. 401) must have its
        # answer delivered, not a 502 and not a hang.
        self.up.route('/refuse', EarlyAnswer(401, b'{"error":{"message":"bad key"}}'))
        body = b'u' * (4 << 20)
        c = HTTPClient(self.d.port, timeout=20)
        self.addCleanup(c.close)
        c.send(b'POST http://' + self.hp + b'/refuse HTTP/1.1\r\nHost: ' + self.hp + b'\r\n'
               b'Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n' % len(body))
        try:
            c.send(body)
        except OSError:
            pass    # the proxy may stop reading once the answer is known
        resp = c.read_response('POST', timeout=15)
        self.assertEqual(resp.status, 401, resp)
        self.assertEqual(resp.body, b'{"error":{"message":"bad key"}}')
        self.assertIsNone(resp.header('X-Scopeproxy-Error'))

    def test_error_statuses_passed_through(self):
        self.up.route('/e500', Fixed(500, [('Content-Type', 'application/json')],
                                     b'{"error":{"message":"upstream says no"}}'))
        resp = request(self.d.port, get(self.hp, b'/e500'))
        self.assertEqual(resp.status, 500, resp)
        self.assertIsNone(resp.header('X-Scopeproxy-Error'), 'an upstream 500 is not a proxy error')
        self.assertEqual(resp.body, b'{"error":{"message":"upstream says no"}}')


class ForwardTLS(ProxyTestCase):
    """https:// absolute-form targets are forwarded over TLS (trust via --upstream-ca)."""

    def setUp(self):
        super().setUp()
        self.tls = tls_material()
        self.up = self.start_upstream(tls=True)

    def test_https_target_localhost(self):
        d = self.start_daemon('--upstream-ca', self.tls.ca)
        hp = b'localhost:%d' % self.up.port
        raw = b'GET https://' + hp + b'/echo/tls?a=%2F HTTP/1.1\r\nHost: ' + hp + b'\r\nX-K: v\r\n\r\n'
        resp = request(d.port, raw)
        self.assertEqual(resp.status, 200, resp)
        doc = resp.json()
        self.assertTrue(doc['tls'])
        self.assertEqual(doc['sni'], 'localhost')
        self.assertEqual(doc['raw_head'].split('\r\n')[0], 'GET /echo/tls?a=%2F HTTP/1.1')
        self.assertEqual([v for k, v in doc['headers'] if k.lower() == 'host'], [hp.decode()])
        rest = [h for h in doc['headers'] if h[0].lower() != 'host']
        self.assertEqual(rest, [['X-K', 'v']], doc['raw_head'])

    def test_resolve_keeps_host_and_sni(self):
        # /v1/embeddings: a first-party route that carries no minted
        # credential, so the client's request passes untouched.
        d = self.start_daemon('--upstream-ca', self.tls.ca,
                              '--resolve', 'api.openai.com:443:127.0.0.1:%d' % self.up.port)
        raw = (b'POST https://api.openai.com/v1/embeddings HTTP/1.1\r\nHost: api.openai.com\r\n'
               + AUTH_LINE + b'Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}')
        resp = request(d.port, raw)
        self.assertEqual(resp.status, 200, resp)
        doc = resp.json()
        self.assertEqual(doc['sni'], 'api.openai.com')
        self.assertEqual([v for k, v in doc['headers'] if k.lower() == 'host'], ['api.openai.com'])
        self.assertEqual(doc['raw_head'].split('\r\n')[0], 'POST /v1/embeddings HTTP/1.1')
        self.assertIn(['Authorization', 'Bearer ' + SECRET], doc['headers'])
        self.assertEqual(doc['body'], '{}')

    def test_resolve_plain_http_default_port(self):
        plain = self.start_upstream()
        d = self.start_daemon('--resolve', 'api.openai.com:80:127.0.0.1:%d' % plain.port)
        raw = b'GET http://api.openai.com/v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n'
        resp = request(d.port, raw)
        self.assertEqual(resp.status, 200, resp)
        doc = resp.json()
        self.assertFalse(doc['tls'])
        self.assertEqual([v for k, v in doc['headers'] if k.lower() == 'host'], ['api.openai.com'])
        self.assertEqual(doc['raw_head'].split('\r\n')[0], 'GET /v1/models HTTP/1.1')


class ForwardWithCurl(ProxyTestCase):
    """A real client (curl -x) through the proxy."""

    def test_curl_get_and_post(self):
        up = self.start_upstream()
        d = self.start_daemon()
        r = curl('-x', d.proxy, '-H', 'X-From-Curl: 1', up.url('/echo/curl?x=1'))
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual(doc['target'], '/echo/curl?x=1')
        names = [k for k, v in doc['headers']]
        # curl's own headers are end-to-end from the client: they pass unchanged.
        self.assertIn('User-Agent', names)
        self.assertIn('X-From-Curl', names)
        self.assertNotIn('Proxy-Connection', names)
        body = b'x' * 100000
        path = os.path.join(d.tmp, 'body.bin')
        with open(path, 'wb') as f:
            f.write(body)
        r = curl('-x', d.proxy, '--data-binary', '@' + path, '-H', 'Content-Type: application/octet-stream',
                 up.url('/echo/curl-post'))
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual(doc['body_len'], len(body))
        self.assertNotIn('Expect', [k for k, v in doc['headers']])

    def test_curl_query_and_credential_not_logged(self):
        up = self.start_upstream()
        d = self.start_daemon()
        r = curl('-x', d.proxy, '-H', 'Authorization: Bearer ' + SECRET,
                 up.url('/echo/q?api_key=QUERYSECRET123&ok=1'))
        self.assertEqual(r.returncode, 0, r.stderr)
        line = d.wait_log(lambda e: str(e.get('path', '')).startswith('/echo/q'))
        self.assertIsNotNone(line, 'no log line for the request:\n' + d.tail())
        self.assertNotIn('QUERYSECRET123', d.stderr_text(), 'query string values must not be logged')


class ForwardLogs(ProxyTestCase):
    def test_request_log_line(self):
        up = self.start_upstream()
        up.route('/logged', Fixed(200, [('Content-Type', 'text/plain')], b'x' * 1234))
        d = self.start_daemon()
        hp = ('127.0.0.1:%d' % up.port).encode()
        raw = (b'GET http://' + hp + b'/logged/item?token=QSECRET987&b=2 HTTP/1.1\r\nHost: ' + hp + b'\r\n'
               + AUTH_LINE + b'Proxy-Authorization: Basic UFJPWFlTRUNSRVQ=\r\n'
               b'Cookie: session=COOKIESECRET\r\n\r\n')
        resp = request(d.port, raw)
        self.assertEqual(resp.status, 200, resp)
        line = d.wait_log(lambda e: str(e.get('path', '')).startswith('/logged/item'))
        self.assertIsNotNone(line, 'no JSON log line with path /logged/item:\n' + d.tail())
        for k in ('method', 'host', 'path', 'status', 'bytes', 'duration_ms'):
            self.assertIn(k, line, 'log line lacks %r: %r' % (k, line))
        self.assertEqual(line['method'], 'GET')
        self.assertIn(line['host'], ('127.0.0.1', '127.0.0.1:%d' % up.port))
        self.assertEqual(line['status'], 200)
        self.assertIsInstance(line['bytes'], int)
        self.assertGreaterEqual(line['bytes'], 0)
        self.assertIsInstance(line['duration_ms'], (int, float))
        self.assertGreaterEqual(line['duration_ms'], 0)
        text = d.stderr_text()
        for secret in (SECRET, 'QSECRET987', 'UFJPWFlTRUNSRVQ=', 'COOKIESECRET'):
            self.assertNotIn(secret, text, 'secret %r appears in the log' % secret)

    def test_log_line_for_proxy_error(self):
        d = self.start_daemon()
        up = self.start_upstream()
        up.route('/gone', CloseBeforeAnswer())
        hp = ('127.0.0.1:%d' % up.port).encode()
        resp = request(d.port, get(hp, b'/gone/x', AUTH_LINE))
        self.assertGreaterEqual(resp.status, 500, resp)
        line = d.wait_log(lambda e: str(e.get('path', '')).startswith('/gone/x'))
        self.assertIsNotNone(line, 'no log line for a failed request:\n' + d.tail())
        self.assertEqual(line.get('status'), resp.status)


if __name__ == '__main__':
    main()
