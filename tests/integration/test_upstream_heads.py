#!/usr/bin/python3
"""Malformed upstream response heads, through the real daemon: every one
is answered 502 upstream_protocol_error, nothing of it is relayed, and the
daemon keeps serving (under ASan a memory error fails the suite).

A NUL before the colon once overflowed the header-name copy (found by the
resp_head fuzzer); the other cases are its neighbours.
"""

import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import ProxyTestCase, Raw, main, request  # noqa: E402

BAD = [
    ('nul-before-colon', b'A\x00:b'),
    ('nul-in-value', b'X-A: a\x00b'),
    ('cr-in-value', b'X-A: a\rb'),
    ('ctl-in-value', b'X-A: a\x01b'),
    ('del-in-value', b'X-A: a\x7fb'),
    ('obs-fold', b'X-A: a\r\n b'),
    ('no-colon', b'no colon here'),
    ('bad-name', b'bad name: x'),
]


class UpstreamHeads(ProxyTestCase):

    def test_malformed_heads_are_502_and_nothing_is_relayed(self):
        up = self.start_upstream()
        for name, field in BAD:
            up.route('/' + name, Raw(b'HTTP/1.1 200 OK\r\n' + field +
                                     b'\r\nContent-Length: 2\r\n\r\nok'))
        up.route('/good', Raw(b'HTTP/1.1 200 OK\r\nX-A: a\tb \xe9\r\nContent-Length: 2\r\n\r\nok'))
        d = self.start_daemon()
        for name, field in BAD:
            r = request(d.port, b'GET http://127.0.0.1:%d/%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'
                        % (up.port, name.encode()))
            self.assertProxyError(r, 502, 'upstream_protocol_error', d)
            self.assertNotIn(b'ok', r.body)
            self.assertIsNone(r.header('X-A'), name)
        r = request(d.port, b'GET http://127.0.0.1:%d/good HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n' % up.port)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header('X-A'), 'a\tb \xe9')
        self.assertEqual(r.body, b'ok')


if __name__ == '__main__':
    main()
