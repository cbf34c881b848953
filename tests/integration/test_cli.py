#!/usr/bin/python3
"""Command line: --help, --version, unknown flags, check-config, start-up
errors, server-info, SIGTERM."""

import atexit
import json
import os
import re
import socket
import sys
import tempfile
import shutil
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (Daemon, DaemonError, ProxyTestCase, hermetic_env, main, request,  # noqa: E402
                     run_cmd, scopeproxy_bin)

FLAGS = ('--config', '--listen', '--server-info', '--resolve', '--upstream-ca', '--log-level',
         '--gateway', '--max-body-size', '--max-header-size', '--connect-timeout', '--idle-timeout',
         '--max-connections', '--threads', 'check-config', '--version', '--help')


_HOME = tempfile.mkdtemp(prefix='scopeproxy-cli-home-')
atexit.register(shutil.rmtree, _HOME, True)


def sp(*args, timeout=10):
    return run_cmd([scopeproxy_bin()] + [str(a) for a in args], timeout=timeout, env=hermetic_env(_HOME))


class CliTestCase(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix='scopeproxy-cli-')
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def write(self, name, content):
        path = os.path.join(self.tmp, name)
        with open(path, 'w') as f:
            f.write(content if isinstance(content, str) else json.dumps(content))
        return path

    def effective(self, *args):
        r = sp('check-config', *args)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        try:
            return json.loads(r.stdout)
        except ValueError:
            self.fail('check-config output is not JSON: %r' % r.stdout[:500])


class Basics(CliTestCase):
    def test_version(self):
        r = sp('--version')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b'scopeproxy 0.1.0', r.stdout)

    def test_version_names_the_commit_built(self):
        # made at make time (mk/version.am): a build tree configured at an
        # older commit and rebuilt since names the commit it was built from
        here = os.path.dirname(os.path.abspath(__file__))
        g = run_cmd(['git', '-C', here, 'rev-parse', '--short=12', 'HEAD'], timeout=10)
        if g.returncode != 0:
            self.skipTest('not a git checkout')
        r = sp('--version')
        self.assertIn(b'(commit %s)' % g.stdout.strip(), r.stdout.splitlines()[0])

    def test_help_lists_every_flag(self):
        r = sp('--help')
        self.assertEqual(r.returncode, 0, r.stderr)
        text = r.stdout.decode()
        missing = [f for f in FLAGS if f not in text]
        self.assertEqual(missing, [], '--help does not mention %s' % missing)

    def test_unknown_flag(self):
        r = sp('--no-such-flag-xyz')
        self.assertEqual(r.returncode, 2, (r.stdout, r.stderr))
        self.assertIn(b'--no-such-flag-xyz', r.stderr)

    def test_missing_flag_argument(self):
        r = sp('--listen')
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b'--listen', r.stderr)

    def test_bad_log_level(self):
        r = sp('--log-level', 'chatty', '--listen', '127.0.0.1:0')
        self.assertNotEqual(r.returncode, 0, 'accepted --log-level chatty')
        self.assertTrue(b'log-level' in r.stderr or b'log_level' in r.stderr, r.stderr)

    def test_bad_resolve(self):
        r = sp('--resolve', 'nonsense', '--listen', '127.0.0.1:0')
        self.assertNotEqual(r.returncode, 0, 'accepted --resolve nonsense')
        self.assertIn(b'resolve', r.stderr)

    def test_bad_gateway(self):
        r = sp('--gateway', 'no-equals-sign', '--listen', '127.0.0.1:0')
        self.assertNotEqual(r.returncode, 0, 'accepted --gateway no-equals-sign')
        self.assertIn(b'gateway', r.stderr)

    def test_bad_listen(self):
        r = sp('--listen', 'not-an-address', timeout=10)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b'listen', r.stderr)


