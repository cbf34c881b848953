"""Integration test harness for scopeproxy.

Standard library only (Debian 12 /usr/bin/python3, 3.11) plus the `curl` and
`openssl` command-line tools.  Everything listens on 127.0.0.1 only.

Pieces:
  Daemon          runs $SCOPEPROXY_BIN on an ephemeral port, captures its JSON
                  log lines, stops it (SIGTERM, then SIGKILL) and reports
                  crashes / sanitizer reports / hangs on shutdown.
  UpstreamServer  threaded raw-socket HTTP/1.1 server (plain or TLS) that
                  records the exact request bytes it receives (with arrival
                  times) and answers with a scripted behaviour per path prefix.
  tls_material()  a test CA, a leaf for localhost/127.0.0.1/api.openai.com/
                  chatgpt.com, and a "rogue" CA + leaf for the same names.
  HTTPClient      raw-socket client: send exact bytes, read the response with
                  header case/order, body framing and completeness.
  ProxyTestCase   unittest base class with per-test timeout and cleanups.
"""

import atexit
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import unittest
import zlib

sys.dont_write_bytecode = True

HERE = os.path.dirname(os.path.abspath(__file__))
LOOPBACK = '127.0.0.1'

# A credential the clients send; it must never show up in the daemon's logs.
SECRET = 'sk-test-SECRET'
AUTH_LINE = b'Authorization: Bearer ' + SECRET.encode() + b'\r\n'

PROXY_ENV_VARS = ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY',
                  'all_proxy', 'ALL_PROXY', 'no_proxy', 'NO_PROXY',
                  'ftp_proxy', 'FTP_PROXY')

HOP_BY_HOP = ('connection', 'keep-alive', 'proxy-connection', 'proxy-authorization',
              'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect')


def now():
    return time.monotonic()


# --------------------------------------------------------------------------
# Child process bookkeeping: whatever happens, nothing we start outlives us.
# --------------------------------------------------------------------------

_children_lock = threading.Lock()
_children = set()
_servers = set()


def _register_child(proc):
    with _children_lock:
        _children.add(proc)


def _unregister_child(proc):
    with _children_lock:
        _children.discard(proc)


@atexit.register
def _kill_everything():
    with _children_lock:
        procs = list(_children)
        _children.clear()
    for p in procs:
        try:
            if p.poll() is None:
                p.kill()
            p.wait(5)
        except Exception:
            pass
    for s in list(_servers):
        try:
            s.close()
        except Exception:
            pass


def _sigterm(signum, frame):
    # Turn SIGTERM (e.g. make check interrupted) into SystemExit so atexit runs.
    raise SystemExit(128 + signum)


if threading.current_thread() is threading.main_thread():
    try:
        signal.signal(signal.SIGTERM, _sigterm)
    except (ValueError, OSError):
        pass


def run_cmd(cmd, timeout=20, env=None, input=None):
    """Run a short-lived command (tracked, killed on timeout)."""
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _register_child(p)
    try:
        out, err = p.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError('command timed out after %ss: %r\nstderr: %s'
                             % (timeout, cmd, err.decode('utf-8', 'replace')[-2000:]))
    finally:
        _unregister_child(p)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items() if k not in PROXY_ENV_VARS}
    if extra:
        env.update(extra)
    return env


def hermetic_env(home, extra=None):
    """clean_env() with HOME and the XDG/Codex directories inside `home`, so
    the daemon neither reads the developer's real credentials (~/.codex)
    nor writes state (interception CA, ...) into the real home."""
    env = clean_env()
    for k in ('CODEX_HOME', 'XDG_STATE_HOME', 'XDG_CONFIG_HOME', 'XDG_CACHE_HOME', 'XDG_DATA_HOME'):
        env.pop(k, None)
    env['HOME'] = home
    if extra:
        env.update(extra)
    return env


# --------------------------------------------------------------------------
# The daemon under test
# --------------------------------------------------------------------------

def scopeproxy_bin():
    b = os.environ.get('SCOPEPROXY_BIN') or os.path.join(HERE, '..', '..', 'proxy', 'scopeproxy')
    return os.path.abspath(b)


_asan_cache = {}


def binary_has_asan(path=None):
    path = path or scopeproxy_bin()
    if path not in _asan_cache:
        try:
            with open(path, 'rb') as f:
                _asan_cache[path] = b'__asan_init' in f.read()
        except OSError:
            _asan_cache[path] = False
    return _asan_cache[path]


SANITIZER_MARKERS = ('ERROR: AddressSanitizer', 'ERROR: LeakSanitizer',
                     'runtime error:', 'SUMMARY: AddressSanitizer',
                     'SUMMARY: UndefinedBehaviorSanitizer', 'ThreadSanitizer')


def proc_status(pid):
    """/proc/PID/status as a dict; Vm*/Rss* values in kB (int), Threads int."""
    out = {}
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            k, _, v = line.partition(':')
            v = v.strip()
            if k.startswith(('Vm', 'Rss')) and v.endswith('kB'):
                out[k] = int(v.split()[0])
            elif k == 'Threads':
                out[k] = int(v)
            else:
                out[k] = v
    return out


