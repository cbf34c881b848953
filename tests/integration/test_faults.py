#!/usr/bin/python3
"""Faults: what a client sees when an upstream, a client, the auth file,
the registration server or the process itself misbehaves, and that the
daemon keeps answering others meanwhile.

Every case states what the client must see (status, a clean or an
incomplete end, how soon the connection closes), waits only for bounded
times, and checks that /healthz and a proxied GET still answer.

  * upstream resets: before the head, mid-head, after the head, mid-body,
    mid-chunk;
  * upstream silence (--connect-timeout, --idle-timeout) and client
    silence (--client-idle-timeout): connect never completes, accepted but
    nothing, a partial head, a stalled body, a client that sends nothing
    or half a head;
  * malformed answers: bad status line, bad chunk size mid-body,
    Content-Length too short / too long;
  * client aborts: mid-upload, mid-download, while parked on a
    registration;
  * backpressure: a client that stops reading pauses the upstream, an
    upstream that stops reading pauses the client, a trickling upstream;
    nothing is lost (sha256 of several MB);
  * auth.json rotated under load (every assertion that reached the
    upstream verifies with the key of its task), SIGHUP and SIGTERM under
    load;
  * registration server down, answering 500, slow;
  * the same kinds of fault inside an intercepted tunnel (CONNECT
    api.openai.com, the proxy's CA);
  * WebSocket relays: upstream hangs up, client hangs up, a peer that
    stops reading;
  * resource faults: descriptor exhaustion (RLIMIT_NOFILE), hundreds of
    CONNECTs to unresolvable names.

Run: SCOPEPROXY_BIN=proxy/scopeproxy SCOPEPROXY_SRCDIR=. /usr/bin/python3 \
         tests/integration/test_faults.py
"""

import base64
import hashlib
import json
import os
import resource
import selectors
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

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import (LOOPBACK, PATTERN, SECRET, SSE, Behaviour, BlackholeListener,  # noqa: E402
                     CloseBeforeAnswer, Daemon, Download, HTTPClient, NoResponse, ProxyTestCase,
                     Raw, Reset, clean_env, free_port, main, proc_cpu_seconds, proc_status,
                     request, run_cmd, scopeproxy_bin, tls_material)
import agentid  # noqa: E402
from agentid import (SPEC_SEED, SPEC_V2_B64, auth_doc, identity_record,  # noqa: E402
                     key_of, parse_assertion, task_in_assertion)


def now():
    return time.monotonic()


MB = 1 << 20
RUNTIME = 'agent-123'
TASK_ID = 'task-faults-0c4d2e'
OTHER_SEED = b'\x09' * 32
REG_BASE = 'https://chatgpt.com/backend-api'
GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'
# Slack for timing on a shared two-core machine.
SLACK = 1.5


def pattern_sha(size):
    h = hashlib.sha256()
    full, rest = divmod(size, len(PATTERN))
    for _ in range(full):
        h.update(PATTERN)
    h.update(PATTERN[:rest])
    return h.hexdigest()


def abs_get(port, path, extra=b'', host=None):
    hp = (host or '127.0.0.1:%d' % port).encode()
    return (b'GET http://' + hp + path.encode() + b' HTTP/1.1\r\nHost: ' + hp + b'\r\n' + extra
            + b'\r\n')


def record(task=TASK_ID, key_b64=SPEC_V2_B64):
    return auth_doc(identity_record(key_b64=key_b64, runtime=RUNTIME, account='acct-faults',
                                    user='user-faults',
                                    **({} if task is None else {'task_id': task})))


def read_until_close(c, resp, limit):
    """Read resp's body until its framing ends or the connection closes, with
    at most `limit` seconds of silence.  Returns (closed, seconds)."""
    t0 = now()
    try:
        c.read_body(resp, timeout=limit)
    except (socket.timeout, TimeoutError):
        return False, now() - t0
    except (ssl.SSLError, OSError):
        c.eof = True
    return c.eof, now() - t0


class TLSClient(HTTPClient):
    """HTTPClient whose socket may become TLS; a TLS-level EOF is an EOF."""

    def _fill(self, timeout=None):
        try:
            return HTTPClient._fill(self, timeout)
        except (ssl.SSLError, OSError) as e:
            if isinstance(e, (socket.timeout, TimeoutError)):
                raise
            self.eof = True
            self.eof_error = repr(e)
            return 0


class Fn(Behaviour):
    """A scripted upstream answer: fn(ctx) sends raw bytes, resets, stays
    silent...; returns True to keep the connection."""

    def __init__(self, fn, read_body=True):
        self.fn = fn
        self.read = read_body
        self.events = {}
        self.peer_closed = threading.Event()

    def mark(self, name):
        self.events[name] = now()

    def handle(self, ctx):
        if self.read:
            ctx.read_body()
        return self.fn(self, ctx)

    def hold(self, ctx, seconds):
        """Stay silent until the proxy closes (recorded) or `seconds` pass."""
        if ctx.wait_peer_close(seconds):
            self.mark('peer_closed')
            self.peer_closed.set()
            return True
        return False


class RawUpstream:
    """A raw TCP upstream: handler(conn_sock, server) per accepted connection,
    each in its own thread.  Used for WebSocket peers."""

    def __init__(self, handler):
        self.handler = handler
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.errors = []
        self.info = {}
        self.cond = threading.Condition()
        self._closing = False
        self._threads = []
        t = threading.Thread(target=self._loop, daemon=True)
        t.start()
        self._threads.append(t)

    def _loop(self):
        while not self._closing:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            with self.cond:
                self.conns.append(s)
                self.cond.notify_all()
            t = threading.Thread(target=self._run, args=(s,), daemon=True)
            t.start()
            self._threads.append(t)

    def _run(self, s):
        try:
            self.handler(s, self)
        except Exception as e:          # noqa: BLE001 (reported by the test)
            if not self._closing:
                self.errors.append(repr(e))
        finally:
            try:
                s.close()
            except OSError:
                pass

    def note(self, key, value=None):
        with self.cond:
            self.info[key] = now() if value is None else value
            self.cond.notify_all()

    def wait(self, key, timeout):
        deadline = now() + timeout
        with self.cond:
            while key not in self.info and now() < deadline:
                self.cond.wait(0.05)
            return self.info.get(key)

    def close(self):
        self._closing = True
        try:
            self.sock.close()
        except OSError:
            pass
        for s in list(self.conns):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(2)


