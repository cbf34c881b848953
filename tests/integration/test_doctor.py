#!/usr/bin/python3
"""scopeproxy doctor: the preflight a new user runs before the first start.

Each check through the real binary, in a hermetic environment: one line
per check, every failure names what is wrong and how to fix it, the exit
status is 1 on any failure and 0 otherwise; --network checks DNS and TLS
to the credentialed providers' hosts the way the daemon would (--resolve,
--upstream-ca) against real loopback TLS servers.
"""

import json
import os
import shutil
import socket
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (ProxyTestCase, main, run_cmd, scopeproxy_bin, clean_env,  # noqa: E402
                     tls_material)
from agentid import SPEC_V2_B64, auth_doc, identity_record, write_auth  # noqa: E402

HOSTS = ('api.openai.com', 'chatgpt.com', 'chat.openai.com')


class Doctor(ProxyTestCase):

    def setUp(self):
        super().setUp()
        self.work = tempfile.mkdtemp(prefix='scopeproxy-doctor-')
        self.addCleanup(shutil.rmtree, self.work, True)
        self.auth = os.path.join(self.work, 'auth.json')
        write_auth(self.auth, auth_doc(identity_record(SPEC_V2_B64, 'agent-doc', task_id='t-doc')))
        self.ca = os.path.join(self.work, 'ca')
        r = run_cmd([scopeproxy_bin(), 'ca', 'export', '--ca-dir', self.ca], env=clean_env())
        self.assertEqual(r.returncode, 0, r)

    def doctor(self, *args, config=None):
        cmd = [scopeproxy_bin(), 'doctor', '--listen', '127.0.0.1:0', '--auth-file', self.auth,
               '--ca-dir', self.ca] + list(args)
        if config is not None:
            path = os.path.join(self.work, 'cfg-%d.json' % len(os.listdir(self.work)))
            with open(path, 'w') as f:
                json.dump(config, f)
            cmd += ['--config', path]
        r = run_cmd(cmd, env=clean_env(), timeout=30)
        lines = {}
        for line in r.stdout.decode().splitlines():
            if line.startswith('doctor:'):
                continue
            verdict, check, rest = line.split(None, 2)
            lines.setdefault(check, []).append((verdict, rest))
        return r, lines

    def test_all_good(self):
        r, lines = self.doctor()
        self.assertEqual(r.returncode, 0, r)
        for check in ('config', 'listen', 'auth-file', 'ca-dir', 'clock'):
            self.assertEqual(lines[check][0][0], 'ok', (check, r))
        self.assertEqual(lines['reach'][0][0], 'skip')
        self.assertIn(b'doctor: 0 failed', r.stdout)

    @unittest.skipUnless(os.geteuid() == 0, 'the user check is made only as root')
    def test_user_the_network_process_cannot_become(self):
        r, lines = self.doctor()
        self.assertEqual(lines['user'][0][0], 'ok', r)
        self.assertIn("'nobody'", lines['user'][0][1])
        for user, want in (('no-such-user-xyz', 'create it'), ('root', 'is root')):
            r, lines = self.doctor('--user', user)
            self.assertEqual(r.returncode, 1, r)
            verdict, text = lines['user'][0]
            self.assertEqual(verdict, 'FAIL')
            self.assertIn(want, text)
            self.assertIn('--user NAME', text)

    def test_auth_file_that_the_daemon_would_refuse(self):
        os.chmod(self.auth, 0o644)
        r, lines = self.doctor()
        self.assertEqual(r.returncode, 1, r)
        verdict, text = lines['auth-file'][0]
        self.assertEqual(verdict, 'FAIL')
        self.assertIn(self.auth, text)
        self.assertIn('chmod 600', text)
        # check-config alone does not look at the file: doctor is the preflight
        self.assertEqual(run_cmd([scopeproxy_bin(), 'check-config', '--auth-file', self.auth],
                                 env=clean_env()).returncode, 0)

    def test_missing_auth_file(self):
        os.unlink(self.auth)
        r, lines = self.doctor()
        self.assertEqual(r.returncode, 1)
        self.assertEqual(lines['auth-file'][0][0], 'FAIL')
        self.assertIn('--auth-file', lines['auth-file'][0][1])

    def test_no_run_task(self):
        write_auth(self.auth, auth_doc(identity_record(SPEC_V2_B64, 'agent-doc')))
        r, lines = self.doctor()
        self.assertEqual(r.returncode, 1)
        verdict, text = lines['auth-file'][0]
        self.assertEqual(verdict, 'FAIL')
        self.assertIn('task_id', text)
        self.assertIn('task_registration.base_url', text)
        r, lines = self.doctor(config={'task_registration': {
            'base_url': 'https://chatgpt.com/backend-api'}})
        self.assertEqual(r.returncode, 0, r)
        self.assertIn('registered at start', lines['auth-file'][0][1])

    def test_port_in_use(self):
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        s.listen(1)
        self.addCleanup(s.close)
        port = s.getsockname()[1]
        r, lines = self.doctor('--listen', '127.0.0.1:%d' % port)
        self.assertEqual(r.returncode, 1, r)
        verdict, text = lines['listen'][0]
        self.assertEqual(verdict, 'FAIL')
        self.assertIn(str(port), text)
        self.assertIn('--listen', text)

    def test_ca_dir_problems(self):
        os.chmod(self.ca, 0o777)
        r, lines = self.doctor()
        self.assertEqual(r.returncode, 1, r)
        self.assertEqual(lines['ca-dir'][0][0], 'FAIL')
        self.assertIn('chmod go-w', lines['ca-dir'][0][1])
        os.chmod(self.ca, 0o700)
        with open(os.path.join(self.ca, 'ca.crt'), 'w') as f:
            f.write('not a certificate\n')
        r, lines = self.doctor()
        self.assertEqual(r.returncode, 1, r)
        self.assertIn('do not match', lines['ca-dir'][0][1])
        r, lines = self.doctor('--ca-dir', os.path.join(self.work, 'fresh'))
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(lines['ca-dir'][0][0], 'warn')
        self.assertIn('ca env', lines['ca-dir'][0][1])

    def test_network_reach_verified_like_the_daemon(self):
        tls = tls_material()
        up = self.start_upstream(tls=True)
        resolve = []
        for h in HOSTS:
            resolve += ['--resolve', '%s:443:127.0.0.1:%d' % (h, up.port)]
        r, lines = self.doctor('--network', '--upstream-ca', tls.ca, *resolve)
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(sorted(t for v, t in lines['reach']),
                         sorted('%s:443: TLS verified' % h for h in HOSTS))
        self.assertEqual(up.requests, [], 'doctor sends nothing')
        # without the test CA the same servers are not trusted
        r, lines = self.doctor('--network', *resolve)
        self.assertEqual(r.returncode, 1, r)
        self.assertTrue(all(v == 'FAIL' and '--upstream-ca' in t for v, t in lines['reach']), lines)

    def test_network_unreachable(self):
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
        s.close()
        resolve = []
        for h in HOSTS:
            resolve += ['--resolve', '%s:443:127.0.0.1:%d' % (h, port)]
        r, lines = self.doctor('--network', '--connect-timeout', '2', *resolve)
        self.assertEqual(r.returncode, 1, r)
        self.assertTrue(all(v == 'FAIL' and '--resolve' in t for v, t in lines['reach']), lines)

    def test_network_flag_is_for_doctor_only(self):
        r = run_cmd([scopeproxy_bin(), 'check-config', '--network'], env=clean_env())
        self.assertEqual(r.returncode, 2, r)
        self.assertIn(b'doctor', r.stderr)


