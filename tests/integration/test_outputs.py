#!/usr/bin/python3
"""What the agent (and whoever reaches the listener) can read from the proxy.

Through the real daemon, real loopback upstreams (plain, TLS, a closed
port) and a real registration endpoint:

  * Fail-closed 503 bodies go to the agent: they say what is wrong in
    general terms and never carry the auth file's path, its mode or owner,
    PKCS#8 parse detail or the registration endpoint's address.  The full
    detail is in the proxy's log and, but for addresses, in /readyz.
  * /metrics needs proxy_auth when it is set (Proxy-Authorization or
    Authorization, the same Basic/Bearer value); /healthz and /readyz stay
    open; only GET and HEAD.
  * The audit line (and scopeproxy_requests_total) says "assert" with a
    task exactly when the credential left the proxy: a request refused for
    want of a run task, or whose upstream was never reached (connection
    refused, TLS failure), is "reject" with no task; one reset after the
    request was written is "assert".
"""

import os
import re
import shutil
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (audit_records, SECRET, CloseBeforeAnswer, Fixed, GreetingListener, HTTPClient,  # noqa: E402
                     ProxyTestCase, free_port, main, request, tls_material)
from agentid import (SPEC_SEED, SPEC_V2_B64, auth_doc, start_audited_daemon,  # noqa: E402
                     fingerprint, identity_record, key_secrets, write_auth)

TASK = 'task-outputs-7c1e'
RUNTIME = 'agent-123'
REG_HOST = 'reg.api.openai.com'
NOBODY = 65534
WS_HEADERS = ('Upgrade: websocket\r\nConnection: Upgrade\r\n'
              'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n')


def raw(method, target, host, extra='', body=b''):
    head = ('%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nX-Tag: %s %s\r\n%s'
            % (method, target, host, SECRET, method, target, extra))
    if body or method in ('POST', 'PUT', 'PATCH'):
        head += 'Content-Length: %d\r\n' % len(body)
    return head.encode('latin-1') + b'\r\n' + body


def local(port, path, method='GET', headers=(), client=None):
    data = ('%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n'
            % (method, path, ''.join('%s: %s\r\n' % h for h in headers))).encode()
    if client is not None:
        client.send(data)
        return client.read_response(method)
    return request(port, data, method=method)


def requests_total(text, **labels):
    """Sum of scopeproxy_requests_total over the series matching labels."""
    n = 0
    for line in text.splitlines():
        m = re.match(r'^scopeproxy_requests_total\{([^}]*)\} (\d+)$', line)
        if not m:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(got.get(k) == v for k, v in labels.items()):
            n += int(m.group(2))
    return n


class OutputsCase(ProxyTestCase):

    def setUp(self):
        super().setUp()
        self.work = tempfile.mkdtemp(prefix='scopeproxy-outputs-')
        os.chmod(self.work, 0o755)
        self.addCleanup(shutil.rmtree, self.work, True)
        self.tls = tls_material()
        self.forbidden = {SECRET, 'AgentAssertion', TASK} | key_secrets(SPEC_SEED)
        self.auth = os.path.join(self.work, 'agent-auth-q7.json')
        write_auth(self.auth, auth_doc(identity_record(SPEC_V2_B64, RUNTIME, task_id=TASK)))

    def daemon(self, *extra, auth=None, config=None, resolve=()):
        route = []
        for host, port in resolve:
            route += ['--resolve', '%s:127.0.0.1:%d' % (host, port)]
        return start_audited_daemon(self, route, extra, auth, config)

    def audit(self, d):
        return audit_records(d.audit_path)

    def last_audit(self, d, n=1):
        deadline = time.time() + 3
        while True:
            lines = self.audit(d)
            if len(lines) >= n or time.time() > deadline:
                return lines[-1] if lines else None
            time.sleep(0.05)

    def metrics(self, d):
        r = local(d.port, '/metrics')
        self.assertEqual(r.status, 200, r)
        return r.body.decode()


# --------------------------------------------------------------------------
# 1. Fail-closed 503 bodies
# --------------------------------------------------------------------------

