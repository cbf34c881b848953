#!/usr/bin/python3
"""WebSocket relay (issue 5): the handshake with the assertion, then a
transparent byte relay both ways.

Real clients and servers only, written here with the standard library: a
minimal RFC 6455 client (masked frames, text/binary, fragmentation with
continuation frames, ping/pong, close handshake, 16- and 64-bit lengths,
RSV1 frames as permessage-deflate produces them) and a WebSocket echo
upstream (plain TCP, TLS with the harness leaf reached through
--resolve/--upstream-ca, or both on one port, told apart by the first byte),
through the real daemon in forward mode (`GET http://host/...`), gateway
mode and inside an intercepted CONNECT.

How the test knows, independently of the daemon:
  * The upstream records the exact handshake head.  On a first-party
    Responses route its Authorization must be an AgentAssertion whose Ed25519
    signature verifies with `openssl pkeyutl -verify -rawin` against the
    spec's public key (SPKI prefix 302a300506032b6570032100 + raw key), with
    ChatGPT-Account-ID (and X-OpenAI-Fedramp) from the identity record and
    no trace of the client's own credential, and it arrived over TLS
    verified for the provider's host (SNI) even when the client wrote
    http:// (the daemon sends it to HOST:443); the upstream records an
    AgentAssertion seen on a plaintext connection as an error in every
    test.  A pass-through WebSocket written as http:// arrives plain.
    Everywhere else the client's end-to-end headers (Authorization
    included) arrive byte-identical, in order, with duplicates; hop-by-hop
    ones (and the header named in Connection) are gone; Upgrade/Connection:
    Upgrade are re-added.
  * The 101 the client gets carries Sec-WebSocket-Accept computed here from
    the client's key (RFC 6455 4.2.2), and the subprotocol/extension the
    upstream chose.
  * After the handshake every byte the client wrote is compared with every
    byte the upstream read, and vice versa: the proxy must not re-mask,
    re-frame, coalesce-or-split frames' contents, or drop bytes written in the
    same segment as the handshake or as the 101.
  * Release: the other side sees EOF within a second of a FIN or RST.
  * 503 agent_task_missing / 426 websocket_not_supported: the upstream
    listener accepts no connection at all.
  * No key, seed, task id, assertion (the ones the upstream really received
    included) or client credential in the daemon's stderr/stdout/audit log.
"""

import base64
import hashlib
import json
import os
import select
import shutil
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
import zlib

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (audit_records, SECRET, HTTPClient, ProxyTestCase, clean_env, free_port,  # noqa: E402
                     main, run_cmd, scopeproxy_bin, tls_material)
from agentid import (NO_TASK, SPEC_PUB, SPEC_SECRETS, SPEC_SIG_B64, auth_doc,  # noqa: E402
                     check_no_secrets, ed25519_verify, fingerprint, identity_record,
                     parse_assertion)


def now():
    return time.monotonic()


RUNTIME_ID = 'agent-123'
TASK_ID = 'task-ws-5c0ffee7d1'
ACCOUNT_ID = 'acct-ws-0042'

def check_assertion(value, task=TASK_ID, max_skew=5.0):
    """Decode and verify `AgentAssertion <token>`; AssertionError on any deviation."""
    return parse_assertion(value, RUNTIME_ID, task, SPEC_PUB, max_skew)


def auth_record(task=TASK_ID, fedramp=False):
    return auth_doc(identity_record(runtime=RUNTIME_ID, account=ACCOUNT_ID, user='user-ws',
                                    fedramp=fedramp, task_id=NO_TASK if task is None else task))


# --------------------------------------------------------------------------
# RFC 6455 framing
# --------------------------------------------------------------------------

GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'
OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
RSV1 = 4
MB = 1 << 20


def ws_key():
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key):
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def xor_mask(data, key):
    n = len(data)
    if n == 0:
        return b''
    rep = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, 'big') ^ int.from_bytes(rep, 'big')).to_bytes(n, 'big')


def encode_frame(opcode, payload=b'', fin=True, rsv=0, mask=True):
    if isinstance(payload, str):
        payload = payload.encode('utf-8')
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    m = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack('!H', n)
    else:
        head = bytes([b0, m | 127]) + struct.pack('!Q', n)
    if mask:
        key = os.urandom(4)
        return head + key + xor_mask(payload, key)
    return head + payload


def close_payload(code, reason=b''):
    return struct.pack('!H', code) + reason


class Frame:
    def __init__(self, fin, rsv, opcode, masked, payload, length_form):
        self.fin, self.rsv, self.opcode = fin, rsv, opcode
        self.masked, self.payload, self.length_form = masked, payload, length_form

    def key(self):
        return (self.fin, self.rsv, self.opcode, self.payload)

    def __repr__(self):
        p = self.payload if len(self.payload) <= 40 else self.payload[:40] + b'...(%d)' % len(self.payload)
        return '<Frame fin=%d rsv=%d op=%d masked=%d %r>' % (self.fin, self.rsv, self.opcode,
                                                              self.masked, p)


class FrameError(Exception):
    pass


