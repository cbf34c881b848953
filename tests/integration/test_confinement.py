#!/usr/bin/python3
"""Credential confinement: where a minted credential may go.

Through the real daemon to a real loopback upstream that answers plain HTTP
and TLS on one port (so it can stand in for a host on :80 and :443 and say
which way each request came), with an attacker's eye:

  * Plaintext: a credentialed route written as http:// (any port the
    provider lists, any of its hosts, forward, gateway, WebSocket, first or
    later head on a kept-alive connection) goes upstream over TLS verified
    for the provider's host, or is refused with `plaintext_credentials:
    refuse`; never minted onto plaintext.  Pass-through routes stay as the
    client wrote them.  An http:// registration base is refused at start.
  * Method rewrite: an upgrade whose method is not GET is refused with the
    proxy's 400 and nothing reaches the upstream, run task or not.
  * Near-misses: on a host whose provider asserts, a spelling of a
    credentialed route that a server or later hop may normalise into it is
    refused (400 noncanonical_route), not forwarded with the client's key;
    the real neighbouring Responses routes pass through untouched; and
    `scopeproxy classify` says the same.

The harness also checks, in every suite, that no AgentAssertion ever
arrives on a plaintext upstream connection.
"""

import json
import os
import re
import shutil
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (audit_records, SECRET, HTTPClient, ProxyTestCase, main, request,  # noqa: E402
                     run_cmd, scopeproxy_bin, clean_env, tls_material)
from agentid import (SPEC_SEED, SPEC_V2_B64, auth_doc, start_audited_daemon,  # noqa: E402
                     fingerprint, identity_record, key_secrets, parse_assertion,
                     public_key, write_auth)

TASK = 'task-confine-5b21'
RUNTIME = 'agent-123'
CRED_HOSTS = ('api.openai.com', 'eu.api.openai.com', 'chatgpt.com', 'chat.openai.com')
WS_HEADERS = ('Upgrade: websocket\r\nConnection: Upgrade\r\n'
              'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n')


def raw(method, target, host, extra='', body=b''):
    head = ('%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nX-Tag: %s %s\r\n%s'
            % (method, target, host, SECRET, method, target, extra))
    if body or method in ('POST', 'PUT', 'PATCH'):
        head += 'Content-Length: %d\r\n' % len(body)
    return head.encode('latin-1') + b'\r\n' + body


class ConfinementCase(ProxyTestCase):

    def setUp(self):
        super().setUp()
        self.work = tempfile.mkdtemp(prefix='scopeproxy-confine-')
        self.addCleanup(shutil.rmtree, self.work, True)
        self.tls = tls_material()
        self.up = self.start_upstream(dual=True)
        self.pub = public_key(SPEC_SEED)
        self.forbidden = {SECRET, 'AgentAssertion', 'eyJ', TASK} | key_secrets(SPEC_SEED)
        self.auth = os.path.join(self.work, 'auth.json')
        write_auth(self.auth, auth_doc(identity_record(SPEC_V2_B64, RUNTIME, task_id=TASK)))

    def daemon(self, *extra, auth=None, config=None):
        route = []
        for h in CRED_HOSTS + ('api.anthropic.com',):
            for port in (80, 443):
                route += ['--resolve', '%s:%d:127.0.0.1:%d' % (h, port, self.up.port)]
        d = start_audited_daemon(self, route, extra, auth, config)
        self.audit_path = d.audit_path
        return d

    def audit(self):
        return audit_records(self.audit_path)

    def got(self, tag):
        return self.up.wait_request(lambda r: r.header('X-Tag') == tag, timeout=3)

    def assertOverTLS(self, req, host, ctx):
        self.assertIsNotNone(req, 'upstream never saw ' + ctx)
        self.assertTrue(req.tls, 'credentialed request arrived over plaintext: ' + ctx)
        self.assertEqual(req.sni, host, 'TLS name: ' + ctx)
        self.assertEqual(req.header_all('Host'), [host], 'Host: ' + ctx)
        auth = req.header_all('Authorization')
        self.assertEqual(len(auth), 1, ctx)
        parse_assertion(auth[0], RUNTIME, TASK, self.pub)

    def assertNothingFor(self, tag):
        self.assertIsNone(self.up.wait_request(lambda r: r.header('X-Tag') == tag, timeout=0.3),
                          'the upstream must see nothing of ' + tag)