class ErrorBodies(OutputsCase):
    """Each fail-closed state: the body in general terms, the detail in the
    log (and /readyz for identity states)."""

    CRED = ('POST', 'https://api.openai.com/v1/responses', 'api.openai.com')

    def answer(self, d, code):
        r = request(d.port, raw(*self.CRED, body=b'{}'))
        err = self.assertProxyError(r, 503, code, d)
        return r.body.decode(), err['message']

    def assertGeneral(self, body, leaks, ctx):
        for s in leaks:
            self.assertNotIn(s, body, '%s: the agent must not read %r in %s' % (ctx, s, body))

    def check_identity_state(self, auth, code, detail, leaks):
        d = self.daemon(auth=auth)
        body, msg = self.answer(d, code)
        leaks = set(leaks) | {self.work, os.path.basename(auth)}
        self.assertGeneral(body, leaks, code)
        self.assertIn('agent identity', msg)
        # WebSocket handshake and gateway mode get the same answer.
        r = request(d.port, raw('GET', 'https://api.openai.com/v1/responses', 'api.openai.com',
                                extra=WS_HEADERS))
        self.assertProxyError(r, 503, code, d)
        self.assertGeneral(r.body.decode(), leaks, code + ' (WebSocket)')
        r = request(d.port, raw('POST', '/v1/responses', '127.0.0.1', body=b'{}'))
        self.assertProxyError(r, 503, code, d)
        self.assertGeneral(r.body.decode(), leaks, code + ' (gateway)')
        self.last_audit(d, 3)
        # The operator's view has the detail.
        rz = local(d.port, '/readyz')
        self.assertEqual(rz.status, 503, rz)
        self.assertIn(detail, rz.json().get('detail', ''), rz)
        self.assertIn(auth, rz.json().get('detail', ''), rz)
        d.stop()
        self.assertIn(detail, d.stderr_text(), 'the log must carry the detail')
        self.assertTrue(all(x['action'] == 'reject' and x['task'] is None for x in self.audit(d)))
        return msg

    def test_missing_auth_file(self):
        auth = os.path.join(self.work, 'absent-auth-k2.json')
        msg = self.check_identity_state(auth, 'agent_identity_missing', 'No such file or directory',
                                        ['No such file'])
        self.assertIn('missing', msg)

    def test_group_readable_auth_file(self):
        os.chmod(self.auth, 0o644)
        self.check_identity_state(self.auth, 'agent_identity_invalid', 'mode 0644',
                                  ['0644', '644', 'mode', 'chmod'])

    def test_auth_file_of_another_owner(self):
        if os.geteuid() != 0:
            self.skipTest('needs root to give the file away')
        os.chown(self.auth, NOBODY, NOBODY)
        self.check_identity_state(self.auth, 'agent_identity_invalid', 'owned by uid %d' % NOBODY,
                                  ['uid', str(NOBODY), 'owned'])

    def test_bad_private_key(self):
        write_auth(self.auth, auth_doc(identity_record(SPEC_V2_B64[:60], RUNTIME, task_id=TASK)))
        self.check_identity_state(self.auth, 'agent_identity_invalid', 'PKCS#8',
                                  ['PKCS', 'offset', 'SEQUENCE', 'agent_private_key', 'bytes'])

    def test_malformed_json(self):
        with open(self.auth, 'w') as f:
            f.write('{"agent_identity": {')
        self.check_identity_state(self.auth, 'agent_identity_invalid', 'invalid JSON',
                                  ['line', 'column'])

    def test_no_run_task(self):
        write_auth(self.auth, auth_doc(identity_record(SPEC_V2_B64, RUNTIME)))
        d = self.daemon()
        body, msg = self.answer(d, 'agent_task_missing')
        self.assertEqual(msg, 'agent identity run task is not initialized')
        self.assertGeneral(body, [self.work], 'no task')

    def registration(self, reg_port, answer=None):
        """A daemon without a run task whose registration goes to
        REG_HOST:443, resolved to reg_port."""
        write_auth(self.auth, auth_doc(identity_record(SPEC_V2_B64, RUNTIME)))
        cfg = {'task_registration': {'base_url': 'https://%s/backend-api' % REG_HOST,
                                     'attempts': 1, 'cooldown': 60, 'wait': 0.5,
                                     'timeout': 3}}
        d = self.daemon(config=cfg, resolve=[('%s:443' % REG_HOST, reg_port)])
        deadline = time.time() + 8
        while time.time() < deadline:
            rz = local(d.port, '/readyz')
            if rz.json().get('status') == 'registration_failed':
                break
            time.sleep(0.1)
        self.assertEqual(rz.json().get('status'), 'registration_failed', '%r\n%s' % (rz, d.tail()))
        return d, rz

    def check_registration(self, d, rz, leaks, log_detail):
        leaks = set(leaks) | {REG_HOST, 'backend-api', '127.0.0.1'}
        self.assertGeneral(rz.body.decode(), leaks, '/readyz')
        self.assertTrue(rz.json().get('reason'), rz)
        before = len(self.audit(d))
        body, msg = self.answer(d, 'agent_task_missing')
        self.assertGeneral(body, leaks, 'registration 503')
        self.assertIn('registration failed', msg)
        self.assertIn(rz.json()['retry_at'], msg)
        line = self.last_audit(d, before + 1)
        self.assertEqual((line['action'], line['task'], line['status']), ('reject', None, 503), line)
        d.stop()
        self.assertIn(log_detail, d.stderr_text(), 'the log must carry the detail')
        return msg

    def test_registration_unreachable(self):
        port = free_port()
        d, rz = self.registration(port)
        msg = self.check_registration(d, rz, [str(port)], 'port %d' % port)
        self.assertIn('connect', msg.lower())

    def test_registration_failing(self):
        reg = self.start_upstream(tls=True)
        reg.route('/', Fixed(500, body=b'{"error":"db-7.corp.internal:5432 is down"}'))
        d, rz = self.registration(reg.port)
        self.assertIn('500', rz.json()['reason'])
        msg = self.check_registration(d, rz, [str(reg.port), 'db-7', 'corp.internal'], 'db-7.corp.internal')
        self.assertIn('500', msg)


