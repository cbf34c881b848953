#!/usr/bin/python3
"""The signer process: the network process never holds the agent key nor
the CA key, and the two processes fail closed when either goes.

Checked the way an attacker with a memory-disclosure bug in the network
process would look: as root, /proc/<pid>/mem of the network process is read
region by region and searched for the Ed25519 seed and the CA's private
scalar (both byte orders); the same search finds the seed in the signer, so
the scan is not blind.
"""

import base64
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Daemon, Fixed, HTTPClient, ProxyTestCase, main, request, tls_material  # noqa: E402
from agentid import auth_doc, identity_record, key_of, write_auth  # noqa: E402

SEED = hashlib.sha256(b'scopeproxy signer test seed').digest()
TASK = 'task-signer-5c1a'
ROOT = os.geteuid() == 0


def children(pid):
    out = []
    for p in os.listdir('/proc'):
        if not p.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % p) as f:
                st = f.read()
        except OSError:
            continue
        if int(st.rsplit(')', 1)[1].split()[1]) == pid:
            out.append(int(p))
    return out


def proc_field(pid, name):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith(name + ':'):
                return line.split(':', 1)[1].split()
    return None


def gone(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] in ('Z', 'X')
    except OSError:
        return True


CHUNK = 16 << 20
SKIP = 1 << 32      # sanitizer shadow reservations: no data, too big to read


def regions(pid):
    """(bytes) of every readable region of pid, in overlapping chunks."""
    with open('/proc/%d/maps' % pid) as maps, open('/proc/%d/mem' % pid, 'rb', 0) as mem:
        for line in maps:
            parts = line.split()
            if 'r' not in parts[1] or (len(parts) > 5 and parts[5] in ('[vvar]', '[vsyscall]')):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split('-'))
            if hi - lo > SKIP:
                continue
            at = lo
            while at < hi:
                end = min(hi, at + CHUNK + 256)
                try:
                    mem.seek(at)
                    data = mem.read(end - at)
                except (OSError, OverflowError, ValueError):
                    break
                yield at, data
                at += CHUNK


def scan(pid, needles):
    """Which of `needles` occur in the readable memory of pid."""
    found = set()
    for _, data in regions(pid):
        for n in needles:
            if n in data:
                found.add(n)
    return found


LINGER = []


def count(pid, needles):
    """Where each of `needles` occurs in the readable memory of pid."""
    where = {n: set() for n in needles}
    for at, data in regions(pid):
        for n in needles:
            i = data.find(n)
            while i >= 0:
                where[n].add(at + i)    # chunks overlap: count an address once
                i = data.find(n, i + 1)
    return {n: len(a) for n, a in where.items()}


def ca_scalar(ca_key):
    text = subprocess.run(['openssl', 'pkey', '-in', ca_key, '-noout', '-text'],
                          check=True, capture_output=True, text=True).stdout
    m = re.search(r'priv:\s*((?:[0-9a-f]{2}:?\s*)+)', text)
    b = bytes.fromhex(re.sub(r'[:\s]', '', m.group(1)))
    return b.lstrip(b'\0')


class SignerCase(ProxyTestCase):

    def setUp(self):
        super().setUp()
        self.work = tempfile.mkdtemp(prefix='scopeproxy-signer-')
        self.addCleanup(shutil.rmtree, self.work, True)
        self.key = key_of(SEED)
        self.auth = os.path.join(self.work, 'auth.json')
        write_auth(self.auth, auth_doc(identity_record(self.key.v2, task_id=TASK)))
        # what an unprivileged network process needs: readable by all
        self.pub = tempfile.mkdtemp(prefix='scopeproxy-signer-pub-')
        self.addCleanup(shutil.rmtree, self.pub, True)
        os.chmod(self.pub, 0o755)
        self.upstream_ca = os.path.join(self.pub, 'upstream-ca.pem')
        shutil.copy(tls_material().ca, self.upstream_ca)
        os.chmod(self.upstream_ca, 0o644)
        self.ca_dir = os.path.join(self.work, 'ca')
        # answers without echoing the request: what the upstream sends back
        # is not the proxy's copy
        self.up = self.start_upstream(dual=True)
        self.up.route('/', Fixed(200, body=b'{}'))

    def daemon(self, *args):
        d = Daemon('--auth-file', self.auth, '--ca-dir', self.ca_dir,
                   '--upstream-ca', self.upstream_ca,
                   '--resolve', 'api.openai.com:443:127.0.0.1:%d' % self.up.port, *args)
        self.addCleanup(self._finish_daemon, d)
        # server-info (in the harness's 0700 root directory) is written by
        # the signer, which keeps root
        d.start()
        kids = children(d.pid)
        self.assertEqual(len(kids), 1, 'one signer process: %r' % kids)
        d.signer = kids[0]
        return d

    def credentialed(self, d, client=None, tag='x'):
        raw = (b'POST /v1/responses HTTP/1.1\r\nHost: api.openai.com\r\n'
               b'Authorization: Bearer sk-client\r\nX-Req: ' + tag.encode() +
               b'\r\nContent-Length: 2\r\n\r\n{}')
        if client is None:
            return request(d.port, raw)
        client.send(raw)
        return client.read_response('POST')