# --------------------------------------------------------------------------
# 1. Plaintext
# --------------------------------------------------------------------------

class Plaintext(ConfinementCase):
    TARGETS = [
        ('http://api.openai.com/v1/responses', 'api.openai.com'),
        ('http://api.openai.com:80/v1/responses', 'api.openai.com'),
        ('http://api.openai.com:443/v1/responses', 'api.openai.com'),
        ('http://api.openai.com/v1/responses/compact', 'api.openai.com'),
        ('http://eu.api.openai.com/v1/responses', 'eu.api.openai.com'),
        ('http://chatgpt.com/backend-api/codex/responses', 'chatgpt.com'),
        ('http://chat.openai.com/backend-api/codex/responses/compact', 'chat.openai.com'),
        ('http://api.openai.com/v1/responses?stream=true', 'api.openai.com'),
    ]

    def test_forward_http_is_sent_over_tls(self):
        d = self.daemon()
        for target, host in self.TARGETS:
            r = request(d.port, raw('POST', target, host, body=b'{"x":1}'))
            self.assertEqual(r.status, 200, '%s: %r\n%s' % (target, r, d.tail(1500)))
            req = self.got('POST ' + target)
            self.assertOverTLS(req, host, target)
            self.assertEqual(req.method, 'POST', target)
            self.assertEqual(bytes(req.body), b'{"x":1}', target)
            self.assertTrue(req.target.startswith('/'), target)
            self.assertIn(req.target.split('?')[0], ('/v1/responses', '/v1/responses/compact',
                                                     '/backend-api/codex/responses',
                                                     '/backend-api/codex/responses/compact'))
        lines = self.audit()
        self.assertEqual(len(lines), len(self.TARGETS))
        for line in lines:
            self.assertEqual(line['action'], 'assert', line)
            self.assertEqual(line['task'], fingerprint(TASK), line)
            self.assertEqual(line['port'], 443, line)

    def test_later_head_on_kept_alive_connection(self):
        d = self.daemon()
        with HTTPClient(d.port) as c:
            for i, (target, host) in enumerate(self.TARGETS[:4] * 2):
                # a pass-through request first, so the credentialed one is
                # a later head on the same client connection
                c.send(raw('GET', 'http://api.openai.com/v1/models?i=%d' % i, 'api.openai.com'))
                r = c.read_response()
                self.assertEqual(r.status, 200, r)
                c.send(raw('POST', target, host, extra='X-I: %d\r\n' % i, body=b'{}'))
                r = c.read_response()
                self.assertEqual(r.status, 200, '%s: %r' % (target, r))
                req = self.up.wait_request(lambda q: q.header('X-I') == str(i), timeout=3)
                self.assertOverTLS(req, host, target)

    def test_passthrough_routes_keep_the_clients_scheme(self):
        d = self.daemon()
        for method, target in (('GET', 'http://api.openai.com/v1/models'),
                               ('POST', 'http://api.openai.com/v1/chat/completions'),
                               ('POST', 'http://api.anthropic.com/v1/messages')):
            r = request(d.port, raw(method, target, target.split('/')[2], body=b'{}'))
            self.assertEqual(r.status, 200, r)
            req = self.got('%s %s' % (method, target))
            self.assertIsNotNone(req, target)
            self.assertFalse(req.tls, 'a pass-through route is forwarded as the client wrote it: '
                             + target)
            self.assertEqual(req.header_all('Authorization'), ['Bearer ' + SECRET], target)

    def test_gateway_to_plain_http_base_is_sent_over_tls(self):
        d = self.daemon('--gateway', '/v1/=http://api.openai.com/v1/',
                        '--gateway', '/codex/=http://chatgpt.com:80/backend-api/codex/')
        for path, host in (('/v1/responses', 'api.openai.com'),
                           ('/v1/responses/compact', 'api.openai.com'),
                           ('/codex/responses', 'chatgpt.com')):
            r = request(d.port, raw('POST', path, '127.0.0.1:%d' % d.port, body=b'{}'))
            self.assertEqual(r.status, 200, '%s: %r' % (path, r))
            self.assertOverTLS(self.got('POST ' + path), host, path)
        # the pass-through route through the same gateway stays plain
        r = request(d.port, raw('GET', '/v1/models', '127.0.0.1:%d' % d.port))
        self.assertEqual(r.status, 200, r)
        self.assertFalse(self.got('GET /v1/models').tls)

    def test_websocket_over_http_is_sent_over_tls(self):
        d = self.daemon()
        for target, host in (('http://api.openai.com/v1/responses', 'api.openai.com'),
                             ('http://chatgpt.com/backend-api/codex/responses', 'chatgpt.com')):
            # the stand-in answers the handshake with an ordinary 200, which
            # the proxy relays as an ordinary response
            r = request(d.port, raw('GET', target, host, extra=WS_HEADERS))
            self.assertEqual(r.status, 200, '%s: %r\n%s' % (target, r, d.tail(1500)))
            req = self.got('GET ' + target)
            self.assertOverTLS(req, host, 'WebSocket ' + target)
            self.assertEqual(req.header('Upgrade'), 'websocket')

    def test_refuse_mode_answers_and_sends_nothing(self):
        for how in ('config', 'flag'):
            if how == 'config':
                d = self.daemon(config={'plaintext_credentials': 'refuse'})
            else:
                d = self.daemon('--plaintext-credentials', 'refuse')
            for target, host in self.TARGETS[:3]:
                r = request(d.port, raw('POST', target, host, body=b'{}'))
                err = self.assertProxyError(r, 403, 'tls_required', d)
                self.assertIn('https://', err['message'])
                self.assertNothingFor('POST ' + target)
            r = request(d.port, raw('GET', 'http://api.openai.com/v1/models', 'api.openai.com'))
            self.assertEqual(r.status, 200)
            # https is still served
            r = request(d.port, raw('POST', '/v1/responses', '127.0.0.1', body=b'{}'))
            self.assertEqual(r.status, 200, r)
            self.assertOverTLS(self.got('POST /v1/responses'), 'api.openai.com', 'gateway')
            line = [x for x in self.audit() if x['path'] == '/v1/responses' and x['status'] == 403]
            self.assertTrue(line and all(x['action'] == 'reject' and x['task'] is None for x in line))
            self.up.requests.clear()
            d.stop()

    def test_upgraded_leg_verifies_the_providers_certificate(self):
        # an upstream whose certificate is not trusted for the host gets
        # nothing: the TLS handshake fails before any request is written
        rogue = self.start_upstream(dual=True, cert=self.tls.rogue_cert, key=self.tls.rogue_key)
        d = self.start_daemon('--auth-file', self.auth, '--upstream-ca', self.tls.ca,
                              '--resolve', 'api.openai.com:80:127.0.0.1:%d' % self.up.port,
                              '--resolve', 'api.openai.com:443:127.0.0.1:%d' % rogue.port)
        r = request(d.port, raw('POST', 'http://api.openai.com/v1/responses', 'api.openai.com',
                                body=b'{}'))
        self.assertProxyError(r, 502, 'upstream_tls_error', d)
        self.assertEqual(rogue.requests, [])
        self.assertEqual(self.up.requests, [])

    def test_no_task_still_fails_closed(self):
        auth = os.path.join(self.work, 'notask.json')
        write_auth(auth, auth_doc(identity_record(SPEC_V2_B64, RUNTIME)))
        d = self.daemon(auth=auth)
        r = request(d.port, raw('POST', 'http://api.openai.com/v1/responses', 'api.openai.com',
                                body=b'{}'))
        self.assertProxyError(r, 503, 'agent_task_missing', d)
        # the OpenAI SDKs then show the reason instead of retrying
        self.assertEqual(r.header('x-should-retry'), 'false')
        self.assertNothingFor('POST http://api.openai.com/v1/responses')

    def test_plaintext_mode_value_is_checked(self):
        r = run_cmd([scopeproxy_bin(), 'check-config', '--plaintext-credentials', 'allow'],
                    env=clean_env())
        self.assertEqual(r.returncode, 2, r)
        self.assertIn(b'plaintext_credentials', r.stderr)
        r = run_cmd([scopeproxy_bin(), 'check-config'], env=clean_env())
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(json.loads(r.stdout)['plaintext_credentials'], 'upgrade')

    def test_http_registration_base_is_refused_at_start(self):
        for base in ('http://chatgpt.com/backend-api', 'HTTP://127.0.0.1:9/backend-api',
                     'ftp://chatgpt.com/backend-api', 'chatgpt.com/backend-api'):
            cfg = os.path.join(self.work, 'reg.json')
            with open(cfg, 'w') as f:
                json.dump({'task_registration': {'base_url': base}}, f)
            for cmd in ([], ['check-config']):
                r = run_cmd([scopeproxy_bin()] + cmd + ['--config', cfg, '--listen', '127.0.0.1:0',
                                                        '--auth-file', self.auth], env=clean_env())
                self.assertEqual(r.returncode, 2, '%s %s: %r' % (base, cmd, r))
                self.assertIn(b'task_registration.base_url', r.stderr, r)
                self.assertIn(b'https://', r.stderr, r)