class CheckConfig(CliTestCase):
    def test_defaults_print_json(self):
        cfg = self.effective()
        self.assertIsInstance(cfg, dict)
        self.assertTrue(cfg)

    def test_empty_file_equals_defaults(self):
        path = self.write('empty.json', '{}')
        self.assertEqual(self.effective('--config', path), self.effective())

    def test_effective_config_round_trips(self):
        cfg = self.effective()
        path = self.write('roundtrip.json', cfg)
        self.assertEqual(self.effective('--config', path), cfg,
                         'feeding check-config output back as --config changed it')

    def test_unknown_top_level_key(self):
        path = self.write('bad.json', {'definitely_not_a_key': 1})
        r = sp('check-config', '--config', path)
        self.assertEqual(r.returncode, 2, (r.stdout, r.stderr))
        self.assertIn(b'definitely_not_a_key', r.stderr)

    def nested_path(self, cfg):
        """(section, key, value): a scalar inside a nested object with a fixed
        schema (keys look like identifiers, unlike e.g. a map of route prefixes)."""
        for k, v in cfg.items():
            if isinstance(v, dict) and v and all(re.match(r'^[a-z][a-z0-9_]*$', x) for x in v):
                for k2, v2 in v.items():
                    if not isinstance(v2, (dict, list)):
                        return k, k2, v2
        return None

    def test_unknown_nested_key_names_path(self):
        found = self.nested_path(self.effective())
        if found is None:
            self.skipTest('effective config has no nested objects')
        k, k2, v = found
        path = self.write('bad.json', {k: {k2: v, 'zz_unknown_nested': True}})
        r = sp('check-config', '--config', path)
        self.assertEqual(r.returncode, 2, (r.stdout, r.stderr))
        err = r.stderr.decode()
        self.assertIn('zz_unknown_nested', err)
        self.assertIn(k, err, 'message should name the key path (%s.zz_unknown_nested): %s' % (k, err))

    def test_wrong_type_names_path(self):
        found = self.nested_path(self.effective())
        if found is None:
            self.skipTest('effective config has no nested scalars')
        k, k2, v = found
        path = self.write('bad.json', {k: {k2: ['wrong', 'type']}})
        r = sp('check-config', '--config', path)
        self.assertEqual(r.returncode, 2, (r.stdout, r.stderr))
        err = r.stderr.decode()
        self.assertIn(k2, err)
        self.assertIn(k, err)

    def test_valid_partial_file_changes_only_that_key(self):
        cfg = self.effective()
        found = self.nested_path(cfg)
        if found is None:
            self.skipTest('effective config has no nested scalars')
        k, k2, v = found
        if isinstance(v, bool):
            nv = not v
        elif isinstance(v, (int, float)):
            nv = v + 7
        else:
            self.skipTest('no numeric/bool nested scalar')
        path = self.write('partial.json', {k: {k2: nv}})
        got = self.effective('--config', path)
        want = json.loads(json.dumps(cfg))
        want[k][k2] = nv
        self.assertEqual(got, want)

    def test_wrong_type_top_level(self):
        cfg = self.effective()
        for k, v in cfg.items():
            if not isinstance(v, (dict, list)):
                path = self.write('bad.json', {k: {'nested': 'object'}})
                r = sp('check-config', '--config', path)
                self.assertEqual(r.returncode, 2, (k, r.stdout, r.stderr))
                self.assertIn(k.encode(), r.stderr)
                return
        self.skipTest('no top-level scalar in effective config')

    def test_invalid_json_names_file(self):
        path = self.write('broken.json', '{"listen": ')
        r = sp('check-config', '--config', path)
        self.assertEqual(r.returncode, 2, (r.stdout, r.stderr))
        self.assertIn(b'broken.json', r.stderr)

    def test_not_an_object(self):
        path = self.write('array.json', '[1,2]')
        r = sp('check-config', '--config', path)
        self.assertEqual(r.returncode, 2, (r.stdout, r.stderr))

    def test_missing_file(self):
        path = os.path.join(self.tmp, 'does-not-exist.json')
        r = sp('check-config', '--config', path)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b'does-not-exist.json', r.stderr)

    def test_shipped_config_is_valid_and_freezes_no_default(self):
        # The installed file holds only what a user changed: none of its
        # keys may repeat a built-in default (which a later release could
        # change), and with it the effective configuration is the default.
        src = os.environ.get('SCOPEPROXY_SRCDIR') or os.path.join(os.path.dirname(__file__), '..', '..')
        path = os.path.join(src, 'config', 'scopeproxy.json')
        with open(path) as f:
            shipped = json.load(f)
        r = sp('check-config', '--config', path)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        with_file = json.loads(r.stdout)
        r = sp('check-config')
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        defaults = json.loads(r.stdout)
        frozen = sorted(k for k, v in shipped.items() if defaults.get(k) == v or
                        (isinstance(v, dict) and any(defaults.get(k, {}).get(s) == x
                                                     for s, x in v.items())))
        self.assertEqual(frozen, [], 'config/scopeproxy.json pins built-in defaults')
        self.assertEqual(with_file, defaults)

    def test_install_keeps_an_edited_config(self):
        builddir = os.path.dirname(os.path.dirname(os.path.abspath(scopeproxy_bin())))
        if not os.path.exists(os.path.join(builddir, 'Makefile')):
            self.skipTest('no build directory next to %s' % scopeproxy_bin())
        dest = os.path.join(self.tmp, 'dest')

        def install():
            r = run_cmd(['make', '-s', '-C', builddir, 'install-data', 'DESTDIR=' + dest], timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr.decode())
            found = [os.path.join(d, f) for d, _, fs in os.walk(dest) for f in fs if f == 'scopeproxy.json']
            self.assertEqual(len(found), 1, found)
            return found[0]
        path = install()
        with open(path) as f:
            self.assertEqual(json.load(f), {})
        with open(path, 'w') as f:
            json.dump({'log_level': 'debug'}, f)
        self.assertEqual(install(), path)
        with open(path) as f:
            self.assertEqual(json.load(f), {'log_level': 'debug'}, 'make install overwrote the user\'s configuration')


