#!/usr/bin/python3
"""Gateway mode (base URL / sidecar): origin-form requests routed by prefix."""

import json
import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (AUTH_LINE, SECRET, Fixed, HTTPClient, ProxyTestCase,  # noqa: E402
                     curl, main, request, tls_material)


class GatewayCustomRoutes(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.up = self.start_upstream()
        self.up2 = self.start_upstream()
        self.d = self.start_daemon('--gateway', '/local/=http://127.0.0.1:%d/base/' % self.up.port,
                                   '--gateway', '/other/=http://127.0.0.1:%d/' % self.up2.port)
        self.host = b'127.0.0.1:%d' % self.d.port

    def test_prefix_rewritten_onto_base(self):
        raw = (b'POST /local/v1/responses?stream=true HTTP/1.1\r\nHost: ' + self.host + b'\r\n'
               + AUTH_LINE + b'Content-Type: application/json\r\nX-Mixed-Case: 1\r\n'
               b'Content-Length: 11\r\n\r\n{"model":1}')
        resp = request(self.d.port, raw)
        self.assertEqual(resp.status, 200, resp)
        doc = resp.json()
        self.assertEqual(doc['raw_head'].split('\r\n')[0], 'POST /base/v1/responses?stream=true HTTP/1.1')
        self.assertEqual([v for k, v in doc['headers'] if k.lower() == 'host'],
                         ['127.0.0.1:%d' % self.up.port], doc['raw_head'])
        rest = [h for h in doc['headers'] if h[0].lower() != 'host']
        self.assertEqual(rest, [['Authorization', 'Bearer ' + SECRET], ['Content-Type', 'application/json'],
                                ['X-Mixed-Case', '1'], ['Content-Length', '11']], doc['raw_head'])
        self.assertEqual(doc['body'], '{"model":1}')

    def test_second_route_and_root_base(self):
        resp = request(self.d.port, b'GET /other/x/y?z=1 HTTP/1.1\r\nHost: ' + self.host + b'\r\n\r\n')
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.json()['target'], '/x/y?z=1')
        self.assertEqual(self.up.requests, [])

    def test_raw_remainder_preserved(self):
        resp = request(self.d.port, b'GET /local/a%2Fb/%7E?q=%2F%20&x=a+b HTTP/1.1\r\nHost: '
                       + self.host + b'\r\n\r\n')
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.json()['target'], '/base/a%2Fb/%7E?q=%2F%20&x=a+b')

    def test_hop_by_hop_dropped_in_gateway_mode(self):
        raw = (b'GET /local/hop HTTP/1.1\r\nHost: ' + self.host + b'\r\n'
               b'Connection: keep-alive, X-Private\r\nX-Private: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\n'
               b'Proxy-Authorization: Basic Zm9vOmJhcg==\r\nX-Keep: yes\r\n\r\n')
        resp = request(self.d.port, raw)
        doc = resp.json()
        rest = [h for h in doc['headers'] if h[0].lower() != 'host']
        self.assertEqual(rest, [['X-Keep', 'yes']], doc['raw_head'])

    def test_no_headers_added_in_gateway_mode(self):
        resp = request(self.d.port, b'GET /local/bare HTTP/1.1\r\nHost: ' + self.host + b'\r\n\r\n')
        doc = resp.json()
        self.assertEqual([k.lower() for k, v in doc['headers']], ['host'], doc['raw_head'])

    def test_unknown_prefix_404(self):
        resp = request(self.d.port, b'GET /nope/v1/models HTTP/1.1\r\nHost: ' + self.host + b'\r\n'
                       + AUTH_LINE + b'\r\n')
        err = self.assertProxyError(resp, 404, 'unknown_route', self.d)
        self.assertIn('/nope/v1/models', err['message'])
        time.sleep(0.2)
        self.assertEqual(self.up.requests + self.up2.requests, [])

    def test_prefix_must_match_whole_segment(self):
        # "/localx/..." is not under "/local/".
        resp = request(self.d.port, b'GET /localx/y HTTP/1.1\r\nHost: ' + self.host + b'\r\n\r\n')
        self.assertProxyError(resp, 404, 'unknown_route', self.d)

    def test_healthz(self):
        resp = request(self.d.port, b'GET /healthz HTTP/1.1\r\nHost: ' + self.host + b'\r\n\r\n')
        self.assertEqual(resp.status, 200, resp)
        time.sleep(0.1)
        self.assertEqual(self.up.requests + self.up2.requests, [])

    def test_keepalive_mixed_routes(self):
        c = HTTPClient(self.d.port)
        self.addCleanup(c.close)
        for path, want in ((b'/local/1', '/base/1'), (b'/other/2', '/2'), (b'/local/3', '/base/3')):
            c.send(b'GET ' + path + b' HTTP/1.1\r\nHost: ' + self.host + b'\r\n\r\n')
            r = c.read_response(timeout=5)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()['target'], want)

    def test_curl_as_base_url_client(self):
        r = curl('-H', 'Content-Type: application/json', '--data-binary', '{"input":"hi"}',
                 'http://127.0.0.1:%d/local/v1/responses' % self.d.port)
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual(doc['target'], '/base/v1/responses')
        self.assertEqual(doc['body'], '{"input":"hi"}')

    def test_gateway_log_line(self):
        request(self.d.port, b'GET /local/logme?key=GWQSECRET HTTP/1.1\r\nHost: ' + self.host + b'\r\n'
                + AUTH_LINE + b'\r\n')
        line = self.d.wait_log(lambda e: 'logme' in str(e.get('path', '')))
        self.assertIsNotNone(line, 'no log line for the gateway request:\n' + self.d.tail())
        for k in ('method', 'host', 'path', 'status', 'bytes', 'duration_ms'):
            self.assertIn(k, line)
        self.assertEqual(line['status'], 200)
        self.assertNotIn('GWQSECRET', self.d.stderr_text())