# --------------------------------------------------------------------------
# 2. Method rewrite
# --------------------------------------------------------------------------

class UpgradeMethod(ConfinementCase):
    METHODS = ('POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD', 'post', 'get', 'Get')

    def check_refused(self, d, target, host):
        for m in self.METHODS:
            r = request(d.port, raw(m, target, host, extra=WS_HEADERS),
                        method='HEAD' if m == 'HEAD' else None)
            if m == 'HEAD':
                self.assertEqual(r.status, 400, r)
                self.assertEqual(r.header('X-Scopeproxy-Error'), 'bad_request')
            else:
                err = self.assertProxyError(r, 400, 'bad_request', d)
                self.assertIn('GET', err['message'], err)
            self.assertNothingFor('%s %s' % (m, target))

    def test_non_get_upgrade_is_refused_forward(self):
        d = self.daemon()
        for target, host in (('https://api.openai.com/v1/responses', 'api.openai.com'),
                             ('http://api.openai.com/v1/responses', 'api.openai.com'),
                             ('http://chatgpt.com/backend-api/codex/responses', 'chatgpt.com'),
                             ('http://api.anthropic.com/v1/messages', 'api.anthropic.com')):
            self.check_refused(d, target, host)
        self.assertEqual(self.up.requests, [])
        self.assertTrue(all(x['action'] == 'reject' and x['task'] is None for x in self.audit()))

    def test_non_get_upgrade_is_refused_gateway(self):
        d = self.daemon()
        self.check_refused(d, '/v1/responses', '127.0.0.1')
        self.check_refused(d, '/backend-api/codex/responses', '127.0.0.1')
        self.assertEqual(self.up.requests, [])

    def test_refused_without_a_run_task_too(self):
        auth = os.path.join(self.work, 'notask.json')
        write_auth(auth, auth_doc(identity_record(SPEC_V2_B64, RUNTIME)))
        d = self.daemon(auth=auth)
        self.check_refused(d, 'http://api.openai.com/v1/responses', 'api.openai.com')
        self.assertEqual(self.up.requests, [])

    def test_refused_as_a_later_head(self):
        d = self.daemon()
        for m in ('POST', 'PUT', 'post'):
            with HTTPClient(d.port) as c:
                c.send(raw('GET', 'http://api.openai.com/v1/models', 'api.openai.com'))
                self.assertEqual(c.read_response().status, 200)
                c.send(raw(m, 'http://api.openai.com/v1/responses', 'api.openai.com',
                           extra=WS_HEADERS))
                r = c.read_response()
                self.assertProxyError(r, 400, 'bad_request', d)
        self.assertEqual([q.method for q in self.up.requests], ['GET'] * 3)

    def test_classify_agrees(self):
        for m in ('POST', 'PUT', 'post'):
            r = run_cmd([scopeproxy_bin(), 'classify', m, 'https://api.openai.com/v1/responses',
                         '--header', 'Upgrade: websocket', '--header', 'Connection: Upgrade',
                         '--auth-file', self.auth], env=clean_env())
            self.assertEqual(r.returncode, 0, r)
            self.assertEqual(json.loads(r.stdout)['action'], 'reject', r)