def proc_cpu_seconds(pid):
    with open('/proc/%d/stat' % pid) as f:
        data = f.read()
    fields = data[data.rindex(')') + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf('SC_CLK_TCK')


class DaemonError(Exception):
    pass


class Daemon:
    """One scopeproxy process.

    Daemon(*extra_args) runs
      $SCOPEPROXY_BIN --listen 127.0.0.1:0 --server-info TMP/info.json
          --drain-timeout 1 *extra_args
    (a short drain so that stop() with streams open is prompt; tests of
    the drain itself pass their own --drain-timeout, which comes later
    on the command line and wins)
    """

    STARTUP_TIMEOUT = 20.0

    def __init__(self, *args, listen='127.0.0.1:0', env=None, asan_options=None,
                 startup_timeout=None):
        self.args = [str(a) for a in args]
        self.listen = listen
        self.extra_env = dict(env or {})
        self.asan_options = asan_options
        self.startup_timeout = startup_timeout or self.STARTUP_TIMEOUT
        self.tmp = tempfile.mkdtemp(prefix='scopeproxy-it-')
        self.info_path = os.path.join(self.tmp, 'info.json')
        self.stderr_path = os.path.join(self.tmp, 'stderr.log')
        self.stdout_path = os.path.join(self.tmp, 'stdout.log')
        self.proc = None
        self.info = None
        self.port = None
        self.pid = None
        self.died_early = None       # returncode if it exited before stop()
        self.started = False         # server-info seen
        self.needed_kill = False
        self._final_stderr = None
        self._files = []

    # -- lifecycle --------------------------------------------------------
    def command(self):
        cmd = [scopeproxy_bin()]
        if self.listen is not None:
            cmd += ['--listen', self.listen]
        cmd += ['--server-info', self.info_path, '--drain-timeout', '1']
        return cmd + self.args

    def start(self):
        binary = scopeproxy_bin()
        if not os.access(binary, os.X_OK):
            raise DaemonError('scopeproxy binary not found or not executable: %s '
                              '(set SCOPEPROXY_BIN or build proxy/scopeproxy)' % binary)
        home = os.path.join(self.tmp, 'home')
        os.makedirs(home, exist_ok=True)
        env = hermetic_env(home, self.extra_env)
        if self.asan_options:
            prev = env.get('ASAN_OPTIONS', '')
            env['ASAN_OPTIONS'] = (prev + ':' if prev else '') + self.asan_options
        out = open(self.stdout_path, 'wb')
        err = open(self.stderr_path, 'wb')
        self._files = [out, err]
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=err, env=env, cwd=self.tmp)
        _register_child(self.proc)
        deadline = now() + self.startup_timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self.died_early = rc
                self.stop()
                raise DaemonError('scopeproxy exited with %s before listening\ncmd: %s\nstderr:\n%s'
                                  % (rc, ' '.join(self.command()), self.stderr_text()[-4000:]))
            if os.path.exists(self.info_path):
                try:
                    with open(self.info_path) as f:
                        info = json.load(f)
                    if isinstance(info, dict) and isinstance(info.get('port'), int) and info['port'] > 0:
                        self.info = info
                        break
                except (ValueError, OSError):
                    pass  # not written completely yet (should be atomic, but be tolerant here)
            if now() > deadline:
                self.stop()
                raise DaemonError('scopeproxy did not write %s within %.0fs\nstderr:\n%s'
                                  % (self.info_path, self.startup_timeout, self.stderr_text()[-4000:]))
            time.sleep(0.02)
        self.port = self.info['port']
        self.pid = self.proc.pid
        self.started = True
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=5.0):
        """SIGTERM, wait `timeout`, then SIGKILL.  Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            rc = self.proc.poll()
            if rc is not None:
                if self.died_early is None:
                    self.died_early = rc
            else:
                try:
                    self.proc.send_signal(signal.SIGTERM)
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.needed_kill = True
                    self.proc.kill()
                    self.proc.wait(10)
        _unregister_child(self.proc)
        for f in self._files:
            try:
                f.close()
            except Exception:
                pass
        self._files = []
        self._final_stderr = self._read_stderr()
        return self.proc.returncode

    def cleanup(self):
        if self.proc is not None and self.proc.returncode is None:
            self.stop()
        if os.environ.get('SCOPEPROXY_KEEP_TMP'):
            return
        shutil.rmtree(self.tmp, ignore_errors=True)

    def problems(self):
        """Things that are wrong with the process regardless of the test."""
        probs = []
        if self.died_early is not None and self.started:
            probs.append('daemon exited on its own during the test (status %s)' % self.died_early)
        if self.needed_kill:
            probs.append('daemon did not exit within 5s of SIGTERM (had to SIGKILL)')
        rc = self.proc.returncode if self.proc else None
        if rc is not None and rc < 0 and rc not in (-signal.SIGTERM, -signal.SIGKILL):
            probs.append('daemon died from signal %d' % -rc)
        text = self.stderr_text()
        for m in SANITIZER_MARKERS:
            if m in text:
                probs.append('sanitizer report in stderr (%r)' % m)
                break
        return probs

    # -- observation ------------------------------------------------------
    def _read_stderr(self):
        try:
            with open(self.stderr_path, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except OSError:
            return ''

    def stderr_text(self):
        if self._final_stderr is not None:
            return self._final_stderr
        return self._read_stderr()

    def stdout_text(self):
        try:
            with open(self.stdout_path, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except OSError:
            return ''

    def logs(self):
        """Parsed JSON log lines (non-JSON lines are skipped)."""
        out = []
        for line in self.stderr_text().splitlines():
            line = line.strip()
            if not line.startswith('{'):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def wait_log(self, pred, timeout=5.0):
        """First parsed log line for which pred(line) is true, polling until timeout."""
        deadline = now() + timeout
        while True:
            for entry in self.logs():
                try:
                    if pred(entry):
                        return entry
                except Exception:
                    pass
            if now() > deadline:
                return None
            time.sleep(0.05)

    def status(self):
        return proc_status(self.pid)

    def cpu_seconds(self):
        return proc_cpu_seconds(self.pid)

    def tail(self, n=3000):
        return self.stderr_text()[-n:]

    @property
    def url(self):
        return 'http://%s:%d' % (LOOPBACK, self.port)

    @property
    def proxy(self):
        return self.url


# --------------------------------------------------------------------------
# TLS material (openssl CLI)
# --------------------------------------------------------------------------

_tls = None
_tls_lock = threading.Lock()
TLS_NAMES = ('localhost', 'api.openai.com', '*.api.openai.com', 'chatgpt.com', 'chat.openai.com',
             'upstream.test')


def _openssl(args, cwd):
    r = run_cmd(['openssl'] + list(args), timeout=30)
    if r.returncode != 0:
        raise RuntimeError('openssl %s failed: %s' % (' '.join(args), r.stderr.decode()))


def tls_material():
    """Create (once per process) CA + leaf certs in a temp dir.

    Returns a namespace with: dir, ca (PEM path of the trusted test CA),
    cert/key (leaf for TLS_NAMES + 127.0.0.1, signed by ca),
    rogue_ca, rogue_cert/rogue_key (same names, signed by an untrusted CA).
    """
    global _tls
    with _tls_lock:
        if _tls is not None:
            return _tls
        d = tempfile.mkdtemp(prefix='scopeproxy-tls-')
        atexit.register(shutil.rmtree, d, True)
        cnf = os.path.join(d, 'openssl.cnf')
        with open(cnf, 'w') as f:
            f.write('[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n'
                    '[v3_ca]\nbasicConstraints = critical,CA:TRUE\n'
                    'keyUsage = critical,keyCertSign,cRLSign\n'
                    'subjectKeyIdentifier = hash\n')
        san = ','.join(['DNS:%s' % n for n in TLS_NAMES] + ['IP:127.0.0.1'])
        ext = os.path.join(d, 'leaf.ext')
        with open(ext, 'w') as f:
            f.write('basicConstraints = CA:FALSE\n'
                    'keyUsage = critical,digitalSignature\n'
                    'extendedKeyUsage = serverAuth\n'
                    'subjectKeyIdentifier = hash\n'
                    'authorityKeyIdentifier = keyid,issuer\n'
                    'subjectAltName = %s\n' % san)
        for ca in ('ca', 'rogue-ca'):
            _openssl(['req', '-config', cnf, '-x509', '-new', '-newkey', 'ec',
                      '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
                      '-keyout', os.path.join(d, ca + '.key'),
                      '-out', os.path.join(d, ca + '.pem'), '-days', '3',
                      '-subj', '/CN=scopeproxy integration %s' % ca, '-extensions', 'v3_ca'], d)
        for leaf, ca in (('leaf', 'ca'), ('rogue-leaf', 'rogue-ca')):
            _openssl(['req', '-config', cnf, '-new', '-newkey', 'ec',
                      '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
                      '-keyout', os.path.join(d, leaf + '.key'),
                      '-out', os.path.join(d, leaf + '.csr'), '-subj', '/CN=localhost'], d)
            _openssl(['x509', '-req', '-in', os.path.join(d, leaf + '.csr'),
                      '-CA', os.path.join(d, ca + '.pem'), '-CAkey', os.path.join(d, ca + '.key'),
                      '-set_serial', str(int(time.time() * 1000) % 10**12 + (7 if leaf == 'leaf' else 9)),
                      '-days', '3', '-extfile', ext, '-out', os.path.join(d, leaf + '.pem')], d)
        _tls = types.SimpleNamespace(
            dir=d,
            ca=os.path.join(d, 'ca.pem'),
            cert=os.path.join(d, 'leaf.pem'), key=os.path.join(d, 'leaf.key'),
            rogue_ca=os.path.join(d, 'rogue-ca.pem'),
            rogue_cert=os.path.join(d, 'rogue-leaf.pem'), rogue_key=os.path.join(d, 'rogue-leaf.key'))
        return _tls


# --------------------------------------------------------------------------
# Upstream server
# --------------------------------------------------------------------------

class PeerGone(Exception):
    """The proxy closed/reset the upstream connection."""


class UpstreamRequest:
    """One request as the upstream saw it."""

    def __init__(self, conn, index):
        self.conn = conn
        self.conn_id = conn.id
        self.index_on_conn = index     # 0 = first request on that TCP connection
        self.tls = conn.tls
        self.sni = conn.sni
        self.t_first_byte = None
        self.t_head = None
        self.raw_head = b''
        self.method = self.target = self.version = None
        self.headers = []               # [(name, value)] exactly as received (value OWS-stripped)
        self.header_lines = []          # raw header lines (bytes)
        self.framing = 'none'           # 'length' | 'chunked' | 'none'
        self.raw_body = bytearray()     # body bytes as received on the wire (incl. chunk framing)
        self.body = bytearray()         # decoded body (if stored)
        self.store = True
        self.body_received = 0          # decoded bytes so far
        self.body_crc = 0
        self.body_arrivals = []         # [(t, raw_len)] per recv() while reading the body
        self.chunk_sizes = []           # sizes of received chunks (chunked framing)
        self.body_complete = False
        self.body_error = None
        self.t_body_done = None
        self.responded = False
        self.t_done = None

    @property
    def path(self):
        return (self.target or '').split('?', 1)[0]

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header_names(self):
        return [k for k, _ in self.headers]

    def request_line(self):
        return self.raw_head.split(b'\r\n', 1)[0]

    def summary(self):
        return {
            'method': self.method, 'target': self.target, 'version': self.version,
            'headers': [[k, v] for k, v in self.headers],
            'raw_head': self.raw_head.decode('latin-1'),
            'framing': self.framing, 'body_len': self.body_received,
            'body': bytes(self.body).decode('latin-1') if self.store and len(self.body) <= 1 << 20 else None,
            'body_crc32': self.body_crc, 'tls': self.tls, 'sni': self.sni,
            'conn_id': self.conn_id, 'index_on_conn': self.index_on_conn,
        }

    def __repr__(self):
        return '<UpstreamRequest %r conn=%d>' % (self.request_line(), self.conn_id)


class _Conn:
    def __init__(self, server, sock, cid, peer):
        self.server = server
        self.sock = sock
        self.id = cid
        self.peer = peer
        self.buf = bytearray()
        self.eof = False
        self.tls = False
        self.sni = None
        self.tls_error = None
        self.t_open = now()
        self.peer_closed_at = None      # when we saw EOF/RST from the proxy
        self.closed_at = None           # when this side closed
        self.bytes_sent = 0
        self.nreq = 0
        self.cur = None

    # -- receiving --------------------------------------------------------
    def recv_once(self, timeout):
        """One recv() into self.buf; returns number of bytes (0 on EOF)."""
        if self.eof:
            return 0
        try:
            if not (self.tls and self.sock.pending()):
                r, _, _ = select.select([self.sock], [], [], timeout)
                if not r:
                    raise socket.timeout('upstream read timed out')
            data = self.sock.recv(262144)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError) as e:
            if isinstance(e, socket.timeout):
                raise
            data = b''
        if not data:
            self.eof = True
            if self.peer_closed_at is None:
                self.peer_closed_at = now()
            self.server._notify()
            return 0
        t = now()
        if self.cur is not None:
            if self.cur.t_first_byte is None:
                self.cur.t_first_byte = t
            if self.cur.t_head is not None:
                self.cur.body_arrivals.append((t, len(data)))
                self.cur.raw_body += data if self.cur.store else b''
        self.buf += data
        return len(data)

    def wait_peer_close(self, timeout):
        """Sit idle (as a silent upstream does) until the proxy closes the
        connection or `timeout` passes.  True if the peer closed."""
        deadline = now() + timeout
        while not self.eof:
            left = deadline - now()
            if left <= 0:
                return False
            try:
                self.recv_once(min(left, 0.05))
            except socket.timeout:
                pass
        return True

    # -- sending ----------------------------------------------------------
    def send(self, data):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError) as e:
            if self.peer_closed_at is None:
                self.peer_closed_at = now()
            self.eof = True
            self.server._notify()
            raise PeerGone(str(e))
        self.bytes_sent += len(data)

    def reset(self):
        """Abort with RST (SO_LINGER 0)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        except OSError:
            pass
        self.close()

    def close(self):
        if self.closed_at is None:
            self.closed_at = now()
        try:
            self.sock.close()
        except OSError:
            pass
        self.server._notify()

    # -- request parsing --------------------------------------------------
    def read_request(self):
        idle = self.server.keepalive_timeout
        req = UpstreamRequest(self, self.nreq)
        self.cur = req
        if self.buf:
            req.t_first_byte = now()
        while b'\r\n\r\n' not in self.buf:
            if len(self.buf) > self.server.max_head:
                raise ValueError('request head too large')
            try:
                n = self.recv_once(idle if not self.buf else self.server.read_timeout)
            except socket.timeout:
                if not self.buf:
                    return None
                raise
            if n == 0:
                if self.buf:
                    self.server.errors.append('connection %d: EOF inside request head: %r'
                                              % (self.id, bytes(self.buf[:200])))
                return None
        i = self.buf.index(b'\r\n\r\n') + 4
        req.raw_head = bytes(self.buf[:i])
        del self.buf[:i]
        req.t_head = now()
        lines = req.raw_head[:-4].split(b'\r\n')
        parts = lines[0].decode('latin-1').split(' ')
        if len(parts) != 3:
            raise ValueError('bad request line %r' % lines[0])
        req.method, req.target, req.version = parts
        for line in lines[1:]:
            req.header_lines.append(line)
            if line[:1] in (b' ', b'\t'):   # obs-fold: keep it visible
                req.headers.append(('', line.decode('latin-1')))
                continue
            name, _, value = line.decode('latin-1').partition(':')
            req.headers.append((name, value.strip(' \t')))
        te = [v.lower() for v in req.header_all('Transfer-Encoding')]
        cl = req.header_all('Content-Length')
        if any('chunked' in v for v in te):
            req.framing = 'chunked'
        elif cl:
            req.framing = 'length'
        self.nreq += 1
        self.server._add_request(req)
        return req

    def _body_bytes(self, req, want):
        """Up to `want` bytes from the buffer (reading once if empty)."""
        if not self.buf:
            if self.recv_once(self.server.read_timeout) == 0:
                raise PeerGone('EOF in request body')
        n = min(want, len(self.buf))
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _line(self, req):
        while b'\r\n' not in self.buf:
            if len(self.buf) > 65536:
                raise ValueError('chunk line too long')
            if self.recv_once(self.server.read_timeout) == 0:
                raise PeerGone('EOF in chunked body')
        i = self.buf.index(b'\r\n')
        line = bytes(self.buf[:i])
        del self.buf[:i + 2]
        return line

    def read_body(self, req, store=True, hook=None):
        """Read the whole request body according to its framing.
        hook(received_so_far) is called after each piece (may sleep)."""
        req.store = store
        if req.raw_body and not store:
            req.raw_body = bytearray()
        # bytes of the body that arrived together with the head
        if self.buf and req.framing != 'none':
            req.body_arrivals.append((req.t_head, len(self.buf)))
            if store:
                req.raw_body += self.buf

        def got(data):
            req.body_received += len(data)
            req.body_crc = zlib.crc32(data, req.body_crc)
            if store:
                req.body += data
            self.server._notify()
            if hook:
                hook(req.body_received)

        try:
            if req.framing == 'length':
                left = int(req.header_all('Content-Length')[0])
                while left > 0:
                    data = self._body_bytes(req, min(left, 262144))
                    left -= len(data)
                    got(data)
            elif req.framing == 'chunked':
                while True:
                    size_line = self._line(req)
                    size = int(size_line.split(b';', 1)[0].strip(), 16)
                    if size == 0:
                        while self._line(req) != b'':
                            pass
                        break
                    req.chunk_sizes.append(size)
                    left = size
                    while left > 0:
                        data = self._body_bytes(req, left)
                        left -= len(data)
                        got(data)
                    if self._line(req) != b'':
                        raise ValueError('missing CRLF after chunk data')
            req.body_complete = True
            req.t_body_done = now()
        except Exception as e:
            req.body_error = repr(e)
            self.server._notify()
            raise
        finally:
            self.server._notify()