@unittest.skipUnless(ROOT, 'needs root (reads another process\'s memory, drops to nobody)')
class KeysStayInTheSigner(SignerCase):

    def test_network_process_holds_neither_key_and_is_unprivileged(self):
        d = self.daemon('--user', 'nobody')
        for i in range(5):
            resp = self.credentialed(d, tag='r%d' % i)
            self.assertEqual(resp.status, 200, '%r\n%s' % (resp, d.tail(1500)))
            got = self.up.wait_request(lambda r, i=i: r.header('X-Req') == 'r%d' % i, timeout=3)
            self.assertTrue(got.header('Authorization').startswith('AgentAssertion '))
        # an intercepted host: a leaf signed by the signer
        with socket.create_connection(('127.0.0.1', d.port), timeout=5) as s:
            s.sendall(b'CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n')
            head = b''
            while b'\r\n\r\n' not in head:
                head += s.recv(1)
            self.assertTrue(head.startswith(b'HTTP/1.1 200'), head)
            ctx = ssl.create_default_context(cafile=os.path.join(self.ca_dir, 'ca.crt'))
            with ctx.wrap_socket(s, server_hostname='api.openai.com') as t:
                self.assertIsNotNone(t.getpeercert())
        scalar = ca_scalar(os.path.join(self.ca_dir, 'ca.key'))
        self.assertGreaterEqual(len(scalar), 28)
        needles = [SEED, SEED[::-1], scalar, scalar[::-1]]
        self.assertEqual(scan(d.pid, needles), set(),
                         'key material in the network process\'s memory')
        in_signer = scan(d.signer, needles)
        self.assertIn(SEED, in_signer, 'the scan must find the seed in the signer')
        self.assertTrue({scalar, scalar[::-1]} & in_signer,
                        'the scan must find the CA scalar in the signer')
        nobody = pwd.getpwnam('nobody')
        self.assertEqual([int(x) for x in proc_field(d.pid, 'Uid')], [nobody.pw_uid] * 4)
        self.assertEqual([int(x) for x in proc_field(d.pid, 'Gid')], [nobody.pw_gid] * 4)
        self.assertEqual(proc_field(d.pid, 'Groups'), [str(nobody.pw_gid)])
        self.assertEqual(proc_field(d.pid, 'NoNewPrivs'), ['1'])
        self.assertEqual(proc_field(d.pid, 'CapEff'), ['0000000000000000'])
        self.assertEqual(proc_field(d.signer, 'Uid')[0], '0')
        # non-dumpable: /proc/<pid> stays root's, so nobody cannot read it
        self.assertEqual(os.stat('/proc/%d/mem' % d.pid).st_uid, 0)

    def test_unknown_or_root_user_is_refused(self):
        for user, want in (('no-such-user-xyz', 'no such user'), ('root', 'is root')):
            p = subprocess.run([os.environ.get('SCOPEPROXY_BIN', 'scopeproxy'), '--listen',
                                '127.0.0.1:0', '--auth-file', self.auth, '--ca-dir', self.ca_dir,
                                '--user', user], capture_output=True, text=True, timeout=20,
                               stdin=subprocess.DEVNULL)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn(want, p.stderr)

    def test_minted_assertions_do_not_linger_in_the_network_process(self):
        d = self.daemon('--user', 'nobody', '--threads', '1')
        seen = []
        for i in range(8):
            if i % 2 == 0:
                time.sleep(1.05)        # a new second: a new assertion
            resp = self.credentialed(d, tag='h%d' % i)
            self.assertEqual(resp.status, 200, '%r\n%s' % (resp, d.tail(1500)))
            got = self.up.wait_request(lambda r, i=i: r.header('X-Req') == 'h%d' % i, timeout=3)
            seen.append(got.header('Authorization').split(' ', 1)[1].encode())
        tokens = sorted(set(seen))
        self.assertGreaterEqual(len(tokens), 4)
        time.sleep(3)                   # past the seconds they were minted for
        found = count(d.pid, tokens)
        LINGER.append(sum(found.values()))
        self.assertEqual(sum(found.values()), 0,
                         'assertion copies left in the network process: %r' % found)