# --------------------------------------------------------------------------
# 3. Near-misses on credentialed hosts
# --------------------------------------------------------------------------

NEAR = [
    ('POST', '/v1/responses/'),
    ('POST', '/v1//responses'),
    ('POST', '//v1/responses'),
    ('POST', '/v1/%72esponses'),
    ('POST', '/v1/%2572esponses'),
    ('POST', '/v1/responses%2F'),
    ('POST', '/v1/./responses'),
    ('POST', '/v1/x/../responses'),
    ('POST', '/v1/%2e/responses'),
    ('POST', '/v1/responses/.'),
    ('POST', '/v1/responses;x=1'),
    ('POST', '/V1/Responses'),
    ('POST', '/v1/responses//compact'),
    ('POST', '/v1/responses/compact/'),
    ('POST', '/v1/responses/%63ompact'),
    ('post', '/v1/responses'),
    ('Post', '/v1/responses/compact'),
]

# Real routes next to the credentialed ones: they pass through untouched.
NEIGHBOURS = [
    ('GET', '/v1/responses/resp_123'),
    ('DELETE', '/v1/responses/resp_123'),
    ('POST', '/v1/responses/resp_123/cancel'),
    ('GET', '/v1/responses/resp_123/input_items'),
    ('POST', '/v1/responses/input_tokens'),
    ('GET', '/v1/responses'),
    ('GET', '/v1/models'),
    ('POST', '/v1/chat/completions'),
    ('DELETE', '/v1/responses/'),
]


