#!/usr/bin/python3
"""Lifecycle, metrics and harness mode (issue 7), against the real daemon.

  * /metrics: a strict Prometheus text-format (0.0.4) parser written here
    (HELP/TYPE lines, metric and label names, label-value escapes, numeric
    values, one family per block, no duplicate series, histogram buckets
    cumulative with +Inf == _count); every documented family with its type
    and label names; counters moving by exactly the expected amount as
    pass-through, credentialed, fail-closed (503), CONNECT-rejected and
    blind-tunnel traffic flows; gauges for open requests, connections and
    tunnels; label values only from the documented bounded sets, and never
    a task id, a key, a query string, a host, a path or any other string
    the client chose (odd paths, hosts, methods and headers are sent on
    purpose).
  * SIGHUP under load: keep-alive and new-connection clients and an open
    SSE stream run while the configuration file is rewritten and SIGHUP
    sent several times (good and broken configurations); every request is
    answered correctly, new prefixes route (also on a connection opened
    before the reload), removed ones 404, broken configurations are
    rejected with a logged reason and the running one keeps working,
    scopeproxy_reloads_total{result} counts exactly.
  * SIGTERM: an open SSE stream is drained to its clean end while new
    connections are refused, then the daemon exits 0 promptly; with a
    short drain timeout a long stream is cut and the exit comes on time.
  * --pid-file (flag and config key): holds the pid while running, gone
    after SIGTERM and SIGINT; an unwritable pid file is a runtime failure.
  * README "For test harnesses": its shell block is extracted from
    README.md and run (adapted to temp paths and loopback upstreams), and
    "this request carried a credential / this one did not" is asserted
    exactly the way the README says (audit line: action assert and a
    non-null task), cross-checked against what the upstream received.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (LOOPBACK, SECRET, SSE, HTTPClient,  # noqa: E402
                     NoResponse, ProxyTestCase, curl, hermetic_env, main, request,
                     run_cmd, scopeproxy_bin, tls_material)
import agentid  # noqa: E402
from agentid import (NO_TASK, SPEC_RUNTIME, SPEC_SECRETS, SPEC_V2_B64, auth_doc,  # noqa: E402
                     fingerprint, identity_record)


def now():
    return time.monotonic()


HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.path.abspath(os.environ.get('SCOPEPROXY_SRCDIR') or os.path.join(HERE, '..', '..'))

# The spec's test identity (shared/spec/agent-identity.md, section 7) is in agentid.py.
TASK_ID = 'task-lifecycle-4f1c9e'
TASK_FP = fingerprint(TASK_ID)

# Strings that must never reach a metric label (or the metrics text at all).
KEY_SECRETS = tuple(sorted(SPEC_SECRETS))


def identity_doc(task_id=TASK_ID):
    return auth_doc(identity_record(runtime=SPEC_RUNTIME, account='acct-lifecycle',
                                    user='user-lifecycle',
                                    task_id=NO_TASK if task_id is None else task_id),
                    last_refresh=None)


def write_file_atomic(path, data, mode=0o600):
    agentid.write_auth(path, data, mode)


def write_auth(path, task_id=TASK_ID):
    write_file_atomic(path, identity_doc(task_id), 0o600)


def get(port, path, extra=b''):
    return request(port, b'GET ' + path.encode() + b' HTTP/1.1\r\nHost: 127.0.0.1\r\n' + extra +
                   b'Connection: close\r\n\r\n')


# --------------------------------------------------------------------------
# A strict Prometheus text format 0.0.4 parser
# --------------------------------------------------------------------------

METRIC_NAME_RE = re.compile(r'[a-zA-Z_:][a-zA-Z0-9_:]*')
LABEL_NAME_RE = re.compile(r'[a-zA-Z_][a-zA-Z0-9_]*')
FLOAT_RE = re.compile(r'^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$')
TYPES = ('counter', 'gauge', 'histogram', 'summary', 'untyped')


class PromError(AssertionError):
    pass


def _prom_value(s, where):
    if s in ('+Inf', 'Inf'):
        return float('inf')
    if s == '-Inf':
        return float('-inf')
    if s == 'NaN':
        return float('nan')
    if not FLOAT_RE.match(s):
        raise PromError('%s: bad sample value %r' % (where, s))
    return float(s)


def _parse_labels(s, i, where):
    """s[i] == '{'.  Returns (labels dict, index after '}')."""
    assert s[i] == '{'
    i += 1
    labels = {}
    while True:
        if i >= len(s):
            raise PromError('%s: unterminated label set' % where)
        if s[i] == '}':
            return labels, i + 1
        m = LABEL_NAME_RE.match(s, i)
        if not m:
            raise PromError('%s: bad label name at %r' % (where, s[i:i + 20]))
        name = m.group(0)
        if name.startswith('__'):
            raise PromError('%s: reserved label name %r' % (where, name))
        if name in labels:
            raise PromError('%s: duplicate label %r' % (where, name))
        i = m.end()
        if s[i:i + 2] != '="':
            raise PromError('%s: expected =" after label %r' % (where, name))
        i += 2
        val = []
        while True:
            if i >= len(s):
                raise PromError('%s: unterminated label value' % where)
            ch = s[i]
            if ch == '\\':
                nxt = s[i + 1:i + 2]
                if nxt == 'n':
                    val.append('\n')
                elif nxt in ('\\', '"'):
                    val.append(nxt)
                else:
                    raise PromError('%s: bad escape \\%s in label value' % (where, nxt))
                i += 2
                continue
            if ch == '"':
                i += 1
                break
            if ch == '\n':
                raise PromError('%s: raw newline in label value' % where)
            val.append(ch)
            i += 1
        labels[name] = ''.join(val)
        if s[i:i + 1] == ',':
            i += 1
        elif s[i:i + 1] != '}':
            raise PromError('%s: expected , or } after label value, got %r' % (where, s[i:i + 10]))


def parse_prometheus(text):
    """Returns {family: {'type', 'help', 'samples': [(name, labels, value)]}}.
    Raises PromError on anything the 0.0.4 text format does not allow (and
    on a few things good practice forbids: samples without TYPE/HELP,
    a family split into several blocks, duplicate series)."""
    if not text:
        raise PromError('empty exposition')
    if not text.endswith('\n'):
        raise PromError('exposition does not end with a newline')
    fams = {}
    closed = set()          # families whose block has ended
    current = None
    seen_series = set()

    def family_of(sample_name):
        for fam, info in fams.items():
            t = info['type']
            if sample_name == fam:
                return fam
            if t == 'histogram' and sample_name in (fam + '_bucket', fam + '_sum', fam + '_count'):
                return fam
            if t == 'summary' and sample_name in (fam + '_sum', fam + '_count'):
                return fam
        return None

    def enter(fam, where):
        nonlocal current
        if fam != current:
            if fam in closed:
                raise PromError('%s: family %s appears in more than one block' % (where, fam))
            if current is not None:
                closed.add(current)
            current = fam

    for n, line in enumerate(text[:-1].split('\n'), 1):
        where = 'line %d %r' % (n, line[:120])
        if line == '':
            continue
        if line != line.strip(' \t') and not line.startswith('#'):
            raise PromError('%s: leading/trailing whitespace' % where)
        if line.startswith('#'):
            parts = line.split(' ', 3)
            if len(parts) >= 2 and parts[1] in ('HELP', 'TYPE'):
                if parts[0] != '#' or len(parts) < 3:
                    raise PromError('%s: malformed %s line' % (where, parts[1]))
                name = parts[2]
                if not METRIC_NAME_RE.fullmatch(name):
                    raise PromError('%s: bad metric name %r' % (where, name))
                info = fams.setdefault(name, {'type': None, 'help': None, 'samples': []})
                enter(name, where)
                if parts[1] == 'HELP':
                    if info['help'] is not None:
                        raise PromError('%s: second HELP for %s' % (where, name))
                    if len(parts) < 4 or not parts[3].strip():
                        raise PromError('%s: empty HELP text' % where)
                    if re.search(r'\\(?![n\\])', parts[3]):
                        raise PromError('%s: bad escape in HELP' % where)
                    info['help'] = parts[3]
                else:
                    if info['type'] is not None:
                        raise PromError('%s: second TYPE for %s' % (where, name))
                    if info['samples']:
                        raise PromError('%s: TYPE after samples of %s' % (where, name))
                    if len(parts) != 4 or parts[3] not in TYPES:
                        raise PromError('%s: bad TYPE' % where)
                    info['type'] = parts[3]
            continue   # other comments are allowed
        m = METRIC_NAME_RE.match(line)
        if not m:
            raise PromError('%s: bad metric name' % where)
        name = m.group(0)
        i = m.end()
        labels = {}
        if line[i:i + 1] == '{':
            labels, i = _parse_labels(line, i, where)
        rest = line[i:]
        if not rest.startswith(' ') or rest.startswith('  '):
            raise PromError('%s: expected one space before the value' % where)
        fields = rest[1:].split(' ')
        if len(fields) not in (1, 2) or '' in fields:
            raise PromError('%s: expected "value [timestamp]"' % where)
        value = _prom_value(fields[0], where)
        if len(fields) == 2 and not re.fullmatch(r'-?\d+', fields[1]):
            raise PromError('%s: bad timestamp %r' % (where, fields[1]))
        fam = family_of(name)
        if fam is None:
            raise PromError('%s: sample %s has no preceding TYPE' % (where, name))
        enter(fam, where)
        key = (name, tuple(sorted(labels.items())))
        if key in seen_series:
            raise PromError('%s: duplicate series' % where)
        seen_series.add(key)
        fams[fam]['samples'].append((name, labels, value))

    for fam, info in fams.items():
        if info['type'] is None:
            raise PromError('family %s has HELP but no TYPE' % fam)
        if info['help'] is None:
            raise PromError('family %s has no HELP' % fam)
        t = info['type']
        for name, labels, value in info['samples']:
            if t == 'counter':
                if value != value or value < 0:
                    raise PromError('counter %s%r has value %r' % (name, labels, value))
                if not fam.endswith('_total'):
                    raise PromError('counter family %s does not end in _total' % fam)
            if t == 'histogram' and name == fam:
                raise PromError('histogram %s has a bare sample' % fam)
        if t == 'histogram':
            _check_histogram(fam, info['samples'])
    return fams


def _check_histogram(fam, samples):
    groups = {}
    for name, labels, value in samples:
        base = tuple(sorted((k, v) for k, v in labels.items() if k != 'le'))
        g = groups.setdefault(base, {'buckets': [], 'sum': None, 'count': None})
        if name == fam + '_bucket':
            if 'le' not in labels:
                raise PromError('%s_bucket without le' % fam)
            g['buckets'].append((_prom_value(labels['le'], fam + ' le'), labels['le'], value))
        elif 'le' in labels:
            raise PromError('%s: le label on %s' % (fam, name))
        elif name == fam + '_sum':
            g['sum'] = value
        elif name == fam + '_count':
            g['count'] = value
    for base, g in groups.items():
        b = g['buckets']
        if not b:
            raise PromError('histogram %s%r has no buckets' % (fam, base))
        les = [x[0] for x in b]
        if les != sorted(les) or len(set(les)) != len(les):
            raise PromError('histogram %s: le values not strictly increasing: %r' % (fam, [x[1] for x in b]))
        if b[-1][1] != '+Inf':
            raise PromError('histogram %s: last bucket is le=%r, not "+Inf"' % (fam, b[-1][1]))
        counts = [x[2] for x in b]
        for c in counts:
            if c != int(c) or c < 0:
                raise PromError('histogram %s: bucket count %r' % (fam, c))
        if any(counts[k] > counts[k + 1] for k in range(len(counts) - 1)):
            raise PromError('histogram %s: buckets not cumulative: %r' % (fam, counts))
        if g['count'] is None or g['sum'] is None:
            raise PromError('histogram %s lacks _sum or _count' % fam)
        if counts[-1] != g['count']:
            raise PromError('histogram %s: +Inf bucket %r != _count %r' % (fam, counts[-1], g['count']))
        if g['sum'] < 0 or (g['count'] == 0 and g['sum'] != 0):
            raise PromError('histogram %s: _sum %r with _count %r' % (fam, g['sum'], g['count']))


def provider_ids():
    """Provider ids the daemon may use: the shipped table's, plus the
    fallback 'custom', 'none' (not classified: the proxy's own endpoints)
    and 'other' (past the 32-slot cap)."""
    ids = {'custom', 'none', 'other'}
    with open(os.path.join(SRCDIR, 'config', 'providers.json')) as f:
        doc = json.load(f)

    def walk(o):
        if isinstance(o, dict):
            if isinstance(o.get('id'), str):
                ids.add(o['id'])
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(doc)
    return ids


ERROR_CODES = {'agent_task_missing', 'agent_identity_missing', 'agent_identity_invalid'}

# family -> (type, label names, {label: allowed values})
DOCUMENTED = {
    'scopeproxy_requests_total': ('counter', {'mode', 'provider', 'route', 'action', 'status'}, {
        'mode': {'forward', 'gateway', 'intercept', 'local'},
        'provider': None,   # filled from providers.json
        'route': {'inference', 'compaction', 'other'},
        'action': {'assert', 'passthrough', 'reject'},
        'status': {'1xx', '2xx', '3xx', '4xx', '5xx', 'none'}}),
    'scopeproxy_assertions_minted_total': ('counter', set(), {}),
    'scopeproxy_fail_closed_total': ('counter', {'code'}, {'code': ERROR_CODES}),
    'scopeproxy_upstream_response_seconds': ('histogram', set(), {}),
    'scopeproxy_open_requests': ('gauge', set(), {}),
    'scopeproxy_open_tunnels': ('gauge', {'kind'}, {'kind': {'tunnel', 'intercept', 'websocket'}}),
    'scopeproxy_connections_open': ('gauge', set(), {}),
    'scopeproxy_connect_total': ('counter', {'action'}, {'action': {'tunnel', 'intercept', 'reject'}}),
    'scopeproxy_task_registrations_total': ('counter', {'result'}, {'result': {'ok', 'failed'}}),
    'scopeproxy_task_recoveries_total': ('counter', set(), {}),
    'scopeproxy_registration_state': ('gauge', {'state'}, {
        'state': {'disabled', 'idle', 'registering', 'registration_failed'}}),
    'scopeproxy_reloads_total': ('counter', {'result'}, {'result': {'ok', 'rejected'}}),
    'scopeproxy_identity_reloads_total': ('counter', set(), {}),
}


class Metrics:
    def __init__(self, text, fams):
        self.text = text
        self.fams = fams

    def series(self, fam):
        return self.fams.get(fam, {'samples': []})['samples']

    def value(self, fam, **labels):
        """Sum of the samples of `fam` (its own name) whose labels include `labels`."""
        total = 0.0
        for name, lab, v in self.series(fam):
            if name != fam:
                continue
            if all(lab.get(k) == val for k, val in labels.items()):
                total += v
        return total

    def sample(self, name, fam=None, **labels):
        for n, lab, v in self.series(fam or name):
            if n == name and lab == labels:
                return v
        return None


# --------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------

class StreamReader(threading.Thread):
    """Reads one SSE response on its own connection; records events."""

    def __init__(self, port, path, timeout=30.0):
        threading.Thread.__init__(self, daemon=True)
        self.client = HTTPClient(port, timeout=timeout)
        self.path = path
        self.events = []          # [(t, text)]
        self.first = threading.Event()
        self.resp = None
        self.t_end = None         # last byte of the body (terminator) or EOF
        self.error = None

    def run(self):
        try:
            self.client.send(b'GET ' + self.path.encode() + b' HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                             b'Accept: text/event-stream\r\n\r\n')
            self.resp = self.client.read_head()
            pending = b''
            for t, data in self.client.iter_body(self.resp):
                pending += data
                while b'\n\n' in pending:
                    ev, pending = pending.split(b'\n\n', 1)
                    self.events.append((t, ev.decode()))
                    self.first.set()
            self.t_end = now()
        except Exception as e:   # noqa: BLE001 - reported by the test
            self.error = repr(e)
            self.t_end = now()
        finally:
            self.first.set()
            self.client.close()

    def ids(self):
        out = []
        for _, ev in self.events:
            m = re.search(r'^id: (\d+)$', ev, re.M)
            out.append(int(m.group(1)) if m else None)
        return out


def probe_new_connection(port, wait=1.0):
    """Try a brand-new connection with a request on it.  Returns one of
    'refused', 'reset', 'closed-unanswered', 'answered <status line>',
    'hang'."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(wait)
    try:
        try:
            s.connect((LOOPBACK, port))
        except ConnectionRefusedError:
            return 'refused'
        except socket.timeout:
            return 'hang'
        try:
            s.sendall(b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
            data = s.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return 'reset'
        except socket.timeout:
            return 'hang'
        if not data:
            return 'closed-unanswered'
        return 'answered %r' % data.split(b'\r\n', 1)[0]
    finally:
        s.close()


# --------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------

EPOLL_FAULT_SHIM = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>

/* EPOLL_CTL_ADDs of each accepted socket whose peer is SP_FAULT_PEER;
 * the second one fails. */
static int adds[65536];

static int
from_peer(int fd)
{
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);
	const char *want = getenv("SP_FAULT_PEER");

	return want != NULL && getpeername(fd, (struct sockaddr *)&sin, &sl) == 0 &&
	    sin.sin_family == AF_INET && sin.sin_addr.s_addr == inet_addr(want);
}

int
accept4(int fd, struct sockaddr *sa, socklen_t *sl, int flags)
{
	int (*real)(int, struct sockaddr *, socklen_t *, int) =
	    (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
	int s = real(fd, sa, sl, flags);

	if (s >= 0 && s < 65536)
		__atomic_store_n(&adds[s], 0, __ATOMIC_SEQ_CST);
	return s;
}

int
epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
	int (*real)(int, int, int, struct epoll_event *) =
	    (int (*)(int, int, int, struct epoll_event *))dlsym(RTLD_NEXT, "epoll_ctl");

	if (op == EPOLL_CTL_ADD && fd >= 0 && fd < 65536 && from_peer(fd) &&
	    __atomic_add_fetch(&adds[fd], 1, __ATOMIC_SEQ_CST) == 2) {
		errno = ENOMEM;
		return -1;
	}
	return real(epfd, op, fd, ev);
}
"""


def build_epoll_fault_shim(work):
    """A test-only LD_PRELOAD library (EPOLL_FAULT_SHIM); None without cc."""
    cc = shutil.which('cc') or shutil.which('gcc')
    if cc is None:
        return None
    os.makedirs(work, exist_ok=True)
    src = os.path.join(work, 'epoll_fault.c')
    so = os.path.join(work, 'epoll_fault.so')
    with open(src, 'w') as f:
        f.write(EPOLL_FAULT_SHIM)
    r = subprocess.run([cc, '-shared', '-fPIC', '-O1', '-o', so, src, '-ldl'],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise AssertionError('cannot build the epoll fault shim: %s' % r.stdout.decode())
    return so


class LifecycleCase(ProxyTestCase):
    TIMEOUT = 40

    def setUp(self):
        super().setUp()
        self.work = tempfile.mkdtemp(prefix='scopeproxy-life-')
        self.addCleanup(shutil.rmtree, self.work, True)

    def path(self, name):
        return os.path.join(self.work, name)

    def scrape(self, d):
        r = request(d.port, b'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n')
        self.assertEqual(r.status, 200, r)
        ctype = r.header('Content-Type') or ''
        self.assertTrue(ctype.startswith('text/plain'), 'Content-Type %r' % ctype)
        self.assertIn('version=0.0.4', ctype, 'Content-Type %r' % ctype)
        text = r.body.decode('utf-8')
        try:
            fams = parse_prometheus(text)
        except PromError as e:
            self.fail('/metrics is not valid Prometheus text: %s\n---\n%s' % (e, text))
        return Metrics(text, fams)

    def check_documented(self, m, forbidden=()):
        """Every documented family with its type; label names and values
        only from the bounded sets; no forbidden string anywhere."""
        allowed = dict(DOCUMENTED)
        t, names, vals = allowed['scopeproxy_requests_total']
        vals = dict(vals)
        vals['provider'] = provider_ids()
        allowed['scopeproxy_requests_total'] = (t, names, vals)
        for fam, (typ, labnames, values) in allowed.items():
            self.assertIn(fam, m.fams, 'documented family %s missing from /metrics:\n%s' % (fam, m.text))
            self.assertEqual(m.fams[fam]['type'], typ, 'TYPE of %s' % fam)
        for fam, info in m.fams.items():
            self.assertTrue(fam.startswith('scopeproxy_'), 'undocumented family %s' % fam)
            self.assertIn(fam, allowed, 'undocumented family %s' % fam)
            typ, labnames, values = allowed[fam]
            for name, labels, v in info['samples']:
                got = set(labels) - {'le'} if typ == 'histogram' else set(labels)
                self.assertEqual(got, labnames, 'label names of %s%r' % (name, labels))
                for k, val in labels.items():
                    if k == 'le':
                        continue
                    self.assertIn(val, values[k], 'label %s=%r of %s is not from the documented '
                                  'bounded set %r' % (k, val, name, sorted(values[k])))
        for s in list(forbidden) + [TASK_ID, TASK_FP, SECRET] + list(KEY_SECRETS):
            self.assertNotIn(s, m.text, 'string %r appears in /metrics:\n%s' % (s, m.text))
        for name, labels, v in (x for info in m.fams.values() for x in info['samples']):
            for val in labels.values():
                self.assertNotRegex(val, r'[/?=&\s"]', 'label value %r of %s looks like a path, '
                                    'query or client string' % (val, name))

    def wait_metrics(self, d, pred, timeout=3.0):
        """Scrape until pred(metrics) is true (counters are updated when a
        request completes, which may be just after its last byte)."""
        deadline = now() + timeout
        while True:
            m = self.scrape(d)
            if pred(m) or now() > deadline:
                return m
            time.sleep(0.05)

    def log_count(self, d, msg):
        return sum(1 for e in d.logs() if e.get('msg') == msg)

    def wait_log_count(self, d, msg, n, timeout=5.0):
        deadline = now() + timeout
        while self.log_count(d, msg) < n and now() < deadline:
            time.sleep(0.02)
        return self.log_count(d, msg)


# --------------------------------------------------------------------------
# (1) /metrics
# --------------------------------------------------------------------------

REQ_SERIES = ('mode', 'provider', 'route', 'action', 'status')


class MetricsTest(LifecycleCase):

    def test_parser_rejects_bad_expositions(self):
        """The parser used below is strict enough to fail (sanity of the test)."""
        good = ('# HELP a_total x\n# TYPE a_total counter\na_total{k="v"} 1\n'
                '# HELP h y\n# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\n'
                'h_sum 0.5\nh_count 2\n')
        parse_prometheus(good)
        bad = [
            good.replace('a_total{k="v"} 1', 'a_total{k="v"} one'),
            good.replace('a_total{k="v"} 1', 'a_total{k=v} 1'),
            good.replace('a_total{k="v"} 1', 'a_total{k="v} 1'),
            good.replace('a_total{k="v"} 1', 'a_total{k="v",k="w"} 1'),
            good.replace('a_total{k="v"} 1', '1a_total 1'),
            good.replace('a_total{k="v"} 1', 'a_total{k="v"} -1'),
            good.replace('a_total{k="v"} 1', 'a_total{k="a\\qb"} 1'),
            good.replace('# TYPE a_total counter\n', ''),
            good.replace('# HELP a_total x\n', ''),
            good.replace('counter', 'countr'),
            good.replace('h_count 2', 'h_count 3'),
            good.replace('h_bucket{le="1"} 1', 'h_bucket{le="1"} 3'),
            good.replace('h_bucket{le="+Inf"} 2', 'h_bucket{le="9"} 2'),
            good.replace('h_sum 0.5\n', ''),
            good + 'a_total{k="w"} 2\n',
            good + 'a_total{k="v"} 1\n',
            good[:-1],
        ]
        for text in bad:
            with self.assertRaises(PromError, msg='accepted: %r' % text):
                parse_prometheus(text)

    def test_readme_metrics_list_matches(self):
        """The README's Metrics section lists exactly the families (and
        label names) this test checks, so a new family cannot slip in
        undocumented and unchecked."""
        _, section = readme_section('Metrics')
        self.assertIsNotNone(section, 'README.md lost its "## Metrics" section')
        listed = {}
        for m in re.finditer(r'`(scopeproxy_[a-z_]+)(?:\{([a-z_,]+)\})?`', section):
            listed[m.group(1)] = set(m.group(2).split(',')) if m.group(2) else set()
        self.assertEqual(set(listed), set(DOCUMENTED), 'families in README vs this test')
        for fam, labels in listed.items():
            self.assertEqual(labels, DOCUMENTED[fam][1], 'label names of %s in README' % fam)

    def test_metrics_parse_and_move_with_traffic(self):
        # dual: the credentialed routes written as http:// go upstream over
        # TLS to api.openai.com:443 (a minted credential never travels on
        # plaintext); the pass-through ones stay plain, as the client wrote.
        tls = tls_material()
        up = self.start_upstream(dual=True)
        up.route('/stream', SSE(n=2, handshake=True, ack_timeout=10))
        auth = self.path('auth.json')
        write_auth(auth)
        cfg = self.path('config.json')
        with open(cfg, 'w') as f:
            json.dump({'connect_ports': [443, up.port]}, f)
        d = self.start_daemon('--config', cfg, '--auth-file', auth, '--upstream-ca', tls.ca,
                              '--resolve', 'api.openai.com:80:127.0.0.1:%d' % up.port,
                              '--resolve', 'api.openai.com:443:127.0.0.1:%d' % up.port,
                              '--gateway', '/oa/=http://api.openai.com/v1/',
                              '--gateway', '/up/=http://127.0.0.1:%d/' % up.port)
        m0 = self.scrape(d)
        self.check_documented(m0)
        self.assertEqual(m0.value('scopeproxy_registration_state'), 1)
        self.assertEqual(m0.sample('scopeproxy_registration_state', state='disabled'), 1,
                         'no registration configured: state must be "disabled"\n' + m0.text)

        def req_delta(m_a, m_b):
            """{(mode,provider,route,action,status): delta} for non-local series."""
            out = {}
            for m, sign in ((m_a, -1), (m_b, 1)):
                for name, lab, v in m.series('scopeproxy_requests_total'):
                    if lab.get('mode') == 'local':
                        continue
                    k = tuple(lab[x] for x in REQ_SERIES)
                    out[k] = out.get(k, 0) + sign * v
            return {k: v for k, v in out.items() if v}

        def count(m):
            return m.sample('scopeproxy_upstream_response_seconds_count',
                            'scopeproxy_upstream_response_seconds')

        # -- pass-through and credentialed requests ----------------------
        r = request(d.port, b'GET http://127.0.0.1:%d/plain HTTP/1.1\r\nHost: x\r\n' % up.port + b'Authorization: Bearer ' +
                    SECRET.encode() + b'\r\nConnection: close\r\n\r\n')
        self.assertEqual(r.status, 200, r)
        self.assertIn(['Authorization', 'Bearer ' + SECRET], r.json()['headers'])
        body = b'{"model":"m","input":"hi"}'
        r = request(d.port, b'POST http://api.openai.com/v1/responses HTTP/1.1\r\nHost: api.openai.com\r\n'
                    b'Authorization: Bearer ' + SECRET.encode() + b'\r\nContent-Type: application/json\r\n'
                    b'Content-Length: %d\r\nConnection: close\r\n\r\n' % len(body) + body)
        self.assertEqual(r.status, 200, r)
        auth_seen = dict((k.lower(), v) for k, v in r.json()['headers']).get('authorization', '')
        self.assertTrue(auth_seen.startswith('AgentAssertion '), 'upstream got %r' % auth_seen)
        r = request(d.port, b'POST /oa/responses/compact HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                    b'Content-Length: %d\r\nConnection: close\r\n\r\n' % len(body) + body)
        self.assertEqual(r.status, 200, r)
        auth_seen = dict((k.lower(), v) for k, v in r.json()['headers']).get('authorization', '')
        self.assertTrue(auth_seen.startswith('AgentAssertion '), 'upstream got %r' % auth_seen)
        r = request(d.port, b'GET /oa/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n')
        self.assertEqual(r.status, 200, r)
        ways = sorted((q.target, q.tls, q.sni) for q in up.requests)
        self.assertEqual(ways, [('/plain', False, None),
                                ('/v1/models', False, None),
                                ('/v1/responses', True, 'api.openai.com'),
                                ('/v1/responses/compact', True, 'api.openai.com')],
                         'credentialed routes over TLS to api.openai.com, pass-through as written')

        want = {('forward', 'custom', 'other', 'passthrough', '2xx'): 1,
                ('forward', 'openai', 'inference', 'assert', '2xx'): 1,
                ('gateway', 'openai', 'compaction', 'assert', '2xx'): 1,
                ('gateway', 'openai', 'other', 'passthrough', '2xx'): 1}
        m1 = self.wait_metrics(d, lambda m: req_delta(m0, m) == want and count(m) - count(m0) >= 4)
        self.check_documented(m1)
        self.assertEqual(req_delta(m0, m1), want, 'requests_total deltas\n' + m1.text)
        self.assertEqual(m1.value('scopeproxy_assertions_minted_total')
                         - m0.value('scopeproxy_assertions_minted_total'), 2, m1.text)
        self.assertEqual(count(m1) - count(m0), 4, 'one upstream response head per proxied request\n' + m1.text)
        s0 = m0.sample('scopeproxy_upstream_response_seconds_sum', 'scopeproxy_upstream_response_seconds')
        s1 = m1.sample('scopeproxy_upstream_response_seconds_sum', 'scopeproxy_upstream_response_seconds')
        self.assertGreater(s1, s0, 'histogram _sum must grow')
        self.assertLess(s1 - s0, 10.0, 'histogram _sum grew by %r s for 4 loopback requests' % (s1 - s0))
        self.assertEqual(m1.value('scopeproxy_fail_closed_total'), 0)
        self.assertEqual(m1.value('scopeproxy_connect_total'), 0)

        # -- fail-closed 503 (identity without a run task, via SIGHUP) ----
        write_auth(auth, task_id=None)
        hups0 = m1.value('scopeproxy_identity_reloads_total')
        d.proc.send_signal(signal.SIGHUP)
        deadline = now() + 5
        while now() < deadline and get(d.port, '/readyz').status != 503:
            time.sleep(0.05)
        n_up = len(up.requests)
        r = request(d.port, b'POST http://api.openai.com/v1/responses HTTP/1.1\r\nHost: api.openai.com\r\n'
                    b'Authorization: Bearer ' + SECRET.encode() + b'\r\n'
                    b'Content-Length: %d\r\nConnection: close\r\n\r\n' % len(body) + body)
        self.assertProxyError(r, 503, 'agent_task_missing', d)
        time.sleep(0.2)
        self.assertEqual(len(up.requests), n_up, 'a fail-closed request must not reach the upstream')
        m2 = self.wait_metrics(d, lambda m: m.value('scopeproxy_fail_closed_total') >= 1)
        self.check_documented(m2)
        self.assertEqual(m2.sample('scopeproxy_fail_closed_total', code='agent_task_missing'), 1, m2.text)
        self.assertEqual(m2.value('scopeproxy_fail_closed_total'), 1, m2.text)
        d2 = req_delta(m1, m2)
        self.assertEqual(sum(d2.values()), 1, 'one request: %r' % d2)
        (k, v), = d2.items()
        self.assertEqual((k[0], k[1], k[2], k[4]), ('forward', 'openai', 'inference', '5xx'),
                         'the 503 is counted as %r' % (k,))
        self.assertIn(k[3], ('assert', 'reject'), k)
        self.assertEqual(m2.value('scopeproxy_assertions_minted_total'),
                         m1.value('scopeproxy_assertions_minted_total'), 'nothing minted for a 503')
        self.assertEqual(count(m2), count(m1), 'no upstream response for a 503')
        self.assertGreaterEqual(m2.value('scopeproxy_identity_reloads_total') - hups0, 1,
                                'SIGHUP re-reads the auth file: identity_reloads_total must move')
        self.assertEqual(m2.sample('scopeproxy_reloads_total', result='ok')
                         - m1.sample('scopeproxy_reloads_total', result='ok'), 1, m2.text)
        write_auth(auth)
        d.proc.send_signal(signal.SIGHUP)
        deadline = now() + 5
        while now() < deadline and get(d.port, '/readyz').status != 200:
            time.sleep(0.05)

        # -- gauges: an open SSE stream --------------------------------------
        base = self.wait_metrics(d, lambda m: m.value('scopeproxy_connections_open') == 1
                                 and m.value('scopeproxy_open_requests') == 1)
        self.assertEqual(base.value('scopeproxy_open_requests'), 1,
                         'only the scrape itself is in progress\n' + base.text)
        self.assertEqual(base.value('scopeproxy_connections_open'), 1, base.text)
        sse = up.routes['/stream']
        st = StreamReader(d.port, '/up/stream')
        st.start()
        self.assertTrue(st.first.wait(5) and st.events, 'first SSE event: %r' % st.error)
        mo = self.scrape(d)
        self.assertEqual(mo.value('scopeproxy_open_requests'), 2, 'stream + scrape\n' + mo.text)
        self.assertEqual(mo.value('scopeproxy_connections_open'), 2, mo.text)
        sse.ack()
        st.join(5)
        self.assertEqual(len(st.events), 2, st.error)
        mc = self.wait_metrics(d, lambda m: m.value('scopeproxy_open_requests') == 1
                               and m.value('scopeproxy_connections_open') == 1)
        self.assertEqual(mc.value('scopeproxy_open_requests'), 1, mc.text)
        self.assertEqual(mc.value('scopeproxy_connections_open'), 1, mc.text)

        # -- CONNECT: a rejected port, then a blind tunnel ----------------
        r = request(d.port, b'CONNECT 127.0.0.1:25 HTTP/1.1\r\nHost: 127.0.0.1:25\r\n\r\n')
        self.assertProxyError(r, 403, 'connect_port_not_allowed', d)
        m3 = self.wait_metrics(d, lambda m: m.sample('scopeproxy_connect_total', action='reject') >= 1)
        self.assertEqual(m3.sample('scopeproxy_connect_total', action='reject'), 1, m3.text)
        self.assertEqual(m3.sample('scopeproxy_connect_total', action='tunnel'), 0, m3.text)
        self.assertEqual(m3.value('scopeproxy_open_tunnels'), 0, m3.text)
        with HTTPClient(d.port) as c:
            c.send(b'CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n' % (up.port, up.port))
            h = c.read_head(method='HEAD')
            self.assertEqual(h.status, 200, h)
            c.send(b'GET /in-tunnel HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
            r = c.read_response()
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()['target'], '/in-tunnel')
            m4 = self.wait_metrics(d, lambda m: m.sample('scopeproxy_open_tunnels', kind='tunnel') == 1)
            self.check_documented(m4, forbidden=('in-tunnel',))
            self.assertEqual(m4.sample('scopeproxy_open_tunnels', kind='tunnel'), 1, m4.text)
            self.assertEqual(m4.sample('scopeproxy_connect_total', action='tunnel'), 1, m4.text)
            self.assertEqual(m4.sample('scopeproxy_connect_total', action='reject'), 1, m4.text)
        m5 = self.wait_metrics(d, lambda m: m.sample('scopeproxy_open_tunnels', kind='tunnel') == 0
                               and m.value('scopeproxy_connections_open') == 1)
        self.assertEqual(m5.sample('scopeproxy_open_tunnels', kind='tunnel'), 0,
                         'tunnel closed by the client: open_tunnels must drop\n' + m5.text)
        self.assertEqual(m5.value('scopeproxy_connections_open'), 1,
                         'the tunnel\'s client connection is closed: connections_open must come back '
                         'to 1 (the scrape itself)\n' + m5.text)

    def _open_connections_settled(self, port):
        """scopeproxy_connections_open once it is back to 1 (the /metrics
        request itself), or what it (or the refusal) says after 1 s."""
        deadline = now() + 1.0
        while True:
            r = get(port, '/metrics')
            if r.status != 200:
                val = '%d %s' % (r.status, r.header('X-Scopeproxy-Error'))
            else:
                val = Metrics(r.body.decode(), parse_prometheus(r.body.decode())).value(
                    'scopeproxy_connections_open')
            if val == 1 or now() > deadline:
                return val
            time.sleep(0.05)

    def test_closed_tunnels_release_their_connection(self):
        """connections_open is also what limits.max_connections enforces: a
        finished CONNECT tunnel (client closes, or upstream closes) must give
        its slot back, or the proxy ends up refusing everything."""
        up = self.start_upstream()
        cfg = self.path('config.json')
        with open(cfg, 'w') as f:
            json.dump({'connect_ports': [443, up.port]}, f)
        d = self.start_daemon('--config', cfg, '--max-connections', '4')
        self.assertEqual(self.scrape(d).value('scopeproxy_connections_open'), 1)
        seen = []
        for i in range(5):
            with HTTPClient(d.port) as c:
                c.send(b'CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n' % (up.port, up.port))
                h = c.read_head(method='HEAD')
                self.assertEqual(h.status, 200, 'tunnel %d: %r (earlier gauges %r)' % (i, h, seen))
                if i % 2:
                    c.send(b'GET /t HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
                    self.assertEqual(c.read_response().status, 200)
                else:     # the upstream ends it
                    c.send(b'GET /t HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n')
                    self.assertEqual(c.read_response().status, 200)
                    self.assertTrue(c.wait_closed(3), 'tunnel closed after the upstream closed')
            val = self._open_connections_settled(d.port)
            seen.append(val)
        self.assertEqual(seen, [1] * 5, 'connections_open (or the refusal) after each closed tunnel, '
                         'with --max-connections 4; 1 = the scrape itself')
        r = get(d.port, '/healthz')
        self.assertEqual(r.status, 200, 'after 5 finished tunnels with --max-connections 4: %r' % r)

    def test_failed_relay_start_releases_its_connection(self):
        """A CONNECT whose relay cannot start (epoll refuses the socket)
        must give its connection slot back, blind or intercepted; else each
        one leaks a slot until --max-connections refuses everything. The
        failure is real: an LD_PRELOAD shim fails the second
        EPOLL_CTL_ADD of a client socket from 127.0.0.2 (the first is the
        peek at its first bytes, the second the relay's)."""
        shim = build_epoll_fault_shim(self.path('shim'))
        if shim is None:
            self.skipTest('no C compiler for the epoll fault shim')
        tls = tls_material()
        up = self.start_upstream()
        cfg = self.path('config.json')
        with open(cfg, 'w') as f:
            json.dump({'connect_ports': [443, up.port]}, f)
        auth = self.path('auth.json')
        write_auth(auth)
        d = self.start_daemon('--config', cfg, '--max-connections', '4', '--auth-file', auth,
                              '--ca-dir', self.path('ca'), '--upstream-ca', tls.ca,
                              '--resolve', 'api.openai.com:443:127.0.0.1:%d' % up.port,
                              env={'LD_PRELOAD': shim, 'SP_FAULT_PEER': '127.0.0.2'},
                              asan_options='verify_asan_link_order=0')
        self.assertEqual(self.scrape(d).value('scopeproxy_connections_open'), 1)
        seen = []
        for i, authority in enumerate(['127.0.0.1:%d' % up.port, 'api.openai.com:443'] * 3):
            s = socket.create_connection(('127.0.0.1', d.port), timeout=5,
                                         source_address=('127.0.0.2', 0))
            try:
                s.sendall(b'CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n'
                          % (authority.encode(), authority.encode()))
                got = b''
                while True:     # the proxy's 200 (or not), then the close
                    try:
                        b = s.recv(4096)
                    except ConnectionResetError:
                        b = b''
                    if not b:
                        break
                    got += b
            finally:
                s.close()
            answer = got.split(b'\r\n', 1)[0].decode('latin-1')
            val = self._open_connections_settled(d.port)
            seen.append((authority, answer, val))
        # the answer: the 200 (then the close), never a refusal
        self.assertEqual(seen, [(a, 'HTTP/1.1 200 Connection established', 1) for a, _, _ in seen],
                         'connections_open (or the refusal) after each CONNECT whose relay failed, '
                         'blind and intercepted, with --max-connections 4; 1 = the scrape itself')
        self.assertIn('cannot start a tunnel relay', d.stderr_text(),
                      'the shim must have failed the blind relays')
        m = self.scrape(d)
        self.assertEqual((m.sample('scopeproxy_connect_total', action='tunnel'),
                          m.sample('scopeproxy_connect_total', action='intercept')), (3, 3), m.text)

    def test_labels_stay_bounded_with_odd_requests(self):
        # dual: the credentialed POST written as http:// goes upstream over
        # TLS to api.openai.com:443; the pass-through ones stay plain.
        tls = tls_material()
        up = self.start_upstream(dual=True)
        oddhost = 'zz-oddhost-label-q7.test'
        auth = self.path('auth.json')
        write_auth(auth)
        d = self.start_daemon('--auth-file', auth, '--upstream-ca', tls.ca,
                              '--resolve', 'api.openai.com:80:127.0.0.1:%d' % up.port,
                              '--resolve', 'api.openai.com:443:127.0.0.1:%d' % up.port,
                              '--resolve', '%s:80:127.0.0.1:%d' % (oddhost, up.port),
                              '--gateway', '/up/=http://127.0.0.1:%d/' % up.port)
        odd = ['OddLabelQ1', 'OddLabelQ2', 'OddLabelQ3', 'OddLabelQ4', 'OddLabelQ5', 'OddLabelQ6',
               'OddLabelQ7', 'OddLabelQ8', 'ODDMETHODQ9', oddhost, 'zq-unknown-prefix']
        key_in_query = SPEC_V2_B64.replace('+', '%2B').replace('/', '%2F').replace('=', '%3D')
        reqs = [
            b'GET http://127.0.0.1:%d/OddLabelQ1/x?task=%s&key=%s&q=OddLabelQ2 HTTP/1.1\r\nHost: x\r\n'
            b'Connection: close\r\n\r\n' % (up.port, TASK_ID.encode(), key_in_query.encode()),
            b'POST http://api.openai.com/v1/responses?OddLabelQ3=%s HTTP/1.1\r\nHost: api.openai.com\r\n'
            b'X-Provider: OddLabelQ4\r\nX-Route: inference\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}'
            % TASK_ID.encode(),
            b'GET /zq-unknown-prefix/OddLabelQ5?x=1 HTTP/1.1\r\nHost: OddLabelQ6\r\nConnection: close\r\n\r\n',
            b'GET /up/OddLabelQ7?%s HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: OddLabelQ8\r\n'
            b'Connection: close\r\n\r\n' % TASK_ID.encode(),
            b'ODDMETHODQ9 http://127.0.0.1:%d/m HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' % up.port,
            b'GET http://%s/h HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' % (oddhost.encode(), oddhost.encode()),
            b'GET http://127.0.0.1:%d/a"b}c{d=e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' % up.port,
            b'GET /up/x HTTP/1.1\r\nHost: a\r\nBad Header: OddLabelQ1\r\nConnection: close\r\n\r\n',
            b'GET /metrics?OddLabelQ2=1 HTTP/1.1\r\nHost: OddLabelQ3\r\nConnection: close\r\n\r\n',
            b'GET /healthz/OddLabelQ4 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n',
        ]
        statuses = []
        for raw in reqs:
            try:
                statuses.append(request(d.port, raw).status)
            except NoResponse as e:
                statuses.append(repr(e)[:80])
        # the well-formed ones were answered normally
        self.assertEqual(statuses[0], 200, statuses)
        self.assertEqual(statuses[1], 200, statuses)
        self.assertEqual(statuses[2], 404, statuses)
        self.assertEqual(statuses[3], 200, statuses)
        self.assertEqual(statuses[5], 200, statuses)
        self.assertEqual(statuses[7], 400, statuses)
        time.sleep(0.3)
        m = self.scrape(d)
        self.check_documented(m, forbidden=odd + [key_in_query, 'api.openai.com', '127.0.0.1'])
        total = m.value('scopeproxy_requests_total')
        self.assertGreaterEqual(total, len(reqs) - 2, 'the odd requests are counted\n' + m.text)
        # Several provider slots appeared, all from the bounded set.
        provs = {lab['provider'] for _, lab, _ in m.series('scopeproxy_requests_total')}
        self.assertTrue({'openai', 'custom'} <= provs, provs)


# --------------------------------------------------------------------------
# (2) SIGHUP under load
# --------------------------------------------------------------------------

class ShuttingDown(Exception):
    """A complete 503 shutting_down answer with Connection: close."""


class Client(HTTPClient):
    """HTTPClient that does not leak its socket when the connect fails."""

    def __init__(self, port, timeout=10.0):
        try:
            HTTPClient.__init__(self, port, timeout=timeout)
        except OSError:
            if getattr(self, 'sock', None) is not None:
                self.sock.close()
            raise


class LoadClient(threading.Thread):
    """Sends requests to /a/<tag>-<n> until stopped; every one must be a 200
    whose echoed target is right.  kind: 'keepalive', 'new', 'post'."""

    def __init__(self, port, kind):
        threading.Thread.__init__(self, daemon=True)
        self.port = port
        self.kind = kind
        self.stop = threading.Event()
        self.ok = 0
        self.failures = []
        self.unanswered = []      # subset of failures: no response byte at all
        self.times = []

    def one(self, c, n):
        tag = '%s-%d' % (self.kind, n)
        if self.kind == 'post':
            body = ('{"n":%d,"pad":"%s"}' % (n, 'p' * (n % 97))).encode()
            raw = (b'POST /a/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
                   b'Content-Length: %d\r\n\r\n' % (tag.encode(), len(body)) + body)
        else:
            body = b''
            raw = b'GET /a/%s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n' % (
                tag.encode(), b'Connection: close\r\n' if self.kind == 'new' else b'')
        c.send(raw)
        self.t_sent = now()
        r = c.read_response(timeout=10)
        if (r.status == 503 and r.complete and r.header('X-Scopeproxy-Error') == 'shutting_down'
                and (r.header('Connection') or '').lower() == 'close'):
            raise ShuttingDown('request %s: 503 shutting_down' % tag)
        if r.status != 200 or not r.complete:
            return 'request %s: %r' % (tag, r)
        doc = json.loads(r.body)
        if doc.get('target') != '/' + tag:
            return 'request %s reached %r' % (tag, doc.get('target'))
        if self.kind == 'post' and doc.get('body') != body.decode():
            return 'request %s: body arrived as %r' % (tag, doc.get('body'))
        return None

    def run(self):
        c = None
        n = 0
        while not self.stop.is_set():
            n += 1
            t0 = now()
            self.t_sent = None
            try:
                if c is None or self.kind == 'new':
                    c = Client(self.port, timeout=10)
                err = self.one(c, n)
            except Exception as e:   # noqa: BLE001
                err = 'request %s-%d: %r' % (self.kind, n, e)
                # refused, reset or closed before a single response byte, or
                # the proxy's own complete "shutting down" refusal
                if isinstance(e, (ConnectionRefusedError, ConnectionResetError, BrokenPipeError,
                                  ShuttingDown)) or \
                        (isinstance(e, NoResponse) and not e.data):
                    self.unanswered.append((round(t0, 3), err, self.t_sent))
            if err:
                self.failures.append((round(t0, 3), err))
                if c is not None:
                    c.close()
                c = None
            else:
                self.ok += 1
                self.times.append(t0)
            if self.kind == 'new' and c is not None:
                c.close()
                c = None
        if c is not None:
            c.close()


class ReloadTest(LifecycleCase):

    def test_sighup_under_load(self):
        a = self.start_upstream()
        b = self.start_upstream()
        a.route('/sse', SSE(n=12, gap=0.3))
        cfg = self.path('scopeproxy.json')
        auth = self.path('auth.json')
        write_auth(auth)
        ga = '%s/' % a.origin()
        gb = '%s/' % b.origin()

        def config(gateway, **extra):
            doc = {'gateway': gateway, 'timeouts': {'connect': 5}}
            doc.update(extra)
            return doc

        write_file_atomic(cfg, config({'/a/': ga}), 0o644)
        d = self.start_daemon('--config', cfg, '--auth-file', auth)
        m0 = self.scrape(d)
        self.assertEqual(m0.value('scopeproxy_reloads_total'), 0, m0.text)
        r = get(d.port, '/b/x')
        self.assertProxyError(r, 404, 'unknown_route', d)

        # a kept-alive connection opened before any reload
        early = HTTPClient(d.port)
        self.addCleanup(early.close)
        early.send(b'GET /a/early HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        self.assertEqual(early.read_response().status, 200)

        stream = StreamReader(d.port, '/a/sse')
        stream.start()
        self.assertTrue(stream.first.wait(5) and stream.events, 'SSE did not start: %r' % stream.error)
        clients = [LoadClient(d.port, k) for k in ('keepalive', 'new', 'post', 'keepalive')]

        def stop_clients():
            for c in clients:
                c.stop.set()
            for c in clients:
                c.join(15)
        self.addCleanup(stop_clients)      # runs before the daemon is stopped
        for c in clients:
            c.start()
        time.sleep(0.3)

        steps = [
            ('ok', config({'/a/': ga, '/b/': gb})),
            ('ok', config({'/a/': ga, '/b/': gb}, timeouts={'connect': 3, 'upstream_idle': 120})),
            ('rejected', b'{"gateway": {"/a/": "' + ga.encode() + b'", "/z/": '),          # torn JSON
            ('rejected', config({'/a/': ga, '/b/': gb, '/z/': gb}, limits={'max_body_size': 'big'})),
            ('ok', config({'/a/': ga, '/b/': gb, '/c/': gb}, threads=3)),
            ('rejected', config({'/a/': ga, '/z/': gb}, no_such_key=1)),
        ]
        n_ok = n_rej = 0
        hup_times = []
        for i, (expect, doc) in enumerate(steps):
            write_file_atomic(cfg, doc, 0o644)
            hup_times.append(now())
            d.proc.send_signal(signal.SIGHUP)
            if expect == 'ok':
                n_ok += 1
                got = self.wait_log_count(d, 'configuration reloaded', n_ok)
                self.assertEqual(got, n_ok, 'step %d: "configuration reloaded" not logged\n%s' % (i, d.tail()))
            else:
                n_rej += 1
                got = self.wait_log_count(d, 'reload rejected; keeping the running configuration', n_rej)
                self.assertEqual(got, n_rej, 'step %d: broken config not rejected in the log\n%s' % (i, d.tail()))
            time.sleep(0.35)
            if i == 0:
                # new prefix on a new connection, and on the connection
                # that was opened before the reload
                r = get(d.port, '/b/after-first-reload')
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json()['target'], '/after-first-reload')
                self.assertTrue(b.wait_request(lambda q: q.target == '/after-first-reload', 2))
                early.send(b'GET /b/early-conn HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
                r = early.read_response()
                self.assertEqual(r.status, 200, 'kept-alive connection after SIGHUP: %r' % r)
                self.assertTrue(b.wait_request(lambda q: q.target == '/early-conn', 2),
                                'the new prefix must apply to new requests on an old connection')
            if expect == 'rejected':
                # the running configuration (with /b/, without /z/) is kept
                r = get(d.port, '/b/still-%d' % i)
                self.assertEqual(r.status, 200, 'after rejected step %d: %r' % (i, r))
                r = get(d.port, '/z/never-%d' % i)
                self.assertProxyError(r, 404, 'unknown_route', d)

        time.sleep(0.3)
        stop_clients()
        stream.join(10)
        for c in clients:
            self.assertEqual(len(c.failures), 0, '%s client: %d of %d requests failed around SIGHUP '
                             '(sent at %r); first ones: %s\n%s'
                             % (c.kind, len(c.failures), len(c.failures) + c.ok,
                                [round(t, 3) for t in hup_times],
                                [(t, e[:300]) for t, e in c.failures[:4]], d.tail()))
            self.assertGreater(c.ok, 10, '%s client sent too few requests to mean anything' % c.kind)
            self.assertLess(c.times[0], hup_times[0], c.kind)
            self.assertGreater(c.times[-1], hup_times[-1], c.kind)
            # the client was busy across every reload
            for t in hup_times:
                self.assertTrue(any(abs(x - t) < 0.5 for x in c.times),
                                '%s client idle around the SIGHUP at %.3f' % (c.kind, t))
        self.assertIsNone(stream.error, stream.error)
        self.assertTrue(stream.resp is not None and stream.resp.complete,
                        'SSE stream across reloads did not end cleanly: %r' % stream.resp)
        self.assertEqual(stream.ids(), list(range(12)), 'SSE events across reloads')

        # the last good configuration is the one running
        r = get(d.port, '/c/final')
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()['target'], '/final')
        self.assertTrue(b.wait_request(lambda q: q.target == '/final', 2))
        self.assertProxyError(get(d.port, '/z/final'), 404, 'unknown_route', d)

        # rejections: logged with a reason, naming the bad key where there is one
        rej = [e for e in d.logs() if e.get('msg') == 'reload rejected; keeping the running configuration']
        self.assertEqual(len(rej), 3, rej)
        for e in rej:
            self.assertIsInstance(e.get('reason'), str, e)
            self.assertTrue(e['reason'].strip(), e)
            self.assertEqual(e.get('level'), 'error', e)
        self.assertIn('limits.max_body_size', rej[1]['reason'])
        self.assertIn('no_such_key', rej[2]['reason'])
        warn = [e for e in d.logs() if 'next restart' in str(e.get('msg', ''))]
        self.assertEqual(len(warn), 1, 'changing "threads" must warn once that it applies at restart: %r'
                         % warn)
        self.assertIn('threads', warn[0]['msg'])

        m1 = self.scrape(d)
        self.check_documented(m1)
        self.assertEqual(m1.sample('scopeproxy_reloads_total', result='ok'), 3, m1.text)
        self.assertEqual(m1.sample('scopeproxy_reloads_total', result='rejected'), 3, m1.text)
        self.assertGreaterEqual(m1.value('scopeproxy_identity_reloads_total')
                                - m0.value('scopeproxy_identity_reloads_total'), len(steps),
                                'every SIGHUP re-reads the auth file')

        # removing a prefix applies too
        write_file_atomic(cfg, config({'/a/': ga}), 0o644)
        d.proc.send_signal(signal.SIGHUP)
        self.assertEqual(self.wait_log_count(d, 'configuration reloaded', 4), 4)
        self.assertProxyError(get(d.port, '/b/gone'), 404, 'unknown_route', d)
        self.assertEqual(get(d.port, '/a/kept').status, 200)
        self.assertTrue(d.alive())


# --------------------------------------------------------------------------
# (3) SIGTERM drains
# --------------------------------------------------------------------------

class DrainTest(LifecycleCase):

    def test_sigterm_drains_open_sse_stream(self):
        up = self.start_upstream()
        n_events = 7
        up.route('/sse', SSE(n=n_events, gap=0.3))
        d = self.start_daemon('--gateway', '/up/=%s/' % up.origin(), '--drain-timeout', '10')
        # an idle kept-alive connection must not hold the drain up
        idle = HTTPClient(d.port)
        self.addCleanup(idle.close)
        idle.send(b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
        self.assertEqual(idle.read_response().status, 200)

        st = StreamReader(d.port, '/up/sse')
        st.start()
        self.assertTrue(st.first.wait(5) and st.events, 'stream did not start: %r' % st.error)
        t_term = now()
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.15)
        probes = []
        for _ in range(3):
            t = now()
            probes.append((probe_new_connection(d.port, wait=1.0), round(now() - t, 3)))
            if st.t_end is not None:
                break
            time.sleep(0.1)
        st.join(10)
        try:
            rc = d.proc.wait(8)
        except subprocess.TimeoutExpired:
            rc = None
        t_exit = now()

        self.assertIsNone(st.error, 'stream: %s' % st.error)
        self.assertEqual(st.ids(), list(range(n_events)), 'every event of the draining stream')
        self.assertTrue(st.resp.complete, 'the stream must end cleanly (chunked terminator): %r' % st.resp)
        after = [t for t, _ in st.events if t > t_term]
        self.assertGreaterEqual(len(after), n_events - 2, 'events kept flowing after SIGTERM')
        self.assertEqual(rc, 0, 'exit status after the drain\n' + d.tail())
        self.assertLessEqual(t_exit - st.t_end, 1.2,
                             'daemon exited %.2fs after the stream ended' % (t_exit - st.t_end))
        self.assertGreater(t_exit - t_term, 1.0, 'daemon exited before the stream could finish')
        draining = [e for e in d.logs() if e.get('msg') == 'draining']
        self.assertEqual(len(draining), 1, d.tail())
        self.assertEqual(draining[0].get('timeout_s'), 10, draining)
        line = [e for e in d.logs() if e.get('msg') == 'request' and e.get('path') == '/up/sse']
        self.assertEqual(len(line), 1, d.tail())
        self.assertEqual(line[0].get('status'), 200)
        self.assertNotIn('aborted', line[0], line[0])
        for result, took in probes:
            self.assertIn(result, ('refused', 'reset', 'closed-unanswered'),
                          'a new connection during the drain must be refused; got %r after %.2fs '
                          '(all probes: %r)' % (result, took, probes))

    def test_short_drain_timeout_cuts_long_stream(self):
        up = self.start_upstream()
        sse = up.route('/sse', SSE(n=67, gap=0.3))    # ~20 s
        d = self.start_daemon('--gateway', '/up/=%s/' % up.origin(), '--drain-timeout', '1')
        st = StreamReader(d.port, '/up/sse')
        st.start()
        self.assertTrue(st.first.wait(5) and st.events, 'stream did not start: %r' % st.error)
        t_term = now()
        d.proc.send_signal(signal.SIGTERM)
        try:
            rc = d.proc.wait(6)
        except subprocess.TimeoutExpired:
            rc = None
        took = now() - t_term
        self.assertEqual(rc, 0, 'exit status after a drain timeout\n' + d.tail())
        self.assertGreaterEqual(took, 0.9, 'exited %.2fs after SIGTERM: before the drain timeout' % took)
        self.assertLessEqual(took, 1.8, 'exited %.2fs after SIGTERM with --drain-timeout 1' % took)
        st.join(3)
        self.assertFalse(st.is_alive(), 'client still connected after the daemon exited')
        self.assertFalse(st.resp is not None and st.resp.complete,
                         'a cut stream must not look complete to the client')
        self.assertLess(len(st.events), 20, len(st.events))
        self.assertTrue(sse.finished.wait(3), 'upstream SSE still being sent after the daemon exited')
        self.assertTrue(up.wait(lambda: all(c.eof or c.closed_at for c in up.connections), 3),
                        'the upstream connection must be closed')

    def test_sigterm_under_request_load(self):
        """SIGTERM while clients keep sending (keep-alive and new
        connections): exit status 0 every time, and no client ever sees a
        truncated or malformed response.  Once the signal is sent, the only
        allowed failures are a refusal/reset before any response byte or a
        complete `503 shutting_down` with Connection: close; a request the
        proxy had well before the signal must be answered."""
        up = self.start_upstream()
        outcomes = []
        for trial in range(8):
            d = self.start_daemon('--gateway', '/a/=%s/' % up.origin(), '--drain-timeout', '2')
            clients = [LoadClient(d.port, k) for k in ('keepalive', 'new', 'post', 'keepalive')]
            for c in clients:
                c.start()
            time.sleep(0.25)
            t_term = now()
            d.proc.send_signal(signal.SIGTERM)
            try:
                rc = d.proc.wait(6)
            except subprocess.TimeoutExpired:
                rc = 'still running 6s after SIGTERM'
            took = now() - t_term
            for c in clients:
                c.stop.set()
            for c in clients:
                c.join(10)
            d.stop()
            fatal = [l for l in d.stderr_text().splitlines() if not l.startswith('{')]
            # unanswered is fine for a request racing with the signal, not
            # for one the proxy had well before it
            unanswered = {u[:2]: u[2] for c in clients for u in c.unanswered}
            bad = [(c.kind, f) for c in clients for f in c.failures
                   if f not in unanswered or (unanswered[f] is not None
                                              and unanswered[f] < t_term - 0.1)]
            outcomes.append((trial, rc, round(took, 2), sum(c.ok for c in clients), fatal[-2:], bad[:3]))
            if rc == -signal.SIGABRT:
                # judged below, with all trials together, rather than once
                # more per daemon by the harness cleanup
                d.proc.returncode = 0
        failed = [o for o in outcomes if o[1] != 0 or o[4] or o[5]]
        self.assertEqual(failed, [], 'SIGTERM under load (trial, exit status, seconds to exit, '
                         'requests answered, non-JSON stderr, broken responses):\n%s'
                         % '\n'.join(repr(o) for o in outcomes))
        for o in outcomes:
            self.assertLessEqual(o[2], 3.0, 'exit %.2fs after SIGTERM with --drain-timeout 2' % o[2])

    def test_second_signal_stops_at_once(self):
        up = self.start_upstream()
        up.route('/sse', SSE(n=67, gap=0.3))
        d = self.start_daemon('--gateway', '/up/=%s/' % up.origin(), '--drain-timeout', '10')
        st = StreamReader(d.port, '/up/sse')
        st.start()
        self.assertTrue(st.first.wait(5) and st.events, st.error)
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        self.assertTrue(d.alive(), 'still draining')
        t = now()
        d.proc.send_signal(signal.SIGINT)
        try:
            rc = d.proc.wait(5)
        except subprocess.TimeoutExpired:
            rc = None
        self.assertEqual(rc, 0, d.tail())
        self.assertLess(now() - t, 1.0, 'a second signal stops at once')


# --------------------------------------------------------------------------
# (4) --pid-file
# --------------------------------------------------------------------------

class PidFileTest(LifecycleCase):

    def _check_pid_file(self, d, path):
        deadline = now() + 1.0
        while not os.path.exists(path) and now() < deadline:
            time.sleep(0.01)
        with open(path) as f:
            content = f.read()
        self.assertRegex(content, r'^\d+\n?$', 'pid file content %r' % content)
        self.assertEqual(int(content), d.proc.pid)
        self.assertEqual(int(content), d.info['pid'], 'pid file and server-info agree')
        self.assertEqual([p for p in os.listdir(os.path.dirname(path)) if '.tmp' in p], [],
                         'temporary files left next to the pid file')

    def test_pid_file_flag_sigterm(self):
        path = self.path('scopeproxy.pid')
        d = self.start_daemon('--pid-file', path)
        self._check_pid_file(d, path)
        self.assertEqual(get(d.port, '/healthz').status, 200)
        time.sleep(0.3)
        self._check_pid_file(d, path)   # still there while running
        d.proc.send_signal(signal.SIGTERM)
        self.assertEqual(d.proc.wait(5), 0, d.tail())
        self.assertFalse(os.path.exists(path), 'pid file left behind after SIGTERM')

    def test_pid_file_config_key_sigint(self):
        path = self.path('from-config.pid')
        cfg = self.path('c.json')
        with open(cfg, 'w') as f:
            json.dump({'pid_file': path}, f)
        d = self.start_daemon('--config', cfg)
        self._check_pid_file(d, path)
        d.proc.send_signal(signal.SIGINT)
        self.assertEqual(d.proc.wait(5), 0, d.tail())
        self.assertFalse(os.path.exists(path), 'pid file left behind after SIGINT')

    def test_pid_file_in_place_once_listening(self):
        """A harness waits for --server-info ("it appears once the proxy
        listens") and may read the pid file right then: it must already be
        there.  Checked with a tight poll over several starts."""
        results = []
        for i in range(10):
            run = self.path('start-%d' % i)
            os.makedirs(run)
            info, pid = os.path.join(run, 'info.json'), os.path.join(run, 'sp.pid')
            p = subprocess.Popen([scopeproxy_bin(), '--listen', '127.0.0.1:0', '--server-info', info,
                                  '--pid-file', pid], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env=hermetic_env(run))
            try:
                deadline = now() + 10
                while not os.path.exists(info) and p.poll() is None and now() < deadline:
                    pass
                self.assertTrue(os.path.exists(info), 'start %d: no server-info (exit %r)' % (i, p.poll()))
                results.append(os.path.exists(pid))
                p.send_signal(signal.SIGTERM)
                self.assertEqual(p.wait(5), 0)
                self.assertFalse(os.path.exists(pid), 'pid file left behind')
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait(5)
        self.assertEqual(results, [True] * 10, 'pid file present at the moment server-info appeared, '
                         'per start')

    def test_pid_file_unwritable_is_runtime_failure(self):
        path = self.path('no-such-dir/x.pid')
        info = self.path('info.json')
        r = run_cmd([scopeproxy_bin(), '--listen', '127.0.0.1:0', '--server-info', info,
                     '--pid-file', path], timeout=15, env=hermetic_env(self.path('home')))
        self.assertEqual(r.returncode, 1, 'exit status for an unwritable pid file; stderr: %r' % r.stderr[-800:])
        self.assertIn(b'no-such-dir/x.pid', r.stderr)


# --------------------------------------------------------------------------
# (5) README "For test harnesses"
# --------------------------------------------------------------------------

def readme_section(title):
    with open(os.path.join(SRCDIR, 'README.md'), encoding='utf-8') as f:
        text = f.read()
    m = re.search(r'^## ' + re.escape(title) + r'[ \t]*\n(.*?)(?=^## |\Z)', text, re.M | re.S)
    return text, (m.group(1) if m else None)


def code_block(section):
    """The first code block of a section: 4-space indented (blank lines
    inside allowed) or ```-fenced.  Returns its lines, unindented."""
    lines = section.split('\n')
    for i, line in enumerate(lines):
        if line.startswith('```'):
            out = []
            for l2 in lines[i + 1:]:
                if l2.startswith('```'):
                    return out
                out.append(l2)
            return out
        if line.startswith('    ') and line.strip():
            out = []
            for l2 in lines[i:]:
                if l2.startswith('    ') or not l2.strip():
                    out.append(l2[4:])
                else:
                    break
            while out and not out[-1].strip():
                out.pop()
            return out
    return None


def logical_commands(lines):
    cmds, cur = [], ''
    for line in lines:
        if line.rstrip().endswith('\\'):
            cur += line.rstrip()[:-1] + ' '
            continue
        cur += line
        if cur.strip():
            cmds.append(cur.strip())
        cur = ''
    if cur.strip():
        cmds.append(cur.strip())
    return cmds


class ReadmeHarnessTest(LifecycleCase):
    TIMEOUT = 50

    def test_readme_harness_example(self):
        text, section = readme_section('For test harnesses')
        self.assertIsNotNone(section, 'README.md lost its "## For test harnesses" section')
        block = code_block(section)
        self.assertTrue(block, 'no shell block in the README "For test harnesses" section')
        cmds = logical_commands(block)
        daemon_cmd = [c for c in cmds if c.startswith('scopeproxy ')]
        port_cmd = [c for c in cmds if c.startswith('port=')]
        curl_cmd = [c for c in cmds if c.startswith('curl ')]
        self.assertEqual((len(daemon_cmd), len(port_cmd), len(curl_cmd)), (1, 1, 1),
                         'expected one scopeproxy, one port=, one curl command in %r' % cmds)
        daemon_cmd, port_cmd, curl_cmd = daemon_cmd[0], port_cmd[0], curl_cmd[0]
        self.assertTrue(daemon_cmd.endswith('&'), 'the daemon is started in the background: %r' % daemon_cmd)
        argv = shlex.split(daemon_cmd[:-1])
        flags = [a for a in argv if a.startswith('--')]
        for f in ('--listen', '--server-info', '--resolve', '--upstream-ca', '--auth-file', '--audit-log'):
            self.assertIn(f, flags, 'the worked example must show %s' % f)
        self.assertEqual(argv[argv.index('--listen') + 1], '127.0.0.1:0', 'ephemeral port in the example')
        # The harness-mode section must also say how to wait and how to stop.
        self.assertIn('server-info', section)
        self.assertIn('SIGTERM', section)
        self.assertRegex(section, r'exit status 0')
        # The rule this test applies to the audit log is the README's own.
        self.assertRegex(' '.join(text.split()),
                         r'a request "carried a credential" exactly when its line has '
                         r'`"action":"assert"` and a non-null `task`',
                         'README no longer states the carried-a-credential rule')

        # -- adapt the example: temp paths, loopback TLS upstream ------------
        tls = tls_material()
        up = self.start_upstream(tls=True)
        cwd = self.path('run')
        os.makedirs(cwd)
        paths = {}
        out = [scopeproxy_bin()]
        i = 1
        while i < len(argv):
            a = argv[i]
            v = argv[i + 1] if i + 1 < len(argv) else None
            if a in ('--server-info', '--audit-log', '--auth-file', '--upstream-ca', '--pid-file',
                     '--config', '--ca-dir'):
                self.assertIsNotNone(v, a)
                # absolute or "$run/..." (the example's own temp dir): here, in cwd
                local = (v if not (os.path.isabs(v) or v.startswith('$'))
                         else os.path.join(cwd, os.path.basename(v)))
                paths[a] = (v, os.path.join(cwd, local))
                out += [a, local]
                i += 2
            elif a == '--resolve':
                host, port, _addr, _aport = v.rsplit(':', 3)
                self.assertEqual((host, port), ('api.openai.com', '443'), 'example --resolve %r' % v)
                paths[a] = (v, None)
                out += [a, '%s:%s:127.0.0.1:%d' % (host, port, up.port)]
                i += 2
            else:
                out.append(a)
                i += 1
        auth = paths['--auth-file'][1]
        write_auth(auth)
        shutil.copy(tls.ca, paths['--upstream-ca'][1])
        info_path = paths['--server-info'][1]
        audit_path = paths['--audit-log'][1]
        env = hermetic_env(self.path('home'))
        errf = open(self.path('readme-daemon.err'), 'wb')
        self.addCleanup(errf.close)
        proc = subprocess.Popen(out, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=errf)

        def stop():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        self.addCleanup(stop)

        def tail():
            with open(self.path('readme-daemon.err'), 'rb') as f:
                return f.read().decode('utf-8', 'replace')[-3000:]

        # "Wait for the server-info file (it appears atomically once the proxy listens)"
        deadline = now() + 20
        info = None
        while now() < deadline and proc.poll() is None:
            if os.path.exists(info_path):
                with open(info_path) as f:
                    raw = f.read()
                info = json.loads(raw)     # atomic: never partial
                break
            time.sleep(0.01)
        self.assertIsNotNone(info, 'the README example did not start (exit %r):\n%s\ncmd: %r'
                             % (proc.poll(), tail(), out))
        self.assertEqual(set(info), {'port', 'pid', 'listen'}, info)
        self.assertEqual(info['pid'], proc.pid)
        self.assertEqual(info['listen'], '127.0.0.1:%d' % info['port'])

        # the port= line, run as written (on our server-info path)
        orig_info = paths['--server-info'][0]
        self.assertIn(orig_info, port_cmd, 'the port= line reads the --server-info file')
        r = run_cmd(['/bin/sh', '-c', port_cmd.replace(orig_info, info_path) + '; printf %s "$port"'],
                    env=dict(env, PATH='/usr/bin:/bin'))
        self.assertEqual(r.returncode, 0, r.stderr)
        port = int(r.stdout.decode())
        self.assertEqual(port, info['port'])

        # the curl line: -x http://127.0.0.1:$port, and the base-URL alternative
        cparts = shlex.split(curl_cmd.split('#', 1)[0])
        self.assertIn('-x', cparts)
        proxy_url = cparts[cparts.index('-x') + 1].replace('$port', str(port))
        self.assertEqual(proxy_url, 'http://127.0.0.1:%d' % port)
        m = re.search(r'OPENAI_BASE_URL=(\S+)', curl_cmd)
        self.assertIsNotNone(m, 'the base-URL alternative is shown: %r' % curl_cmd)
        base_url = m.group(1).replace('$port', str(port))
        self.assertEqual(base_url, 'http://127.0.0.1:%d/v1' % port)

        # trust the interception CA the way the README says (scopeproxy ca export)
        ca_args = ['--ca-dir', paths['--ca-dir'][1]] if '--ca-dir' in paths else []
        r = run_cmd([scopeproxy_bin(), 'ca', 'export'] + ca_args, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        proxy_ca = self.path('proxy-ca.pem')
        with open(proxy_ca, 'wb') as f:
            f.write(r.stdout)

        cases = [
            # (tag, via, method, url, credential expected)
            ('c1', 'proxy', 'POST', 'https://api.openai.com/v1/responses', True),
            ('c2', 'proxy', 'GET', 'https://api.openai.com/v1/models', False),
            ('c3', 'base', 'POST', base_url + '/responses', True),
            ('c4', 'base', 'GET', base_url + '/models?after=' + TASK_ID, False),
            ('c5', 'base', 'POST', base_url + '/responses/compact', True),
            ('c6', 'proxy', 'POST', 'https://api.openai.com/v1/files', False),
        ]
        for tag, via, method, url, _ in cases:
            args = ['-X', method, '-H', 'Authorization: Bearer ' + SECRET, '-H', 'X-Case: ' + tag,
                    '-o', '/dev/null', '-w', '%{http_code}']
            if method == 'POST':
                args += ['-H', 'Content-Type: application/json', '--data-binary', '{"model":"m"}']
            if via == 'proxy':
                args = ['-x', proxy_url, '--cacert', proxy_ca] + args
            r = curl(*(args + [url]), timeout=15)
            self.assertEqual((r.returncode, r.stdout), (0, b'200'),
                             '%s %s %s: %r\n%s' % (tag, method, url, r.stderr, tail()))

        # what the upstream actually received, per case
        carried = {}
        for q in up.requests:
            tag = q.header('X-Case')
            a = q.header('Authorization') or ''
            self.assertNotIn(tag, carried, 'case %s reached the upstream twice' % tag)
            carried[tag] = a.startswith('AgentAssertion ')
            if not carried[tag]:
                self.assertEqual(a, 'Bearer ' + SECRET, 'pass-through keeps the client credential')
        self.assertEqual(carried, {t: exp for t, _, _, _, exp in cases}, 'what the upstream received')

        # fail closed: no run task -> 503, nothing upstream, and no credential per the audit
        write_auth(auth, task_id=None)
        deadline = now() + 5
        while now() < deadline and get(port, '/readyz').status != 503:
            time.sleep(0.05)
        r = curl('-x', proxy_url, '--cacert', proxy_ca, '-X', 'POST', '-H', 'X-Case: c7',
                 '-H', 'Authorization: Bearer ' + SECRET, '--data-binary', '{}',
                 '-o', '/dev/null', '-w', '%{http_code}', 'https://api.openai.com/v1/responses', timeout=15)
        self.assertEqual(r.stdout, b'503', r.stderr)
        time.sleep(0.3)
        self.assertNotIn('c7', [q.header('X-Case') for q in up.requests])

        # the README's rule, applied to the audit log
        time.sleep(0.2)
        with open(audit_path) as f:
            audit = [json.loads(l) for l in f.read().splitlines()]
        lines = [a for a in audit if a.get('path') in ('/v1/responses', '/v1/models', '/v1/responses/compact',
                                                        '/v1/files')]
        self.assertEqual(len(lines), len(cases) + 1, 'one audit line per request:\n%s'
                         % '\n'.join(json.dumps(a) for a in audit))
        expect = [exp for _, _, _, _, exp in cases] + [False]
        for (a, exp, case) in zip(lines, expect, cases + [('c7', 'proxy', 'POST', '/v1/responses', False)]):
            for k in ('time', 'method', 'host', 'path', 'mode', 'provider', 'route', 'action', 'task', 'status'):
                self.assertIn(k, a, 'audit line lacks %r: %r' % (k, a))
            self.assertEqual(a['method'], case[2], a)
            self.assertEqual(a['path'], re.sub(r'^https?://[^/]+', '', case[3]).split('?')[0], a)
            readme_says_carried = a['action'] == 'assert' and a['task'] is not None
            self.assertEqual(readme_says_carried, exp, 'case %s: audit %r' % (case[0], a))
            if exp:
                self.assertEqual(a['task'], TASK_FP, 'task is the first 8 hex of SHA-256 of the task id')
                self.assertEqual(a['status'], 200, a)
            else:
                self.assertIsNone(a['task'], a)
            self.assertEqual(a['provider'], 'openai', a)
        for a, case in zip(lines, cases):
            self.assertIn(a['mode'], ('forward', 'intercept') if case[1] == 'proxy' else ('gateway',), a)
        self.assertEqual(lines[6]['status'], 503)
        self.assertEqual(lines[6].get('error'), 'agent_task_missing', lines[6])
        with open(audit_path) as f:
            atext = f.read()
        for s in (TASK_ID, SECRET, 'AgentAssertion') + KEY_SECRETS:
            self.assertNotIn(s, atext, 'secret in the audit log')

        # the same traffic seen through /metrics
        mt = self.scrape(types.SimpleNamespace(port=port))
        self.check_documented(mt)
        self.assertEqual(mt.sample('scopeproxy_connect_total', action='intercept'), 4, mt.text)
        self.assertEqual(mt.value('scopeproxy_open_tunnels'), 0, mt.text)
        self.assertEqual(mt.value('scopeproxy_assertions_minted_total'), 3, mt.text)
        self.assertEqual(mt.sample('scopeproxy_fail_closed_total', code='agent_task_missing'), 1, mt.text)

        # "stop the daemon with SIGTERM (exit status 0)"
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(10), 0, tail())
        for s in (TASK_ID, SECRET) + KEY_SECRETS:
            self.assertNotIn(s, tail(), 'secret in the daemon log')

    def test_readme_classify_example(self):
        """The `scopeproxy classify` example in the README prints what it says."""
        text, _ = readme_section('For test harnesses')
        m = re.search(r'^ {4}\$ (scopeproxy classify .*)\n {4}(\{.*\})$', text, re.M)
        self.assertIsNotNone(m, 'README lost its `scopeproxy classify` example')
        argv = shlex.split(m.group(1))
        # The example assumes the default identity ($CODEX_HOME/auth.json) with a run task.
        codex = self.path('codex')
        os.makedirs(codex)
        write_auth(os.path.join(codex, 'auth.json'))
        r = run_cmd([scopeproxy_bin()] + argv[1:],
                    env=hermetic_env(self.path('home'), {'CODEX_HOME': codex}))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), json.loads(m.group(2)))
        self.assertEqual(r.stdout.decode().strip(), m.group(2))


if __name__ == '__main__':
    main()