def parse_frame(buf):
    """One frame from the front of `buf` (bytearray, consumed); None if incomplete."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    n = b1 & 0x7F
    pos = 2
    form = 7
    if n == 126:
        if len(buf) < 4:
            return None
        n = struct.unpack('!H', bytes(buf[2:4]))[0]
        pos, form = 4, 16
        if n < 126:
            raise FrameError('16-bit length %d not minimal' % n)
    elif n == 127:
        if len(buf) < 10:
            return None
        n = struct.unpack('!Q', bytes(buf[2:10]))[0]
        pos, form = 10, 64
        if n >> 63 or n < 65536:
            raise FrameError('bad 64-bit length %d' % n)
    masked = bool(b1 & 0x80)
    if masked:
        if len(buf) < pos + 4:
            return None
        key = bytes(buf[pos:pos + 4])
        pos += 4
    if len(buf) < pos + n:
        return None
    payload = bytes(buf[pos:pos + n])
    del buf[:pos + n]
    if masked:
        payload = xor_mask(payload, key)
    return Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, masked, payload, form)


def deflate_message(data):
    """permessage-deflate payload (RFC 7692 7.2.1): raw deflate, sync flush, tail removed."""
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b'\x00\x00\xff\xff')
    return out[:-4]


def inflate_message(data):
    d = zlib.decompressobj(-15)
    return d.decompress(data + b'\x00\x00\xff\xff')


class EOFBeforeFrame(AssertionError):
    pass


class WSClient:
    """The client end after a 101: raw socket (plain or ssl), masked frames.
    `sent` / `received` hold every byte after the handshake, for the
    byte-exact comparison with what the upstream saw."""

    def __init__(self, sock, initial=b'', pre_sent=b'', timeout=10.0):
        self.sock = sock
        self.timeout = timeout
        self.buf = bytearray(initial)
        self.received = bytearray(initial)
        self.sent = bytearray(pre_sent)
        self.eof = False
        self.eof_at = None
        self.eof_error = None

    def send_raw(self, data):
        self.sock.sendall(data)
        self.sent += data

    def send_frame(self, opcode, payload=b'', fin=True, rsv=0):
        self.send_raw(encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=True))

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(262144)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError) as e:
            self.eof_error = repr(e)
            data = b''
        if not data:
            self.eof = True
            if self.eof_at is None:
                self.eof_at = now()
            return 0
        self.buf += data
        self.received += data
        return len(data)

    def recv_frame(self, timeout=None):
        deadline = now() + (self.timeout if timeout is None else timeout)
        while True:
            f = parse_frame(self.buf)
            if f is not None:
                return f
            if self.eof:
                raise EOFBeforeFrame('connection closed before a whole frame; %d bytes pending: %r'
                                     % (len(self.buf), bytes(self.buf[:80])))
            left = deadline - now()
            if left <= 0:
                raise AssertionError('timed out waiting for a frame (%d bytes pending)' % len(self.buf))
            try:
                self._fill(left)
            except socket.timeout:
                raise AssertionError('timed out waiting for a frame (%d bytes pending)'
                                     % len(self.buf))

    def recv_frames(self, n, timeout=None):
        return [self.recv_frame(timeout) for _ in range(n)]

    def wait_eof(self, timeout):
        """True if EOF (FIN or RST) arrives within timeout; bytes read are kept."""
        deadline = now() + timeout
        while not self.eof:
            left = deadline - now()
            if left <= 0:
                return False
            try:
                self._fill(left)
            except socket.timeout:
                return False
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        except OSError:
            pass
        self.close()


# --------------------------------------------------------------------------
# WebSocket upstream
# --------------------------------------------------------------------------

class WSConn:
    """One upstream connection: the handshake head as received, every byte
    read after it (raw_in) and written after it (raw_out), parsed frames."""

    def __init__(self, server, sock):
        self.server = server
        self.sock = sock
        self.t_accept = now()
        self.tls = False
        self.sni = None
        self.alpn = None
        self.head = b''
        self.request_line = None
        self.headers = []
        self.buf = bytearray()
        self.raw_in = bytearray()
        self.raw_out = bytearray()
        self.frames = []
        self.errors = []
        self.upgraded = False
        self.eof_at = None              # the proxy closed (FIN or RST)
        self.closed_at = None           # we closed
        self.close_sent = False
        self.actions = []
        self.lock = threading.Lock()

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    # Actions asked for by the test run on the connection's own thread (an
    # SSL object must not be used from two threads at once).
    def do(self, fn):
        with self.lock:
            self.actions.append(fn)

    def send_frame_later(self, opcode, payload=b'', fin=True, rsv=0):
        self.do(lambda: self._send(encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=False)))

    def close_later(self):
        self.do(self._close)

    def reset_later(self):
        self.do(self._reset)

    def _send(self, data):
        self.sock.sendall(data)
        if self.upgraded:
            self.raw_out += data

    def _close(self):
        if self.closed_at is None:
            self.closed_at = now()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass

    def _reset(self):
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        except OSError:
            pass
        if self.closed_at is None:
            self.closed_at = now()
        try:
            self.sock.close()
        except OSError:
            pass


class WSUpstream:
    """Threaded WebSocket echo server on 127.0.0.1, plain or TLS, or both on
    one port (dual: a first byte of 0x16 is a TLS handshake), so one server
    stands in for a host on :80 and :443 and each connection says which way
    it came (conn.tls, conn.sni).

    Set before a connection arrives:
      answer    None: 101 (echo mode); bytes: send these instead and keep
                the connection open for `answer_hold` seconds (or close at
                once if answer_hold is 0)
      answer_first  True: send `answer` as soon as the connection is
                accepted, before reading the request (plain only), so it
                is already queued when the proxy first reads
      delay     seconds to wait (watching for the proxy to hang up) before
                answering
      greeting  bytes sent in the same write as the 101
      protocol  subprotocol chosen when the client offers it
      extensions  Sec-WebSocket-Extensions answered when the client offers
                permessage-deflate
      echo      True: echo data frames (a fragmented message once its last
                fragment is in, frames kept as they were); answer pings;
                answer a close with the same close and hang up.
                False: only record.
    """

    def __init__(self, tls=False, cert=None, key=None, dual=False):
        self.dual = dual
        tls = tls or dual
        self.answer = None
        self.answer_hold = 0.0
        self.answer_first = False
        self.delay = 0.0
        self.greeting = b''
        self.protocol = 'responses.v1'
        self.extensions = 'permessage-deflate; server_no_context_takeover; client_max_window_bits=15'
        self.echo = True
        self.conns = []
        self.errors = []
        self.cond = threading.Condition()
        self._closing = False
        self._threads = []
        self.ssl_ctx = None
        if tls:
            m = tls_material()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert or m.cert, key or m.key)
            ctx.set_alpn_protocols(['http/1.1'])
            ctx.sni_callback = self._sni
            self.ssl_ctx = ctx
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)

    @staticmethod
    def _sni(sslsock, name, ctx):
        sslsock._ws_sni = name

    def notify(self):
        with self.cond:
            self.cond.notify_all()

    def wait(self, pred, timeout=5.0):
        deadline = now() + timeout
        with self.cond:
            while True:
                v = pred()
                if v or now() >= deadline:
                    return v
                self.cond.wait(min(0.05, max(0.001, deadline - now())))

    def wait_conn(self, i=0, timeout=5.0, upgraded=False):
        def find():
            if len(self.conns) > i and self.conns[i].request_line is not None:
                c = self.conns[i]
                return c if (c.upgraded or not upgraded) else None
            return None
        return self.wait(find, timeout)

    def _accept_loop(self):
        while not self._closing:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            conn = WSConn(self, s)
            with self.cond:
                self.conns.append(conn)
                self.cond.notify_all()
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    # -- one connection ---------------------------------------------------
    def _recv(self, conn, timeout):
        """bytes, b'' on EOF, None on timeout (after running queued actions)."""
        deadline = now() + timeout
        while True:
            with conn.lock:
                acts, conn.actions = conn.actions, []
            for a in acts:
                try:
                    a()
                except OSError:
                    pass
            if conn.closed_at is not None:
                return b''
            try:
                if not (conn.tls and conn.sock.pending()):
                    r, _, _ = select.select([conn.sock], [], [], 0.02)
                    if not r:
                        if now() >= deadline:
                            return None
                        continue
                data = conn.sock.recv(262144)
            except ssl.SSLWantReadError:
                continue
            except socket.timeout:
                return None
            except (OSError, ssl.SSLError, ValueError):
                data = b''
            if not data:
                if conn.eof_at is None and conn.closed_at is None:
                    conn.eof_at = now()
                self.notify()
                return b''
            return data

    def _serve(self, conn):
        try:
            conn.sock.settimeout(10)
            first = None
            if self.answer_first and self.answer is not None:
                conn._send(self.answer)
            if self.dual:
                try:
                    first = conn.sock.recv(1, socket.MSG_PEEK)
                except (socket.timeout, OSError):
                    first = b''
                if not first:
                    conn.eof_at = now()
                    self.notify()
                    return
            if self.ssl_ctx is not None and (not self.dual or first == b'\x16'):
                try:
                    conn.sock = self.ssl_ctx.wrap_socket(conn.sock, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    conn.errors.append('TLS handshake: %r' % e)
                    conn.eof_at = now()
                    self.notify()
                    return
                conn.tls = True
                conn.sni = getattr(conn.sock, '_ws_sni', None)
                conn.alpn = conn.sock.selected_alpn_protocol()
            while b'\r\n\r\n' not in conn.buf:
                data = self._recv(conn, 15.0)
                if not data:
                    return
                conn.buf += data
            i = conn.buf.index(b'\r\n\r\n') + 4
            conn.head = bytes(conn.buf[:i])
            del conn.buf[:i]
            conn.raw_in += conn.buf
            lines = conn.head[:-4].decode('latin-1').split('\r\n')
            conn.headers = [(k, v.strip(' \t')) for k, _, v in (l.partition(':') for l in lines[1:])]
            conn.request_line = lines[0]
            # The rule every test checks: a minted credential never travels
            # on a plaintext connection.
            if not conn.tls and any(v.startswith('AgentAssertion')
                                    for v in conn.header_all('Authorization')):
                conn.errors.append('an AgentAssertion arrived over plaintext: %r'
                                   % conn.request_line)
            self.notify()
            if self.delay:
                deadline = now() + self.delay
                while now() < deadline:
                    data = self._recv(conn, deadline - now())
                    if data == b'':
                        return
                    if data:
                        conn.buf += data
                        conn.raw_in += data
            if self.answer is not None:
                if not self.answer_first:
                    conn._send(self.answer)
                hold = now() + self.answer_hold
                while now() < hold:
                    if self._recv(conn, hold - now()) == b'':
                        break
                return
            self._upgrade(conn)
            self._frames(conn)
        except Exception as e:          # noqa: BLE001 - recorded, fails the test
            if not self._closing:
                conn.errors.append('upstream: %r' % e)
        finally:
            if conn.closed_at is None:
                conn._close()
            self.notify()

    def _upgrade(self, conn):
        key = conn.header('Sec-WebSocket-Key')
        hdrs = [('Upgrade', 'websocket'), ('Connection', 'Upgrade'),
                ('Sec-WebSocket-Accept', accept_for(key or ''))]
        offered = [p.strip() for v in conn.header_all('Sec-WebSocket-Protocol') for p in v.split(',')]
        if self.protocol in offered:
            hdrs.append(('Sec-WebSocket-Protocol', self.protocol))
        if any('permessage-deflate' in v for v in conn.header_all('Sec-WebSocket-Extensions')):
            hdrs.append(('Sec-WebSocket-Extensions', self.extensions))
        head = ('HTTP/1.1 101 Switching Protocols\r\n' +
                ''.join('%s: %s\r\n' % kv for kv in hdrs) + '\r\n').encode()
        conn._send(head + self.greeting)       # one write: greeting rides with the 101
        conn.upgraded = True
        conn.raw_out += self.greeting
        self.notify()

    def _frames(self, conn):
        pending = []                     # data frames of an unfinished message
        while True:
            try:
                while True:
                    f = parse_frame(conn.buf)
                    if f is None:
                        break
                    conn.frames.append(f)
                    self.notify()
                    if not f.masked:
                        conn.errors.append('unmasked client frame %r' % f)
                    if not self.echo:
                        continue
                    if f.opcode == OP_PING:
                        conn._send(encode_frame(OP_PONG, f.payload, mask=False))
                    elif f.opcode == OP_CLOSE:
                        if not conn.close_sent:
                            conn.close_sent = True
                            conn._send(encode_frame(OP_CLOSE, f.payload, mask=False))
                        conn._close()
                        return
                    elif f.opcode in (OP_TEXT, OP_BIN, OP_CONT):
                        pending.append(f)
                        if f.fin:
                            conn._send(b''.join(encode_frame(p.opcode, p.payload, fin=p.fin,
                                                             rsv=p.rsv, mask=False)
                                                for p in pending))
                            pending = []
            except FrameError as e:
                conn.errors.append('bad frame from the proxy: %s' % e)
                return
            data = self._recv(conn, 3600)
            if not data:
                return
            conn.buf += data
            conn.raw_in += data

    def close(self):
        self._closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in list(self.conns):
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(2)
        for c in list(self.conns):
            self.errors.extend(c.errors)


# --------------------------------------------------------------------------
# Handshake
# --------------------------------------------------------------------------

HOP = {'connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'te', 'trailer',
       'transfer-encoding', 'upgrade', 'expect'}
CRED = {'authorization', 'chatgpt-account-id', 'x-openai-fedramp'}


def client_headers(host, key):
    """A Codex-like handshake: end-to-end headers in a deliberate order with a
    duplicate, the client's own credential, companion headers that a
    credentialed route must replace, and hop-by-hop headers (one only named
    in Connection) that must not reach the upstream."""
    return [
        ('Host', host),
        ('User-Agent', 'codex_cli_rs/0.169.0 (ws-it)'),
        ('Authorization', 'Bearer ' + SECRET),
        ('Upgrade', 'websocket'),
        ('Connection', 'keep-alive, Upgrade, X-Hop-Only'),
        ('X-Hop-Only', 'must-not-pass'),
        ('Sec-WebSocket-Key', key),
        ('Sec-WebSocket-Version', '13'),
        ('OpenAI-Beta', 'responses_websockets=2026-02-06'),
        ('Sec-WebSocket-Protocol', 'responses.v1, chat'),
        ('Sec-WebSocket-Extensions', 'permessage-deflate; client_max_window_bits'),
        ('session-id', 'sess-7f1e'),
        ('ChatGPT-Account-ID', 'acct-from-client'),
        ('x-codex-turn-state', 'opaque+/=='),
        ('X-Dup', 'one'),
        ('Proxy-Connection', 'keep-alive'),
        ('X-Dup', 'two'),
        ('originator', 'codex_cli_rs'),
    ]


def expected_e2e(sent, credentialed):
    named = set()
    for k, v in sent:
        if k.lower() == 'connection':
            named |= {t.strip().lower() for t in v.split(',')}
    out = [(k, v) for k, v in sent
           if k.lower() != 'host' and k.lower() not in HOP and k.lower() not in named]
    if credentialed:
        out = [(k, v) for k, v in out if k.lower() not in CRED]
    return out


def handshake_bytes(target, headers):
    return ('GET %s HTTP/1.1\r\n' % target + ''.join('%s: %s\r\n' % kv for kv in headers)
            + '\r\n').encode('latin-1')


# --------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------

class WSCase(ProxyTestCase):
    TIMEOUT = 40

    def setUp(self):
        super().setUp()
        self.tls = tls_material()
        self.work = tempfile.mkdtemp(prefix='scopeproxy-ws-case-')
        self.addCleanup(shutil.rmtree, self.work, True)
        self.forbidden = {SECRET, TASK_ID, 'AgentAssertion'} | SPEC_SECRETS
        self._n = 0

    def _new_path(self, name):
        self._n += 1
        return os.path.join(self.work, '%s-%d' % (name, self._n))

    def write_auth(self, task=TASK_ID, fedramp=False):
        d = self._new_path('auth')
        os.makedirs(d)
        path = os.path.join(d, 'auth.json')
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, 'w') as f:
            json.dump(auth_record(task, fedramp), f)
        os.chmod(path, 0o600)
        return path

    def upstream(self, tls=False, **kw):
        """tls=False: plain; tls=True: TLS only; dual=True: both on one port."""
        u = WSUpstream(tls=tls, **kw)
        self.addCleanup(self._finish_upstream_ws, u)
        return u

    def _finish_upstream_ws(self, u):
        u.close()
        if u.errors:
            self.fail('WebSocket upstream %d saw problems:\n%s' % (u.port, '\n'.join(u.errors)[-3000:]))

    def proxy(self, *args, task=TASK_ID, fedramp=False, resolve=(), config=None):
        """A daemon with its own auth file (0600), CA dir, audit log, debug logs."""
        auth = self.write_auth(task, fedramp)
        ca_dir = self._new_path('ca')
        audit = self._new_path('audit') + '.jsonl'
        full = ['--auth-file', auth, '--ca-dir', ca_dir, '--audit-log', audit,
                '--upstream-ca', self.tls.ca, '--log-level', 'debug']
        for host, port, up in resolve:
            full += ['--resolve', '%s:%d:127.0.0.1:%d' % (host, port, up)]
        if config is not None:
            cfg = self._new_path('config') + '.json'
            with open(cfg, 'w') as f:
                json.dump(config, f)
            full += ['--config', cfg]
        d = self.start_daemon(*(full + [str(a) for a in args]))
        d.ca_dir = ca_dir
        d.audit_path = audit
        d.ca = None
        self.addCleanup(self._check_secrets, d)
        return d

    def _check_secrets(self, d):
        d.stop()
        check_no_secrets(self, d, self.forbidden)

    def audit_lines(self, d, count, timeout=3.0):
        deadline = now() + timeout
        while True:
            lines = audit_records(d.audit_path)
            if len(lines) >= count or now() > deadline:
                return lines
            time.sleep(0.02)

    # -- connecting -------------------------------------------------------
    def exported_ca(self, d):
        if d.ca is None:
            r = run_cmd([scopeproxy_bin(), 'ca', 'export', '--ca-dir', d.ca_dir], env=clean_env())
            self.assertEqual(r.returncode, 0, 'ca export failed: %s' % r.stderr.decode())
            d.ca = self._new_path('exported') + '.pem'
            with open(d.ca, 'wb') as f:
                f.write(r.stdout)
        return d.ca

    def forward_client(self, d):
        c = HTTPClient(d.port, timeout=15)
        self.addCleanup(c.close)
        return c

    def intercept_client(self, d, host='api.openai.com'):
        """CONNECT host:443, then TLS trusting only the proxy's exported CA."""
        c = HTTPClient(d.port, timeout=15)
        self.addCleanup(c.close)
        c.send(('CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n' % (host, host)).encode())
        resp = c.read_head('CONNECT')
        self.assertEqual(resp.status, 200, 'CONNECT %s:443: %r\n%s' % (host, resp, d.tail(1500)))
        self.assertFalse(c.buf, 'bytes after the CONNECT answer')
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.exported_ca(d))
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.set_alpn_protocols(['http/1.1'])
        c.sock = ctx.wrap_socket(c.sock, server_hostname=host)
        return c

    def handshake(self, c, target, host, headers=None, early=b'', key=None):
        """Send the upgrade (plus `early` bytes in the same write); returns
        (response head, WSClient or None, key, headers sent).  For a non-101
        the body is read into resp.body."""
        key = key or ws_key()
        headers = headers if headers is not None else client_headers(host, key)
        c.send(handshake_bytes(target, headers) + early)
        resp = c.read_head('GET')
        if resp.status != 101:
            c.read_body(resp, timeout=10)
            return resp, None, key, headers
        ws = WSClient(c.sock, bytes(c.buf), pre_sent=early)
        c.buf.clear()
        return resp, ws, key, headers

    # -- checks -----------------------------------------------------------
    def check_101(self, resp, key, up, d=None):
        ctx = '\nresponse: %r%s' % (resp, '\n--- daemon ---\n' + d.tail(1500) if d else '')
        self.assertEqual(resp.status, 101, 'status' + ctx)
        self.assertEqual((resp.header('Upgrade') or '').lower(), 'websocket', 'Upgrade' + ctx)
        conn_tokens = {t.strip().lower() for v in resp.header_all('Connection') for t in v.split(',')}
        self.assertIn('upgrade', conn_tokens, 'Connection' + ctx)
        self.assertEqual(resp.header_all('Sec-WebSocket-Accept'), [accept_for(key)],
                         'Sec-WebSocket-Accept must be the upstream\'s (computed from the key)' + ctx)
        self.assertEqual(resp.header_all('Sec-WebSocket-Protocol'), [up.protocol], ctx)
        self.assertEqual(resp.header_all('Sec-WebSocket-Extensions'), [up.extensions], ctx)
        self.assertIsNone(resp.header('X-Scopeproxy-Error'), ctx)
        self.assertEqual(resp.header_all('Content-Length'), [], '1xx must not carry Content-Length' + ctx)
        self.assertEqual(resp.header_all('Transfer-Encoding'), [], '1xx must not carry Transfer-Encoding' + ctx)

    def check_upstream_head(self, conn, target, host, sent, credentialed, fedramp=False):
        """The handshake as the upstream saw it."""
        ctx = '\nupstream head:\n%s' % conn.head.decode('latin-1')
        self.assertEqual(conn.request_line, 'GET %s HTTP/1.1' % target, ctx)
        self.assertEqual(conn.header_all('Host'), [host], 'Host' + ctx)
        got = [(k, v) for k, v in conn.headers if k.lower() != 'host']
        self.assertGreaterEqual(len(got), 2, ctx)
        # Upgrade and Connection: Upgrade re-added at the end
        self.assertEqual([(k.lower(), v.lower()) for k, v in got[-2:]],
                         [('upgrade', 'websocket'), ('connection', 'upgrade')],
                         'Upgrade / Connection: Upgrade must close the handshake' + ctx)
        body = got[:-2]
        for k, _ in body:
            self.assertNotIn(k.lower(), HOP, 'hop-by-hop header %r forwarded%s' % (k, ctx))
        self.assertEqual(conn.header_all('X-Hop-Only'), [], 'header named in Connection forwarded' + ctx)
        env = None
        if credentialed:
            self.assertTrue(conn.tls, 'a credentialed handshake must arrive over TLS' + ctx)
            self.assertEqual(conn.sni, host, 'TLS name of a credentialed handshake' + ctx)
            auths = conn.header_all('Authorization')
            self.assertEqual(len(auths), 1, 'exactly one Authorization' + ctx)
            env = check_assertion(auths[0])
            token = auths[0].split(' ', 1)[1]
            self.forbidden |= {token, env['signature'], token[20:60]}
            self.assertNotIn(SECRET.encode(), conn.head, 'client credential leaked upstream' + ctx)
            self.assertEqual(conn.header_all('ChatGPT-Account-ID'), [ACCOUNT_ID], ctx)
            self.assertEqual(conn.header_all('X-OpenAI-Fedramp'), ['true'] if fedramp else [], ctx)
            body = [(k, v) for k, v in body if k.lower() not in CRED]
        else:
            self.assertEqual(conn.header_all('Authorization'), ['Bearer ' + SECRET],
                             'pass-through: the client\'s own Authorization must arrive untouched' + ctx)
            self.assertNotIn(b'AgentAssertion', conn.head, ctx)
        self.assertEqual(body, expected_e2e(sent, credentialed),
                         'end-to-end headers must arrive in order, byte-identical' + ctx)
        return env

    def wait_upgraded(self, up, i=0):
        conn = up.wait_conn(i, timeout=5, upgraded=True)
        self.assertIsNotNone(conn, 'upstream never saw (or answered) handshake #%d' % i)
        return conn

    def assertNoUpstreamConnection(self, up, grace=0.4):
        time.sleep(grace)
        self.assertEqual(len(up.conns), 0, 'the upstream must not even be connected to; got %r'
                         % [c.head for c in up.conns])

    def check_relay_bytes(self, ws, conn, exact_down=True):
        """Byte-exact both ways once both sides are done."""
        self.assertTrue(up_wait(conn.server, lambda: len(conn.raw_in) >= len(ws.sent), 5),
                        'upstream got %d of %d bytes' % (len(conn.raw_in), len(ws.sent)))
        self.assertTrue(bytes(conn.raw_in) == bytes(ws.sent),
                        'client->upstream bytes differ (%d sent, %d arrived, first diff at %s)'
                        % (len(ws.sent), len(conn.raw_in), first_diff(ws.sent, conn.raw_in)))
        if exact_down:
            self.assertTrue(bytes(ws.received) == bytes(conn.raw_out),
                            'upstream->client bytes differ (%d sent, %d arrived, first diff at %s)'
                            % (len(conn.raw_out), len(ws.received),
                               first_diff(conn.raw_out, ws.received)))

    def exercise(self, ws, conn):
        """Text, binary, length boundaries, fragmentation with an interleaved
        ping, ping/pong both ways, RSV1 (permessage-deflate) frames, 1 MB
        messages, then the close handshake; then byte-exactness."""
        def roundtrip(frames, expect):
            for op, payload, fin, rsv in frames:
                ws.send_frame(op, payload, fin=fin, rsv=rsv)
            got = ws.recv_frames(len(expect), timeout=15)
            self.assertEqual([f.key() for f in got], [e for e in expect],
                             'echoed frames differ')
            for f in got:
                self.assertFalse(f.masked, 'server frames must reach the client unmasked')
            return got

        def echo(op, payload):
            if isinstance(payload, str):
                payload = payload.encode()
            roundtrip([(op, payload, True, 0)], [(True, 0, op, payload)])

        echo(OP_TEXT, 'hello')
        echo(OP_TEXT, 'h\u00e9llo \u2713 \U0001f30d \u0000 end')
        echo(OP_BIN, bytes(range(256)))
        echo(OP_BIN, b'')
        for n in (125, 126, 65535, 65536, 70001):          # 7-, 16-, 64-bit lengths
            echo(OP_BIN, os.urandom(n))
        # fragmented text with a ping between fragments (RFC 6455 5.4)
        roundtrip([(OP_TEXT, b'frag-1 ', False, 0), (OP_PING, b'mid', True, 0),
                   (OP_CONT, b'frag-2 ', False, 0), (OP_CONT, b'frag-3', True, 0)],
                  [(True, 0, OP_PONG, b'mid'), (False, 0, OP_TEXT, b'frag-1 '),
                   (False, 0, OP_CONT, b'frag-2 '), (True, 0, OP_CONT, b'frag-3')])
        # fragmented binary
        roundtrip([(OP_BIN, b'\x00\x01', False, 0), (OP_CONT, b'\x02', False, 0),
                   (OP_CONT, b'', True, 0)],
                  [(False, 0, OP_BIN, b'\x00\x01'), (False, 0, OP_CONT, b'\x02'),
                   (True, 0, OP_CONT, b'')])
        # ping from the client
        roundtrip([(OP_PING, b'are-you-there', True, 0)], [(True, 0, OP_PONG, b'are-you-there')])
        # ping from the upstream: the client answers with a pong
        conn.send_frame_later(OP_PING, b'srv-ping-1')
        f = ws.recv_frame()
        self.assertEqual(f.key(), (True, 0, OP_PING, b'srv-ping-1'))
        ws.send_frame(OP_PONG, f.payload)
        self.assertTrue(up_wait(conn.server, lambda: any(x.opcode == OP_PONG and x.payload == b'srv-ping-1'
                                                         for x in conn.frames), 5),
                        'the client\'s pong never reached the upstream')
        # a compressed message (permessage-deflate sets RSV1): bits and bytes untouched
        plain = b'compressed ' * 300
        comp = deflate_message(plain)
        got = roundtrip([(OP_TEXT, comp, True, RSV1)], [(True, RSV1, OP_TEXT, comp)])
        self.assertEqual(inflate_message(got[0].payload), plain)
        # 1 MB messages: one 64-bit-length frame, and a text message in 4 fragments
        big = os.urandom(MB)
        got = roundtrip([(OP_BIN, big, True, 0)], [(True, 0, OP_BIN, big)])
        self.assertEqual(got[0].length_form, 64)
        text = (b'0123456789abcdef' * (MB // 16))
        q = MB // 4
        roundtrip([(OP_TEXT, text[:q], False, 0), (OP_CONT, text[q:2 * q], False, 0),
                   (OP_CONT, text[2 * q:3 * q], False, 0), (OP_CONT, text[3 * q:], True, 0)],
                  [(False, 0, OP_TEXT, text[:q]), (False, 0, OP_CONT, text[q:2 * q]),
                   (False, 0, OP_CONT, text[2 * q:3 * q]), (True, 0, OP_CONT, text[3 * q:])])
        # close handshake started by the client
        ws.send_frame(OP_CLOSE, close_payload(1000, b'bye'))
        f = ws.recv_frame()
        self.assertEqual(f.key(), (True, 0, OP_CLOSE, close_payload(1000, b'bye')))
        self.assertTrue(ws.wait_eof(3), 'no EOF after the close handshake (upstream hung up)')
        self.assertEqual(bytes(ws.buf), b'', 'bytes after the close frame')
        self.check_relay_bytes(ws, conn)
        self.assertEqual([f.key() for f in conn.frames if f.opcode == OP_CLOSE],
                         [(True, 0, OP_CLOSE, close_payload(1000, b'bye'))])


def close_wait_sockets(remote_port):
    """Local sockets in CLOSE-WAIT whose peer is 127.0.0.1:remote_port (/proc/net/tcp)."""
    out = []
    with open('/proc/net/tcp') as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            rem, st = fields[2], fields[3]
            if int(rem.split(':')[1], 16) == remote_port and st == '08':
                out.append(fields[1])
    return out


def up_wait(up, pred, timeout):
    return up.wait(pred, timeout)


def first_diff(a, b):
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n if len(a) != len(b) else None


# --------------------------------------------------------------------------
# The test machinery itself
# --------------------------------------------------------------------------

class SelfChecks(ProxyTestCase):

    def test_verifier_and_codec_are_not_vacuous(self):
        sig = base64.b64decode(SPEC_SIG_B64)
        msg = b'agent-123:task-123:2026-04-23T00:00:00Z'
        self.assertTrue(ed25519_verify(SPEC_PUB, msg, sig))
        self.assertFalse(ed25519_verify(SPEC_PUB, msg, bytes([sig[0] ^ 1]) + sig[1:]))
        self.assertFalse(ed25519_verify(SPEC_PUB, msg + b'x', sig))
        # RFC 6455 1.3 example
        self.assertEqual(accept_for('dGhlIHNhbXBsZSBub25jZQ=='), 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=')
        # RFC 6455 5.7 examples
        self.assertEqual(encode_frame(OP_TEXT, b'Hello', mask=False), bytes.fromhex('810548656c6c6f'))
        b = bytearray(bytes.fromhex('818537fa213d7f9f4d5158'))
        f = parse_frame(b)
        self.assertEqual((f.fin, f.opcode, f.masked, f.payload), (True, OP_TEXT, True, b'Hello'))
        self.assertEqual(encode_frame(OP_BIN, b'\0' * 65536, mask=False)[:10],
                         bytes.fromhex('827f0000000000010000'))
        for n in (0, 125, 126, 65535, 65536, MB):
            p = os.urandom(n)
            buf = bytearray(encode_frame(OP_BIN, p, fin=False, rsv=RSV1))
            f = parse_frame(buf)
            self.assertEqual((f.fin, f.rsv, f.opcode, f.payload), (False, RSV1, OP_BIN, p))
            self.assertEqual(buf, b'')
        self.assertEqual(inflate_message(deflate_message(b'abc' * 99)), b'abc' * 99)
        # a truncated frame is incomplete, not a frame
        self.assertIsNone(parse_frame(bytearray(encode_frame(OP_TEXT, b'x' * 300)[:-1])))
        # the header expectation drops hop-by-hop and Connection-named headers
        e = expected_e2e(client_headers('h', 'k'), credentialed=False)
        names = [k.lower() for k, _ in e]
        for n in ('host', 'upgrade', 'connection', 'x-hop-only', 'proxy-connection'):
            self.assertNotIn(n, names)
        self.assertIn(('Authorization', 'Bearer ' + SECRET), e)


# --------------------------------------------------------------------------
# Forward mode and gateway mode
# --------------------------------------------------------------------------

# A credentialed handshake written as http://HOST/... goes upstream over TLS
# to HOST:443; a pass-through one goes the way the client wrote it.  One
# dual (plain + TLS) upstream stands in for both ports of a host.
def both_ports(host, port):
    return [(host, 80, port), (host, 443, port)]


class ForwardRelay(WSCase):

    def setUp(self):
        super().setUp()
        self.up = self.upstream(dual=True)
        self.d = self.proxy(resolve=both_ports('api.openai.com', self.up.port)
                            + both_ports('chatgpt.com', self.up.port)
                            + [('ws.example.test', 8080, self.up.port)])

    def test_responses_handshake_gets_verified_assertion_and_messages_round_trip(self):
        c = self.forward_client(self.d)
        resp, ws, key, sent = self.handshake(c, 'http://api.openai.com/v1/responses', 'api.openai.com')
        self.check_101(resp, key, self.up, self.d)
        conn = self.wait_upgraded(self.up)
        self.check_upstream_head(conn, '/v1/responses', 'api.openai.com', sent, credentialed=True)
        self.exercise(ws, conn)

    def test_passthrough_custom_host_keeps_client_headers(self):
        c = self.forward_client(self.d)
        resp, ws, key, sent = self.handshake(c, 'http://ws.example.test:8080/socket/v1/responses?x=1&y=%2F',
                                             'ws.example.test:8080')
        self.check_101(resp, key, self.up, self.d)
        conn = self.wait_upgraded(self.up)
        self.check_upstream_head(conn, '/socket/v1/responses?x=1&y=%2F', 'ws.example.test:8080', sent,
                                 credentialed=False)
        self.assertFalse(conn.tls, 'a pass-through WebSocket goes the way the client wrote it')
        self.assertEqual(conn.header_all('ChatGPT-Account-ID'), ['acct-from-client'])
        ws.send_frame(OP_TEXT, b'pass-through')
        self.assertEqual(ws.recv_frame().key(), (True, 0, OP_TEXT, b'pass-through'))
        ws.send_frame(OP_CLOSE, close_payload(1000))
        self.assertEqual(ws.recv_frame().opcode, OP_CLOSE)
        self.assertTrue(ws.wait_eof(3))
        self.check_relay_bytes(ws, conn)

    def test_first_party_host_other_path_is_passthrough(self):
        c = self.forward_client(self.d)
        resp, ws, key, sent = self.handshake(c, 'http://api.openai.com/v1/realtime?model=m1',
                                             'api.openai.com')
        self.check_101(resp, key, self.up, self.d)
        conn = self.wait_upgraded(self.up)
        self.check_upstream_head(conn, '/v1/realtime?model=m1', 'api.openai.com', sent,
                                 credentialed=False)
        self.assertFalse(conn.tls, 'a pass-through WebSocket goes the way the client wrote it')
        ws.send_frame(OP_BIN, b'\x01\x02')
        self.assertEqual(ws.recv_frame().key(), (True, 0, OP_BIN, b'\x01\x02'))

    def test_chatgpt_codex_route_gets_assertion(self):
        c = self.forward_client(self.d)
        resp, ws, key, sent = self.handshake(c, 'http://chatgpt.com/backend-api/codex/responses',
                                             'chatgpt.com')
        self.check_101(resp, key, self.up, self.d)
        conn = self.wait_upgraded(self.up)
        self.check_upstream_head(conn, '/backend-api/codex/responses', 'chatgpt.com', sent,
                                 credentialed=True)
        ws.send_frame(OP_TEXT, b'{"type":"response.create"}')
        self.assertEqual(ws.recv_frame().key(), (True, 0, OP_TEXT, b'{"type":"response.create"}'))

    def test_early_bytes_both_ways_are_not_lost(self):
        # The upstream writes two frames (one of 100 KB) in the same write as
        # its 101; the client writes two frames (one of 50 KB) in the same
        # write as its handshake.
        big_down = os.urandom(100000)
        self.up.greeting = (encode_frame(OP_TEXT, b'hello-from-upstream', mask=False)
                            + encode_frame(OP_BIN, big_down, mask=False))
        big_up = os.urandom(50000)
        early = encode_frame(OP_TEXT, b'early-from-client') + encode_frame(OP_BIN, big_up)
        c = self.forward_client(self.d)
        resp, ws, key, sent = self.handshake(c, 'http://api.openai.com/v1/responses',
                                             'api.openai.com', early=early)
        self.check_101(resp, key, self.up, self.d)
        got = ws.recv_frames(4)
        self.assertEqual([f.key() for f in got],
                         [(True, 0, OP_TEXT, b'hello-from-upstream'), (True, 0, OP_BIN, big_down),
                          (True, 0, OP_TEXT, b'early-from-client'), (True, 0, OP_BIN, big_up)])
        conn = self.wait_upgraded(self.up)
        self.check_upstream_head(conn, '/v1/responses', 'api.openai.com', sent, credentialed=True)
        self.assertEqual([f.key() for f in conn.frames[:2]],
                         [(True, 0, OP_TEXT, b'early-from-client'), (True, 0, OP_BIN, big_up)])
        ws.send_frame(OP_CLOSE, close_payload(1001))
        self.assertEqual(ws.recv_frame().opcode, OP_CLOSE)
        self.assertTrue(ws.wait_eof(3))
        self.check_relay_bytes(ws, conn)

    def test_server_initiated_close(self):
        c = self.forward_client(self.d)
        resp, ws, key, _ = self.handshake(c, 'http://api.openai.com/v1/responses', 'api.openai.com')
        self.check_101(resp, key, self.up, self.d)
        conn = self.wait_upgraded(self.up)
        self.assertTrue(conn.tls, 'a credentialed handshake must arrive over TLS')
        conn.send_frame_later(OP_CLOSE, close_payload(1001, b'going away'))
        f = ws.recv_frame()
        self.assertEqual(f.key(), (True, 0, OP_CLOSE, close_payload(1001, b'going away')))
        ws.send_frame(OP_CLOSE, f.payload)
        self.assertTrue(up_wait(self.up, lambda: any(x.opcode == OP_CLOSE for x in conn.frames), 5),
                        'the client\'s close never reached the upstream')
        conn.close_later()
        self.assertTrue(ws.wait_eof(2), 'client did not see the upstream hang up')
        self.check_relay_bytes(ws, conn)

    def test_concurrent_sessions_do_not_mix(self):
        n, rounds = 6, 25
        errors = []
        barrier = threading.Barrier(n)

        def session(i):
            try:
                c = HTTPClient(self.d.port, timeout=15)
                try:
                    resp, ws, key, _ = self.handshake(c, 'http://api.openai.com/v1/responses',
                                                      'api.openai.com')
                    if resp.status != 101:
                        errors.append('session %d: %r' % (i, resp))
                        return
                    barrier.wait(10)
                    for j in range(rounds):
                        msg = ('s%d-m%d-' % (i, j)).encode() + os.urandom(j * 37)
                        ws.send_frame(OP_BIN, msg)
                        f = ws.recv_frame()
                        if f.key() != (True, 0, OP_BIN, msg):
                            errors.append('session %d round %d: got %r' % (i, j, f))
                            return
                    ws.send_frame(OP_CLOSE, close_payload(1000))
                    if ws.recv_frame().opcode != OP_CLOSE:
                        errors.append('session %d: no close' % i)
                finally:
                    c.close()
            except Exception as e:  # noqa: BLE001
                errors.append('session %d: %r' % (i, e))

        threads = [threading.Thread(target=session, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(errors, [])
        self.assertEqual(len(self.up.conns), n)
        for conn in self.up.conns:
            check_assertion(conn.header('Authorization'))
            self.assertTrue(conn.tls, 'a credentialed handshake must arrive over TLS')
            self.assertEqual(conn.sni, 'api.openai.com')

    def test_upstream_refuses_with_json_and_content_length(self):
        body = b'{"error":{"message":"upgrade forbidden here","code":"ws_forbidden"}}'
        self.up.answer = (b'HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n'
                          b'X-Upstream-Marker: m403\r\nContent-Length: %d\r\n\r\n' % len(body)) + body
        self.up.answer_hold = 5.0      # framing is the Content-Length, not the close
        c = self.forward_client(self.d)
        t0 = now()
        resp, ws, key, sent = self.handshake(c, 'http://api.openai.com/v1/responses', 'api.openai.com')
        self.assertIsNone(ws)
        self.assertEqual(resp.status, 403, resp)
        self.assertEqual(resp.body, body, resp)
        self.assertTrue(resp.complete, resp)
        self.assertLess(now() - t0, 3.0, 'the answer waited for the upstream to close')
        self.assertTrue((resp.header('Content-Type') or '').startswith('application/json'), resp)
        self.assertEqual(resp.header('X-Upstream-Marker'), 'm403', resp)
        self.assertIsNone(resp.header('X-Scopeproxy-Error'), resp)
        self.assertIsNone(resp.header('Sec-WebSocket-Accept'), resp)
        conn = self.up.wait_conn(0)
        self.check_upstream_head(conn, '/v1/responses', 'api.openai.com', sent, credentialed=True)

    def test_upstream_refuses_426_chunked(self):
        parts = [b'{"error":{"message":"use HTTP",', b'"code":"upgrade_required"}}']
        self.up.answer = (b'HTTP/1.1 426 Upgrade Required\r\nContent-Type: application/json\r\n'
                          b'Transfer-Encoding: chunked\r\n\r\n'
                          + b''.join(b'%x\r\n%s\r\n' % (len(p), p) for p in parts) + b'0\r\n\r\n')
        self.up.answer_hold = 5.0
        c = self.forward_client(self.d)
        t0 = now()
        resp, ws, key, _ = self.handshake(c, 'http://ws.example.test:8080/ws', 'ws.example.test:8080')
        self.assertIsNone(ws)
        self.assertEqual(resp.status, 426, resp)
        self.assertEqual(resp.body, b''.join(parts), resp)
        self.assertTrue(resp.complete, resp)
        self.assertLess(now() - t0, 3.0, 'the answer waited for the upstream to close')
        self.assertIsNone(resp.header('X-Scopeproxy-Error'), resp)
        self.assertFalse(self.up.wait_conn(0).tls, 'a pass-through WebSocket goes the way '
                         'the client wrote it')

    def test_upstream_refuses_with_body_until_close(self):
        body = b'{"error":"no websocket today"}'
        self.up.answer = b'HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\r\n' + body
        self.up.answer_hold = 0.0      # the body ends when the upstream closes
        c = self.forward_client(self.d)
        resp, ws, key, _ = self.handshake(c, 'http://ws.example.test:8080/ws', 'ws.example.test:8080')
        self.assertIsNone(ws)
        self.assertEqual(resp.status, 400, resp)
        self.assertEqual(resp.body, body, resp)
        self.assertIsNone(resp.header('X-Scopeproxy-Error'), resp)

    def test_upstream_refuses_at_once_with_body_until_close(self):
        # The answer (head and body) is queued before the proxy's first
        # read: that read gets the head and body together, and the leg
        # must still watch for the rest (here: the close that ends the
        # body). Before the fix the leg stopped watching and the client
        # waited until its own timeout.
        body = b'{"error":"no websocket here"}'
        self.up.answer = b'HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\r\n' + body
        self.up.answer_first = True
        self.up.answer_hold = 0.0
        c = self.forward_client(self.d)
        resp, ws, key, _ = self.handshake(c, 'http://ws.example.test:8080/ws', 'ws.example.test:8080')
        self.assertIsNone(ws)
        self.assertEqual(resp.status, 400, resp)
        self.assertEqual(resp.body, body, resp)
        self.assertIsNone(resp.header('X-Scopeproxy-Error'), resp)

    def test_unreachable_upstream_is_502(self):
        # both ports: the handshake written as http:// is sent to :443
        d = self.proxy(resolve=both_ports('api.openai.com', free_port()))
        c = self.forward_client(d)
        resp, ws, _, _ = self.handshake(c, 'http://api.openai.com/v1/responses', 'api.openai.com')
        self.assertIsNone(ws)
        self.assertProxyError(resp, 502, 'upstream_unreachable', d)


class GatewayRelay(WSCase):

    def test_gateway_v1_responses_over_tls_upstream(self):
        up = self.upstream(tls=True)
        d = self.proxy(resolve=[('api.openai.com', 443, up.port)])
        c = self.forward_client(d)
        resp, ws, key, sent = self.handshake(c, '/v1/responses', '127.0.0.1:%d' % d.port)
        self.check_101(resp, key, up, d)
        conn = self.wait_upgraded(up)
        self.assertTrue(conn.tls)
        self.assertEqual(conn.sni, 'api.openai.com')
        self.check_upstream_head(conn, '/v1/responses', 'api.openai.com', sent, credentialed=True)
        ws.send_frame(OP_TEXT, b'via gateway')
        self.assertEqual(ws.recv_frame().key(), (True, 0, OP_TEXT, b'via gateway'))
        ws.send_frame(OP_CLOSE, close_payload(1000))
        self.assertEqual(ws.recv_frame().opcode, OP_CLOSE)
        self.assertTrue(ws.wait_eof(3))
        self.check_relay_bytes(ws, conn)

    def test_untrusted_upstream_certificate_is_502_tls(self):
        m = tls_material()
        up = self.upstream(tls=True, cert=m.rogue_cert, key=m.rogue_key)
        d = self.proxy(resolve=[('api.openai.com', 443, up.port)])
        c = self.forward_client(d)
        resp, ws, _, _ = self.handshake(c, '/v1/responses', '127.0.0.1:%d' % d.port)
        self.assertIsNone(ws)
        self.assertProxyError(resp, 502, 'upstream_tls_error', d)
        time.sleep(0.2)
        self.assertTrue(all(cn.request_line is None for cn in up.conns),
                        'a handshake (with an assertion) went to an unverified upstream')
        for cn in up.conns:        # the TLS failure on the upstream side is expected
            cn.errors = [e for e in cn.errors if 'UNKNOWN_CA' not in e]


# --------------------------------------------------------------------------
# Inside an intercepted CONNECT
# --------------------------------------------------------------------------

class InterceptedRelay(WSCase):

    def setUp(self):
        super().setUp()
        self.up = self.upstream(tls=True)
        self.d = self.proxy(resolve=[('api.openai.com', 443, self.up.port),
                                     ('chatgpt.com', 443, self.up.port)])

    def test_responses_through_interception(self):
        c = self.intercept_client(self.d)
        resp, ws, key, sent = self.handshake(c, '/v1/responses', 'api.openai.com')
        self.check_101(resp, key, self.up, self.d)
        conn = self.wait_upgraded(self.up)
        self.assertTrue(conn.tls, 'the upstream leg must be TLS')
        self.assertEqual(conn.sni, 'api.openai.com')
        self.assertEqual(conn.alpn, 'http/1.1', 'upstream ALPN')
        self.check_upstream_head(conn, '/v1/responses', 'api.openai.com', sent, credentialed=True)
        self.exercise(ws, conn)

    def test_chatgpt_through_interception(self):
        c = self.intercept_client(self.d, host='chatgpt.com')
        resp, ws, key, sent = self.handshake(c, '/backend-api/codex/responses', 'chatgpt.com')
        self.check_101(resp, key, self.up, self.d)
        conn = self.wait_upgraded(self.up)
        self.assertEqual(conn.sni, 'chatgpt.com')
        self.check_upstream_head(conn, '/backend-api/codex/responses', 'chatgpt.com', sent,
                                 credentialed=True)
        ws.send_frame(OP_TEXT, b'x' * 3000)
        self.assertEqual(ws.recv_frame().key(), (True, 0, OP_TEXT, b'x' * 3000))

    def test_other_path_through_interception_is_passthrough(self):
        c = self.intercept_client(self.d)
        resp, ws, key, sent = self.handshake(c, '/v1/realtime', 'api.openai.com')
        self.check_101(resp, key, self.up, self.d)
        conn = self.wait_upgraded(self.up)
        self.check_upstream_head(conn, '/v1/realtime', 'api.openai.com', sent, credentialed=False)

    def test_early_bytes_through_interception(self):
        self.up.greeting = encode_frame(OP_TEXT, b'hello-tls', mask=False) + \
            encode_frame(OP_BIN, os.urandom(70000), mask=False)
        early = encode_frame(OP_TEXT, b'early-tls') + encode_frame(OP_BIN, os.urandom(40000))
        c = self.intercept_client(self.d)
        resp, ws, key, sent = self.handshake(c, '/v1/responses', 'api.openai.com', early=early)
        self.check_101(resp, key, self.up, self.d)
        got = ws.recv_frames(4)
        self.assertEqual(got[0].key(), (True, 0, OP_TEXT, b'hello-tls'))
        self.assertEqual(len(got[1].payload), 70000)
        self.assertEqual(got[2].key(), (True, 0, OP_TEXT, b'early-tls'))
        self.assertEqual(len(got[3].payload), 40000)
        conn = self.wait_upgraded(self.up)
        ws.send_frame(OP_CLOSE, close_payload(1000))
        self.assertEqual(ws.recv_frame().opcode, OP_CLOSE)
        self.assertTrue(ws.wait_eof(3))
        self.check_relay_bytes(ws, conn)

    def test_upstream_refusal_through_interception(self):
        body = b'{"error":{"message":"websocket not enabled","code":"upgrade_required"}}'
        self.up.answer = (b'HTTP/1.1 426 Upgrade Required\r\nContent-Type: application/json\r\n'
                          b'Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n' % (len(body), body))
        self.up.answer_hold = 5.0
        c = self.intercept_client(self.d)
        resp, ws, _, _ = self.handshake(c, '/v1/responses', 'api.openai.com')
        self.assertIsNone(ws)
        self.assertEqual(resp.status, 426, resp)
        self.assertEqual(resp.body, body, resp)
        self.assertIsNone(resp.header('X-Scopeproxy-Error'), resp)

    def test_client_disappears_through_interception(self):
        c = self.intercept_client(self.d)
        resp, ws, key, _ = self.handshake(c, '/v1/responses', 'api.openai.com')
        self.check_101(resp, key, self.up, self.d)
        conn = self.wait_upgraded(self.up)
        ws.send_frame(OP_TEXT, b'one')
        self.assertEqual(ws.recv_frame().payload, b'one')
        t0 = now()
        ws.sock.close()
        self.assertTrue(up_wait(self.up, lambda: conn.eof_at is not None, 3),
                        'upstream never saw EOF after the client left')
        self.assertLess(conn.eof_at - t0, 1.0, 'upstream released %.2fs after the client left'
                        % (conn.eof_at - t0))

    def test_upstream_disappears_through_interception(self):
        c = self.intercept_client(self.d)
        resp, ws, key, _ = self.handshake(c, '/v1/responses', 'api.openai.com')
        self.check_101(resp, key, self.up, self.d)
        conn = self.wait_upgraded(self.up)
        ws.send_frame(OP_TEXT, b'one')
        self.assertEqual(ws.recv_frame().payload, b'one')
        t0 = now()
        conn.close_later()
        self.assertTrue(ws.wait_eof(3), 'client never saw the upstream leave')
        self.assertLess(ws.eof_at - t0, 1.0, 'client saw the close %.2fs late' % (ws.eof_at - t0))


# --------------------------------------------------------------------------
# Fail-closed 503, refuse mode 426
# --------------------------------------------------------------------------

class NoTask(WSCase):

    def test_missing_task_is_503_and_nothing_upstream(self):
        up = self.upstream()
        tup = self.upstream(tls=True)
        d = self.proxy(task=None, resolve=[('api.openai.com', 80, up.port),
                                           ('chatgpt.com', 80, up.port),
                                           ('api.openai.com', 443, tup.port)])
        for target, host in (('http://api.openai.com/v1/responses', 'api.openai.com'),
                             ('http://chatgpt.com/backend-api/codex/responses', 'chatgpt.com')):
            c = self.forward_client(d)
            resp, ws, _, _ = self.handshake(c, target, host)
            self.assertIsNone(ws, 'a 101 without a run task')
            err = self.assertProxyError(resp, 503, 'agent_task_missing', d)
            self.assertEqual(err['type'], 'agent_identity_error')
            self.assertIsNone(resp.header('Sec-WebSocket-Accept'))
        # gateway mode and inside interception too
        c = self.forward_client(d)
        resp, ws, _, _ = self.handshake(c, '/v1/responses', '127.0.0.1:%d' % d.port)
        self.assertIsNone(ws)
        self.assertProxyError(resp, 503, 'agent_task_missing', d)
        c = self.intercept_client(d)
        resp, ws, _, _ = self.handshake(c, '/v1/responses', 'api.openai.com')
        self.assertIsNone(ws)
        self.assertProxyError(resp, 503, 'agent_task_missing', d)
        self.assertNoUpstreamConnection(up)
        self.assertNoUpstreamConnection(tup, grace=0)
        lines = [x for x in self.audit_lines(d, 5) if x.get('method') == 'GET']
        self.assertEqual(len(lines), 4, lines)
        self.assertTrue(all(x.get('action') == 'reject' and x.get('task') is None
                            and x.get('status') == 503 for x in lines), lines)
        # a pass-through WebSocket needs no run task
        c = self.forward_client(d)
        resp, ws, key, sent = self.handshake(c, 'http://api.openai.com/v1/realtime', 'api.openai.com')
        self.check_101(resp, key, up, d)
        conn = self.wait_upgraded(up)
        self.check_upstream_head(conn, '/v1/realtime', 'api.openai.com', sent, credentialed=False)
        self.assertFalse(conn.tls, 'a pass-through WebSocket goes the way the client wrote it')


class RefuseMode(WSCase):

    def test_refuse_flag_426_on_responses_only(self):
        up = self.upstream(dual=True)
        d = self.proxy('--websocket', 'refuse',
                       resolve=both_ports('api.openai.com', up.port) + both_ports('chatgpt.com', up.port)
                       + [('ws.example.test', 80, up.port)])
        for target, host in (('http://api.openai.com/v1/responses', 'api.openai.com'),
                             ('http://chatgpt.com/backend-api/codex/responses', 'chatgpt.com')):
            c = self.forward_client(d)
            resp, ws, _, _ = self.handshake(c, target, host)
            self.assertIsNone(ws)
            self.assertProxyError(resp, 426, 'websocket_not_supported', d)
        self.assertNoUpstreamConnection(up)
        # other WebSockets are still relayed
        for i, (target, host, path) in enumerate((
                ('http://ws.example.test/live', 'ws.example.test', '/live'),
                ('http://api.openai.com/v1/realtime', 'api.openai.com', '/v1/realtime'))):
            c = self.forward_client(d)
            resp, ws, key, sent = self.handshake(c, target, host)
            self.check_101(resp, key, up, d)
            conn = self.wait_upgraded(up, i)
            self.check_upstream_head(conn, path, host, sent, credentialed=False)
            self.assertFalse(conn.tls, 'a pass-through WebSocket goes the way the client wrote it')
            ws.send_frame(OP_TEXT, b'still relayed')
            self.assertEqual(ws.recv_frame().key(), (True, 0, OP_TEXT, b'still relayed'))

    def test_refuse_config_key_426_inside_interception(self):
        up = self.upstream(tls=True)
        d = self.proxy(config={'websocket': 'refuse'}, resolve=[('api.openai.com', 443, up.port)])
        c = self.intercept_client(d)
        resp, ws, _, _ = self.handshake(c, '/v1/responses', 'api.openai.com')
        self.assertIsNone(ws)
        self.assertProxyError(resp, 426, 'websocket_not_supported', d)
        self.assertNoUpstreamConnection(up)


# --------------------------------------------------------------------------
# Release: one side leaves, idle timeout
# --------------------------------------------------------------------------

class Release(WSCase):

    def setUp(self):
        super().setUp()
        self.up = self.upstream(dual=True)
        self.d = self.proxy(resolve=both_ports('api.openai.com', self.up.port))

    def open(self):
        c = self.forward_client(self.d)
        resp, ws, key, _ = self.handshake(c, 'http://api.openai.com/v1/responses', 'api.openai.com')
        self.check_101(resp, key, self.up, self.d)
        conn = self.wait_upgraded(self.up, len(self.up.conns) - 1)
        self.assertTrue(conn.tls, 'a credentialed handshake must arrive over TLS')
        ws.send_frame(OP_TEXT, b'ping-pong')
        self.assertEqual(ws.recv_frame().payload, b'ping-pong')
        return ws, conn

    def assert_upstream_eof(self, conn, t0):
        self.assertTrue(up_wait(self.up, lambda: conn.eof_at is not None, 3),
                        'upstream never saw EOF after the client left')
        self.assertLess(conn.eof_at - t0, 1.0, 'upstream released %.2fs after the client left'
                        % (conn.eof_at - t0))

    def test_client_closes_upstream_sees_eof(self):
        ws, conn = self.open()
        t0 = now()
        ws.close()
        self.assert_upstream_eof(conn, t0)

    def test_client_resets_upstream_sees_eof(self):
        ws, conn = self.open()
        t0 = now()
        ws.abort()
        self.assert_upstream_eof(conn, t0)

    def test_client_leaves_mid_message(self):
        ws, conn = self.open()
        frame = encode_frame(OP_BIN, os.urandom(200000))
        ws.send_raw(frame[:120000])        # half a frame, then gone
        t0 = now()
        ws.abort()
        self.assert_upstream_eof(conn, t0)

    def test_upstream_closes_client_sees_eof(self):
        ws, conn = self.open()
        t0 = now()
        conn.close_later()
        self.assertTrue(ws.wait_eof(3), 'client never saw the upstream leave')
        self.assertLess(ws.eof_at - t0, 1.0)

    def test_upstream_resets_client_sees_eof(self):
        ws, conn = self.open()
        conn.send_frame_later(OP_BIN, b'last words')
        self.assertEqual(ws.recv_frame().payload, b'last words')
        t0 = now()
        conn.reset_later()
        self.assertTrue(ws.wait_eof(3), 'client never saw the upstream reset')
        self.assertLess(ws.eof_at - t0, 1.0)

    def test_relay_ends_when_upstream_hangs_up_first(self):
        # The upstream closes; the client saw EOF but is slow to close its
        # end.  The relay is over all the same: the proxy must not keep its
        # socket to the upstream open (CLOSE-WAIT) waiting for the client.
        ws, conn = self.open()
        conn.close_later()
        self.assertTrue(ws.wait_eof(3), 'client never saw the upstream leave')
        t0 = now()
        while now() - t0 < 1.0 and close_wait_sockets(self.up.port):
            time.sleep(0.05)
        left = close_wait_sockets(self.up.port)
        self.assertEqual(left, [], 'the proxy still holds %d socket(s) to the upstream in CLOSE-WAIT '
                         '1 s after the upstream hung up (relay kept half-open until the client '
                         'closes or writes)' % len(left))

    def test_client_leaves_during_handshake(self):
        self.up.delay = 4.0                # the upstream sits on the handshake
        c = self.forward_client(self.d)
        c.send(handshake_bytes('http://api.openai.com/v1/responses',
                               client_headers('api.openai.com', ws_key())))
        conn = self.up.wait_conn(0, timeout=5)
        self.assertIsNotNone(conn)
        self.assertTrue(conn.tls, 'a credentialed handshake must arrive over TLS')
        t0 = now()
        c.close()
        self.assertTrue(up_wait(self.up, lambda: conn.eof_at is not None, 3),
                        'upstream kept waiting after the client left during the handshake')
        self.assertLess(conn.eof_at - t0, 1.0)


class IdleTimeout(WSCase):

    def test_idle_relay_is_closed_and_active_one_kept(self):
        up = self.upstream(dual=True)
        d = self.proxy('--idle-timeout', '1', resolve=both_ports('api.openai.com', up.port))
        c1 = self.forward_client(d)
        c2 = self.forward_client(d)
        r1, idle, k1, _ = self.handshake(c1, 'http://api.openai.com/v1/responses', 'api.openai.com')
        r2, busy, k2, _ = self.handshake(c2, 'http://api.openai.com/v1/responses', 'api.openai.com')
        self.check_101(r1, k1, up, d)
        self.check_101(r2, k2, up, d)
        self.assertIsNotNone(up.wait_conn(1, upgraded=True))
        self.assertTrue(all(cn.tls for cn in up.conns), 'a credentialed handshake must arrive over TLS')
        idle.send_frame(OP_TEXT, b'x')
        self.assertEqual(idle.recv_frame().payload, b'x')
        t_last = now()
        # `busy` pings every 0.4 s for 2.4 s; `idle` says nothing
        deadline = t_last + 2.4
        i = 0
        while now() < deadline:
            busy.send_frame(OP_PING, b'k%d' % i)
            self.assertEqual(busy.recv_frame(timeout=2).key(), (True, 0, OP_PONG, b'k%d' % i),
                             'an active relay was cut by the idle timeout')
            i += 1
            time.sleep(0.4)
        self.assertTrue(idle.wait_eof(2), 'idle relay still open %.1fs after its last byte'
                        % (now() - t_last))
        self.assertGreater(idle.eof_at - t_last, 0.8, 'closed before the idle timeout')
        self.assertLess(idle.eof_at - t_last, 2.6, 'closed %.2fs after the last byte with '
                        '--idle-timeout 1' % (idle.eof_at - t_last))
        conn_idle = next(cn for cn in up.conns if cn.frames and cn.frames[0].payload == b'x')
        self.assertTrue(up_wait(up, lambda: conn_idle.eof_at is not None, 2),
                        'upstream of the idle relay not released')
        busy.send_frame(OP_TEXT, b'still here')
        self.assertEqual(busy.recv_frame().payload, b'still here')

    def test_silent_upstream_during_handshake_is_504(self):
        up = self.upstream(dual=True)
        up.delay = 4.0
        d = self.proxy('--idle-timeout', '1', resolve=both_ports('api.openai.com', up.port))
        c = self.forward_client(d)
        t0 = now()
        resp, ws, _, _ = self.handshake(c, 'http://api.openai.com/v1/responses', 'api.openai.com')
        took = now() - t0
        self.assertIsNone(ws, 'with --idle-timeout 1 an upstream silent for %.0f s on the handshake '
                          'must give 504 upstream_timeout (as for HTTP), got %d after %.1f s'
                          % (up.delay, resp.status, took))
        self.assertProxyError(resp, 504, 'upstream_timeout', d)
        self.assertLess(took, 3.5)
        conn = up.wait_conn(0)
        self.assertTrue(conn.tls, 'a credentialed handshake must arrive over TLS')
        self.assertTrue(up_wait(up, lambda: conn.eof_at is not None, 2),
                        'upstream not released after the handshake timed out')


# --------------------------------------------------------------------------
# Audit and logs
# --------------------------------------------------------------------------

class AuditAndLogs(WSCase):

    def test_audit_lines_and_no_secrets(self):
        up = self.upstream(dual=True)
        d = self.proxy(resolve=both_ports('api.openai.com', up.port) + [('ws.example.test', 80, up.port)])
        c = self.forward_client(d)
        resp, ws, key, _ = self.handshake(c, 'http://api.openai.com/v1/responses?q=secretquery',
                                          'api.openai.com')
        self.check_101(resp, key, up, d)
        conn = self.wait_upgraded(up)
        check_assertion(conn.header('Authorization'))
        self.assertTrue(conn.tls, 'a credentialed handshake must arrive over TLS')
        self.forbidden |= {conn.header('Authorization').split(' ', 1)[1], 'secretquery'}
        # the handshake's line is written at the 101, while the session runs
        lines = self.audit_lines(d, 1)
        self.assertEqual(len(lines), 1, lines)
        fp = fingerprint(TASK_ID)
        a = lines[0]
        # written as http://, the credentialed handshake went to :443 (over
        # TLS); the pass-through one went where the client wrote it
        self.assertEqual((a['method'], a['host'], a['port'], a['path'], a['mode'], a['provider'],
                          a['route'], a['action'], a['task'], a['status']),
                         ('GET', 'api.openai.com', 443, '/v1/responses', 'forward', 'openai',
                          'inference', 'assert', fp, 101), a)
        self.assertNotIn('event', a)
        ws.send_frame(OP_TEXT, b'a')
        ws.recv_frame()
        ws.send_frame(OP_CLOSE, close_payload(1000))
        ws.recv_frame()
        self.assertTrue(ws.wait_eof(3))
        ws.close()
        # and a close line: the same fields, then the bytes relayed
        lines = self.audit_lines(d, 2)
        self.assertEqual(len(lines), 2, lines)
        a2 = lines[1]
        self.assertEqual({k: v for k, v in a2.items() if k not in ('time', 'event', 'bytes_up', 'bytes_down')},
                         {k: v for k, v in a.items() if k != 'time'}, a2)
        self.assertEqual(a2['event'], 'close', a2)
        self.assertGreater(a2['bytes_up'], 0, a2)
        self.assertGreater(a2['bytes_down'], 0, a2)
        c2 = self.forward_client(d)
        resp, ws2, key, _ = self.handshake(c2, 'http://ws.example.test/chat', 'ws.example.test')
        self.check_101(resp, key, up, d)
        ws2.close()
        lines = self.audit_lines(d, 4)
        self.assertEqual(len(lines), 4, lines)
        b, b2 = lines[2:]
        self.assertEqual((b['host'], b['port'], b['path'], b['action'], b['task'], b['status']),
                         ('ws.example.test', 80, '/chat', 'passthrough', None, 101), b)
        self.assertEqual(b2.get('event'), 'close', b2)
        req = d.wait_log(lambda x: x.get('path') == '/v1/responses' and x.get('status') == 101)
        self.assertIsNotNone(req, 'no request log line with status 101:\n%s' % d.tail(3000))


class EndlessRefusal:
    """A raw upstream that answers a handshake with a 426 whose chunked body
    never ends and carries no payload: `filler` (say, chunk-size zeros or
    one endless chunk extension) written as fast as the socket takes it,
    until closed."""

    def __init__(self, filler):
        self.filler = filler
        self.stop = threading.Event()
        self.sent = 0
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(('127.0.0.1', 0))
        self.lsock.listen(4)
        self.port = self.lsock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            s, _ = self.lsock.accept()
        except OSError:
            return
        with s:
            buf = b''
            while b'\r\n\r\n' not in buf and not self.stop.is_set():
                got = s.recv(65536)
                if not got:
                    return
                buf += got
            s.sendall(b'HTTP/1.1 426 Upgrade Required\r\nContent-Type: text/plain\r\n'
                      b'Transfer-Encoding: chunked\r\n\r\n' + self.filler[0])
            chunk = self.filler[1] * 4096
            try:
                while not self.stop.is_set():
                    self.sent += s.send(chunk)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.lsock.close()
        self.thread.join(10)


class WorkerFairness(WSCase):
    """A refused upgrade's body is read in the worker's event callback: an
    upstream that streams it fast and without end must neither hold that
    worker (the other connections on it wait) nor be read for ever."""

    def _starve(self, filler):
        up = EndlessRefusal(filler)
        self.addCleanup(up.close)
        d = self.proxy('--threads', '1', resolve=[('ws.example.test', 8080, up.port)])
        c = self.forward_client(d)
        key = ws_key()
        t0 = now()
        c.send(handshake_bytes('http://ws.example.test:8080/ws',
                               client_headers('ws.example.test:8080', key)))
        deadline = now() + 5
        while up.sent < (1 << 20) and now() < deadline:
            time.sleep(0.01)
        # a second client on the same (only) worker: a plain forward
        # request the daemon refuses itself
        worst = 0.0
        for _ in range(5):
            other = HTTPClient(d.port, timeout=15)
            t1 = now()
            other.send(b'GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n')
            try:
                other.read_head('GET')
            except Exception:
                pass
            worst = max(worst, now() - t1)
            other.close()
        # the client's answer ends (the body is cut off at the leg's
        # limit) rather than the upstream being read for ever
        got = b''
        c.sock.settimeout(1)
        while now() - t0 < 8:
            try:
                b = c.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not b:
                break
            got += b
        ended = now() - t0
        print('\n  worst %.3f s, upstream sent %d, client got %r.., ended after %.1f s'
              % (worst, up.sent, got[:40], ended), file=sys.stderr)
        self.assertLess(worst, 1.0, 'a request on the same worker waited %.1f s while '
                        'the upstream streamed %d bytes of refusal body' % (worst, up.sent))
        self.assertLess(ended, 8, 'the endless refusal body was read for %.1f s '
                        '(%d bytes) and not cut off: %r' % (ended, up.sent, got[:120]))

    def test_endless_chunk_size_zeros(self):
        self._starve((b'0', b'0'))

    def test_endless_chunk_extension(self):
        self._starve((b'1;x=', b'x'))

    def test_endless_trailer(self):
        self._starve((b'0\r\n', b'X-T: y\r\n'))


if __name__ == '__main__':
    main()