class NearMiss(ConfinementCase):

    def test_near_misses_are_refused(self):
        d = self.daemon()
        for host, base in (('api.openai.com', ''), ('chatgpt.com', '/backend-api/codex')):
            for method, path in NEAR:
                if base:
                    path = path.replace('/v1', base, 1).replace('/V1', base.upper(), 1)
                for scheme in ('https', 'http'):
                    target = '%s://%s%s' % (scheme, host, path)
                    r = request(d.port, raw(method, target, host, body=b'{}'))
                    err = self.assertProxyError(r, 400, 'noncanonical_route', d)
                    self.assertNotIn(SECRET, json.dumps(err))
                    self.assertNothingFor('%s %s' % (method, target))
        self.assertEqual(self.up.requests, [])
        self.assertTrue(all(x['action'] == 'reject' and x['task'] is None for x in self.audit()))

    def test_near_misses_refused_in_gateway_mode_and_as_later_heads(self):
        d = self.daemon()
        with HTTPClient(d.port) as c:
            # ("//v1/..." matches no gateway prefix: 404, nothing sent)
            for method, path in [x for x in NEAR if x[1].startswith('/v1/')][:8]:
                c.send(raw('GET', '/v1/models', '127.0.0.1'))
                self.assertEqual(c.read_response().status, 200)
                c.send(raw(method, path, '127.0.0.1', body=b'{}'))
                self.assertProxyError(c.read_response(), 400, 'noncanonical_route', d)
                c.close()
                c.__init__(d.port)
        self.assertEqual({q.target for q in self.up.requests}, {'/v1/models'})

    def test_neighbouring_routes_pass_through_untouched(self):
        d = self.daemon()
        for method, path in NEIGHBOURS:
            target = 'https://api.openai.com' + path
            r = request(d.port, raw(method, target, 'api.openai.com',
                                    body=b'{}' if method == 'POST' else b''))
            self.assertEqual(r.status, 200, '%s %s: %r' % (method, path, r))
            req = self.got('%s %s' % (method, target))
            self.assertIsNotNone(req, target)
            self.assertEqual(req.target, path)
            self.assertEqual(req.header_all('Authorization'), ['Bearer ' + SECRET], path)

    def test_other_providers_are_not_touched(self):
        d = self.daemon()
        for method, path in NEAR[:8]:
            target = 'http://api.anthropic.com' + path
            r = request(d.port, raw(method, target, 'api.anthropic.com', body=b'{}'))
            self.assertEqual(r.status, 200, '%s: %r' % (target, r))
            req = self.got('%s %s' % (method, target))
            self.assertEqual(req.target, path)
            self.assertEqual(req.header_all('Authorization'), ['Bearer ' + SECRET])

    def test_canonical_routes_still_credentialed(self):
        d = self.daemon()
        for path in ('/v1/responses', '/v1/responses/compact', '/v1/responses?x=%2F'):
            target = 'https://api.openai.com' + path
            r = request(d.port, raw('POST', target, 'api.openai.com', body=b'{}'))
            self.assertEqual(r.status, 200, r)
            self.assertOverTLS(self.got('POST ' + target), 'api.openai.com', path)

    def test_classify_agrees(self):
        cases = [(m, 'https://api.openai.com' + p, 'reject') for m, p in NEAR[:5]]
        cases += [(m, 'https://api.openai.com' + p, 'passthrough') for m, p in NEIGHBOURS[:4]]
        cases += [('POST', 'https://api.openai.com/v1/responses', 'assert')]
        for method, url, action in cases:
            r = run_cmd([scopeproxy_bin(), 'classify', method, url, '--auth-file', self.auth],
                        env=clean_env())
            self.assertEqual(r.returncode, 0, r)
            doc = json.loads(r.stdout)
            self.assertEqual(doc['action'], action, '%s %s: %r' % (method, url, doc))