class Ctx:
    """What a behaviour gets: the request and the connection."""

    def __init__(self, server, conn, req):
        self.server = server
        self.conn = conn
        self.req = req

    def read_body(self, store=True, hook=None):
        self.conn.read_body(self.req, store=store, hook=hook)

    def send(self, data):
        self.conn.send(data)

    def wait_peer_close(self, timeout):
        return self.conn.wait_peer_close(timeout)


def _response_head(status, reason, headers):
    lines = ['HTTP/1.1 %d %s' % (status, reason)]
    lines += ['%s: %s' % (k, v) for k, v in headers]
    return ('\r\n'.join(lines) + '\r\n\r\n').encode('latin-1')


def chunk(data):
    """One chunk of chunked transfer coding."""
    return b'%x\r\n' % len(data) + data + b'\r\n'


def _chunk(data):
    return b'%x\r\n' % len(data) + data + b'\r\n'


class Behaviour:
    """Base: read the body, then respond().  respond() returns True to keep
    the connection open for another request."""

    def handle(self, ctx):
        ctx.read_body()
        return self.respond(ctx)

    def respond(self, ctx):
        raise NotImplementedError


class Echo(Behaviour):
    """200 with a JSON body describing the exact request received."""

    def respond(self, ctx):
        body = json.dumps(ctx.req.summary()).encode()
        head = _response_head(200, 'OK', [('Content-Type', 'application/json'),
                                          ('Content-Length', str(len(body)))])
        ctx.send(head if ctx.req.method == 'HEAD' else head + body)
        return True


