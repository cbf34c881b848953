"""A local stand-in for the OpenAI Responses API (standard library only).

It is harness.UpstreamServer (TLS with the harness's test CA, leaf for
api.openai.com and chatgpt.com) with one behaviour, ResponsesAPI, that
answers:

  POST /v1/responses, POST /backend-api/codex/responses
      a minimal Responses SSE stream: response.created,
      response.output_item.added, response.output_text.delta,
      response.output_item.done, response.completed.
  GET  /v1/responses, GET /backend-api/codex/responses with Upgrade: websocket
      the RFC 6455 handshake (no extension, no subprotocol), then for every
      `response.create` text frame the same events, one text frame each.
  GET  .../models
      an empty model list ({"object":"list","data":[]} / {"models":[]}).
  anything else
      404 with an OpenAI-shaped error.

Every request's Authorization is checked as it arrives: on the credentialed
routes it must be an AgentAssertion that verifies (agentid.parse_assertion)
with the test identity's public key for the expected runtime and task; the
client's own key must never arrive anywhere (any header, any body).  The
verdicts are kept in `seen` (one dict per request) for the test to assert on.

`fail` set to (status, headers, body) answers every credentialed request
that way instead (the retry experiments).
"""

import base64
import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'integration'))

from harness import Behaviour, PeerGone, UpstreamServer, _response_head, chunk  # noqa: E402
from agentid import parse_assertion  # noqa: E402

CREDENTIALED = ('/v1/responses', '/backend-api/codex/responses')
GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'
OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def response_events(text, model='gpt-test', seq=[0]):
    """The minimal event sequence of one Responses turn."""
    seq[0] += 1
    rid = 'resp_standin_%d_%d' % (os.getpid(), seq[0])
    mid = 'msg_standin_%d_%d' % (os.getpid(), seq[0])
    now_s = int(time.time())
    base = {'id': rid, 'object': 'response', 'created_at': now_s, 'model': model,
            'status': 'in_progress', 'output': []}
    item = {'id': mid, 'type': 'message', 'role': 'assistant', 'status': 'in_progress',
            'content': []}
    done_item = dict(item, status='completed',
                     content=[{'type': 'output_text', 'text': text, 'annotations': []}])
    usage = {'input_tokens': 1, 'input_tokens_details': {'cached_tokens': 0},
             'output_tokens': 1, 'output_tokens_details': {'reasoning_tokens': 0},
             'total_tokens': 2}
    evs = [
        {'type': 'response.created', 'response': base},
        {'type': 'response.output_item.added', 'output_index': 0, 'item': item},
        {'type': 'response.output_text.delta', 'item_id': mid, 'output_index': 0,
         'content_index': 0, 'delta': text},
        {'type': 'response.output_item.done', 'output_index': 0, 'item': done_item},
        {'type': 'response.completed',
         'response': dict(base, status='completed', output=[done_item], usage=usage)},
    ]
    for i, e in enumerate(evs):
        e['sequence_number'] = i
    return evs


def sse_bytes(ev):
    return ('event: %s\ndata: %s\n\n' % (ev['type'], json.dumps(ev))).encode()


# --------------------------------------------------------------------------
# RFC 6455, server side
# --------------------------------------------------------------------------

def ws_frame(opcode, payload):
    n = len(payload)
    b0 = 0x80 | opcode
    if n < 126:
        head = bytes([b0, n])
    elif n < 65536:
        head = bytes([b0, 126]) + struct.pack('!H', n)
    else:
        head = bytes([b0, 127]) + struct.pack('!Q', n)
    return head + payload


def _unmask(data, key):
    n = len(data)
    if not n:
        return b''
    rep = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, 'big') ^ int.from_bytes(rep, 'big')).to_bytes(n, 'big')