# --------------------------------------------------------------------------
# 4. The README's matrix, row by row
# --------------------------------------------------------------------------

README = os.path.join(os.environ.get('SCOPEPROXY_SRCDIR') or
                      os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'),
                      'README.md')


def readme_matrix():
    """{id: (audit column, row text)} from README.md's matrix table."""
    with open(README) as f:
        text = f.read()
    body = text.split('<!-- matrix:begin -->', 1)[1].split('<!-- matrix:end -->', 1)[0]
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if cells and re.match(r'^M\d+$', cells[0]):
            rows[cells[0]] = (cells[-1], line)
    return rows


class ReadmeMatrix(ConfinementCase):
    """Each row of the README's matrix through the real daemon: what the
    upstream saw (TLS or not, whose Authorization) and the audit action
    the row promises.  A row without a check here, or a check without a
    row, fails."""

    def setUp(self):
        super().setUp()
        self.rows = readme_matrix()

    def expect_audit(self, d, row, n):
        want = 'assert' if self.rows[row][0].startswith('`assert`') else \
            self.rows[row][0].strip('`')
        def requests():     # a CONNECT has a line of its own
            return [x for x in self.audit() if x['mode'] != 'connect']
        deadline = time.time() + 3      # written once the request completes
        while len(requests()) < n and time.time() < deadline:
            time.sleep(0.05)
        lines = requests()
        self.assertEqual(len(lines), n, row)
        for x in lines:
            self.assertEqual(x['action'], want, '%s: %r' % (row, x))
            self.assertEqual(x['task'], fingerprint(TASK) if want == 'assert' else None, x)

    def assertClientKey(self, req, ctx, tls=False):
        self.assertIsNotNone(req, 'upstream never saw ' + ctx)
        self.assertEqual(req.tls, tls, ctx)
        self.assertEqual(req.header_all('Authorization'), ['Bearer ' + SECRET], ctx)

    def row_M1(self, d):
        import test_connect as tc
        for target, host in (('https://api.openai.com/v1/responses', 'api.openai.com'),
                             ('https://chatgpt.com/backend-api/codex/responses/compact', 'chatgpt.com')):
            self.assertEqual(request(d.port, raw('POST', target, host, body=b'{}')).status, 200)
            self.assertOverTLS(self.got('POST ' + target), host, target)
        r = request(d.port, raw('POST', '/v1/responses/compact', '127.0.0.1', body=b'{}'))
        self.assertEqual(r.status, 200, r)
        self.assertOverTLS(self.got('POST /v1/responses/compact'), 'api.openai.com', 'gateway')
        c, resp = tc.open_tunnel(d.port, 'api.openai.com:443')
        with c:
            self.assertEqual(resp.status, 200, resp)
            tc.start_tls(c, tc.client_ctx(os.path.join(self.work, 'ca', 'ca.crt')), 'api.openai.com')
            c.send(raw('POST', '/v1/responses', 'api.openai.com', extra='X-I: icpt\r\n', body=b'{}'))
            self.assertEqual(c.read_response().status, 200)
        self.assertOverTLS(self.up.wait_request(lambda q: q.header('X-I') == 'icpt', timeout=3),
                           'api.openai.com', 'intercept')
        return 4

    def row_M2(self, d):
        for target, host in (('http://api.openai.com:80/v1/responses', 'api.openai.com'),
                             ('http://chatgpt.com/backend-api/codex/responses/compact', 'chatgpt.com')):
            self.assertEqual(request(d.port, raw('POST', target, host, body=b'{}')).status, 200)
            self.assertOverTLS(self.got('POST ' + target), host, target)
        r = request(d.port, raw('POST', '/plain/responses', '127.0.0.1', body=b'{}'))
        self.assertEqual(r.status, 200, r)
        self.assertOverTLS(self.got('POST /plain/responses'), 'api.openai.com', 'http gateway base')
        return 3

    def row_M3(self, d):
        d = self.daemon('--plaintext-credentials', 'refuse', '--ca-dir', os.path.join(self.work, 'ca'))
        target = 'http://api.openai.com/v1/responses'
        self.assertProxyError(request(d.port, raw('POST', target, 'api.openai.com', body=b'{}')),
                              403, 'tls_required', d)
        self.assertNothingFor('POST ' + target)
        return 1

    def row_M4(self, d):
        for target, host in (('https://api.openai.com/v1/responses', 'api.openai.com'),
                             ('http://chatgpt.com/backend-api/codex/responses', 'chatgpt.com')):
            r = request(d.port, raw('GET', target, host, extra=WS_HEADERS))
            self.assertEqual(r.status, 200, r)
            req = self.got('GET ' + target)
            self.assertOverTLS(req, host, 'WebSocket ' + target)
            self.assertEqual(req.header('Upgrade'), 'websocket')
        return 2

    def row_M5(self, d):
        for m, target, host in (('POST', 'https://api.openai.com/v1/responses', 'api.openai.com'),
                                ('post', 'http://api.openai.com/v1/responses', 'api.openai.com'),
                                ('PUT', '/backend-api/codex/responses', '127.0.0.1'),
                                ('POST', 'http://api.anthropic.com/v1/messages', 'api.anthropic.com')):
            r = request(d.port, raw(m, target, host, extra=WS_HEADERS))
            self.assertProxyError(r, 400, 'bad_request', d)
            self.assertNothingFor('%s %s' % (m, target))
        return 4

    def row_M6(self, d):
        n = 0
        for name, doc in (('notask', auth_doc(identity_record(SPEC_V2_B64, RUNTIME))),
                          ('badkey', auth_doc(identity_record(SPEC_V2_B64[:40], RUNTIME, task_id=TASK))),
                          ('absent', None)):
            auth = os.path.join(self.work, name + '.json')
            if doc is not None:
                write_auth(auth, doc)
            d = self.daemon(auth=auth)
            for m, target, host, extra in (
                    ('POST', 'https://api.openai.com/v1/responses', 'api.openai.com', ''),
                    ('POST', 'http://chatgpt.com/backend-api/codex/responses/compact', 'chatgpt.com', ''),
                    ('GET', 'http://api.openai.com/v1/responses', 'api.openai.com', WS_HEADERS)):
                r = request(d.port, raw(m, target, host, extra=extra, body=b'{}' if m == 'POST' else b''))
                self.assertEqual(r.status, 503, '%s %s: %r' % (name, target, r))
                self.assertNothingFor('%s %s' % (m, target))
            self.expect_audit(d, 'M6', 3)
            n += 3
        return 0

    def row_M7(self, d):
        for m, target in (('POST', 'https://api.openai.com/v1/responses/'),
                          ('post', 'http://api.openai.com/v1/responses')):
            r = request(d.port, raw(m, target, 'api.openai.com', body=b'{}'))
            self.assertProxyError(r, 400, 'noncanonical_route', d)
            self.assertNothingFor('%s %s' % (m, target))
        return 2

    def row_M8(self, d):
        for m, target, tls in (('GET', 'http://api.openai.com/v1/models', False),
                               ('GET', 'https://api.openai.com/v1/responses', True),
                               ('POST', 'http://chatgpt.com/backend-api/codex/other', False)):
            r = request(d.port, raw(m, target, target.split('/')[2], body=b'{}' if m == 'POST' else b''))
            self.assertEqual(r.status, 200, r)
            self.assertClientKey(self.got('%s %s' % (m, target)), target, tls)
        return 3

    def row_M9(self, d):
        for m, target in (('POST', 'http://api.anthropic.com/v1/messages'),
                          ('POST', 'http://api.anthropic.com/v1/responses')):
            r = request(d.port, raw(m, target, 'api.anthropic.com', body=b'{}'))
            self.assertEqual(r.status, 200, r)
            self.assertClientKey(self.got('%s %s' % (m, target)), target)
        return 2

    def test_every_row(self):
        checks = sorted(n[4:] for n in dir(self) if re.match(r'^row_M\d+$', n))
        self.assertEqual(sorted(self.rows), checks, 'README rows and checks must match')
        for row in sorted(self.rows, key=lambda r: int(r[1:])):
            with self.subTest(row=row):
                self.up.requests.clear()
                d = self.daemon('--ca-dir', os.path.join(self.work, 'ca'),
                                '--gateway', '/plain/=http://api.openai.com/v1/')
                n = getattr(self, 'row_' + row)(d)
                if n:
                    self.expect_audit(d, row, n)
                self.assertFalse([q for q in self.up.requests if q.header('Authorization') and
                                  q.header('Authorization').startswith('AgentAssertion')
                                  and not q.tls], 'an assertion on plaintext')
                self.assertFalse([q for q in self.up.requests if q.tls and
                                  q.header('Authorization') == 'Bearer ' + SECRET and
                                  q.target.split('?')[0].endswith(('/responses', '/responses/compact'))
                                  and q.method == 'POST'], 'the client key on a credentialed route')