class Fixed(Behaviour):
    """Fixed status, headers (list, case/order/duplicates kept) and body."""

    def __init__(self, status=200, headers=(), body=b'', reason=None, add_length=True,
                 delay=0.0, close=False):
        self.status = status
        self.headers = list(headers)
        self.body = body if isinstance(body, bytes) else body.encode()
        self.reason = reason or {200: 'OK', 201: 'Created', 204: 'No Content', 301: 'Moved Permanently',
                                 302: 'Found', 303: 'See Other', 304: 'Not Modified',
                                 307: 'Temporary Redirect', 308: 'Permanent Redirect',
                                 404: 'Not Found', 500: 'Internal Server Error'}.get(status, 'Whatever')
        self.add_length = add_length
        self.delay = delay
        self.close = close

    def respond(self, ctx):
        if self.delay and ctx.wait_peer_close(self.delay):
            return False
        headers = list(self.headers)
        no_body = ctx.req.method == 'HEAD' or self.status in (204, 304) or self.status < 200
        if self.add_length and self.status not in (204, 304) and \
                not any(k.lower() in ('content-length', 'transfer-encoding') for k, _ in headers):
            headers.append(('Content-Length', str(len(self.body))))
        if self.close:
            headers.append(('Connection', 'close'))
        ctx.send(_response_head(self.status, self.reason, headers) + (b'' if no_body else self.body))
        return not self.close