# --------------------------------------------------------------------------
# 2. The proxy's own endpoints
# --------------------------------------------------------------------------

class LocalEndpoints(OutputsCase):

    def test_metrics_open_without_proxy_auth(self):
        d = self.daemon()
        self.assertIn('scopeproxy_requests_total', self.metrics(d))

    def check_guarded(self, d, good, bad):
        # No credential, a wrong one, another scheme: 401, nothing of the page.
        for headers in [()] + [(h,) for h in bad]:
            for method in ('GET', 'HEAD', 'POST'):
                r = local(d.port, '/metrics', method, headers)
                self.assertEqual(r.status, 401, '%s %r: %r' % (method, headers, r))
                self.assertEqual(r.header('X-Scopeproxy-Error'), 'unauthorized', r)
                self.assertIsNotNone(r.header('WWW-Authenticate'), r)
                self.assertNotIn(b'scopeproxy_', r.body, r)
        # The right value, in either header.
        for h in good:
            r = local(d.port, '/metrics', 'GET', [h])
            self.assertEqual(r.status, 200, '%r: %r' % (h, r))
            self.assertIn(b'scopeproxy_requests_total', r.body)
            r = local(d.port, '/metrics', 'HEAD', [h])
            self.assertEqual(r.status, 200, r)
            # Other methods are refused even with it.
            for method in ('POST', 'PUT', 'DELETE'):
                r = local(d.port, '/metrics', method, [h])
                self.assertProxyError(r, 405, 'method_not_allowed', d)
        # A later head on a kept-alive connection is checked as well.
        with HTTPClient(d.port) as c:
            self.assertEqual(local(d.port, '/metrics', 'GET', [good[0]], client=c).status, 200)
            self.assertEqual(local(d.port, '/metrics', 'GET', (), client=c).status, 401)
        # Liveness and readiness stay open.
        self.assertEqual(local(d.port, '/healthz').status, 200)
        self.assertEqual(local(d.port, '/readyz').status, 200)

    def test_metrics_need_bearer_proxy_auth(self):
        tok = 'tok-metrics-5Qx'
        self.forbidden.add(tok)
        d = self.daemon(config={'proxy_auth': {'bearer': tok}})
        self.check_guarded(
            d, [('Proxy-Authorization', 'Bearer ' + tok), ('Authorization', 'Bearer ' + tok),
                ('Authorization', 'bearer ' + tok)],
            [('Proxy-Authorization', 'Bearer ' + tok + 'x'), ('Authorization', 'Bearer ' + tok[:-1]),
             ('Authorization', 'Basic ' + tok), ('Authorization', tok), ('X-Token', tok)])

    def test_metrics_need_basic_proxy_auth(self):
        import base64
        cred = base64.b64encode(b'scraper:pw-metrics-9').decode()
        self.forbidden |= {'pw-metrics-9', cred}
        d = self.daemon(config={'proxy_auth': {'basic': 'scraper:pw-metrics-9'}})
        wrong = base64.b64encode(b'scraper:pw-metrics-8').decode()
        self.check_guarded(
            d, [('Authorization', 'Basic ' + cred), ('Proxy-Authorization', 'Basic ' + cred)],
            [('Authorization', 'Basic ' + wrong), ('Authorization', 'Bearer ' + cred),
             ('Proxy-Authorization', 'Basic ' + wrong)])

    def test_healthz_readyz_answer_get_and_head_only(self):
        d = self.daemon()
        for path in ('/healthz', '/readyz', '/metrics'):
            self.assertEqual(local(d.port, path, 'HEAD').status, 200, path)
            r = local(d.port, path, 'POST', [('Content-Length', '0')])
            self.assertProxyError(r, 405, 'method_not_allowed', d)
            self.assertEqual(r.header('Allow'), 'GET, HEAD', r)


# --------------------------------------------------------------------------
# 3. "assert" means the credential left the proxy
# --------------------------------------------------------------------------