# --------------------------------------------------------------------------
# 5. Who may ask for credentials
# --------------------------------------------------------------------------

class RemoteListen(ConfinementCase):
    """A listener beyond this host mints for whoever reaches it: that takes
    proxy_auth or an explicit allow_unauthenticated_remote.  Only check-config
    and a refused start are run: nothing binds a non-loopback address."""

    def sp(self, *args, config=None):
        cmd = [scopeproxy_bin()] + list(args)
        if config is not None:
            path = os.path.join(self.work, 'remote-%d.json' % len(os.listdir(self.work)))
            with open(path, 'w') as f:
                json.dump(config, f)
            cmd += ['--config', path]
        return run_cmd(cmd, env=clean_env(), timeout=15)

    def test_remote_listen_without_proxy_auth_is_refused(self):
        for args in (['--listen', '0.0.0.0:0', '--allow-remote-listen'],
                     ['--listen', '[::]:0', '--allow-remote-listen']):
            for cmd in (['check-config'], []):
                r = self.sp(*(cmd + args + ['--auth-file', self.auth]))
                self.assertEqual(r.returncode, 2, r)
                err = r.stderr.decode()
                self.assertIn('proxy_auth', err)
                self.assertIn('allow_unauthenticated_remote', err)

    def test_proxy_auth_or_explicit_opt_in_allows_it(self):
        r = self.sp('check-config', '--listen', '0.0.0.0:0', '--allow-remote-listen',
                    config={'proxy_auth': {'bearer': 'tok-remote-1'}})
        self.assertEqual(r.returncode, 0, r)
        self.assertNotIn(b'tok-remote-1', r.stdout)
        r = self.sp('check-config', '--listen', '0.0.0.0:0', '--allow-remote-listen',
                    '--allow-unauthenticated-remote')
        self.assertEqual(r.returncode, 0, r)
        self.assertTrue(json.loads(r.stdout)['allow_unauthenticated_remote'])
        r = self.sp('check-config', '--listen', '0.0.0.0:0',
                    config={'allow_remote_listen': True, 'allow_unauthenticated_remote': True})
        self.assertEqual(r.returncode, 0, r)

    def test_loopback_needs_nothing(self):
        r = self.sp('check-config', '--listen', '127.0.0.1:0')
        self.assertEqual(r.returncode, 0, r)
        self.assertFalse(json.loads(r.stdout)['allow_unauthenticated_remote'])


if __name__ == '__main__':
    main()