def ws_frame(opcode, payload, mask=True):
    n = len(payload)
    b0 = 0x80 | opcode
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack('!H', n)
    else:
        head = bytes([b0, m | 127]) + struct.pack('!Q', n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    rep = (key * (n // 4 + 1))[:n]
    return head + key + (int.from_bytes(payload, 'big') ^ int.from_bytes(rep, 'big')).to_bytes(n, 'big')


def ws_accept(sock, timeout=5.0):
    """Read a WebSocket handshake and answer 101; returns the request head."""
    sock.settimeout(timeout)
    buf = b''
    while b'\r\n\r\n' not in buf:
        b = sock.recv(65536)
        if not b:
            raise ConnectionError('EOF in handshake')
        buf += b
    head = buf.split(b'\r\n\r\n', 1)[0].decode('latin-1')
    key = None
    for line in head.split('\r\n')[1:]:
        k, _, v = line.partition(':')
        if k.strip().lower() == 'sec-websocket-key':
            key = v.strip()
    acc = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    sock.sendall(('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
                  'Sec-WebSocket-Accept: %s\r\n\r\n' % acc).encode())
    return head


def ws_handshake(port, upstream_port, path='/ws'):
    hp = '127.0.0.1:%d' % upstream_port
    key = base64.b64encode(os.urandom(16)).decode()
    return ('GET http://%s%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
            'Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n' % (hp, path, hp, key)).encode()


def wait_eof(sock, timeout):
    """Read (discarding) until EOF/RST; the time it came, or None."""
    deadline = now() + timeout
    while True:
        left = deadline - now()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            b = sock.recv(262144)
        except (socket.timeout, TimeoutError):
            return None
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            return now()
        if not b:
            return now()


# --------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------

class FaultCase(ProxyTestCase):
    TIMEOUT = 40

    def setUp(self):
        super().setUp()
        self.work = tempfile.mkdtemp(prefix='scopeproxy-faults-')
        self.addCleanup(shutil.rmtree, self.work, True)
        self.good = self.start_upstream()
        self._n = 0

    def path(self, name):
        self._n += 1
        return os.path.join(self.work, '%d-%s' % (self._n, name))

    def write_auth(self, doc, path=None):
        path = path or self.path('auth.json')
        agentid.write_auth(path, doc, 0o600)
        return path

    def scripted(self, route, fn, read_body=True, **kw):
        up = self.start_upstream(**kw)
        beh = up.route(route, Fn(fn, read_body))
        return up, beh

    def assertHealthy(self, d, what=''):
        """/healthz and a proxied GET answer promptly."""
        t0 = now()
        try:
            r = request(d.port, b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n',
                        timeout=5)
        except (NoResponse, OSError) as e:
            self.fail('%s: /healthz got no answer: %s\n%s' % (what, e, d.tail(2000)))
        self.assertEqual(r.status, 200, '%s: /healthz %r' % (what, r))
        try:
            r = request(d.port, abs_get(self.good.port, '/health-%d' % self._n,
                                        b'Connection: close\r\n'), timeout=5)
        except (NoResponse, OSError) as e:
            self.fail('%s: a proxied GET got no answer: %s\n%s' % (what, e, d.tail(2000)))
        self.assertEqual(r.status, 200, '%s: proxied GET %r' % (what, r))
        self.assertTrue(r.complete, r)
        self.assertLess(now() - t0, 3.0, '%s: healthz + proxied GET took %.1fs' % (what, now() - t0))

    def assertClosedSoon(self, c, resp, limit, what):
        closed, took = read_until_close(c, resp, limit)
        self.assertTrue(closed, '%s: the client connection is still open %.1fs later (body so far %d '
                        'bytes)' % (what, took, len(resp.body)))
        self.assertFalse(resp.complete, '%s: a truncated body must not end cleanly: %r' % (what, resp))
        return took


# --------------------------------------------------------------------------
# Upstream resets at each stage
# --------------------------------------------------------------------------

class UpstreamResets(FaultCase):

    def setUp(self):
        super().setUp()
        self.d = self.start_daemon('--idle-timeout', '5', '--connect-timeout', '2')

    def fetch(self, up, path):
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(abs_get(up.port, path))
        return c

    def test_reset_before_head(self):
        # What the client sees: 502 upstream_unreachable or
        # upstream_protocol_error (the proxy's own JSON error).
        up = self.start_upstream()
        up.route('/', CloseBeforeAnswer(reset=True))
        t0 = now()
        c = self.fetch(up, '/rst')
        resp = c.read_response(timeout=5)
        self.assertLess(now() - t0, 2.0)
        self.assertEqual(resp.status, 502, resp)
        self.assertIn(resp.header('X-Scopeproxy-Error'), ('upstream_unreachable', 'upstream_protocol_error'),
                      resp)
        self.assertHealthy(self.d, 'after a reset before the head')

    def test_close_before_head(self):
        up = self.start_upstream()
        up.route('/', CloseBeforeAnswer(reset=False))
        resp = self.fetch(up, '/fin').read_response(timeout=5)
        self.assertEqual(resp.status, 502, resp)
        self.assertIn(resp.header('X-Scopeproxy-Error'), ('upstream_unreachable', 'upstream_protocol_error'),
                      resp)
        self.assertHealthy(self.d, 'after a close before the head')

    def test_reset_mid_head(self):
        def fn(b, ctx):
            ctx.send(b'HTTP/1.1 200 OK\r\nContent-Type: text/pl')
            time.sleep(0.2)
            ctx.conn.reset()
            return False
        up, _ = self.scripted('/', fn)
        t0 = now()
        resp = self.fetch(up, '/midhead').read_response(timeout=5)
        self.assertLess(now() - t0, 2.0)
        self.assertEqual(resp.status, 502, 'a torn head must become the proxy\'s 502: %r' % resp)
        self.assertIsNotNone(resp.header('X-Scopeproxy-Error'), resp)
        self.assertHealthy(self.d, 'after a reset mid-head')

    def test_reset_after_head(self):
        # Head sent (Content-Length 5000), no body, RST: the client has its
        # 200 and must see the body end early and the connection close.
        def fn(b, ctx):
            ctx.send(b'HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n')
            time.sleep(0.3)
            b.mark('reset')
            ctx.conn.reset()
            return False
        up, beh = self.scripted('/', fn)
        c = self.fetch(up, '/afterhead')
        resp = c.read_head(timeout=5)
        self.assertEqual(resp.status, 200, resp)
        self.assertClosedSoon(c, resp, 1.0 + SLACK, 'reset after the head')
        self.assertHealthy(self.d, 'after a reset after the head')

    def test_reset_mid_body_length(self):
        up = self.start_upstream()
        up.route('/', Reset(chunks=2, size=1000, delay=0.1, chunked=False, content_length=10000))
        c = self.fetch(up, '/midbody')
        resp = c.read_head(timeout=5)
        self.assertEqual(resp.status, 200, resp)
        self.assertClosedSoon(c, resp, 1.0 + SLACK, 'reset mid-body (Content-Length)')
        self.assertLessEqual(len(resp.body), 2000, resp)
        self.assertHealthy(self.d, 'after a reset mid-body')

    def test_reset_mid_chunk(self):
        def fn(b, ctx):
            ctx.send(b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'
                     b'5\r\nhello\r\n1000\r\n' + b'x' * 100)
            time.sleep(0.2)
            ctx.conn.reset()
            return False
        up, _ = self.scripted('/', fn)
        c = self.fetch(up, '/midchunk')
        resp = c.read_head(timeout=5)
        self.assertEqual(resp.status, 200, resp)
        self.assertClosedSoon(c, resp, 1.0 + SLACK, 'reset mid-chunk')
        self.assertTrue(resp.body.startswith(b'hello'), resp)
        self.assertHealthy(self.d, 'after a reset mid-chunk')


# --------------------------------------------------------------------------
# Silence at each stage
# --------------------------------------------------------------------------

class Silence(FaultCase):

    def setUp(self):
        super().setUp()
        self.d = self.start_daemon('--connect-timeout', '1', '--idle-timeout', '1',
                                   '--client-idle-timeout', '1')

    def test_connect_never_completes(self):
        # SYNs dropped: 504 upstream_timeout after --connect-timeout (1 s).
        bh = BlackholeListener()
        self.addCleanup(bh.close)
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        t0 = now()
        c.send(abs_get(bh.port, '/never'))
        self.assertHealthy(self.d, 'while a connect hangs')
        resp = c.read_response(timeout=5)
        took = now() - t0
        self.assertEqual(resp.status, 504, resp)
        self.assertEqual(resp.header('X-Scopeproxy-Error'), 'upstream_timeout', resp)
        self.assertLess(took, 1.0 + SLACK, 'connect timeout of 1 s answered after %.1fs' % took)

    def test_accepted_but_nothing(self):
        up, beh = self.scripted('/', lambda b, ctx: b.hold(ctx, 10) and False)
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        t0 = now()
        c.send(abs_get(up.port, '/quiet'))
        self.assertHealthy(self.d, 'while an upstream is silent')
        resp = c.read_response(timeout=5)
        took = now() - t0
        self.assertEqual(resp.status, 504, resp)
        self.assertEqual(resp.header('X-Scopeproxy-Error'), 'upstream_timeout', resp)
        self.assertLess(took, 1.0 + SLACK, 'idle timeout of 1 s answered after %.1fs' % took)
        self.assertTrue(beh.peer_closed.wait(2), 'the silent upstream connection was not closed')

    def test_partial_head_then_silence(self):
        def fn(b, ctx):
            ctx.send(b'HTTP/1.1 200 OK\r\nContent-Le')
            b.hold(ctx, 10)
            return False
        up, beh = self.scripted('/', fn)
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        t0 = now()
        c.send(abs_get(up.port, '/halfhead'))
        resp = c.read_response(timeout=5)
        self.assertIn(resp.status, (502, 504), resp)
        self.assertIsNotNone(resp.header('X-Scopeproxy-Error'), resp)
        self.assertLess(now() - t0, 1.0 + SLACK)
        self.assertTrue(beh.peer_closed.wait(2), 'the upstream connection was not closed')
        self.assertHealthy(self.d, 'after a partial head')

    def test_body_stalls(self):
        # Head + 1000 of 10000 bytes, then nothing: after --idle-timeout the
        # client sees the body end early and its connection close.
        def fn(b, ctx):
            ctx.send(b'HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n' + b'a' * 1000)
            b.mark('stalled')
            b.hold(ctx, 10)
            return False
        up, beh = self.scripted('/', fn)
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(abs_get(up.port, '/stall'))
        resp = c.read_head(timeout=5)
        self.assertEqual(resp.status, 200, resp)
        self.assertHealthy(self.d, 'while a body stalls')
        self.assertClosedSoon(c, resp, 1.0 + 2 * SLACK, 'a stalled body')
        self.assertEqual(len(resp.body), 1000, resp)
        self.assertTrue(beh.peer_closed.wait(2), 'the stalled upstream connection was not closed')
        self.assertLess(beh.events['peer_closed'] - beh.events['stalled'], 1.0 + SLACK)

    def check_client_dropped(self, c, t0, what):
        limit = 1.0 + 2 * SLACK
        if c.wait_closed(limit - (now() - t0)):
            return
        late = c.wait_closed(12.0)       # how late, for the report
        self.fail('%s must be dropped after --client-idle-timeout 1: still open after %.1fs (%s)'
                  % (what, limit, 'closed after %.1fs' % (now() - t0) if late else 'not closed in 15 s'))

    def test_client_sends_nothing(self):
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        t0 = now()
        self.assertHealthy(self.d, 'with a silent client connected')
        self.check_client_dropped(c, t0, 'a client that sends nothing')

    def test_client_sends_half_a_head(self):
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        t0 = now()
        c.send(b'GET http://127.0.0.1:%d/x HTTP/1.1\r\nHost: 127.0' % self.good.port)
        self.assertHealthy(self.d, 'with a half-sent head')
        self.check_client_dropped(c, t0, 'a client stuck mid-head')

    def test_client_idle_after_a_request(self):
        # Kept alive after one answered request, then silent.
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(abs_get(self.good.port, '/once'))
        self.assertEqual(c.read_response(timeout=5).status, 200)
        t0 = now()
        self.check_client_dropped(c, t0, 'an idle kept-alive client')


# --------------------------------------------------------------------------
# Malformed answers
# --------------------------------------------------------------------------

class Malformed(FaultCase):

    def setUp(self):
        super().setUp()
        self.d = self.start_daemon('--idle-timeout', '30')

    def test_bad_status_line(self):
        up = self.start_upstream()
        up.route('/', Raw(b'HTTP/1.1 abc Nope\r\nContent-Length: 0\r\n\r\n'))
        resp = request(self.d.port, abs_get(up.port, '/badstatus'), timeout=5)
        self.assertEqual(resp.status, 502, resp)
        self.assertEqual(resp.header('X-Scopeproxy-Error'), 'upstream_protocol_error', resp)
        self.assertHealthy(self.d, 'after a bad status line')

    def test_garbage_instead_of_http(self):
        up = self.start_upstream()
        up.route('/', Raw(b'SSH-2.0-OpenSSH_9.2\r\n\r\n'))
        resp = request(self.d.port, abs_get(up.port, '/garbage'), timeout=5)
        self.assertEqual(resp.status, 502, resp)
        self.assertIsNotNone(resp.header('X-Scopeproxy-Error'), resp)
        self.assertHealthy(self.d, 'after garbage')

    def run_bad_chunk(self, pause):
        # The upstream: a 200 chunked head, one good chunk, an invalid chunk
        # size (after `pause` seconds, or in the same write), then silence
        # with its connection open.
        def fn(b, ctx):
            head = (b'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n'
                    b'5\r\nhello\r\n')
            if pause:
                ctx.send(head)
                time.sleep(pause)
                b.mark('bad')
                ctx.send(b'zz\r\nworld\r\n')
            else:
                b.mark('bad')
                ctx.send(head + b'zz\r\nworld\r\n')
            b.hold(ctx, 20)
            return False
        up, beh = self.scripted('/', fn)
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(abs_get(up.port, '/badchunk'))
        resp = c.read_head(timeout=5)
        self.assertEqual(resp.status, 200, resp)
        closed, took = read_until_close(c, resp, 3.0)
        since_bad = now() - beh.events.get('bad', now())
        self.assertTrue(closed, 'invalid chunk size: the client connection is still open %.1fs after '
                        'the upstream sent it (body so far %r)' % (since_bad, resp.body))
        self.assertLess(since_bad, 1.0, 'invalid chunk size: the client connection closed only %.1fs '
                        'after the upstream sent it' % since_bad)
        self.assertFalse(resp.complete, 'a broken chunked body must not end with a last chunk: %r' % resp)
        self.assertNotIn(b'world', resp.body)
        self.assertTrue(beh.peer_closed.wait(2), 'the upstream connection must be closed too')
        self.assertHealthy(self.d, 'after an invalid chunk size')

    def test_bad_chunk_size_closes_within_1s(self):
        # (a) Head, first chunk and the invalid size arrive together.  The
        # body cannot be completed: the client must see its connection
        # closed (the chunked body without its last chunk) within 1 s, with
        # no other traffic on the proxy to wake it up.
        self.run_bad_chunk(0)

    def test_bad_chunk_size_after_a_pause_closes_within_1s(self):
        # The same with the invalid size in a later packet.
        self.run_bad_chunk(0.2)

    def test_content_length_too_short(self):
        # The upstream says 10 and sends 30: the client gets exactly the 10
        # (complete), and the 20 extra bytes never reach it, not even as the
        # answer to its next request on the same connection.
        def fn(b, ctx):
            ctx.send(b'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n' + b'0123456789' + b'EXTRA' * 4)
            return True
        up, _ = self.scripted('/short', fn)
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(abs_get(up.port, '/short'))
        resp = c.read_response(timeout=5)
        self.assertEqual(resp.status, 200, resp)
        self.assertTrue(resp.complete, resp)
        self.assertEqual(resp.body, b'0123456789')
        c.send(abs_get(up.port, '/next'))
        try:
            resp2 = c.read_response(timeout=5)
        except NoResponse:
            resp2 = None        # closing the client connection is acceptable too
        if resp2 is not None:
            self.assertEqual(resp2.status, 200, resp2)
            self.assertNotIn(b'EXTRA', resp2.raw_head + resp2.body, 'bytes past Content-Length leaked '
                             'into the next response')
            self.assertEqual(resp2.json()['target'], '/next', resp2)
        self.assertHealthy(self.d, 'after a too-short Content-Length')

    def test_content_length_too_long(self):
        # The upstream says 1000, sends 100 and closes: the client sees the
        # body end early and its connection close at once.
        def fn(b, ctx):
            ctx.send(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n' + b'b' * 100)
            time.sleep(0.1)
            ctx.conn.close()
            return False
        up, _ = self.scripted('/', fn)
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(abs_get(up.port, '/long'))
        resp = c.read_head(timeout=5)
        self.assertEqual(resp.status, 200, resp)
        self.assertClosedSoon(c, resp, 1.0 + SLACK, 'Content-Length too long')
        self.assertEqual(len(resp.body), 100, resp)
        self.assertHealthy(self.d, 'after a too-long Content-Length')


# --------------------------------------------------------------------------
# Client aborts, slow clients and slow upstreams
# --------------------------------------------------------------------------

class ClientsAndBackpressure(FaultCase):
    TIMEOUT = 60

    def setUp(self):
        super().setUp()
        self.d = self.start_daemon()

    def test_client_aborts_mid_upload(self):
        def fn(b, ctx):
            try:
                ctx.read_body(store=False)
            except Exception:        # noqa: BLE001 (the proxy hung up)
                b.mark('body_error')
                b.peer_closed.set()
                return False
            b.mark('body_done')
            ctx.send(b'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n')
            return True
        up, beh = self.scripted('/', fn, read_body=False)
        hp = b'127.0.0.1:%d' % up.port
        c = HTTPClient(self.d.port, timeout=10)
        c.send(b'POST http://' + hp + b'/upload HTTP/1.1\r\nHost: ' + hp +
               b'\r\nContent-Length: %d\r\n\r\n' % (10 * MB))
        c.send(PATTERN * 16)                      # 1 MB of 10
        req = up.wait_request(timeout=5)
        self.assertIsNotNone(req, 'the upload never started upstream')
        up.wait(lambda: req.body_received >= 512 * 1024, 5)
        t0 = now()
        c.abort()
        self.assertTrue(beh.peer_closed.wait(1.0 + SLACK),
                        'the upstream upload was not ended %.1fs after the client aborted' % (now() - t0))
        self.assertNotIn('body_done', beh.events, 'a truncated upload must not look complete upstream')
        self.assertHealthy(self.d, 'after an aborted upload')

    def test_client_aborts_mid_download(self):
        up = self.start_upstream()
        dl = up.route('/', Download(512 * MB, sndbuf=65536))
        c = HTTPClient(self.d.port, timeout=10, rcvbuf=65536)
        c.send(abs_get(up.port, '/big'))
        resp = c.read_head(timeout=5)
        self.assertEqual(resp.status, 200, resp)
        got = 0
        for _, data in c.iter_body(resp, timeout=5):
            got += len(data)
            if got >= MB:
                break
        t0 = now()
        c.abort()
        self.assertTrue(dl.done.wait(1.0 + SLACK), 'the upstream kept sending %.1fs after the client '
                        'aborted (%d bytes sent)' % (now() - t0, dl.sent))
        self.assertLess(dl.sent, 256 * MB)
        self.assertHealthy(self.d, 'after an aborted download')

    def test_slow_client_pauses_upstream_nothing_lost(self):
        size = 24 * MB
        up = self.start_upstream()
        dl = up.route('/', Download(size, sndbuf=65536))
        c = HTTPClient(self.d.port, timeout=15, rcvbuf=65536)
        self.addCleanup(c.close)
        c.send(abs_get(up.port, '/slowclient'))
        resp = c.read_head(timeout=5)
        self.assertEqual(resp.status, 200, resp)
        # The client reads nothing: the upstream must be paused.
        time.sleep(1.0)
        s1 = dl.sent
        time.sleep(0.5)
        s2 = dl.sent
        self.assertEqual(s1, s2, 'upstream still sending while the client reads nothing (%d -> %d)' % (s1, s2))
        self.assertLess(s2, 12 * MB, 'the proxy buffered %d bytes for a client that reads nothing' % s2)
        self.assertHealthy(self.d, 'while a client does not read')
        h = hashlib.sha256()
        n = 0
        for _, data in c.iter_body(resp, timeout=10):
            h.update(data)
            n += len(data)
            if n < 4 * MB:
                time.sleep(0.002)     # slow at first
        self.assertTrue(resp.complete, resp)
        self.assertEqual(n, size)
        self.assertEqual(h.hexdigest(), pattern_sha(size), 'body corrupted on its way')

    def test_slow_upstream_trickle_nothing_lost(self):
        size = 3 * MB

        def fn(b, ctx):
            ctx.send(b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n')
            left = size
            i = 0
            while left:
                n = min(left, 7000 + (i * 997) % 30000)
                block = (PATTERN * 2)[(size - left) % len(PATTERN):][:n]
                ctx.send(b'%x\r\n' % len(block) + block + b'\r\n')
                left -= len(block)
                i += 1
                if i % 20 == 0:
                    time.sleep(0.01)
            ctx.send(b'0\r\n\r\n')
            return True
        up, _ = self.scripted('/', fn)
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(abs_get(up.port, '/trickle'))
        resp = c.read_head(timeout=5)
        h = hashlib.sha256()
        n = 0
        for _, data in c.iter_body(resp, timeout=10):
            h.update(data)
            n += len(data)
        self.assertTrue(resp.complete, resp)
        self.assertEqual(n, size)
        self.assertEqual(h.hexdigest(), pattern_sha(size))
        self.assertHealthy(self.d, 'after a trickling upstream')

    def test_upstream_stops_reading_pauses_client_nothing_lost(self):
        size = 24 * MB

        def fn(b, ctx):
            state = {'paused': False}
            h = hashlib.sha256()

            def hook(n):
                if not state['paused'] and n >= MB:
                    state['paused'] = True
                    b.mark('paused')
                    time.sleep(2.0)
                    b.mark('resumed')
            ctx.read_body(store=True, hook=hook)
            h.update(bytes(ctx.req.body))
            body = json.dumps({'bytes': ctx.req.body_received, 'sha256': h.hexdigest()}).encode()
            ctx.send(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n'
                     % len(body) + body)
            return True
        up, beh = self.scripted('/', fn, read_body=False, rcvbuf=65536)
        hp = b'127.0.0.1:%d' % up.port
        c = HTTPClient(self.d.port, timeout=20, sndbuf=65536)
        self.addCleanup(c.close)
        progress = []
        err = []

        def sender():
            try:
                c.send(b'POST http://' + hp + b'/up HTTP/1.1\r\nHost: ' + hp +
                       b'\r\nContent-Length: %d\r\n\r\n' % size)
                left = size
                while left:
                    block = PATTERN if left >= len(PATTERN) else PATTERN[:left]
                    c.send(block)
                    left -= len(block)
                    progress.append(size - left)
            except Exception as e:      # noqa: BLE001
                err.append(repr(e))
        t = threading.Thread(target=sender, daemon=True)
        t.start()
        deadline = now() + 10
        while 'paused' not in beh.events and now() < deadline:
            time.sleep(0.02)
        self.assertIn('paused', beh.events, 'the upload never reached 1 MB upstream')
        time.sleep(0.8)
        p1 = progress[-1] if progress else 0
        time.sleep(0.6)
        p2 = progress[-1] if progress else 0
        self.assertNotIn('resumed', beh.events, 'machine too slow for this check')
        self.assertEqual(p1, p2, 'the client could keep sending while the upstream read nothing '
                         '(%d -> %d bytes)' % (p1, p2))
        self.assertLess(p2, size - 4 * MB, 'the proxy took %d bytes the upstream did not read' % p2)
        t.join(20)
        self.assertFalse(t.is_alive(), 'upload did not finish')
        self.assertEqual(err, [])
        resp = c.read_response(timeout=10)
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(resp.json(), {'bytes': size, 'sha256': pattern_sha(size)})
        self.assertHealthy(self.d, 'after a paused upload')


# --------------------------------------------------------------------------
# auth.json rotation, SIGHUP and SIGTERM under load
# --------------------------------------------------------------------------

class Load:
    """Client threads sending requests until stopped."""

    def __init__(self, make_request, n=3, check=None):
        self.make = make_request
        self.check = check or (lambda r: r.status == 200 and r.complete)
        self.stop = threading.Event()
        self.ok = 0
        self.failures = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, i):
        k = 0
        while not self.stop.is_set():
            k += 1
            tag = 't%d-%d' % (i, k)
            port, raw = self.make(tag)
            try:
                r = request(port, raw, timeout=10)
                good = self.check(r)
                why = repr(r)
            except Exception as e:      # noqa: BLE001
                good, why = False, repr(e)
            with self.lock:
                if good:
                    self.ok += 1
                else:
                    self.failures.append((tag, why[:400]))

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(15)
        return self


class Rotation(FaultCase):
    TIMEOUT = 60

    def test_auth_rotation_under_load(self):
        # auth.json is replaced every 100 ms, alternating two keys with a new
        # task each time, while three clients send credentialed requests.
        # Every request that reached the upstream carried one assertion that
        # verifies with the key its task was written with: never a mix.
        tls = tls_material()
        up = self.start_upstream(dual=True)
        keys = {SPEC_SEED: key_of(SPEC_SEED), OTHER_SEED: key_of(OTHER_SEED)}
        seeds = [SPEC_SEED, OTHER_SEED]
        task_seed = {TASK_ID: SPEC_SEED}
        auth = self.write_auth(record(TASK_ID, keys[SPEC_SEED].v2))
        d = self.start_daemon('--auth-file', auth, '--upstream-ca', tls.ca,
                              '--resolve', 'api.openai.com:443:127.0.0.1:%d' % up.port,
                              '--resolve', 'api.openai.com:80:127.0.0.1:%d' % up.port)
        body = b'{"model":"gpt-test","input":"hi"}'

        def make(tag):
            return d.port, (b'POST http://api.openai.com/v1/responses HTTP/1.1\r\nHost: api.openai.com\r\n'
                            b'Authorization: Bearer ' + SECRET.encode() + b'\r\nX-Req: ' + tag.encode() +
                            b'\r\nContent-Type: application/json\r\nContent-Length: %d\r\n'
                            b'Connection: close\r\n\r\n' % len(body) + body)
        load = Load(make, n=3).start()
        self.addCleanup(load.finish)
        t_end = now() + 2.5
        i = 0
        while now() < t_end:
            i += 1
            seed = seeds[i % 2]
            task = 'task-rot-%d-%s' % (i, os.urandom(3).hex())
            task_seed[task] = seed
            self.write_auth(record(task, keys[seed].v2), auth)
            time.sleep(0.1)
        load.finish()
        self.assertEqual(load.failures, [], 'requests failed while auth.json rotated\n' + d.tail(2000))
        self.assertGreater(load.ok, 20, 'too few requests to mean anything')
        reqs = [r for r in up.requests if r.header('X-Req')]
        self.assertEqual(len(reqs), load.ok)
        seen_tasks = set()
        verified = set()
        t_mono, t_wall = now(), time.time()
        for r in reqs:
            auths = r.header_all('Authorization')
            self.assertEqual(len(auths), 1, r.raw_head)
            self.assertTrue(r.tls, 'credentialed request over plaintext')
            task = task_in_assertion(auths[0])
            self.assertIn(task, task_seed, 'assertion for a task never written: %r' % task)
            # Ed25519 signatures are deterministic: an identical header
            # needs verifying once (openssl per header is the slow part).
            if auths[0] not in verified:
                env = parse_assertion(auths[0], RUNTIME, task, keys[task_seed[task]].pub,
                                      check_time=False)
                arrived = t_wall - (t_mono - r.t_head)
                self.assertLess(abs(agentid.parse_ts(env['timestamp']) - arrived), 5.0,
                                'assertion timestamp %s vs arrival' % env['timestamp'])
                verified.add(auths[0])
            seen_tasks.add(task)
        self.assertGreater(len(seen_tasks), 5, 'rotations were not picked up: %d tasks seen' % len(seen_tasks))
        self.assertHealthy(d, 'after rotations')

    def test_sighup_under_load(self):
        up = self.start_upstream()
        sse = up.route('/sse', SSE(n=10, gap=0.2))
        cfg = self.path('config.json')
        with open(cfg, 'w') as f:
            json.dump({'timeouts': {'connect': 3}}, f)
        d = self.start_daemon('--config', cfg)
        c = HTTPClient(d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(abs_get(up.port, '/sse'))
        resp = c.read_head(timeout=5)
        self.assertEqual(resp.status, 200, resp)
        load = Load(lambda tag: (d.port, abs_get(self.good.port, '/' + tag, b'Connection: close\r\n')),
                    n=3).start()
        self.addCleanup(load.finish)
        for i in range(8):
            time.sleep(0.2)
            d.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        load.finish()
        c.read_body(resp, timeout=5)
        self.assertTrue(resp.complete, 'SSE across SIGHUPs: %r' % resp)
        self.assertEqual(resp.body.count(b'\n\n'), 10)
        self.assertEqual(load.failures, [], 'requests failed around SIGHUP\n' + d.tail(2000))
        self.assertGreater(load.ok, 20)
        self.assertTrue(d.alive())
        self.assertHealthy(d, 'after SIGHUPs')

    def test_sigterm_under_load(self):
        # In flight when SIGTERM comes: an SSE stream (1.2 s left) and three
        # clients; the stream ends cleanly, the daemon exits 0 well within
        # the drain timeout, and afterwards the port refuses connections.
        up = self.start_upstream()
        up.route('/sse', SSE(n=6, gap=0.2))
        d = self.start_daemon('--drain-timeout', '5')
        c = HTTPClient(d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(abs_get(up.port, '/sse'))
        resp = c.read_head(timeout=5)

        def ok(r):
            return (r.status == 200 and r.complete) or r.status == 503
        load = Load(lambda tag: (d.port, abs_get(self.good.port, '/' + tag, b'Connection: close\r\n')),
                    n=3, check=ok)
        # after SIGTERM new connections are refused: that is not a failure
        load.start()
        self.addCleanup(load.finish)
        time.sleep(0.3)
        t0 = now()
        d.proc.send_signal(signal.SIGTERM)
        c.read_body(resp, timeout=5)
        self.assertTrue(resp.complete, 'an SSE stream in flight must finish during the drain: %r' % resp)
        self.assertEqual(resp.body.count(b'\n\n'), 6)
        try:
            rc = d.proc.wait(5 + SLACK)
        except subprocess.TimeoutExpired:
            self.fail('daemon still running %.1fs after SIGTERM\n%s' % (now() - t0, d.tail(2000)))
        took = now() - t0
        load.finish()
        self.assertEqual(rc, 0, d.tail(2000))
        self.assertLess(took, 4.0, 'drain took %.1fs with nothing left in flight' % took)
        bad = [f for f in load.failures if 'ConnectionRefused' not in f[1] and 'Connection reset' not in f[1]
               and 'closed before response head' not in f[1]]
        self.assertEqual(bad, [], 'requests around SIGTERM got wrong answers')
        self.assertGreater(load.ok, 5)
        with self.assertRaises(OSError):
            socket.create_connection((LOOPBACK, d.port), timeout=2).close()


# --------------------------------------------------------------------------
# Registration endpoint down, 500, slow; a client leaving while parked
# --------------------------------------------------------------------------

class RegGate(Behaviour):
    """Registration answers: `status` (200 answers a task), held while the
    gate is clear."""

    def __init__(self, status=500, task='task-reg-faults-1'):
        self.status = status
        self.task = task
        self.gate = threading.Event()
        self.gate.set()
        self.count = 0

    def handle(self, ctx):
        ctx.read_body()
        self.count += 1
        self.gate.wait(30)
        if self.status == 200:
            body = json.dumps({'task_id': self.task}).encode()
        else:
            body = b'{"error":"boom"}'
        ctx.send(b'HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n'
                 % (self.status, len(body)) + body)
        return True


class Registration(FaultCase):
    TIMEOUT = 45
    REG = {'cooldown': 30, 'wait': 2, 'timeout': 2, 'attempts': 2, 'backoff': 0.1}

    def reg_daemon(self, reg_port, **reg):
        tls = tls_material()
        self.api = self.start_upstream(dual=True)
        cfg = self.path('config.json')
        with open(cfg, 'w') as f:
            json.dump({'task_registration': dict(self.REG, base_url=REG_BASE, **reg)}, f)
        auth = self.write_auth(record(None))
        return self.start_daemon('--config', cfg, '--auth-file', auth, '--upstream-ca', tls.ca,
                                 '--resolve', 'chatgpt.com:443:127.0.0.1:%d' % reg_port,
                                 '--resolve', 'api.openai.com:443:127.0.0.1:%d' % self.api.port,
                                 '--resolve', 'api.openai.com:80:127.0.0.1:%d' % self.api.port)

    def cred(self, tag):
        body = b'{"model":"gpt-test","input":"hi"}'
        return (b'POST http://api.openai.com/v1/responses HTTP/1.1\r\nHost: api.openai.com\r\n'
                b'Authorization: Bearer ' + SECRET.encode() + b'\r\nX-Req: ' + tag.encode() +
                b'\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n'
                % len(body) + body)

    def check_unavailable(self, d, limit):
        t0 = now()
        resp = request(d.port, self.cred('r1'), timeout=15)
        took = now() - t0
        err = self.assertProxyError(resp, 503, 'agent_task_missing', d)
        self.assertLess(took, limit, 'the 503 took %.1fs' % took)
        self.assertEqual([r for r in self.api.requests if r.header('X-Req')], [],
                         'nothing may go upstream without a task')
        return err

    def test_registration_endpoint_down(self):
        d = self.reg_daemon(free_port())
        self.assertHealthy(d, 'registration endpoint down')
        err = self.check_unavailable(d, 2 + 2 * SLACK)
        self.assertTrue(err['message'], err)
        self.assertHealthy(d, 'after the failed registration')

    def test_registration_500(self):
        reg = self.start_upstream(tls=True)
        gate = reg.route('/', RegGate(500))
        d = self.reg_daemon(reg.port)
        self.check_unavailable(d, 2 + 2 * SLACK)
        self.assertGreaterEqual(gate.count, 1)
        self.assertLessEqual(gate.count, self.REG['attempts'], 'retries beyond attempts')
        self.assertHealthy(d, 'after registration 500s')

    def test_registration_slow(self):
        # The registration server holds its answer: a credentialed request
        # waits `wait` (2 s) and gets the 503; meanwhile everything else
        # answers at once; once the server answers, requests go out.
        reg = self.start_upstream(tls=True)
        gate = reg.route('/', RegGate(200, task='task-reg-slow-1'))
        gate.gate.clear()
        self.addCleanup(gate.gate.set)
        d = self.reg_daemon(reg.port, timeout=20, wait=2)
        done = {}

        def waiter():
            t0 = now()
            try:
                done['resp'] = request(d.port, self.cred('slow-1'), timeout=15)
            except Exception as e:      # noqa: BLE001
                done['error'] = repr(e)
            done['took'] = now() - t0
        t = threading.Thread(target=waiter, daemon=True)
        t.start()
        time.sleep(0.3)
        self.assertHealthy(d, 'during a slow registration')
        t.join(2 + 2 * SLACK)
        self.assertFalse(t.is_alive(), 'a request parked on a slow registration did not get its answer')
        self.assertNotIn('error', done, done)
        self.assertProxyError(done['resp'], 503, 'agent_task_missing', d)
        self.assertGreater(done['took'], 1.5, 'answered before `wait` ran out')
        gate.gate.set()
        deadline = now() + 10
        resp = None
        while now() < deadline:
            resp = request(d.port, self.cred('slow-2'), timeout=15)
            if resp.status == 200:
                break
            time.sleep(0.2)
        self.assertEqual(resp.status, 200, 'after the registration answered: %r\n%s' % (resp, d.tail(2000)))
        got = self.api.wait_request(lambda r: r.header('X-Req') == 'slow-2', 3)
        parse_assertion(got.header('Authorization'), RUNTIME, 'task-reg-slow-1', key_of(SPEC_SEED).pub)

    def test_client_leaves_while_parked(self):
        reg = self.start_upstream(tls=True)
        gate = reg.route('/', RegGate(200, task='task-reg-park-1'))
        gate.gate.clear()
        self.addCleanup(gate.gate.set)
        d = self.reg_daemon(reg.port, timeout=20, wait=10)
        c = HTTPClient(d.port, timeout=10)
        c.send(self.cred('parked-gone'))
        time.sleep(0.5)
        c.abort()
        time.sleep(0.2)
        self.assertHealthy(d, 'after a parked client left')
        gate.gate.set()
        deadline = now() + 10
        resp = None
        while now() < deadline:
            resp = request(d.port, self.cred('after-park'), timeout=15)
            if resp.status == 200:
                break
            time.sleep(0.2)
        self.assertEqual(resp.status, 200, resp)
        time.sleep(0.3)
        self.assertIsNone(self.api.wait_request(lambda r: r.header('X-Req') == 'parked-gone', 0.2),
                          'a request whose client left while parked must not go upstream')
        self.assertTrue(d.alive())


# --------------------------------------------------------------------------
# The TLS interception path
# --------------------------------------------------------------------------

class Interception(FaultCase):
    TIMEOUT = 45

    def setUp(self):
        super().setUp()
        self.tls = tls_material()
        self.api = self.start_upstream(tls=True)
        auth = self.write_auth(record(TASK_ID))
        ca_dir = self.path('ca')
        self.d = self.start_daemon('--auth-file', auth, '--ca-dir', ca_dir, '--upstream-ca', self.tls.ca,
                                   '--idle-timeout', '1',
                                   '--resolve', 'api.openai.com:443:127.0.0.1:%d' % self.api.port)
        r = run_cmd([scopeproxy_bin(), 'ca', 'export', '--ca-dir', ca_dir], env=clean_env())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.ca = self.path('proxy-ca.pem')
        with open(self.ca, 'wb') as f:
            f.write(r.stdout)

    def tunnel(self):
        c = TLSClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(b'CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n')
        resp = c.read_head('CONNECT', timeout=5)
        self.assertEqual(resp.status, 200, resp)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.ca)
        ctx.set_alpn_protocols(['http/1.1'])
        c.sock = ctx.wrap_socket(c.sock, server_hostname='api.openai.com')
        return c

    def inner(self, method, path, body=None):
        raw = b'%s %s HTTP/1.1\r\nHost: api.openai.com\r\n' % (method.encode(), path.encode())
        raw += b'Authorization: Bearer ' + SECRET.encode() + b'\r\n'
        if body is not None:
            raw += b'Content-Type: application/json\r\nContent-Length: %d\r\n' % len(body)
        return raw + b'\r\n' + (body or b'')

    def test_reset_mid_body(self):
        self.api.route('/v1/models', Reset(chunks=2, size=2000, delay=0.1))
        c = self.tunnel()
        c.send(self.inner('GET', '/v1/models'))
        resp = c.read_head(timeout=5)
        self.assertEqual(resp.status, 200, resp)
        self.assertClosedSoon(c, resp, 1.0 + SLACK, 'intercepted: upstream reset mid-body')
        self.assertHealthy(self.d, 'after an intercepted reset')

    def test_close_before_answer_credentialed(self):
        self.api.route('/v1/responses', CloseBeforeAnswer(reset=True))
        c = self.tunnel()
        c.send(self.inner('POST', '/v1/responses', b'{"input":"x"}'))
        resp = c.read_response(timeout=5)
        self.assertEqual(resp.status, 502, resp)
        self.assertIsNotNone(resp.header('X-Scopeproxy-Error'), resp)
        got = self.api.wait_request(timeout=2)
        parse_assertion(got.header('Authorization'), RUNTIME, TASK_ID, key_of(SPEC_SEED).pub)
        self.assertHealthy(self.d, 'after an intercepted 502')

    def test_silent_upstream_504(self):
        beh = self.api.route('/v1/models', Fn(lambda b, ctx: b.hold(ctx, 10) and False))
        c = self.tunnel()
        t0 = now()
        c.send(self.inner('GET', '/v1/models'))
        resp = c.read_response(timeout=5)
        self.assertEqual(resp.status, 504, resp)
        self.assertEqual(resp.header('X-Scopeproxy-Error'), 'upstream_timeout', resp)
        self.assertLess(now() - t0, 1.0 + SLACK)
        self.assertTrue(beh.peer_closed.wait(2))
        self.assertHealthy(self.d, 'after an intercepted 504')

    def test_client_aborts_mid_download(self):
        dl = self.api.route('/v1/files', Download(256 * MB, sndbuf=65536))
        c = self.tunnel()
        c.send(self.inner('GET', '/v1/files/big/content'))
        resp = c.read_head(timeout=5)
        self.assertEqual(resp.status, 200, resp)
        got = 0
        for _, data in c.iter_body(resp, timeout=5):
            got += len(data)
            if got >= MB:
                break
        t0 = now()
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        c.sock.close()
        self.assertTrue(dl.done.wait(1.0 + SLACK), 'upstream kept sending %.1fs after the client left'
                        % (now() - t0))
        self.assertHealthy(self.d, 'after an intercepted abort')


# --------------------------------------------------------------------------
# WebSocket relays
# --------------------------------------------------------------------------

class WebSocketRelay(FaultCase):

    def setUp(self):
        super().setUp()
        self.d = self.start_daemon('--tunnel-idle-timeout', '30')

    def ws_up(self, handler):
        u = RawUpstream(handler)
        self.addCleanup(u.close)
        return u

    def open_ws(self, u):
        c = HTTPClient(self.d.port, timeout=10)
        self.addCleanup(c.close)
        c.send(ws_handshake(self.d.port, u.port))
        resp = c.read_head(timeout=5)
        self.assertEqual(resp.status, 101, resp)
        return c

    def test_upstream_hangs_up(self):
        def handler(s, u):
            ws_accept(s)
            s.sendall(ws_frame(1, b'bye', mask=False))
            time.sleep(0.3)
            u.note('closed')
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            s.close()
        u = self.ws_up(handler)
        c = self.open_ws(u)
        t = wait_eof(c.sock, 5)
        closed = u.wait('closed', 1)
        self.assertIsNotNone(t, 'the client never saw the upstream hang up')
        self.assertLess(t - closed, 1.0, 'client saw the hang-up %.1fs late' % (t - closed))
        self.assertHealthy(self.d, 'after an upstream WebSocket hang-up')

    def test_client_hangs_up(self):
        def handler(s, u):
            ws_accept(s)
            u.note('open')
            t = wait_eof(s, 10)
            if t is not None:
                u.note('eof', t)
        u = self.ws_up(handler)
        c = self.open_ws(u)
        self.assertIsNotNone(u.wait('open', 3))
        t0 = now()
        c.abort()
        t = u.wait('eof', 3)
        self.assertIsNotNone(t, 'the upstream never saw the client hang up')
        self.assertLess(t - t0, 1.0)
        self.assertHealthy(self.d, 'after a client WebSocket hang-up')

    def test_client_stops_reading(self):
        # The upstream floods; the client reads nothing.  The upstream must
        # be held back (bounded), the daemon's memory bounded, and when the
        # client leaves, the upstream is released.
        def handler(s, u):
            ws_accept(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            frame = ws_frame(2, b'z' * 65000, mask=False)
            sent = 0
            s.settimeout(0.5)
            while True:
                try:
                    s.sendall(frame)
                    sent += len(frame)
                    u.note('sent', sent)
                except (socket.timeout, TimeoutError):
                    u.note('blocked', sent)
                    if u.info.get('stop'):
                        return
                except OSError:
                    u.note('gone')
                    return
        u = self.ws_up(handler)
        rss0 = proc_status(self.d.pid)['VmRSS']
        c = HTTPClient(self.d.port, timeout=10, rcvbuf=65536)
        self.addCleanup(c.close)
        c.send(ws_handshake(self.d.port, u.port))
        resp = c.read_head(timeout=5)
        self.assertEqual(resp.status, 101, resp)
        self.assertIsNotNone(u.wait('blocked', 5), 'the upstream was never held back')
        time.sleep(1.0)
        s1 = u.info.get('sent', 0)
        time.sleep(0.5)
        s2 = u.info.get('sent', 0)
        self.assertEqual(s1, s2, 'the upstream kept sending to a client that reads nothing')
        self.assertLess(s2, 16 * MB)
        rss = proc_status(self.d.pid)['VmRSS']
        self.assertLess(rss - rss0, 32 * 1024, 'daemon RSS grew by %d kB' % (rss - rss0))
        self.assertHealthy(self.d, 'while a WebSocket client does not read')
        t0 = now()
        c.abort()
        self.assertIsNotNone(u.wait('gone', 1.0 + SLACK), 'the upstream was not released %.1fs after the '
                             'client left' % (now() - t0))

    def test_upstream_stops_reading(self):
        def handler(s, u):
            ws_accept(s)
            u.note('open')
            wait = now() + 8
            while now() < wait and not u.info.get('release'):
                time.sleep(0.05)
            t = wait_eof(s, 5)
            u.note('eof', t or 0)
        u = self.ws_up(handler)
        c = HTTPClient(self.d.port, timeout=10, sndbuf=65536)
        self.addCleanup(c.close)
        c.send(ws_handshake(self.d.port, u.port))
        resp = c.read_head(timeout=5)
        self.assertEqual(resp.status, 101, resp)
        frame = ws_frame(2, b'y' * 65000)
        sent = [0]

        def flood():
            c.sock.settimeout(0.5)
            try:
                while True:
                    c.sock.sendall(frame)
                    sent[0] += len(frame)
            except OSError:
                pass
        t = threading.Thread(target=flood, daemon=True)
        t.start()
        t.join(3)
        self.assertFalse(t.is_alive(), 'client send never blocked')
        self.assertLess(sent[0], 16 * MB, 'the proxy took %d bytes the upstream did not read' % sent[0])
        self.assertHealthy(self.d, 'while a WebSocket upstream does not read')
        c.abort()
        u.note('release', True)
        self.assertIsNotNone(u.wait('eof', 6))


# --------------------------------------------------------------------------
# Resource faults
# --------------------------------------------------------------------------

class LimitedDaemon(Daemon):
    """A Daemon started under RLIMIT_NOFILE = nofile (set in the child before exec)."""

    def __init__(self, *args, nofile=128, **kw):
        Daemon.__init__(self, *args, **kw)
        self.nofile = nofile

    def start(self):
        real = subprocess.Popen
        nofile = self.nofile

        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        def popen(*a, **kw):
            harness.subprocess.Popen = real     # only this one call
            kw['preexec_fn'] = limit
            return real(*a, **kw)
        harness.subprocess.Popen = popen
        try:
            return Daemon.start(self)
        finally:
            harness.subprocess.Popen = real


class Resources(FaultCase):
    TIMEOUT = 60

    def test_descriptor_exhaustion_no_spin_and_recovers(self):
        # (b) With 128 descriptors and 400 clients connecting (and holding),
        # accept() fails with EMFILE: the daemon must neither spin (its CPU
        # over 3 s well under one core) nor flood its log, and once the
        # clients leave it must serve again.
        d = LimitedDaemon(nofile=128)
        self.addCleanup(self._finish_daemon, d)
        d.start()
        with open('/proc/%d/limits' % d.pid) as f:
            lim = [l for l in f if l.startswith('Max open files')][0]
        self.assertEqual(lim.split()[3], '128', lim)
        self.assertHealthy(d, 'before')
        socks = []
        self.addCleanup(lambda: [s.close() for s in socks])
        for i in range(400):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect((LOOPBACK, d.port))
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                continue
            socks.append(s)
        time.sleep(0.5)
        lines0 = len(d.stderr_text().splitlines())
        cpu0 = proc_cpu_seconds(d.pid)
        t0 = now()
        time.sleep(3.0)
        cpu = proc_cpu_seconds(d.pid) - cpu0
        span = now() - t0
        lines = len(d.stderr_text().splitlines()) - lines0
        self.assertTrue(d.alive(), 'daemon died under descriptor exhaustion\n' + d.tail(2000))
        problems = []
        if cpu > 0.3 * span:
            problems.append('daemon used %.2fs of CPU in %.1fs while out of descriptors (spinning)'
                            % (cpu, span))
        if lines > 5 * span:
            problems.append('daemon wrote %d log lines in %.1fs while out of descriptors; last: %s'
                            % (lines, span, d.stderr_text().splitlines()[-1][:300]))
        for s in socks:
            s.close()
        socks.clear()
        deadline = now() + 10
        resp = None
        while now() < deadline:
            try:
                resp = request(d.port, abs_get(self.good.port, '/after', b'Connection: close\r\n'), timeout=3)
                if resp.status == 200:
                    break
            except (NoResponse, OSError) as e:
                resp = e
            time.sleep(0.2)
        if not (isinstance(resp, harness.Response) and resp.status == 200):
            problems.append('no normal answer within 10 s after the clients left: %r' % (resp,))
        self.assertEqual(problems, [], '\n' + d.tail(1500))

    def test_connect_storm_unresolvable(self):
        # (c) 300 concurrent CONNECTs to names under .invalid: every one gets
        # an answer (502/504) naming the problem, and the daemon's threads
        # stay bounded (<= 64) while they are resolved.
        d = self.start_daemon('--connect-timeout', '2')
        n = 300
        sel = selectors.DefaultSelector()
        clients = {}
        for i in range(n):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect((LOOPBACK, d.port))
            except BlockingIOError:
                pass
            host = 'h%d-%s.invalid' % (i, os.urandom(2).hex())
            clients[s] = {'host': host, 'buf': b'', 'sent': False, 'eof': False}
            sel.register(s, selectors.EVENT_WRITE | selectors.EVENT_READ)
        self.addCleanup(lambda: [s.close() for s in clients])
        max_threads = 0
        deadline = now() + 20
        open_ = n
        while open_ and now() < deadline:
            for key, ev in sel.select(0.05):
                s = key.fileobj
                st = clients[s]
                if ev & selectors.EVENT_WRITE and not st['sent']:
                    try:
                        s.send(('CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n'
                                % (st['host'], st['host'])).encode())
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        st['eof'] = True
                    st['sent'] = True
                    sel.modify(s, selectors.EVENT_READ)
                    if not st['eof']:
                        continue
                if ev & selectors.EVENT_READ or st['eof']:
                    try:
                        b = s.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        b = b''
                    st['buf'] += b
                    if not b:
                        st['eof'] = True
                    if st['eof'] or self._answered(st['buf']):
                        sel.unregister(s)
                        open_ -= 1
            try:
                max_threads = max(max_threads, proc_status(d.pid)['Threads'])
            except OSError:
                break
        sel.close()
        problems = []
        if max_threads > 64:
            problems.append('daemon reached %d threads resolving %d names' % (max_threads, n))
        unanswered = [st['host'] for st in clients.values() if not self._answered(st['buf'])]
        if unanswered:
            problems.append('%d of %d CONNECTs got no complete answer within 20 s (e.g. %s)'
                            % (len(unanswered), n, unanswered[:3]))
        wrong = []
        for st in clients.values():
            if not self._answered(st['buf']):
                continue
            head, _, body = st['buf'].partition(b'\r\n\r\n')
            status = head.split(b' ', 2)[1]
            text = body.decode('latin-1')
            if status not in (b'502', b'504') or not (st['host'] in text or 'resolve' in text.lower()):
                wrong.append((st['host'], st['buf'][:300]))
        if wrong:
            problems.append('%d answers do not name the problem: %r' % (len(wrong), wrong[:2]))
        self.assertEqual(problems, [], '\n' + d.tail(1500))
        self.assertHealthy(d, 'after a CONNECT storm')

    @staticmethod
    def _answered(buf):
        if b'\r\n\r\n' not in buf:
            return False
        head, _, body = buf.partition(b'\r\n\r\n')
        for line in head.split(b'\r\n')[1:]:
            k, _, v = line.partition(b':')
            if k.strip().lower() == b'content-length':
                return len(body) >= int(v.strip())
        return True


if __name__ == '__main__':
    main()