def wait_for(cond, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    return cond()


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


@unittest.skipUnless(ROOT, 'needs root (the default drop to nobody)')
class RootOnlyFiles(SignerCase):
    """Started as root without --user: the network process serves as
    nobody, and everything a root daemon does with its files after the
    drop still works when they are root's alone (a 0700 root directory):
    the signer writes and removes the pid file and server-info, reopens
    the log and opens the configuration for a reload; upstream_ca was
    read before the drop."""

    def test_default_user_is_nobody_and_root_only_files_keep_working(self):
        priv = tempfile.mkdtemp(prefix='scopeproxy-rootonly-')
        self.addCleanup(shutil.rmtree, priv, True)
        os.chmod(priv, 0o700)
        cfg = os.path.join(priv, 'scopeproxy.json')
        ca = os.path.join(priv, 'upstream-ca.pem')
        shutil.copy(tls_material().ca, ca)
        os.chmod(ca, 0o600)
        with open(cfg, 'w') as f:
            json.dump({'log_level': 'info', 'upstream_ca': ca}, f)
        os.chmod(cfg, 0o600)
        pid_file = os.path.join(priv, 'scopeproxy.pid')
        log_file = os.path.join(priv, 'scopeproxy.log')
        d = Daemon('--config', cfg, '--auth-file', self.auth, '--ca-dir', self.ca_dir,
                   '--pid-file', pid_file, '--log-file', log_file,
                   '--resolve', 'api.openai.com:443:127.0.0.1:%d' % self.up.port)
        self.addCleanup(self._finish_daemon, d)
        d.start()
        signer = children(d.pid)
        why = lambda: '\n' + (read(log_file) or '')[-3000:] + d.tail(1500)  # noqa: E731
        nobody = pwd.getpwnam('nobody')
        self.assertEqual([int(x) for x in proc_field(d.pid, 'Uid')], [nobody.pw_uid] * 4,
                         'the network process serves as nobody by default' + why())
        self.assertEqual(proc_field(d.pid, 'CapEff'), ['0000000000000000'])
        self.assertEqual(read(pid_file), '%d\n' % d.pid)
        self.assertEqual(d.info['pid'], d.pid)
        self.assertEqual(d.info['listen'], '127.0.0.1:%d' % d.port)
        # the upstream CA (root's alone) verifies the TLS upstream
        resp = self.credentialed(d, tag='tls')
        self.assertEqual(resp.status, 200, '%r%s' % (resp, why()))
        got = self.up.wait_request(lambda r: r.header('X-Req') == 'tls', timeout=3)
        self.assertTrue(got.header('Authorization').startswith('AgentAssertion '))
        # SIGHUP reloads the root-only configuration: proxy_auth now applies
        # (upstream_ca is read once, before the drop: a new one is for the
        # next start, and says so)
        with open(cfg, 'w') as f:
            json.dump({'log_level': 'info', 'upstream_ca': ca + '.new',
                       'proxy_auth': {'basic': 'u:signer-test-pw'}}, f)
        os.kill(d.pid, signal.SIGHUP)
        self.assertTrue(wait_for(lambda: 'configuration reloaded' in (read(log_file) or '')),
                        'no reload' + why())
        self.assertNotIn('reload rejected', read(log_file))
        # (each worker takes the new settings when it next wakes)
        resp = wait_for(lambda: (lambda r: r if r.status == 407 else None)(
            self.credentialed(d, tag='noauth')), timeout=3) or self.credentialed(d, tag='noauth')
        self.assertProxyError(resp, 407, 'proxy_auth_required', d)
        self.assertIn('take effect at the next restart', read(log_file))
        resp = request(d.port, b'POST /v1/responses HTTP/1.1\r\nHost: api.openai.com\r\n'
                       b'Proxy-Authorization: Basic ' + base64.b64encode(b'u:signer-test-pw') +
                       b'\r\nX-Req: tls2\r\nContent-Length: 2\r\n\r\n{}')
        self.assertEqual(resp.status, 200, '%r%s' % (resp, why()))
        # SIGUSR1 after a rotation: new lines land in a new file at the path
        os.rename(log_file, log_file + '.1')
        os.kill(d.pid, signal.SIGUSR1)
        self.assertTrue(wait_for(lambda: 'log file reopened' in (read(log_file) or '')),
                        'the log was not reopened at its path' + why())
        self.assertEqual(os.stat(log_file).st_uid, 0)
        self.assertEqual(os.stat(log_file).st_mode & 0o777, 0o600)
        # one from the SIGHUP before the rotation; SIGUSR1's is in the new file
        self.assertEqual(read(log_file + '.1').count('log file reopened'), 1)
        # the signer's own lines follow: it logs the auth file it re-reads
        write_auth(self.auth, auth_doc(identity_record(self.key.v2, task_id=TASK)))
        self.assertTrue(wait_for(lambda: 'agent identity loaded' in (read(log_file) or '')),
                        'the signer still writes to the rotated file' + why())
        self.assertNotIn('signer-test-pw', read(log_file) + read(log_file + '.1'))
        # SIGTERM: both files are gone by the time the daemon is
        self.assertEqual(d.stop(), 0, why())
        self.assertFalse(os.path.exists(pid_file), 'pid file left behind')
        self.assertFalse(os.path.exists(d.info_path), 'server-info left behind')
        self.assertTrue(all(gone(p) for p in signer))

    def test_files_where_the_network_user_could_swap_them_are_refused(self):
        # nobody owns this directory: it could replace the pid file's
        # directory entry by a link and have the signer write elsewhere
        mine = tempfile.mkdtemp(prefix='scopeproxy-nobodys-')
        self.addCleanup(shutil.rmtree, mine, True)
        nobody = pwd.getpwnam('nobody')
        os.chown(mine, nobody.pw_uid, nobody.pw_gid)
        p = subprocess.run([os.environ.get('SCOPEPROXY_BIN', 'scopeproxy'), '--listen',
                            '127.0.0.1:0', '--auth-file', self.auth, '--ca-dir', self.ca_dir,
                            '--pid-file', os.path.join(mine, 'sp.pid')],
                           capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("can be changed by the network process's user 'nobody'", p.stderr)
        self.assertEqual(os.listdir(mine), [])

    def test_a_link_the_network_user_swapped_in_is_not_opened_on_reload(self):
        # a sticky directory, as /tmp: nobody owns the configuration's
        # entry, so it could replace it with a link to the auth file and
        # have the signer hand over a descriptor of it on SIGHUP
        sticky = tempfile.mkdtemp(prefix='scopeproxy-sticky-')
        self.addCleanup(shutil.rmtree, sticky, True)
        os.chmod(sticky, 0o1777)
        nobody = pwd.getpwnam('nobody')
        cfg = os.path.join(sticky, 'sp.json')
        with open(cfg, 'w') as f:
            f.write('{}\n')
        os.chown(cfg, nobody.pw_uid, nobody.pw_gid)
        d = self.daemon('--config', cfg)
        os.unlink(cfg)
        os.symlink(self.auth, cfg)
        os.lchown(cfg, nobody.pw_uid, nobody.pw_gid)
        os.kill(d.pid, signal.SIGHUP)
        self.assertTrue(wait_for(lambda: 'reload rejected' in d.stderr_text()), d.tail())
        self.assertIn("is a link owned by the network process's user 'nobody'", d.stderr_text())
        self.assertEqual(self.credentialed(d, tag='after').status, 200)

    def test_network_death_removes_the_files(self):
        pid_file = os.path.join(self.work, 'sp.pid')
        d = self.daemon('--pid-file', pid_file)
        self.assertEqual(read(pid_file), '%d\n' % d.pid)
        os.kill(d.pid, signal.SIGKILL)
        d.proc.wait(5)
        self.assertTrue(wait_for(lambda: gone(d.signer)), 'the signer outlived it')
        self.assertFalse(os.path.exists(pid_file), 'pid file left behind')
        self.assertFalse(os.path.exists(d.info_path), 'server-info left behind')


class FailClosed(SignerCase):

    def test_signer_death_fails_closed_and_the_network_process_exits(self):
        d = self.daemon()
        resp = self.credentialed(d, tag='before')
        self.assertEqual(resp.status, 200, repr(resp))
        os.kill(d.signer, signal.SIGKILL)
        time.sleep(0.3)
        resp = self.credentialed(d, tag='after')
        self.assertProxyError(resp, 503, 'signer_unavailable', d)
        self.assertEqual(resp.header('x-should-retry'), 'false')
        self.assertIsNone(self.up.wait_request(lambda r: r.header('X-Req') == 'after',
                                               timeout=0.5))
        rc = d.proc.wait(10)
        self.assertEqual(rc, 1, d.tail())
        self.assertIn('signer process', d.stderr_text())

    def test_network_death_ends_the_signer(self):
        d = self.daemon()
        os.kill(d.pid, signal.SIGKILL)
        d.proc.wait(5)
        deadline = time.monotonic() + 5
        while not gone(d.signer) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertTrue(gone(d.signer), 'the signer outlived the network process')

    def test_signer_ends_with_a_normal_stop(self):
        d = self.daemon()
        self.assertEqual(d.stop(), 0)
        self.assertTrue(gone(d.signer))

    def test_both_processes_are_not_dumpable(self):
        d = self.daemon()
        # non-dumpable processes' /proc entries belong to root whatever
        # their uid; as non-root, a same-uid ptrace is refused
        for pid in (d.pid, d.signer):
            self.assertEqual(os.stat('/proc/%d/mem' % pid).st_uid, 0)
        if not ROOT:
            with self.assertRaises(OSError):
                open('/proc/%d/mem' % d.signer, 'rb').close()


if __name__ == '__main__':
    main()