class AuditSent(OutputsCase):
    TARGET = 'https://api.openai.com/v1/responses'

    def send(self, d, extra='', method='POST'):
        return request(d.port, raw(method, self.TARGET, 'api.openai.com', extra=extra,
                                   body=b'{}' if method == 'POST' else b''))

    def check_nothing_sent(self, d, code, up=None, extra='', method='POST'):
        before = len(self.audit(d))
        r = self.send(d, extra, method)
        self.assertProxyError(r, 502, code, d)
        line = self.last_audit(d, before + 1)
        self.assertEqual((line['action'], line['task'], line['status'], line['error']),
                         ('reject', None, 502, code), line)
        if up is not None:
            time.sleep(0.2)
            self.assertEqual(up.requests, [], 'the upstream must have read no request')
        text = self.metrics(d)
        self.assertEqual(requests_total(text, provider='openai', action='assert'), 0, text)
        self.assertEqual(requests_total(text, provider='openai', action='reject', status='5xx'), 1, text)

    def test_connection_refused(self):
        # One worker: the failing request reuses the pooled handle of one
        # that was sent, whose request size must not carry over.
        up = self.start_upstream(tls=True)
        d = self.daemon('--threads', '1', resolve=[('api.openai.com:443', free_port()),
                                                   ('chatgpt.com:443', up.port)])
        r = request(d.port, raw('POST', 'https://chatgpt.com/backend-api/codex/responses',
                                'chatgpt.com', body=b'{}'))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.last_audit(d, 1)['action'], 'assert')
        self.check_nothing_sent(d, 'upstream_unreachable')

    def test_websocket_connection_refused(self):
        d = self.daemon(resolve=[('api.openai.com:443', free_port())])
        self.check_nothing_sent(d, 'upstream_unreachable', extra=WS_HEADERS, method='GET')

    def test_tls_failure(self):
        # A plain-HTTP server where TLS is expected: the handshake fails.
        up = GreetingListener()
        self.addCleanup(up.close)
        d = self.daemon(resolve=[('api.openai.com:443', up.port)])
        self.check_nothing_sent(d, 'upstream_tls_error')

    def test_untrusted_certificate(self):
        up = self.start_upstream(tls=True)
        d = self.start_daemon('--auth-file', self.auth, '--audit-log',
                              os.path.join(self.work, 'audit-untrusted.jsonl'),
                              '--resolve', 'api.openai.com:443:127.0.0.1:%d' % up.port)
        d.audit_path = os.path.join(self.work, 'audit-untrusted.jsonl')
        self.check_nothing_sent(d, 'upstream_tls_error', up)

    def test_reset_after_the_request_was_sent(self):
        up = self.start_upstream(tls=True)
        up.route('/v1/responses', CloseBeforeAnswer(reset=True))
        d = self.daemon(resolve=[('api.openai.com:443', up.port)])
        r = self.send(d)
        self.assertProxyError(r, 502, 'upstream_unreachable', d)
        got = up.wait_request(timeout=3)
        self.assertIsNotNone(got, 'the upstream read the request')
        self.assertTrue(got.header('Authorization').startswith('AgentAssertion '))
        line = self.last_audit(d)
        self.assertEqual((line['action'], line['task'], line['status']),
                         ('assert', fingerprint(TASK), 502), line)
        text = self.metrics(d)
        self.assertEqual(requests_total(text, provider='openai', action='assert', status='5xx'), 1, text)

    def test_answered(self):
        up = self.start_upstream(tls=True)
        d = self.daemon(resolve=[('api.openai.com:443', up.port)])
        self.assertEqual(self.send(d).status, 200)
        line = self.last_audit(d)
        self.assertEqual((line['action'], line['task']), ('assert', fingerprint(TASK)), line)

    def test_registration_waited_out(self):
        """A request parked for a registration that does not end in time."""
        write_auth(self.auth, auth_doc(identity_record(SPEC_V2_B64, RUNTIME)))
        reg = self.start_upstream(tls=True)
        reg.route('/', Fixed(200, body=b'{"task_id":"task-late-1"}', delay=3))
        self.forbidden.add('task-late-1')
        cfg = {'task_registration': {'base_url': 'https://%s/backend-api' % REG_HOST,
                                     'attempts': 1, 'wait': 0.5, 'timeout': 5}}
        d = self.daemon(config=cfg, resolve=[('%s:443' % REG_HOST, reg.port)])
        r = self.send(d)
        err = self.assertProxyError(r, 503, 'agent_task_missing', d)
        self.assertIn('in progress', err['message'])
        line = self.last_audit(d)
        self.assertEqual((line['action'], line['task']), ('reject', None), line)
        text = self.metrics(d)
        self.assertEqual(requests_total(text, provider='openai', action='assert'), 0, text)


if __name__ == '__main__':
    main()