class Version(ProxyTestCase):

    def test_version_names_the_build_and_the_libraries(self):
        r = run_cmd([scopeproxy_bin(), '--version'], env=clean_env())
        self.assertEqual(r.returncode, 0, r)
        lines = r.stdout.decode().splitlines()
        self.assertRegex(lines[0], r'^scopeproxy \d+\.\d+\.\d+ \(commit ([0-9a-f]{12}|unknown)\)$')
        for lib in ('libmicrohttpd ', 'libcurl ', 'OpenSSL ', 'jansson ', 'libsodium '):
            self.assertTrue(any(l.startswith(lib) and len(l) > len(lib) for l in lines),
                            '%s missing from %r' % (lib, lines))


class HarnessSnippet(ProxyTestCase):
    """README's "For test harnesses" snippet, run as written in a fresh
    shell, against a TLS stand-in on 127.0.0.1:9443 (the port it names)."""

    def snippet(self):
        readme = os.path.join(os.environ.get('SCOPEPROXY_SRCDIR', '.'), 'README.md')
        with open(readme) as f:
            text = f.read()
        body = text.split('## For test harnesses', 1)[1].split('\n\n', 2)[1]
        lines = body.splitlines()
        self.assertTrue(all(l.startswith('    ') for l in lines), body)
        return '\n'.join(l[4:] for l in lines) + '\n'

    def test_snippet_runs_as_written(self):
        import subprocess
        from agentid import SPEC_SEED, fingerprint, parse_assertion, public_key
        script = self.snippet()
        try:
            up = self.start_upstream(tls=True, port=9443)
        except OSError as e:
            self.skipTest('127.0.0.1:9443 is taken here (%s)' % e)
        work = tempfile.mkdtemp(prefix='scopeproxy-snippet-')
        self.addCleanup(shutil.rmtree, work, True)
        write_auth(os.path.join(work, 'auth.json'),
                   auth_doc(identity_record(SPEC_V2_B64, 'agent-snip', task_id='task-snip')))
        shutil.copy(tls_material().ca, os.path.join(work, 'test-ca.pem'))
        tmp = os.path.join(work, 'tmp')
        os.mkdir(tmp)
        env = clean_env({'PATH': os.path.dirname(scopeproxy_bin()) + ':' + os.environ['PATH'],
                         'TMPDIR': tmp})
        p = subprocess.run(['bash', '-e', '-c', script], cwd=work, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(p.returncode, 0, p)
        line = json.loads(p.stdout.decode().strip().splitlines()[-1])
        self.assertEqual(line['action'], 'assert')
        self.assertEqual(line['task'], fingerprint('task-snip'))
        req = up.wait_request(timeout=1)
        self.assertIsNotNone(req)
        self.assertTrue(req.tls)
        parse_assertion(req.header('Authorization'), 'agent-snip', 'task-snip', public_key(SPEC_SEED))
        # the server-info file went away with the proxy (mktemp -d ran in TMPDIR)
        runs = [os.path.join(tmp, d) for d in os.listdir(tmp)]
        self.assertEqual(len(runs), 1, runs)
        self.assertTrue(os.path.exists(os.path.join(runs[0], 'audit.jsonl')))
        self.assertFalse(os.path.exists(os.path.join(runs[0], 'sp.json')),
                         'server-info left behind: a later run would read a dead port')


class NoTaskWarning(ProxyTestCase):
    """A missing run task costs every credentialed request a 503: the
    operator hears it at warn, with the fix, when it begins."""

    def test_warned_at_start_and_when_it_begins_again(self):
        from harness import Daemon
        work = tempfile.mkdtemp(prefix='scopeproxy-notask-')
        self.addCleanup(shutil.rmtree, work, True)
        auth = os.path.join(work, 'auth.json')
        notask = auth_doc(identity_record(SPEC_V2_B64, 'agent-nt'))
        write_auth(auth, notask)
        d = self.start_daemon('--auth-file', auth, '--ca-dir', os.path.join(work, 'ca'))

        def warns():
            return [l for l in d.logs() if l.get('level') == 'warn' and 'run task' in l.get('msg', '')]
        self.assertTrue(d.wait_log(lambda l: l.get('level') == 'warn' and 'run task' in l.get('msg', '')))
        w = warns()[0]['msg']
        self.assertIn(auth, w)
        self.assertIn('"task_id"', w)
        self.assertIn('task_registration.base_url', w)
        self.assertIn('agent_task_missing', w)
        # still without a task: said once, not on every reload
        write_auth(auth, notask, tmp_tag='a')
        d.proc.send_signal(__import__('signal').SIGHUP)
        self.assertTrue(d.wait_log(lambda l: 'no run task' in l.get('msg', '')))
        self.assertEqual(len(warns()), 1)
        # a task, then none again: warned again
        write_auth(auth, auth_doc(identity_record(SPEC_V2_B64, 'agent-nt', task_id='t-nt')), tmp_tag='b')
        self.assertTrue(d.wait_log(lambda l: 'run task present' in l.get('msg', '')))
        write_auth(auth, notask, tmp_tag='c')
        self.assertTrue(d.wait_log(lambda l: len(warns()) == 2, timeout=5))


if __name__ == '__main__':
    main()