class Raw(Behaviour):
    """Send these exact bytes, then close (or keep the connection)."""

    def __init__(self, data, close=True):
        self.data = data
        self.close = close

    def respond(self, ctx):
        ctx.send(self.data)
        return not self.close


class SlowFirstByte(Fixed):
    """Wait `delay` seconds (watching for the proxy to give up) before answering."""

    def __init__(self, delay, **kw):
        Fixed.__init__(self, delay=delay, body=kw.pop('body', b'late\n'), **kw)


class SSE(Behaviour):
    """text/event-stream with `n` events.

    handshake=True: event i+1 is only sent after the test called ack() for
    event i (or ack_timeout passed: counted in ack_timeouts).
    gap=S: sleep S seconds between events.
    chunked=False: no Content-Length, no chunking, end = connection close.
    hold=S: after the events, stay silent for up to S seconds (watching for
    the proxy to close the connection) before finishing.
    """

    def __init__(self, n=5, gap=None, handshake=False, chunked=True, ack_timeout=5.0,
                 hold=0.0, pad=0):
        self.n = n
        self.gap = gap
        self.handshake = handshake
        self.chunked = chunked
        self.ack_timeout = ack_timeout
        self.hold = hold
        self.pad = pad
        self._acks = threading.Semaphore(0)
        self.sent_at = []
        self.ack_timeouts = 0
        self.peer_closed_during_hold = None
        self.finished = threading.Event()

    def ack(self):
        self._acks.release()

    @staticmethod
    def event_bytes(i, pad=0):
        return ('id: %d\nevent: message\ndata: {"seq": %d, "pad": "%s"}\n\n' % (i, i, 'x' * pad)).encode()

    def respond(self, ctx):
        headers = [('Content-Type', 'text/event-stream'), ('Cache-Control', 'no-cache')]
        headers.append(('Transfer-Encoding', 'chunked') if self.chunked else ('Connection', 'close'))
        try:
            ctx.send(_response_head(200, 'OK', headers))
            for i in range(self.n):
                if i > 0:
                    if self.handshake:
                        if not self._acks.acquire(timeout=self.ack_timeout):
                            self.ack_timeouts += 1
                    elif self.gap:
                        time.sleep(self.gap)
                ev = self.event_bytes(i, self.pad)
                self.sent_at.append(now())
                ctx.send(_chunk(ev) if self.chunked else ev)
            if self.hold:
                self.peer_closed_during_hold = ctx.wait_peer_close(self.hold)
                if self.peer_closed_during_hold:
                    return False
            if self.chunked:
                ctx.send(b'0\r\n\r\n')
                return True
            return False
        finally:
            self.finished.set()


class Reset(Behaviour):
    """Start a response, send some body, then RST the connection."""

    def __init__(self, chunks=3, size=1000, delay=0.2, chunked=True, content_length=None):
        self.chunks = chunks
        self.size = size
        self.delay = delay
        self.chunked = chunked
        self.content_length = content_length
        self.done = threading.Event()

    def respond(self, ctx):
        headers = [('Content-Type', 'application/octet-stream')]
        if self.chunked:
            headers.append(('Transfer-Encoding', 'chunked'))
        else:
            headers.append(('Content-Length', str(self.content_length)))
        ctx.send(_response_head(200, 'OK', headers))
        for i in range(self.chunks):
            data = bytes([65 + i % 26]) * self.size
            ctx.send(_chunk(data) if self.chunked else data)
            time.sleep(self.delay)
        ctx.conn.reset()
        self.done.set()
        return False


PATTERN = bytes(range(256)) * 256   # 64 KiB


def pattern_crc(size):
    crc = 0
    full, rest = divmod(size, len(PATTERN))
    for _ in range(full):
        crc = zlib.crc32(PATTERN, crc)
    return zlib.crc32(PATTERN[:rest], crc)


class Download(Behaviour):
    """`size` bytes of PATTERN, Content-Length (or chunked) framing.
    `sent` tracks progress (so tests can observe backpressure)."""

    def __init__(self, size, chunked=False, sndbuf=None):
        self.size = size
        self.chunked = chunked
        self.sndbuf = sndbuf
        self.sent = 0
        self.done = threading.Event()
        self.error = None

    def respond(self, ctx):
        if self.sndbuf:
            ctx.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        headers = [('Content-Type', 'application/octet-stream')]
        headers.append(('Transfer-Encoding', 'chunked') if self.chunked
                       else ('Content-Length', str(self.size)))
        ctx.send(_response_head(200, 'OK', headers))
        left = self.size
        try:
            while left > 0:
                block = PATTERN if left >= len(PATTERN) else PATTERN[:left]
                ctx.send(_chunk(block) if self.chunked else block)
                left -= len(block)
                self.sent += len(block)
            if self.chunked:
                ctx.send(b'0\r\n\r\n')
        except PeerGone as e:
            self.error = str(e)
            raise
        finally:
            self.done.set()
        return True


class Sink(Behaviour):
    """Count the request body (not stored); optionally stop reading for
    `pause` seconds once `pause_after` bytes arrived.  Answers JSON
    {"bytes": N, "crc32": C}."""

    def __init__(self, pause_after=None, pause=0.0, store=False):
        self.pause_after = pause_after
        self.pause = pause
        self.store = store
        self.paused = threading.Event()
        self.resumed = threading.Event()
        self.req = None

    def handle(self, ctx):
        self.req = ctx.req
        state = {'paused': False}

        def hook(n):
            if self.pause_after is not None and not state['paused'] and n >= self.pause_after:
                state['paused'] = True
                self.paused.set()
                time.sleep(self.pause)
                self.resumed.set()

        ctx.read_body(store=self.store, hook=hook)
        body = json.dumps({'bytes': ctx.req.body_received, 'crc32': ctx.req.body_crc}).encode()
        ctx.send(_response_head(200, 'OK', [('Content-Type', 'application/json'),
                                            ('Content-Length', str(len(body)))]) + body)
        return True