class StartUp(CliTestCase):
    def test_server_info(self):
        d = self.start_daemon()
        self.assertEqual(d.info['pid'], d.proc.pid)
        self.assertEqual(d.info['listen'], '127.0.0.1:%d' % d.port)
        # and it really listens there
        resp = request(d.port, b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        self.assertEqual(resp.status, 200, resp)

    def test_invalid_config_stops_startup(self):
        path = self.write('bad.json', {'definitely_not_a_key': 1})
        d = Daemon('--config', path)
        self.addCleanup(d.cleanup)
        with self.assertRaises(DaemonError):
            d.start()
        self.assertNotEqual(d.proc.returncode, 0)
        self.assertFalse(os.path.exists(d.info_path), 'server-info written by a daemon that refused to start')
        self.assertIn('definitely_not_a_key', d.stderr_text())

    def test_port_in_use(self):
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        s.listen(1)
        self.addCleanup(s.close)
        d = Daemon(listen='127.0.0.1:%d' % s.getsockname()[1])
        self.addCleanup(d.cleanup)
        with self.assertRaises(DaemonError):
            d.start()
        self.assertNotEqual(d.proc.returncode, 0)
        self.assertFalse(os.path.exists(d.info_path))

    def test_sigterm_exits_cleanly(self):
        d = Daemon()
        self.addCleanup(d.cleanup)
        d.start()
        request(d.port, b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        t0 = time.monotonic()
        rc = d.stop(timeout=5)
        self.assertFalse(d.needed_kill, 'did not exit within 5 s of SIGTERM')
        self.assertEqual(rc, 0, 'exit status after SIGTERM: %s\n%s' % (rc, d.tail()))
        self.assertLess(time.monotonic() - t0, 5)

    def test_sigterm_with_open_stream(self):
        from harness import SSE, HTTPClient
        up = self.start_upstream()
        up.route('/hold', SSE(n=1, hold=20))
        d = Daemon()
        self.addCleanup(d.cleanup)
        d.start()
        c = HTTPClient(d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(b'GET http://127.0.0.1:%d/hold HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n' % (up.port, up.port))
        resp = c.read_head()
        self.assertEqual(resp.status, 200)
        t0 = time.monotonic()
        rc = d.stop(timeout=5)
        self.assertFalse(d.needed_kill, 'did not exit within 5 s of SIGTERM with a stream open')
        # the harness runs with --drain-timeout 1: the stream is cut then
        self.assertGreaterEqual(time.monotonic() - t0, 0.9, 'did not drain at all')
        self.assertIn(rc, (0,), d.tail())

    def test_threads_flag(self):
        d = self.start_daemon('--threads', '1')
        resp = request(d.port, b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        self.assertEqual(resp.status, 200)

    def test_log_level_error_still_runs(self):
        d = self.start_daemon('--log-level', 'error')
        resp = request(d.port, b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        self.assertEqual(resp.status, 200)

    def test_config_file_and_flag_override(self):
        cfg = self.effective()
        target = None

        def walk(obj, path):
            nonlocal target
            for k, v in obj.items():
                if isinstance(v, dict):
                    walk(v, path + [k])
                elif 'max_body' in k and target is None:
                    target = path + [k]
        walk(cfg, [])
        if target is None:
            self.skipTest('no max_body* key in the effective config')
        conf = node = {}
        for k in target[:-1]:
            node[k] = {}
            node = node[k]
        node[target[-1]] = 10
        path = self.write('limits.json', conf)
        up = self.start_upstream()
        raw = (b'POST http://127.0.0.1:%d/x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 100\r\n\r\n'
               % (up.port, up.port)) + b'x' * 100
        d = self.start_daemon('--config', path)
        resp = request(d.port, raw)
        self.assertProxyError(resp, 413, 'payload_too_large', d)
        d2 = self.start_daemon('--config', path, '--max-body-size', '1000')
        resp = request(d2.port, raw)
        self.assertEqual(resp.status, 200, 'the command line must override the file: %r' % resp)


if __name__ == '__main__':
    main()