def parse_client_frame(buf):
    """(fin, opcode, payload) from the front of `buf` (consumed), or None."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    n, pos = b1 & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, pos = struct.unpack('!H', bytes(buf[2:4]))[0], 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, pos = struct.unpack('!Q', bytes(buf[2:10]))[0], 10
    if not b1 & 0x80:
        raise ValueError('client frame not masked')
    if len(buf) < pos + 4 + n:
        return None
    key = bytes(buf[pos:pos + 4])
    payload = _unmask(bytes(buf[pos + 4:pos + 4 + n]), key)
    if (b0 >> 4) & 7:
        raise ValueError('RSV bits set without an extension')
    del buf[:pos + 4 + n]
    return bool(b0 & 0x80), b0 & 0x0F, payload


# --------------------------------------------------------------------------
# The behaviour
# --------------------------------------------------------------------------

class ResponsesAPI(Behaviour):
    def __init__(self, runtime_id, task_id, pub, forbidden=(), text='Hello from the stand-in.'):
        self.runtime_id = runtime_id
        self.task_id = task_id
        self.pub = pub
        self.forbidden = [f.encode() if isinstance(f, str) else f for f in forbidden if f]
        self.text = text
        self.fail = None            # (status, [(name, value)], body bytes)
        self.lock = threading.Lock()
        self.seen = []              # one dict per request
        self.ws_messages = []       # decoded client text frames on WebSockets

    # -- bookkeeping ------------------------------------------------------
    def _record(self, req, kind):
        auth = req.header('Authorization')
        credentialed = req.path in CREDENTIALED
        entry = {'method': req.method, 'path': req.path, 'kind': kind, 'tls': req.tls,
                 'sni': req.sni, 'credentialed': credentialed,
                 'auth_scheme': (auth or '').split(' ', 1)[0] or None,
                 'verified': False, 'error': None, 'leaks': []}
        head = bytes(req.raw_head)
        for f in self.forbidden:
            if f in head:
                entry['leaks'].append('request head')
        if credentialed:
            try:
                parse_assertion(auth, self.runtime_id, self.task_id, self.pub, max_skew=30.0)
                entry['verified'] = True
            except AssertionError as e:
                entry['error'] = str(e)
        with self.lock:
            self.seen.append(entry)
        return entry

    def _check_body(self, entry, body):
        for f in self.forbidden:
            if f in body:
                entry['leaks'].append('request body')

    # -- summary for the tests ---------------------------------------------
    def credentialed(self):
        with self.lock:
            return [e for e in self.seen if e['credentialed']]

    def leaks(self):
        with self.lock:
            return [e for e in self.seen if e['leaks']]

    def describe(self):
        with self.lock:
            return json.dumps(self.seen, indent=1)[-6000:]

    # -- dispatch -----------------------------------------------------------
    def handle(self, ctx):
        req = ctx.req
        upgrade = (req.header('Upgrade') or '').lower() == 'websocket'
        kind = 'websocket' if upgrade else 'http'
        entry = self._record(req, kind)
        ctx.read_body()
        self._check_body(entry, bytes(req.body))
        if entry['credentialed'] and not entry['verified']:
            return self._error(ctx, 401, 'invalid_assertion', entry['error'] or 'no assertion')
        if entry['credentialed'] and self.fail is not None:
            status, headers, body = self.fail
            ctx.send(_response_head(status, 'Service Unavailable' if status == 503 else 'Error',
                                    list(headers) + [('Content-Length', str(len(body)))]) + body)
            return True
        if upgrade and req.method == 'GET' and entry['credentialed']:
            return self._websocket(ctx, entry)
        if req.method == 'POST' and entry['credentialed']:
            return self._sse(ctx, req)
        if req.method == 'GET' and req.path.endswith('/models'):
            body = json.dumps({'object': 'list', 'data': [], 'models': []}).encode()
            ctx.send(_response_head(200, 'OK', [('Content-Type', 'application/json'),
                                                ('Content-Length', str(len(body)))]) + body)
            return True
        return self._error(ctx, 404, 'not_found', 'the stand-in has no %s %s' % (req.method, req.path))

    def _error(self, ctx, status, code, msg):
        body = json.dumps({'error': {'message': msg, 'type': 'invalid_request_error',
                                     'code': code, 'param': None}}).encode()
        ctx.send(_response_head(status, 'Error', [('Content-Type', 'application/json'),
                                                  ('x-should-retry', 'false'),
                                                  ('Content-Length', str(len(body)))]) + body)
        return True

    def _model(self, body):
        try:
            return json.loads(body).get('model') or 'gpt-test'
        except (ValueError, AttributeError):
            return 'gpt-test'

    def _sse(self, ctx, req):
        ctx.send(_response_head(200, 'OK', [('Content-Type', 'text/event-stream'),
                                            ('Cache-Control', 'no-cache'),
                                            ('x-request-id', 'req_standin'),
                                            ('Transfer-Encoding', 'chunked')]))
        for ev in response_events(self.text, self._model(bytes(req.body))):
            ctx.send(chunk(sse_bytes(ev)))
        ctx.send(b'0\r\n\r\n')
        return True

    def _websocket(self, ctx, entry):
        req = ctx.req
        key = req.header('Sec-WebSocket-Key') or ''
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        ctx.send(_response_head(101, 'Switching Protocols', [
            ('Upgrade', 'websocket'), ('Connection', 'Upgrade'),
            ('Sec-WebSocket-Accept', accept), ('x-request-id', 'req_standin_ws')]))
        conn = ctx.conn
        buf = conn.buf            # bytes already read past the head
        message = bytearray()
        msg_op = None
        while True:
            fr = parse_client_frame(buf)
            if fr is None:
                try:
                    n = conn.recv_once(60)
                except socket.timeout:
                    return False
                if n == 0:
                    return False
                continue
            fin, op, payload = fr
            if op == OP_PING:
                ctx.send(ws_frame(OP_PONG, payload))
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                try:
                    ctx.send(ws_frame(OP_CLOSE, payload[:2]))
                except PeerGone:
                    pass
                return False
            if op in (OP_TEXT, OP_BIN):
                message, msg_op = bytearray(payload), op
            elif op == OP_CONT:
                message += payload
            if not fin:
                continue
            self._check_body(entry, bytes(message))
            try:
                msg = json.loads(bytes(message).decode('utf-8'))
            except ValueError:
                msg = {'type': None, 'raw': bytes(message)[:200].decode('latin-1')}
            with self.lock:
                self.ws_messages.append({k: msg.get(k) for k in ('type', 'model', 'generate')})
            if msg.get('type') == 'response.create':
                for ev in response_events(self.text, msg.get('model') or 'gpt-test'):
                    ctx.send(ws_frame(OP_TEXT, json.dumps(ev).encode()))
            message, msg_op = bytearray(), None


def start(runtime_id, task_id, pub, forbidden=()):
    """A TLS UpstreamServer on 127.0.0.1 whose every route is ResponsesAPI."""
    srv = UpstreamServer(tls=True, keepalive_timeout=60.0, read_timeout=30.0)
    api = ResponsesAPI(runtime_id, task_id, pub, forbidden)
    srv.default = api
    return srv, api