class EarlyAnswer(Behaviour):
    """Answer right after the request head, before reading the body (like an
    origin refusing an upload), then drain the body politely and close."""

    def __init__(self, status=401, body=b'{"error":{"message":"no"}}', headers=(('Content-Type', 'application/json'),)):
        self.status = status
        self.body = body
        self.headers = list(headers)

    def handle(self, ctx):
        headers = self.headers + [('Content-Length', str(len(self.body))), ('Connection', 'close')]
        ctx.send(_response_head(self.status, 'Early', headers) + self.body)
        try:
            ctx.read_body(store=False)
        except (PeerGone, OSError, ValueError):
            pass
        return False


class CloseBeforeAnswer(Behaviour):
    """Read the request, then close (FIN, or RST with reset=True) without answering."""

    def __init__(self, reset=False):
        self.reset = reset

    def respond(self, ctx):
        if self.reset:
            ctx.conn.reset()
        else:
            ctx.conn.close()
        return False


class UpstreamServer:
    """Threaded raw-socket HTTP/1.1 origin server on 127.0.0.1.

    server.route('/prefix', behaviour) -- longest matching prefix of the
    request path wins; default behaviour is Echo().
    server.requests -- every UpstreamRequest, in arrival order (live).
    """

    def __init__(self, tls=False, cert=None, key=None, backlog=128, keepalive_timeout=60.0,
                 read_timeout=30.0, accept=True, rcvbuf=None, dual=False, port=0):
        # dual: one port answers plain HTTP and TLS alike (a first byte of
        # 0x16 is a TLS handshake), so one server can stand in for a host
        # on :80 and :443 and every request says which way it came.
        self.dual = dual
        tls = tls or dual
        self.routes = {}
        self.default = Echo()
        self.requests = []
        self.connections = []
        self.errors = []
        self.tls_errors = []
        self.keepalive_timeout = keepalive_timeout
        self.read_timeout = read_timeout
        self.max_head = 1 << 20
        self._cond = threading.Condition()
        self._closing = False
        self._threads = []
        self.ssl_ctx = None
        self.sni_names = []
        if tls:
            m = tls_material()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert or m.cert, key or m.key)
            ctx.set_alpn_protocols(['http/1.1'])
            ctx.sni_callback = self._sni
            self.ssl_ctx = ctx
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf:
            # inherited by accepted sockets; bounds what the kernel buffers for us
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((LOOPBACK, port))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self._ids = 0
        _servers.add(self)
        if accept:
            t = threading.Thread(target=self._accept_loop, name='upstream-accept-%d' % self.port,
                                 daemon=True)
            t.start()
            self._threads.append(t)

    @property
    def tls(self):
        return self.ssl_ctx is not None

    def origin(self, host=LOOPBACK):
        return '%s://%s:%d' % ('https' if self.tls else 'http', host, self.port)

    def url(self, path='/', host=LOOPBACK):
        return self.origin(host) + path

    def route(self, prefix, behaviour):
        self.routes[prefix] = behaviour
        return behaviour

    def _lookup(self, path):
        best = None
        for p in self.routes:
            if path.startswith(p) and (best is None or len(p) > len(best)):
                best = p
        return self.routes[best] if best is not None else self.default

    def _sni(self, sslsock, name, ctx):
        self.sni_names.append(name)
        try:
            sslsock._scopeproxy_sni = name
        except Exception:
            pass
        return None

    def _notify(self):
        with self._cond:
            self._cond.notify_all()

    def _add_request(self, req):
        # The one rule every suite checks: a minted credential never
        # travels on a plaintext connection.
        for v in req.header_all('Authorization'):
            if v.startswith('AgentAssertion') and not req.tls:
                self.errors.append('connection %d: an AgentAssertion arrived over '
                                   'plaintext: %r' % (req.conn_id, req.request_line()))
        with self._cond:
            self.requests.append(req)
            self._cond.notify_all()

    def wait(self, pred, timeout=5.0):
        """Wait until pred() is true; returns its last value."""
        deadline = now() + timeout
        with self._cond:
            while True:
                v = pred()
                if v:
                    return v
                left = deadline - now()
                if left <= 0:
                    return v
                self._cond.wait(min(left, 0.05))

    def wait_request(self, pred=None, timeout=5.0):
        def find():
            for r in self.requests:
                if pred is None or pred(r):
                    return r
            return None
        return self.wait(find, timeout)

    def wait_done(self, req, timeout=5.0):
        return self.wait(lambda: req.t_done is not None, timeout)

    def _accept_loop(self):
        while not self._closing:
            try:
                s, addr = self.sock.accept()
            except OSError:
                return
            self._ids += 1
            conn = _Conn(self, s, self._ids, addr)
            with self._cond:
                self.connections.append(conn)
                self._cond.notify_all()
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                 name='upstream-conn-%d-%d' % (self.port, conn.id))
            t.start()
            self._threads.append(t)

    def _serve(self, conn):
        try:
            if self.dual:
                conn.sock.settimeout(10)
                try:
                    first = conn.sock.recv(1, socket.MSG_PEEK)
                except (socket.timeout, OSError):
                    return
                conn.sock.settimeout(None)
            if self.ssl_ctx is not None and (not self.dual or first == b'\x16'):
                conn.sock.settimeout(10)
                try:
                    conn.sock = self.ssl_ctx.wrap_socket(conn.sock, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    conn.tls_error = repr(e)
                    self.tls_errors.append(repr(e))
                    return
                conn.tls = True
                conn.sni = getattr(conn.sock, '_scopeproxy_sni', None)
                conn.sock.settimeout(None)
            while not self._closing:
                try:
                    req = conn.read_request()
                except socket.timeout:
                    return
                if req is None:
                    return
                beh = self._lookup(req.path)
                try:
                    keep = beh.handle(Ctx(self, conn, req))
                finally:
                    req.t_done = now()
                    req.responded = True
                    self._notify()
                if not keep or conn.eof or conn.closed_at is not None:
                    return
                if any(v.lower() == 'close' for v in req.header_all('Connection')):
                    return
        except PeerGone:
            pass
        except Exception:
            if not self._closing:
                self.errors.append('connection %d: %s' % (conn.id, traceback.format_exc()))
        finally:
            conn.close()

    def close(self):
        self._closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)   # wakes the blocked accept()
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        for c in list(self.connections):
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        for t in self._threads:
            t.join(2)
        _servers.discard(self)


