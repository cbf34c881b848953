#!/usr/bin/python3
"""Memory after a burst: an idle daemon gives back what a burst of
streams took, instead of holding the burst's peak for ever (glibc keeps
freed heap unless it is trimmed).

Needs the normal build: under AddressSanitizer the allocator is ASan's
own and its RSS says nothing about the daemon's.

Run: SCOPEPROXY_BIN=proxy/scopeproxy /usr/bin/python3 tests/integration/test_memory.py
"""

import asyncio
import os
import resource
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import ProxyTestCase, binary_has_asan  # noqa: E402

STREAMS = 1500
HEAD = (b'HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n'
        b'Transfer-Encoding: chunked\r\n\r\n')
EVENT = b'data: {"type":"response.created"}\n\n'
CHUNK = b'%x\r\n%s\r\n' % (len(EVENT), EVENT)


def rss_kb(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise AssertionError('no VmRSS for %d' % pid)


class IdleSSEUpstream:
    """An asyncio upstream on its own thread: every request gets a head,
    one event, then silence until the peer closes."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise AssertionError('upstream did not start')

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, '127.0.0.1', 0, backlog=4096))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _serve(self, r, w):
        try:
            await r.readuntil(b'\r\n\r\n')
            w.write(HEAD + CHUNK)
            await w.drain()
            await r.read()          # until the proxy hangs up
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            w.close()

    def stop(self):
        async def close():
            self.server.close()
            await self.server.wait_closed()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class BurstMemory(ProxyTestCase):
    def setUp(self):
        super().setUp()
        if binary_has_asan():
            self.skipTest('RSS of an ASan build says nothing about the daemon')
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < 2 * STREAMS + 256:
            self.skipTest('RLIMIT_NOFILE hard limit %d is too low' % hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2 * STREAMS + 256), hard))

    async def _hold_streams(self, port, upport, pid):
        req = (b'GET http://127.0.0.1:%d/v1/responses HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n'
               b'Accept: text/event-stream\r\n\r\n' % (upport, upport))
        sem = asyncio.Semaphore(500)        # connecting at once

        async def one():
            async with sem:
                r, w = await asyncio.wait_for(asyncio.open_connection('127.0.0.1', port), 30)
                w.write(req)
                await asyncio.wait_for(r.readuntil(b'\r\n\r\n'), 30)
                await asyncio.wait_for(r.readuntil(b'\n\n'), 30)
                return w
        writers = await asyncio.gather(*(one() for _ in range(STREAMS)))
        peak = rss_kb(pid)
        for w in writers:
            w.close()
        return peak

    def test_idle_rss_returns_after_a_burst_of_streams(self):
        up = IdleSSEUpstream()
        self.addCleanup(up.stop)
        d = self.start_daemon('--max-connections', str(STREAMS + 512))
        time.sleep(0.5)
        before = rss_kb(d.pid)
        peak = asyncio.run(self._hold_streams(d.port, up.port, d.pid))
        growth = peak - before
        self.assertGreater(growth, 20000, 'the burst should take memory (%d kB)' % growth)
        # Give back at least two thirds of what the burst took, soon.
        limit = before + growth // 3
        deadline = time.monotonic() + 8
        after = rss_kb(d.pid)
        while after > limit and time.monotonic() < deadline:
            time.sleep(0.25)
            after = rss_kb(d.pid)
        self.assertLessEqual(after, limit,
                             'RSS before %d kB, peak %d kB, 8 s after closing %d kB (%.0f %% of the '
                             'growth kept)' % (before, peak, after, 100.0 * (after - before) / growth))


if __name__ == '__main__':
    unittest.main()
