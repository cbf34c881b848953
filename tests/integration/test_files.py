#!/usr/bin/python3
"""Files and outputs that cannot be turned against the daemon.

The real daemon, started as the test's user (root in CI), with an
attacker's planted links and shared directories:

  * --server-info and --pid-file are written through a random temp name
    created exclusively in the target directory: a link planted at the old
    guessable name (PATH.tmp.PID) or at PATH itself never makes the daemon
    write through it.
  * The audit log is opened without following a link, and must be a
    regular file.
  * The CA directory (and every parent) must not be writable by group or
    others (a sticky directory such as /tmp is fine as a parent) and must be
    owned by the daemon's user; ca.key too.  The auth file must be owned by
    the daemon's user or root.  Every refusal names the path and the fix.
  * A configuration syntax error never quotes the file's text (it may hold
    a proxy_auth secret), at start or on SIGHUP; check-config redacts the
    userinfo of task_registration.base_url.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (ProxyTestCase, main, run_cmd, scopeproxy_bin,  # noqa: E402
                     clean_env, hermetic_env)
from agentid import SPEC_V2_B64, auth_doc, identity_record, write_auth  # noqa: E402

VICTIM = b'precious contents\n'
NOBODY = 65534


class FilesCase(ProxyTestCase):

    def setUp(self):
        super().setUp()
        self.work = tempfile.mkdtemp(prefix='scopeproxy-files-')
        os.chmod(self.work, 0o700)
        self.addCleanup(shutil.rmtree, self.work, True)
        self.victim = self.path('victim')
        with open(self.victim, 'wb') as f:
            f.write(VICTIM)
        self.auth = self.path('auth.json')
        write_auth(self.auth, auth_doc(identity_record(SPEC_V2_B64, 'agent-123', task_id='t-1')))
        self.ca = self.path('ca')

    def path(self, *names):
        return os.path.join(self.work, *names)

    def victim_intact(self):
        with open(self.victim, 'rb') as f:
            return f.read() == VICTIM

    def spawn(self, *args, delay=0.4):
        """Start the daemon through a shell that waits, so its pid (the
        shell's, kept by exec) is known before the daemon runs."""
        cmd = [scopeproxy_bin(), '--listen', '127.0.0.1:0', '--auth-file', self.auth,
               '--ca-dir', self.ca] + list(args)
        p = subprocess.Popen(['/bin/sh', '-c', 'sleep %s; exec "$@"' % delay, 'sh'] + cmd,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=clean_env())
        self.addCleanup(self._reap, p)
        return p

    def _reap(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.communicate(timeout=10)

    def wait_file(self, path, timeout=10):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if os.path.exists(path) and not os.path.islink(path):
                return True
            time.sleep(0.05)
        return False

    def stop(self, p):
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=15)
        return p.returncode, err.decode('utf-8', 'replace')

    def start_fails(self, *args, env=None):
        r = run_cmd([scopeproxy_bin(), '--listen', '127.0.0.1:0', '--auth-file', self.auth,
                     '--ca-dir', self.ca] + list(args), env=env or clean_env(), timeout=15)
        return r.returncode, r.stderr.decode('utf-8', 'replace')


class PlantedLinks(FilesCase):

    def test_guessable_temp_names_are_not_followed(self):
        info, pidf = self.path('server.json'), self.path('scopeproxy.pid')
        p = self.spawn('--server-info', info, '--pid-file', pidf)
        for target in (info, pidf):
            os.symlink(self.victim, '%s.tmp.%d' % (target, p.pid))
        self.assertTrue(self.wait_file(info), 'server-info never appeared')
        self.assertTrue(self.victim_intact(), 'the daemon wrote through a planted link')
        with open(info) as f:
            self.assertEqual(json.load(f)['pid'], p.pid)
        with open(pidf) as f:
            self.assertEqual(int(f.read()), p.pid)
        rc, err = self.stop(p)
        self.assertEqual(rc, 0, err)
        self.assertTrue(self.victim_intact())
        leftovers = [n for n in os.listdir(self.work) if '.tmp' in n and not os.path.islink(self.path(n))]
        self.assertEqual(leftovers, [], 'temp files left behind')

    def test_link_at_the_path_itself_is_replaced_not_followed(self):
        info, pidf = self.path('server.json'), self.path('scopeproxy.pid')
        os.symlink(self.victim, info)
        os.symlink(self.victim, pidf)
        p = self.spawn('--server-info', info, '--pid-file', pidf, delay=0)
        self.assertTrue(self.wait_file(info), 'server-info never replaced the link')
        self.assertTrue(self.victim_intact())
        self.assertFalse(os.path.islink(pidf))
        rc, err = self.stop(p)
        self.assertEqual(rc, 0, err)
        self.assertTrue(self.victim_intact())

    def test_ca_env_bundle_is_not_written_through_links(self):
        os.makedirs(self.ca, mode=0o700)
        bundle = os.path.join(self.ca, 'bundle.pem')
        os.symlink(self.victim, bundle)
        p = subprocess.Popen(['/bin/sh', '-c', 'sleep 0.4; exec "$@"', 'sh', scopeproxy_bin(),
                              'ca', 'env', '--ca-dir', self.ca],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
        os.symlink(self.victim, '%s.tmp.%d' % (bundle, p.pid))
        out, err = p.communicate(timeout=20)
        self.assertEqual(p.returncode, 0, err)
        self.assertTrue(self.victim_intact(), 'ca env wrote through a planted link')
        self.assertFalse(os.path.islink(bundle))
        with open(bundle) as f:
            self.assertIn('BEGIN CERTIFICATE', f.read())

    def test_audit_log_link_is_refused(self):
        audit = self.path('audit.jsonl')
        os.symlink(self.victim, audit)
        rc, err = self.start_fails('--audit-log', audit)
        self.assertEqual(rc, 1, err)
        self.assertIn(audit, err)
        self.assertIn('symbolic link', err)
        self.assertTrue(self.victim_intact())

    def test_audit_log_must_be_a_regular_file(self):
        audit = self.path('audit.fifo')
        os.mkfifo(audit)
        rc, err = self.start_fails('--audit-log', audit)
        self.assertEqual(rc, 1, err)
        self.assertIn(audit, err)
        self.assertIn('regular file', err)
        # a device opens without blocking: only the fstat check refuses it
        rc, err = self.start_fails('--audit-log', '/dev/null')
        self.assertEqual(rc, 1, err)
        self.assertIn('/dev/null', err)
        self.assertIn('regular file', err)


class Ownership(FilesCase):

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest('needs root to give files to another user')

    def test_group_or_other_writable_ca_dir_is_refused(self):
        os.makedirs(self.ca)
        for mode in (0o770, 0o707, 0o777):
            os.chmod(self.ca, mode)
            rc, err = self.start_fails()
            self.assertEqual(rc, 1, err)
            self.assertIn(self.ca, err)
            self.assertIn('chmod', err)
            self.assertFalse(os.path.exists(os.path.join(self.ca, 'ca.key')))

    def test_writable_parent_is_refused_but_sticky_tmp_is_fine(self):
        parent = self.path('shared')
        os.makedirs(parent)
        os.chmod(parent, 0o777)
        self.ca = os.path.join(parent, 'ca')
        rc, err = self.start_fails()
        self.assertEqual(rc, 1, err)
        self.assertIn(parent, err)
        os.chmod(parent, 0o1777)         # sticky, like /tmp: fine
        p = self.spawn('--server-info', self.path('info.json'), delay=0)
        self.assertTrue(self.wait_file(self.path('info.json')), p.stderr.peek() if hasattr(p.stderr, 'peek') else '')
        self.assertEqual(self.stop(p)[0], 0)

    def test_ca_dir_owned_by_another_user_is_refused(self):
        os.makedirs(self.ca, mode=0o700)
        os.chown(self.ca, NOBODY, NOBODY)
        rc, err = self.start_fails()
        self.assertEqual(rc, 1, err)
        self.assertIn(self.ca, err)
        self.assertIn('owned by', err)

    def test_planted_ca_key_of_another_user_is_refused(self):
        # a working CA first, then its key handed to another user
        p = self.spawn('--server-info', self.path('info.json'), delay=0)
        self.assertTrue(self.wait_file(self.path('info.json')))
        self.assertEqual(self.stop(p)[0], 0)
        key = os.path.join(self.ca, 'ca.key')
        os.chown(key, NOBODY, NOBODY)
        rc, err = self.start_fails()
        self.assertEqual(rc, 1, err)
        self.assertIn(key, err)
        self.assertIn('owned by', err)
        r = run_cmd([scopeproxy_bin(), 'ca', 'export', '--ca-dir', self.ca], env=clean_env())
        self.assertNotEqual(r.returncode, 0)

    def test_auth_file_of_another_user_is_refused(self):
        os.chown(self.auth, NOBODY, NOBODY)
        r = run_cmd([scopeproxy_bin(), 'classify', 'POST', 'https://api.openai.com/v1/responses',
                     '--auth-file', self.auth], env=clean_env())
        self.assertEqual(json.loads(r.stdout)['action'], 'reject', r)
        p = self.spawn('--server-info', self.path('info.json'), '--log-level', 'debug', delay=0)
        self.assertTrue(self.wait_file(self.path('info.json')))
        rc, err = self.stop(p)
        self.assertIn('owned by', err)
        self.assertIn(self.auth, err)
        # a link is followed (Kubernetes Secret volumes are links) and the
        # checks apply to the file it leads to
        link = self.path('auth-link.json')
        os.symlink(self.auth, link)
        r = run_cmd([scopeproxy_bin(), 'classify', 'POST', 'https://api.openai.com/v1/responses',
                     '--auth-file', link], env=clean_env())
        self.assertEqual(json.loads(r.stdout)['action'], 'reject', r)
        os.chown(self.auth, os.geteuid(), os.getegid())
        r = run_cmd([scopeproxy_bin(), 'classify', 'POST', 'https://api.openai.com/v1/responses',
                     '--auth-file', link], env=clean_env())
        self.assertEqual(json.loads(r.stdout)['action'], 'assert', r)
        # root-owned is fine (a Kubernetes Secret volume is root's)
        os.chown(self.auth, 0, 0)
        r = run_cmd([scopeproxy_bin(), 'classify', 'POST', 'https://api.openai.com/v1/responses',
                     '--auth-file', self.auth], env=clean_env())
        self.assertEqual(json.loads(r.stdout)['action'], 'assert', r)


class Hardening(FilesCase):

    def test_commands_that_load_keys_are_hardened_first(self):
        if shutil.which('strace') is None:
            self.skipTest('strace is not installed (scripts/install-deps installs it)')
        for cmd in (['classify', 'POST', 'https://api.openai.com/v1/responses',
                     '--auth-file', self.auth],
                    ['ca', 'export', '--ca-dir', self.ca],
                    ['ca', 'env', '--ca-dir', self.ca]):
            log = self.path('strace.log')
            # LeakSanitizer cannot run under ptrace: this test is about
            # the order of system calls, not leaks
            env = clean_env({'ASAN_OPTIONS': (os.environ.get('ASAN_OPTIONS', '') +
                                              ':detect_leaks=0').lstrip(':')})
            r = run_cmd(['strace', '-f', '-o', log, '-e', 'trace=prctl,setrlimit,prlimit64,openat',
                         scopeproxy_bin()] + cmd, env=env, timeout=30)
            self.assertEqual(r.returncode, 0, r)
            with open(log) as f:
                lines = f.read().splitlines()
            key = self.auth if cmd[0] == 'classify' else os.path.join(self.ca, 'ca')
            dumpable = [i for i, l in enumerate(lines) if 'PR_SET_DUMPABLE' in l and
                        ('SUID_DUMP_DISABLE' in l or 'DUMPABLE, 0' in l)]
            core = [i for i, l in enumerate(lines) if 'RLIMIT_CORE' in l and '{rlim_cur=0' in l]
            opened = [i for i, l in enumerate(lines) if 'openat(' in l and key in l]
            self.assertTrue(dumpable and core and opened, '%s:\n%s' % (cmd, '\n'.join(lines[-40:])))
            self.assertLess(dumpable[0], opened[0], '%s: key read before PR_SET_DUMPABLE' % cmd)
            self.assertLess(core[0], opened[0], '%s: key read before RLIMIT_CORE 0' % cmd)


class CaEnvRoots(FilesCase):
    """ca env's bundle: the system roots found the way OpenSSL finds them,
    plus the proxy CA; no roots at all is an error, not a bundle that
    claims what it lacks."""

    def ca_env(self, env_extra=None, wrap=None):
        env = clean_env(env_extra)
        cmd = [scopeproxy_bin(), 'ca', 'env', '--ca-dir', self.ca]
        if wrap:
            cmd = wrap + cmd
        return run_cmd(cmd, env=env, timeout=30)

    def certs(self):
        with open(os.path.join(self.ca, 'bundle.pem')) as f:
            return f.read().count('BEGIN CERTIFICATE')

    def test_ssl_cert_file_is_honoured(self):
        from harness import tls_material
        roots = tls_material().ca
        r = self.ca_env({'SSL_CERT_FILE': roots})
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(self.certs(), 2)
        self.assertIn(('system roots (%s)' % roots).encode(), r.stdout)

    def test_bundle_named_by_ssl_cert_file_is_not_read_again(self):
        r = self.ca_env()
        self.assertEqual(r.returncode, 0, r)
        n = self.certs()
        self.assertGreater(n, 1)
        bundle = os.path.join(self.ca, 'bundle.pem')
        for _ in range(2):          # as after eval "$(scopeproxy ca env)"
            r = self.ca_env({'SSL_CERT_FILE': bundle})
            self.assertEqual(r.returncode, 0, r)
            self.assertEqual(self.certs(), n, 'the bundle grew from itself')

    def test_no_system_roots_is_an_error(self):
        if os.geteuid() != 0 or shutil.which('unshare') is None:
            self.skipTest('needs root and unshare for a private mount namespace')
        probe = run_cmd(['unshare', '-m', 'true'], env=clean_env())
        if probe.returncode != 0:
            self.skipTest('mount namespaces are not available here')
        hide = 'mount -t tmpfs none /etc/ssl && mount -t tmpfs none /usr/lib/ssl && exec "$@"'
        r = self.ca_env(wrap=['unshare', '-m', 'sh', '-c', hide, 'sh'])
        self.assertEqual(r.returncode, 1, r)
        err = r.stderr.decode()
        self.assertIn('no system CA roots found', err)
        self.assertIn('SSL_CERT_FILE', err)
        self.assertFalse(os.path.exists(os.path.join(self.ca, 'bundle.pem')))
        self.assertNotIn(b'export SSL_CERT_FILE', r.stdout)


class LogOutput(FilesCase):

    def test_text_format(self):
        info = self.path('info.json')
        p = self.spawn('--server-info', info, '--log-format', 'text', delay=0)
        self.assertTrue(self.wait_file(info))
        rc, err = self.stop(p)
        self.assertEqual(rc, 0, err)
        lines = [l for l in err.splitlines() if l]
        self.assertTrue(lines)
        for l in lines:
            self.assertRegex(l, r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (debug|info |warn |error) \S')
        self.assertTrue(any(re.search(r' listening address=127\.0\.0\.1 port=\d+ ', l + ' ')
                            for l in lines), lines)

    def test_json_when_not_a_terminal(self):
        info = self.path('info.json')
        p = self.spawn('--server-info', info, delay=0)
        self.assertTrue(self.wait_file(info))
        rc, err = self.stop(p)
        for l in err.splitlines():
            self.assertIsInstance(json.loads(l), dict)

    def test_log_file_and_rotation(self):
        info, log = self.path('info.json'), self.path('sp.log')
        p = self.spawn('--server-info', info, '--log-file', log, delay=0)
        self.assertTrue(self.wait_file(info))
        os.rename(log, log + '.1')
        p.send_signal(signal.SIGUSR1)
        end = time.monotonic() + 5
        while time.monotonic() < end and not os.path.exists(log):
            time.sleep(0.05)
        self.assertTrue(os.path.exists(log), 'SIGUSR1 did not reopen the log file')
        os.rename(log, log + '.2')
        p.send_signal(signal.SIGHUP)
        end = time.monotonic() + 5
        while time.monotonic() < end and not os.path.exists(log):
            time.sleep(0.05)
        rc, err = self.stop(p)
        self.assertEqual(rc, 0, err)
        self.assertEqual(err, '', 'with --log-file nothing goes to stderr')
        with open(log + '.1') as f:
            first = [json.loads(l) for l in f]
        with open(log + '.2') as f:
            second = [json.loads(l) for l in f]
        with open(log) as f:
            third = [json.loads(l) for l in f]
        self.assertIn('listening', [x['msg'] for x in first])
        self.assertIn('log file reopened', [x['msg'] for x in second])
        self.assertIn('configuration reloaded', [x['msg'] for x in third])
        self.assertIn('stopping', [x['msg'] for x in third])
        self.assertEqual(os.stat(log).st_mode & 0o777, 0o600)

    def test_log_file_link_and_bad_format_are_refused(self):
        log = self.path('sp.log')
        os.symlink(self.victim, log)
        rc, err = self.start_fails('--log-file', log)
        self.assertEqual(rc, 1, err)
        self.assertIn('symbolic link', err)
        self.assertTrue(self.victim_intact())
        rc, err = self.start_fails('--log-format', 'xml')
        self.assertEqual(rc, 2, err)
        self.assertIn('log_format', err)


class Outputs(FilesCase):
    SECRET_PW = 'pw-Zq81secret'

    def test_syntax_error_does_not_quote_the_file(self):
        cfg = self.path('bad.json')
        for text in ('{"proxy_auth": {"basic": "u:%s',      # unterminated: jansson quotes it
                     '{"proxy_auth": {"bearer": %s}}'):
          with open(cfg, 'w') as f:
            f.write(text % self.SECRET_PW)
          for cmd in (['check-config'], []):
            r = run_cmd([scopeproxy_bin()] + cmd + ['--config', cfg, '--listen', '127.0.0.1:0',
                                                    '--auth-file', self.auth], env=clean_env(),
                        timeout=15)
            self.assertEqual(r.returncode, 2, r)
            err = r.stderr.decode()
            self.assertIn(cfg, err)
            self.assertIn(':1:', err, 'the position is named')
            self.assertNotIn(self.SECRET_PW, err)
            self.assertNotIn('pw', err)

    def test_syntax_error_on_sighup_does_not_quote_the_file(self):
        cfg = self.path('good.json')
        with open(cfg, 'w') as f:
            f.write('{"log_level": "info"}\n')
        info = self.path('info.json')
        p = self.spawn('--config', cfg, '--server-info', info, delay=0)
        self.assertTrue(self.wait_file(info))
        with open(cfg, 'w') as f:
            f.write('{"proxy_auth": {"bearer": "%s' % self.SECRET_PW)
        p.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        rc, err = self.stop(p)
        self.assertEqual(rc, 0, err)
        self.assertIn('reload rejected', err)
        self.assertNotIn(self.SECRET_PW, err)

    def test_check_config_redacts_base_url_userinfo(self):
        cfg = self.path('reg.json')
        with open(cfg, 'w') as f:
            json.dump({'task_registration': {
                'base_url': 'https://user:%s@chatgpt.com/backend-api' % self.SECRET_PW}}, f)
        r = run_cmd([scopeproxy_bin(), 'check-config', '--config', cfg], env=clean_env())
        self.assertEqual(r.returncode, 0, r)
        out = r.stdout.decode()
        self.assertNotIn(self.SECRET_PW, out)
        self.assertNotIn('user:', out)
        doc = json.loads(out)
        self.assertEqual(doc['task_registration']['base_url'],
                         'https://<redacted>@chatgpt.com/backend-api')


if __name__ == '__main__':
    main()