def audit_records(path):
    """The audit log's complete lines, parsed ([] when there is no file).
    The daemon writes each line with one write(2), but a read can land
    while a line that crosses a page boundary is half copied in, so the
    unfinished tail is left for the next read."""
    try:
        with open(path, 'rb') as f:
            data = f.read().decode('utf-8')
    except OSError:
        return []
    return [json.loads(x) for x in data[:data.rfind('\n') + 1].splitlines() if x.strip()]


def free_port():
    """A loopback port nobody listens on (bound and released)."""
    s = socket.socket()
    s.bind((LOOPBACK, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class GreetingListener:
    """Accepts connections, immediately writes `greeting`, then closes:
    a plain-HTTP (or any non-TLS) peer that answers a TLS ClientHello at once."""

    def __init__(self, greeting=b'HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'):
        self.greeting = greeting
        self.sock = socket.socket()
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                c.recv(65536)
                c.sendall(self.greeting)
            except OSError:
                pass
            c.close()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._t.join(2)


class BlackholeListener:
    """A listener whose accept queue is full, so new connects hang (SYN dropped)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(2):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect((LOOPBACK, self.port))
            except (BlockingIOError, OSError):
                pass
            self.fillers.append(c)
        time.sleep(0.05)

    def close(self):
        for c in self.fillers:
            c.close()
        self.sock.close()


# --------------------------------------------------------------------------
# Raw client
# --------------------------------------------------------------------------

class NoResponse(Exception):
    """The connection closed (or timed out) before a status line arrived."""

    def __init__(self, msg, data=b''):
        Exception.__init__(self, '%s; bytes received: %r' % (msg, data[:500]))
        self.data = data


class Response:
    def __init__(self):
        self.version = None
        self.status = None
        self.reason = None
        self.headers = []         # [(name, value)] exactly as received
        self.raw_head = b''
        self.body = b''
        self.framing = None       # 'chunked' | 'length' | 'close' | 'none'
        self.complete = False     # body ended by its framing (not by EOF/RST)
        self.interim = []         # 1xx responses seen before this one
        self.t_head = None
        self.error = None

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header_names(self):
        return [k for k, _ in self.headers]

    def json(self):
        return json.loads(self.body.decode('utf-8'))

    def __repr__(self):
        return '<Response %s %s headers=%r body=%r framing=%s complete=%s>' % (
            self.status, self.reason, self.headers, self.body[:300], self.framing, self.complete)


class HTTPClient:
    """A raw TCP client to the proxy."""

    def __init__(self, port, host=LOOPBACK, timeout=10.0, rcvbuf=None, sndbuf=None):
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = bytearray()
        self.eof = False
        self.eof_error = None
        self.sent = 0

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        self.sock.sendall(data)
        self.sent += len(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        """Close with RST."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        except OSError:
            pass
        self.close()

    def _fill(self, timeout=None):
        if self.eof:
            return 0
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            data = self.sock.recv(262144)
        except (ConnectionResetError, BrokenPipeError) as e:
            self.eof_error = repr(e)
            data = b''
        if not data:
            self.eof = True
            return 0
        self.buf += data
        return len(data)

    def _read_line(self, timeout=None):
        while b'\r\n' not in self.buf:
            if len(self.buf) > (4 << 20):
                raise NoResponse('line too long', bytes(self.buf))
            if self._fill(timeout) == 0:
                return None
        i = self.buf.index(b'\r\n')
        line = bytes(self.buf[:i])
        del self.buf[:i + 2]
        return line

    def read_head(self, method='GET', timeout=None):
        """Status line + headers of the final response (1xx are collected in
        .interim).  The body is left unread."""
        resp = Response()
        while True:
            while b'\r\n\r\n' not in self.buf:
                try:
                    n = self._fill(timeout)
                except socket.timeout:
                    raise NoResponse('timed out waiting for response head', bytes(self.buf))
                if n == 0:
                    raise NoResponse('connection closed before response head (%s)'
                                     % (self.eof_error or 'EOF'), bytes(self.buf))
            i = self.buf.index(b'\r\n\r\n') + 4
            raw = bytes(self.buf[:i])
            del self.buf[:i]
            lines = raw[:-4].split(b'\r\n')
            m = re.match(rb'^(HTTP/\d\.\d) (\d{3})(?: (.*))?$', lines[0])
            if not m:
                raise NoResponse('bad status line', raw)
            status = int(m.group(2))
            headers = []
            for line in lines[1:]:
                k, _, v = line.decode('latin-1').partition(':')
                headers.append((k, v.strip(' \t')))
            if 100 <= status < 200 and status != 101:
                resp.interim.append((status, headers))
                continue
            resp.version = m.group(1).decode()
            resp.status = status
            resp.reason = (m.group(3) or b'').decode('latin-1')
            resp.headers = headers
            resp.raw_head = raw
            resp.t_head = now()
            break
        te = ','.join(resp.header_all('Transfer-Encoding')).lower()
        if method == 'HEAD' or status in (204, 304):
            resp.framing = 'none'
        elif 'chunked' in te:
            resp.framing = 'chunked'
        elif resp.header('Content-Length') is not None:
            resp.framing = 'length'
        else:
            resp.framing = 'close'
        resp._left = None
        resp._state = 'size'
        if resp.framing == 'none':
            resp.complete = True
        return resp

    def iter_body(self, resp, timeout=None):
        """Yield (arrival_time, data) for the decoded body as it arrives.
        Sets resp.complete if the framing ended properly."""
        if resp.framing == 'none':
            resp.complete = True
            return
        if resp.framing == 'length':
            left = int(resp.header('Content-Length'))
            while left > 0:
                if not self.buf and self._fill(timeout) == 0:
                    return
                data = bytes(self.buf[:left])
                del self.buf[:len(data)]
                left -= len(data)
                yield now(), data
            resp.complete = True
            return
        if resp.framing == 'close':
            while True:
                if self.buf:
                    data = bytes(self.buf)
                    self.buf.clear()
                    yield now(), data
                if self._fill(timeout) == 0:
                    # EOF: a close-delimited body cannot signal truncation.
                    resp.complete = self.eof_error is None
                    return
        # chunked
        while True:
            line = self._read_line(timeout)
            if line is None:
                return
            try:
                size = int(line.split(b';', 1)[0].strip(), 16)
            except ValueError:
                resp.error = 'bad chunk size line %r' % line
                return
            if size == 0:
                while True:
                    tl = self._read_line(timeout)
                    if tl is None:
                        return
                    if tl == b'':
                        resp.complete = True
                        return
            left = size
            while left > 0:
                if not self.buf and self._fill(timeout) == 0:
                    return
                data = bytes(self.buf[:left])
                del self.buf[:len(data)]
                left -= len(data)
                yield now(), data
            crlf = self._read_line(timeout)
            if crlf != b'':
                if crlf is not None:
                    resp.error = 'missing CRLF after chunk'
                return

    def read_body(self, resp, timeout=None):
        parts = [d for _, d in self.iter_body(resp, timeout)]
        resp.body = b''.join(parts)
        return resp

    def read_response(self, method='GET', timeout=None):
        resp = self.read_head(method, timeout)
        return self.read_body(resp, timeout)

    def drain_body(self, resp, timeout=None):
        """Read the body counting bytes and crc32 without keeping it."""
        n = 0
        crc = 0
        for _, data in self.iter_body(resp, timeout):
            n += len(data)
            crc = zlib.crc32(data, crc)
        return n, crc

    def wait_closed(self, timeout=5.0):
        """True if the server closes the connection within timeout (data is discarded)."""
        deadline = now() + timeout
        while not self.eof:
            left = deadline - now()
            if left <= 0:
                return False
            try:
                self._fill(left)
            except socket.timeout:
                return False
            self.buf.clear()
        return True


def request(port, data, method=None, timeout=10.0):
    """Send raw bytes on a fresh connection, return the parsed Response."""
    if method is None:
        method = data.split(b' ', 1)[0].decode('latin-1')
    with HTTPClient(port, timeout=timeout) as c:
        c.send(data)
        return c.read_response(method)


def sse_events(client, resp, count, on_event=None, timeout=15.0):
    """Read `count` SSE events; returns [(arrival_time, text)].  on_event(i)
    is called as soon as event i is complete."""
    out = []
    pending = b''
    for t, data in client.iter_body(resp, timeout):
        pending += data
        while b'\n\n' in pending:
            ev, pending = pending.split(b'\n\n', 1)
            out.append((t, ev.decode()))
            if on_event:
                on_event(len(out) - 1)
            if len(out) == count:
                return out
    return out


# --------------------------------------------------------------------------
# curl
# --------------------------------------------------------------------------

def curl(*args, timeout=30):
    """Run curl with no proxy environment; returns CompletedProcess (bytes)."""
    cmd = ['curl', '-sS', '--max-time', str(int(timeout))] + [str(a) for a in args]
    return run_cmd(cmd, timeout=timeout + 10, env=clean_env())


# --------------------------------------------------------------------------
# unittest glue
# --------------------------------------------------------------------------

class TestTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise TestTimeout('test exceeded its time limit')


class ProxyTestCase(unittest.TestCase):
    TIMEOUT = 60          # seconds per test (SIGALRM)
    maxDiff = None

    def setUp(self):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGALRM, _alarm)
            signal.alarm(self.TIMEOUT)
            self.addCleanup(signal.alarm, 0)

    # -- fixtures ---------------------------------------------------------
    def start_daemon(self, *args, **kw):
        d = Daemon(*args, **kw)
        self.addCleanup(self._finish_daemon, d)
        d.start()
        return d

    def _finish_daemon(self, d):
        try:
            d.stop()
            probs = d.problems()
            text = d.stderr_text()
            if SECRET in text:
                probs.append('the client credential %r appears in the daemon log' % SECRET)
            if probs:
                self.fail('daemon problems: %s\n(cmd: %s)\n--- stderr tail ---\n%s'
                          % ('; '.join(probs), ' '.join(d.command()), d.tail()))
        finally:
            d.cleanup()

    def start_upstream(self, **kw):
        u = UpstreamServer(**kw)
        self.addCleanup(self._finish_upstream, u)
        return u

    def _finish_upstream(self, u):
        u.close()
        if u.errors:
            self.fail('upstream %d saw malformed traffic from the proxy:\n%s'
                      % (u.port, '\n'.join(u.errors)[-3000:]))

    # -- assertions -------------------------------------------------------
    def assertProxyError(self, resp, status, code, daemon=None):
        """The proxy's own error: status, X-Scopeproxy-Error, OpenAI-shaped JSON."""
        ctx = '\nresponse: %r' % resp
        if daemon is not None:
            ctx += '\n--- daemon stderr tail ---\n%s' % daemon.tail(1500)
        self.assertEqual(resp.status, status, 'status' + ctx)
        self.assertEqual(resp.header('X-Scopeproxy-Error'), code, 'X-Scopeproxy-Error header' + ctx)
        ctype = resp.header('Content-Type') or ''
        self.assertTrue(ctype.lower().startswith('application/json'), 'Content-Type %r%s' % (ctype, ctx))
        try:
            doc = resp.json()
        except ValueError as e:
            self.fail('error body is not JSON (%s)%s' % (e, ctx))
        self.assertIsInstance(doc, dict, ctx)
        self.assertIn('error', doc, ctx)
        err = doc['error']
        self.assertIsInstance(err, dict, ctx)
        for k in ('message', 'type', 'code', 'param'):
            self.assertIn(k, err, 'error.%s missing%s' % (k, ctx))
        self.assertIsInstance(err['message'], str, ctx)
        self.assertTrue(err['message'], 'empty error message' + ctx)
        self.assertIsInstance(err['type'], str, ctx)
        self.assertEqual(err['code'], code, 'error.code' + ctx)
        self.assertIsNone(err['param'], 'error.param' + ctx)
        self.assertNotIn(SECRET, resp.body.decode('utf-8', 'replace'), 'credential echoed in error body')
        return err

    def assertNoUpstreamRequest(self, upstream, grace=0.3):
        time.sleep(grace)
        self.assertEqual(upstream.requests, [], 'upstream must not have received anything')


def main():
    unittest.main(verbosity=2)