class GatewayDefaults(ProxyTestCase):
    """Built-in routes, with the real names resolved to a local TLS server.

    Uses routes that carry no minted credential (/responses and
    /responses/compact do; see the agent-identity spec), so the request
    must pass untouched."""

    def setUp(self):
        super().setUp()
        self.tls = tls_material()
        self.up = self.start_upstream(tls=True)
        self.d = self.start_daemon('--upstream-ca', self.tls.ca,
                                   '--resolve', 'api.openai.com:443:127.0.0.1:%d' % self.up.port,
                                   '--resolve', 'chatgpt.com:443:127.0.0.1:%d' % self.up.port)
        self.host = b'127.0.0.1:%d' % self.d.port

    def test_v1_goes_to_api_openai_com(self):
        raw = (b'POST /v1/embeddings HTTP/1.1\r\nHost: ' + self.host + b'\r\n' + AUTH_LINE +
               b'Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}')
        resp = request(self.d.port, raw)
        self.assertEqual(resp.status, 200, resp)
        doc = resp.json()
        self.assertTrue(doc['tls'])
        self.assertEqual(doc['sni'], 'api.openai.com')
        self.assertEqual(doc['raw_head'].split('\r\n')[0], 'POST /v1/embeddings HTTP/1.1')
        self.assertEqual([v for k, v in doc['headers'] if k.lower() == 'host'], ['api.openai.com'])
        self.assertIn(['Authorization', 'Bearer ' + SECRET], doc['headers'])

    def test_codex_goes_to_chatgpt_com(self):
        raw = (b'GET /backend-api/codex/models?client_version=1 HTTP/1.1\r\nHost: ' + self.host + b'\r\n'
               + AUTH_LINE + b'\r\n')
        resp = request(self.d.port, raw)
        self.assertEqual(resp.status, 200, resp)
        doc = resp.json()
        self.assertEqual(doc['sni'], 'chatgpt.com')
        self.assertEqual(doc['raw_head'].split('\r\n')[0],
                         'GET /backend-api/codex/models?client_version=1 HTTP/1.1')
        self.assertIn(['Authorization', 'Bearer ' + SECRET], doc['headers'])
        self.assertEqual([v for k, v in doc['headers'] if k.lower() == 'host'], ['chatgpt.com'])

    def test_upstream_status_and_headers_returned(self):
        self.up.route('/v1/models', Fixed(401, [('Content-Type', 'application/json'),
                                                ('x-request-id', 'req_123')],
                                          b'{"error":{"message":"bad key","code":"invalid_api_key"}}'))
        resp = request(self.d.port, b'GET /v1/models HTTP/1.1\r\nHost: ' + self.host + b'\r\n\r\n')
        self.assertEqual(resp.status, 401, resp)
        self.assertEqual(resp.header('x-request-id'), 'req_123')
        self.assertIsNone(resp.header('X-Scopeproxy-Error'))
        self.assertEqual(resp.json()['error']['code'], 'invalid_api_key')


class GatewayOverride(ProxyTestCase):
    def test_gateway_flag_overrides_builtin_v1(self):
        up = self.start_upstream()
        d = self.start_daemon('--gateway', '/v1/=http://127.0.0.1:%d/alt/' % up.port)
        resp = request(d.port, b'GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.json()['target'], '/alt/models')

    def test_unknown_prefix_with_defaults_only(self):
        d = self.start_daemon()
        resp = request(d.port, b'GET /v2/whatever HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        err = self.assertProxyError(resp, 404, 'unknown_route', d)
        self.assertIn('/v2/whatever', err['message'])


if __name__ == '__main__':
    main()
