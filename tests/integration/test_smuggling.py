#!/usr/bin/python3
"""Request smuggling and desync: a corpus of ambiguous requests through the
real daemon, each checked against what an upstream actually received.

Every case of CASES is sent in forward mode (absolute-form targets on a raw
recording upstream), in gateway mode (`--gateway /g/=` to the same
upstream) and in tunnel mode (inside an intercepted HTTPS tunnel: CONNECT
api.openai.com:443, TLS with the proxy's CA, origin-form requests that the
proxy sends on over TLS to a raw recording TLS upstream), and each of those
twice: as the FIRST head of a fresh connection (or TLS session) and as a
LATER head, after one good request on the same kept-alive connection.  Every
head is checked raw by the proxy before libmicrohttpd reads it.  Each run
passes when exactly one of these holds:

  rejected   the proxy answers its own JSON 4xx (X-Scopeproxy-Error, OpenAI
             error JSON), closes the connection after it, and no upstream
             received any byte of the rejected request;
  forwarded  the upstream received exactly the request(s) the case holds
             (one, or two for a pipelined pair), each with canonical framing
             (one Content-Length or chunked, never both; body exactly as
             framed; nothing left over), and nothing after them: no
             smuggled request, no second response on the client side.

Anything else fails: an answer that is not the proxy's JSON (libmicrohttpd's
HTML 400), no answer at all, a connection left open after a rejection, a
request forwarded that was also refused, a smuggled request on any upstream.
Smuggled payloads are either a plain request (`/TOKEN/smuggled`) or a
credentialed `POST .../v1/responses` (api.openai.com is --resolve'd to a
plain+TLS harness upstream with the test CA trusted and an auth file with a
run task loaded, so a smuggled credentialed request would be minted and
visible there; in tunnel mode the TLS recorder is api.openai.com, and a
request to /v1/ there carrying the run's X-Case is a smuggled credentialed
one).

The failures are not marked expectedFailure: the list printed at the end
(and the subTest failures) is the work list for the daemon.

Adding a case is one line in CASES: (name, template bytes, category).
Placeholders in a template (see tests/README.md):
  {U}     the case's target (absolute-form in forward mode, /g/... in gateway mode)
  {P}     target of the first request of a pipelined pair
  {H}     a Host value that matches the target
  {HP}    127.0.0.1:PORT of the recording upstream      {TOK}  the run's token
  {SMUG}  a complete plain request to {TOK}/smuggled
  {CRED}  a complete credentialed POST .../v1/responses (with body)
  {[} {]} region whose decimal length replaces {N}
  {<} {>} region whose hex length replaces {X}   ({X} is expanded before {N})
"""

import concurrent.futures
import json
import os
import re
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (Daemon, HTTPClient, NoResponse, ProxyTestCase, UpstreamServer,  # noqa: E402
                     main, request, tls_material)
from agentid import SPEC_V2_B64, auth_doc, identity_record, write_auth  # noqa: E402

TASK = 'task-smuggle-9c1e'
RUNTIME = 'agent-123'

# -- case-building shorthands (keep CASES one line per case) ----------------
CL = b'Content-Length: {N}\r\n'
TE = b'Transfer-Encoding: chunked\r\n'
CHUNKED_SMUG = b'{X}\r\n{<}{SMUG}{>}\r\n0\r\n\r\n'      # the smuggled request is chunk DATA
CHUNKED_CRED = b'{X}\r\n{<}{CRED}{>}\r\n0\r\n\r\n'


def get(extra=b'', line=b'GET {U} HTTP/1.1'):
    return line + b'\r\nHost: {H}\r\n' + extra + b'\r\n'


def post(extra=b'', body=b'', line=b'POST {U} HTTP/1.1'):
    return line + b'\r\nHost: {H}\r\n' + extra + b'\r\n' + body


PIPE = b'GET {P} HTTP/1.1\r\nHost: {H}\r\n\r\n'     # good first request of a pipelined pair

# (name, bytes, category).  A smuggled request sits where a correct parse
# puts it inside a body or refuses the request; only a desync makes it a
# request of its own.
CASES = [
    # -- CL/TE combinations ---------------------------------------------------
    ('cl_te', post(CL + TE, b'{[}0\r\n\r\n{SMUG}{]}'), 'cl-te'),
    ('te_cl', post(TE + b'Content-Length: {N}\r\n', b'{[}{X}\r\n{]}{<}{SMUG}{>}\r\n0\r\n\r\n'), 'cl-te'),
    ('cl_te_cred', post(CL + TE, b'{[}0\r\n\r\n{CRED}{]}'), 'cl-te'),
    ('te_cl_cred', post(TE + b'Content-Length: {N}\r\n', b'{[}{X}\r\n{]}{<}{CRED}{>}\r\n0\r\n\r\n'), 'cl-te'),
    ('te_chunked_cl0', post(TE + b'Content-Length: 0\r\n', b'0\r\n\r\n{SMUG}'), 'cl-te'),
    ('cl0_te_chunked', post(b'Content-Length: 0\r\n' + TE, CHUNKED_CRED), 'cl-te'),
    ('get_cl_te', post(CL + TE, b'{[}0\r\n\r\n{SMUG}{]}', line=b'GET {U} HTTP/1.1'), 'cl-te'),
    ('http10_cl_te', post(CL + TE, b'{[}0\r\n\r\n{SMUG}{]}', line=b'POST {U} HTTP/1.0'), 'cl-te'),
    # -- TE lists and spellings -------------------------------------------------
    ('te_chunked_identity', post(b'Transfer-Encoding: chunked, identity\r\n', CHUNKED_SMUG), 'te'),
    ('te_identity_chunked', post(b'Transfer-Encoding: identity, chunked\r\n', CHUNKED_SMUG), 'te'),
    ('te_leading_space', post(b'Transfer-Encoding:  chunked\r\n', CHUNKED_SMUG), 'te'),
    ('te_capital', post(b'Transfer-Encoding: Chunked\r\n', CHUNKED_SMUG), 'te'),
    ('te_trailing_space', post(b'Transfer-Encoding: chunked \r\n', CHUNKED_SMUG), 'te'),
    ('te_x_chunked', post(b'Transfer-Encoding: x-chunked\r\n', CHUNKED_SMUG), 'te'),
    ('te_chunked_chunked', post(b'Transfer-Encoding: chunked, chunked\r\n', CHUNKED_CRED), 'te'),
    ('te_two_headers', post(TE + TE, CHUNKED_CRED), 'te'),
    ('te_two_headers_identity', post(TE + b'Transfer-Encoding: identity\r\n', CHUNKED_SMUG), 'te'),
    ('te_obs_fold', post(b'Transfer-Encoding:\r\n chunked\r\n', CHUNKED_SMUG), 'te'),
    ('te_tab_value', post(b'Transfer-Encoding:\tchunked\r\n', CHUNKED_SMUG), 'te'),
    ('te_vtab_value', post(b'Transfer-Encoding: \x0bchunked\r\n', CHUNKED_SMUG), 'te'),
    ('te_space_before_colon_cl', post(CL + b'Transfer-Encoding : chunked\r\n', b'{[}0\r\n\r\n{CRED}{]}'), 'te'),
    ('te_empty', post(b'Transfer-Encoding: \r\n' + CL, b'{[}hello{]}'), 'te'),
    # -- duplicate and signed lengths -------------------------------------------
    ('cl_list_equal', post(b'Content-Length: 5, 5\r\n', b'hello'), 'cl'),
    ('cl_list_differ', post(b'Content-Length: 5, 6\r\n', b'hello{SMUG}'), 'cl'),
    ('cl_plus', post(b'Content-Length: +5\r\n', b'hello{SMUG}'), 'cl'),
    ('cl_minus_one', post(b'Content-Length: -1\r\n', b'hello{SMUG}'), 'cl'),
    ('cl_leading_zero', post(b'Content-Length: 05\r\n', b'hello'), 'cl'),
    ('cl_trailing_space', post(b'Content-Length: 5 \r\n', b'hello'), 'cl'),
    ('cl_hex', post(b'Content-Length: 0x5\r\n', b'hello{SMUG}'), 'cl'),
    ('cl_decimal_point', post(b'Content-Length: 5.0\r\n', b'hello{SMUG}'), 'cl'),
    ('cl_trailing_junk', post(b'Content-Length: 5x\r\n', b'hello{SMUG}'), 'cl'),
    ('cl_empty', post(b'Content-Length: \r\n', b'{SMUG}'), 'cl'),
    ('cl_two_equal', post(b'Content-Length: 5\r\nContent-Length: 5\r\n', b'hello'), 'cl'),
    ('cl_two_differ', post(b'Content-Length: 5\r\nContent-Length: 6\r\n', b'hello!{SMUG}'), 'cl'),
    ('cl_two_differ_cred', post(b'Content-Length: 0\r\nContent-Length: {N}\r\n', b'{[}{CRED}{]}'), 'cl'),
    ('cl_huge_valid', post(b'Content-Length: 99999999999999999999\r\n', b'hello'), 'cl'),
    ('cl_wraps_to_0', post(b'Content-Length: 18446744073709551616\r\n', b'{SMUG}'), 'cl'),
    ('cl_wraps_to_5', post(b'Content-Length: 18446744073709551621\r\n', b'hello{SMUG}'), 'cl'),
    ('cl_int64_max_plus_one', post(b'Content-Length: 9223372036854775808\r\n', b'hello'), 'cl'),
    # -- obs-fold in every position ------------------------------------------------
    ('fold_first_header', b'GET {U} HTTP/1.1\r\n X-Fold: a\r\nHost: {H}\r\n\r\n', 'obs-fold'),
    ('fold_after_host', get(b' evil.example\r\n'), 'obs-fold'),
    ('fold_in_cl', post(b'Content-Length:\r\n {N}\r\n', b'{[}{SMUG}{]}'), 'obs-fold'),
    ('fold_in_cl_value', post(b'Content-Length: 5\r\n 0\r\n', b'hello{SMUG}'), 'obs-fold'),
    ('fold_in_te', post(b'Transfer-Encoding: identity\r\n , chunked\r\n', CHUNKED_SMUG), 'obs-fold'),
    ('fold_custom', get(b'X-Custom: a\r\n b\r\n'), 'obs-fold'),
    ('fold_custom_tab', get(b'X-Custom: a\r\n\tb\r\n'), 'obs-fold'),
    ('fold_hides_te', post(b'X-A: a\r\n Transfer-Encoding: chunked\r\n', CHUNKED_SMUG), 'obs-fold'),
    ('fold_last_line', get(b'X-A: a\r\n \r\n'), 'obs-fold'),
    # -- line endings ----------------------------------------------------------------
    ('bare_lf_everywhere', b'GET {U} HTTP/1.1\nHost: {H}\nX-A: b\n\n', 'line-ending'),
    ('bare_lf_one_line', get(b'X-A: a\nX-B: b\r\n'), 'line-ending'),
    ('bare_lf_before_cl', post(b'X-A: a\nContent-Length: {N}\r\n', b'{[}hello{]}'), 'line-ending'),
    ('bare_lf_head_end', b'POST {U} HTTP/1.1\r\nHost: {H}\r\nContent-Length: {N}\r\n\n{[}{SMUG}{]}', 'line-ending'),
    ('bare_lf_chunk_lines', post(TE, b'5\nhello\n0\n\n'), 'line-ending'),
    ('bare_cr_line_end', get(b'X-A: a\rX-B: b\r\n'), 'line-ending'),
    ('bare_cr_before_cl', post(b'X-A: a\rContent-Length: 0\r\n' + CL, b'{[}{SMUG}{]}'), 'line-ending'),
    ('bare_cr_request_line', b'GET {U} HTTP/1.1\rHost: {H}\r\n\r\n', 'line-ending'),
    ('cr_cr_lf', get(b'X-A: a\r\r\n'), 'line-ending'),
    # -- NUL and control characters ------------------------------------------------------
    ('nul_in_name', get(b'X-A\x00B: x\r\n'), 'control'),
    ('nul_in_value', get(b'X-A: a\x00b\r\n'), 'control'),
    ('nul_in_cl', post(b'Content-Length: 5\x00\r\n', b'hello'), 'control'),
    ('nul_in_target', b'GET {U}\x00x HTTP/1.1\r\nHost: {H}\r\n\r\n', 'control'),
    ('nul_in_method', b'G\x00ET {U} HTTP/1.1\r\nHost: {H}\r\n\r\n', 'control'),
    ('ctl_soh_value', get(b'X-A: a\x01b\r\n'), 'control'),
    ('ctl_esc_value', get(b'X-A: a\x1bb\r\n'), 'control'),
    ('ctl_del_value', get(b'X-A: a\x7fb\r\n'), 'control'),
    ('ctl_vtab_value', get(b'X-A: a\x0bb\r\n'), 'control'),
    ('ctl_formfeed_value', get(b'X-A: a\x0cb\r\n'), 'control'),
    ('ctl_in_host', b'GET {U} HTTP/1.1\r\nHost: {H}\x01\r\n\r\n', 'control'),
    # -- empty and non-token names -----------------------------------------------------------
    ('empty_name', get(b': x\r\n'), 'name'),
    ('space_in_name', get(b'a b: x\r\n'), 'name'),
    ('paren_in_name', get(b'a(b): x\r\n'), 'name'),
    ('space_before_colon', get(b'X-A : x\r\n'), 'name'),
    ('tab_before_colon', get(b'X-A\t: x\r\n'), 'name'),
    ('cl_space_before_colon', post(b'Content-Length : {N}\r\n', b'{[}{SMUG}{]}'), 'name'),
    ('no_colon', get(b'X-A x\r\n'), 'name'),
    ('utf8_name', get(b'X-\xc3\xa9: x\r\n'), 'name'),
    ('two_hosts', get(b'Host: evil.example\r\n'), 'name'),
    # -- odd request lines ---------------------------------------------------------------------
    ('two_spaces_after_method', b'GET  {U} HTTP/1.1\r\nHost: {H}\r\n\r\n', 'request-line'),
    ('two_spaces_before_version', b'GET {U}  HTTP/1.1\r\nHost: {H}\r\n\r\n', 'request-line'),
    ('tab_separators', b'GET\t{U}\tHTTP/1.1\r\nHost: {H}\r\n\r\n', 'request-line'),
    ('trailing_space', b'GET {U} HTTP/1.1 \r\nHost: {H}\r\n\r\n', 'request-line'),
    ('missing_version', b'GET {U}\r\nHost: {H}\r\n\r\n', 'request-line'),
    ('http_1_2', b'GET {U} HTTP/1.2\r\nHost: {H}\r\n\r\n', 'request-line'),
    ('http_2_0', b'GET {U} HTTP/2.0\r\nHost: {H}\r\n\r\n', 'request-line'),
    ('http_lowercase', b'GET {U} http/1.1\r\nHost: {H}\r\n\r\n', 'request-line'),
    ('http_0_9_style', b'GET {U}\r\n\r\n', 'request-line'),
    ('lowercase_method', b'get {U} HTTP/1.1\r\nHost: {H}\r\n\r\n', 'request-line'),
    ('space_in_target', b'GET {U} x HTTP/1.1\r\nHost: {H}\r\n\r\n', 'request-line'),
    ('abs_userinfo', b'GET http://user:pw@{HP}/{TOK}/case HTTP/1.1\r\nHost: {HP}\r\n\r\n', 'request-line'),
    ('abs_userinfo_host_confusion', b'GET http://{HP}@127.0.0.1:1/{TOK}/case HTTP/1.1\r\nHost: {HP}\r\n\r\n', 'request-line'),
    ('abs_empty_host', b'GET http:///{TOK}/case HTTP/1.1\r\nHost: {HP}\r\n\r\n', 'request-line'),
    ('abs_port_0', b'GET http://127.0.0.1:0/{TOK}/case HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n', 'request-line'),
    ('abs_port_99999', b'GET http://127.0.0.1:99999/{TOK}/case HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n', 'request-line'),
    ('abs_port_empty', b'GET http://127.0.0.1:/{TOK}/case HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n', 'request-line'),
    ('abs_no_path', b'GET http://{HP}?{TOK} HTTP/1.1\r\nHost: {HP}\r\n\r\n', 'request-line'),
    ('abs_fragment', b'GET http://{HP}/{TOK}/case#frag HTTP/1.1\r\nHost: {HP}\r\n\r\n', 'request-line'),
    # -- chunked body oddities ---------------------------------------------------------------
    ('chunk_ext', post(TE, b'{X};ext=1\r\n{<}{SMUG}{>}\r\n0\r\n\r\n'), 'chunked'),
    ('chunk_ext_quoted', post(TE, b'{X};a="b c"\r\n{<}{SMUG}{>}\r\n0;z=1\r\n\r\n'), 'chunked'),
    ('chunk_ext_bare_lf', post(TE, b'{X};a\nb\r\n{<}{SMUG}{>}\r\n0\r\n\r\n'), 'chunked'),
    ('chunk_negative', post(TE, b'-5\r\nhello\r\n0\r\n\r\n{SMUG}'), 'chunked'),
    ('chunk_hex_overflow', post(TE, b'10000000000000005\r\nhello\r\n0\r\n\r\n{SMUG}'), 'chunked'),
    ('chunk_hex_prefix', post(TE, b'0x5\r\nhello\r\n0\r\n\r\n{SMUG}'), 'chunked'),
    ('chunk_size_space', post(TE, b'5 \r\nhello\r\n0\r\n\r\n'), 'chunked'),
    ('chunk_leading_zeros', post(TE, b'0000000000000000000000005\r\nhello\r\n0\r\n\r\n'), 'chunked'),
    ('chunk_missing_final_crlf', post(TE, b'5\r\nhello\r\n0\r\n{SMUG}'), 'chunked'),
    ('chunk_data_no_crlf', post(TE, b'5\r\nhelloXY{X}\r\n{<}{CRED}{>}\r\n0\r\n\r\n'), 'chunked'),
    ('chunk_data_too_long', post(TE, b'3\r\nhello\r\n0\r\n\r\n'), 'chunked'),
    ('chunk_trailer', post(TE, b'5\r\nhello\r\n0\r\nX-Trailer: a\r\n\r\n'), 'chunked'),
    ('chunk_trailer_cl', post(TE, b'5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n'), 'chunked'),
    ('chunk_trailer_bad_name', post(TE, b'5\r\nhello\r\n0\r\na b: x\r\n\r\n'), 'chunked'),
    ('chunk_trailer_fold', post(TE, b'5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n'), 'chunked'),
    ('chunk_cred_in_body', post(TE, CHUNKED_CRED), 'chunked'),
    ('cl_cred_in_body', post(CL, b'{[}{CRED}{]}'), 'chunked'),
    # -- pipelined pairs, second malformed ----------------------------------------------------
    ('pipe_cl_te', PIPE + post(CL + TE, b'{[}0\r\n\r\n{CRED}{]}'), 'pipelined'),
    ('pipe_te_cl', PIPE + post(TE + b'Content-Length: {N}\r\n', b'{[}{X}\r\n{]}{<}{SMUG}{>}\r\n0\r\n\r\n'), 'pipelined'),
    ('pipe_two_cl', PIPE + post(b'Content-Length: 5\r\nContent-Length: 6\r\n', b'hello!{SMUG}'), 'pipelined'),
    ('pipe_cl_plus', PIPE + post(b'Content-Length: +5\r\n', b'hello{SMUG}'), 'pipelined'),
    ('pipe_obs_fold', PIPE + get(b'X-Fold: a\r\n b\r\n'), 'pipelined'),
    ('pipe_empty_name', PIPE + get(b': x\r\n'), 'pipelined'),
    ('pipe_nul_value', PIPE + get(b'X-A: a\x00b\r\n'), 'pipelined'),
    ('pipe_bare_cr', PIPE + get(b'X-A: a\rX-B: b\r\n'), 'pipelined'),
    ('pipe_x_chunked', PIPE + post(b'Transfer-Encoding: x-chunked\r\n', CHUNKED_SMUG), 'pipelined'),
    ('pipe_bad_request_line', PIPE + b'GET  {U} HTTP/1.1\r\nHost: {H}\r\n\r\n', 'pipelined'),
    ('pipe_http_2_0', PIPE + b'GET {U} HTTP/2.0\r\nHost: {H}\r\n\r\n', 'pipelined'),
    # -- heads within limits.max_header_size that libmicrohttpd's pool cannot hold ----------
    ('many_fields', get(b''.join(b'X-F%03d: %s\r\n' % (i, b'v' * 40) for i in range(200))), 'size'),
    ('many_query_args', get(b'X-Pad: ' + b'p' * 8000 + b'\r\n',
                            line=b'GET {U}?' + b'&'.join(b'a%d' % i for i in range(400)) + b' HTTP/1.1'), 'size'),
    ('many_cookies', get(b'X-Pad: ' + b'p' * 8000 + b'\r\nCookie: '
                         + b'; '.join(b'c%d=1' % i for i in range(350)) + b'\r\n'), 'size'),
    # 0.9.75 ends a cookie at ',' as at ';': 2 KB of head, 1000 records
    ('many_cookies_commas', get(b'Cookie: ' + b'a,' * 1000 + b'a\r\n'), 'size'),
    ('many_cookie_pairs_commas', get(b'Cookie: ' + b'c=1, ' * 450 + b'c=1\r\n'), 'size'),
]

_REGION = {'N': (b'{[}', b'{]}', lambda n: b'%d' % n), 'X': (b'{<}', b'{>}', lambda n: b'%x' % n)}


def expand(template, subst):
    """Fill a case template (see the module docstring)."""
    out = re.sub(rb'\{(U|P|H|HP|TOK|SMUG|CRED)\}', lambda m: subst[m.group(1).decode()], template)
    for key in ('X', 'N'):
        start, end, fmt = _REGION[key]
        if start in out:
            i = out.index(start)
            j = out.index(end)
            n = len(out[i + len(start):j])
            out = out.replace(start, b'', 1).replace(end, b'', 1)
            out = out.replace(b'{%s}' % key.encode(), fmt(n))
    assert not re.search(rb'\{[A-Z]+\}|\{[\[\]<>]\}', out), out
    return out


def _lines_until_blank(data, pos):
    """Lines (CRLF, or a bare LF, which RFC 9112 lets a recipient accept)
    from pos up to the first empty one; returns (lines, pos after it)."""
    lines = []
    while True:
        j = data.find(b'\n', pos)
        if j < 0:
            raise ValueError('incomplete')
        ln = data[pos:j]
        pos = j + 1
        if ln.endswith(b'\r'):
            ln = ln[:-1]
        if ln == b'':
            return lines, pos
        lines.append(ln)


def reference_parse(data, count):
    """How RFC 9112 reads the first `count` requests of `data`, obs-fold
    unfolded to SP and bare LF accepted (the two leniencies it allows):
    ([declared body, or None for a request it refuses, ...], leftover).
    Parsing stops at the first refused request."""
    tchar = re.compile(TCHAR + rb'+$')
    bodies, pos = [], 0
    try:
        while len(bodies) < count:
            lines, pos = _lines_until_blank(data, pos)
            parts = lines[0].split(b' ')
            if (len(parts) != 3 or not tchar.match(parts[0]) or parts[2] not in (b'HTTP/1.1', b'HTTP/1.0')
                    or re.search(rb'[\x00-\x20\x7f]', parts[1]) or not parts[1]):
                raise ValueError('request line')
            fields = []
            for ln in lines[1:]:
                if ln[:1] in (b' ', b'\t'):
                    if not fields:
                        raise ValueError('fold before the first field')
                    fields[-1][1] += b' ' + ln.strip(b' \t')
                    continue
                name, colon, value = ln.partition(b':')
                if not colon or not tchar.match(name):
                    raise ValueError('field name')
                fields.append([name.lower(), value.strip(b' \t')])
            for name, value in fields:
                if re.search(rb'[\x00-\x08\x0a-\x1f\x7f]', value):
                    raise ValueError('control character')
            if sum(1 for n, _ in fields if n == b'host') != 1 and parts[2] == b'HTTP/1.1':
                raise ValueError('Host')
            te = [c.strip().lower() for n, v in fields if n == b'transfer-encoding' for c in v.split(b',')]
            cl = {c.strip() for n, v in fields if n == b'content-length' for c in v.split(b',')}
            if te and cl:
                raise ValueError('CL and TE')
            if te:
                if te != [b'chunked']:
                    raise ValueError('transfer coding')
                body = b''
                while True:
                    j = data.index(b'\n', pos)
                    ln = data[pos:j].rstrip(b'\r')
                    pos = j + 1
                    m = re.match(rb'^([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*' + TCHAR + rb'+(?:=(?:' + TCHAR
                                 + rb'+|"[^"\\]*"))?)*$', ln)
                    if not m:
                        raise ValueError('chunk-size line')
                    n = int(m.group(1), 16)
                    if n == 0:
                        trailers, pos = _lines_until_blank(data, pos)
                        for t in trailers:
                            name, colon, _ = t.partition(b':')
                            if not colon or not tchar.match(name):
                                raise ValueError('trailer')
                        break
                    body += data[pos:pos + n]
                    pos += n
                    if data[pos:pos + 2] == b'\r\n':
                        pos += 2
                    elif data[pos:pos + 1] == b'\n':
                        pos += 1
                    else:
                        raise ValueError('chunk data end')
            elif cl:
                if len(cl) != 1 or not re.match(rb'^[0-9]{1,18}$', next(iter(cl))):
                    raise ValueError('Content-Length')
                n = int(next(iter(cl)))
                if len(data) - pos < n:
                    raise ValueError('short body')
                body = data[pos:pos + n]
                pos += n
            else:
                body = b''
            bodies.append(body)
    except (ValueError, IndexError):
        bodies.append(None)
        return bodies, b''
    return bodies, data[pos:]


# --------------------------------------------------------------------------
# The recording upstream
# --------------------------------------------------------------------------

TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
FIELD_RE = re.compile(rb'^(' + TCHAR + rb'+):[ \t]*([\x21-\x7e\x80-\xff]([ \t\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?[ \t]*$')
REQLINE_RE = re.compile(rb'^(' + TCHAR + rb'+) ([\x21-\x7e]+) HTTP/1\.[01]$')
RESPONSE = (b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Recorder: 1\r\n'
            b'Content-Length: 11\r\n\r\n{"ok":true}')


class RecReq:
    def __init__(self, conn_id, head):
        self.conn_id = conn_id
        self.head = head
        self.target = None
        self.headers = []
        self.problems = []          # non-canonical framing or syntax, as text
        self.raw_body = b''
        self.body = b''
        self.complete = False

    def describe(self):
        return 'upstream conn %d got %r + body %r%s%s' % (
            self.conn_id, self.head[:400], self.raw_body[:300],
            '' if self.complete else ' (incomplete)',
            ' PROBLEMS: %s' % '; '.join(self.problems) if self.problems else '')


def rec_header(req, name):
    """The first value of a field of a recorded request (b'' if none)."""
    return next((v for k, v in req.headers if k.lower() == name.lower()), b'')


class _Fail(Exception):
    pass


class Recorder:
    """Raw HTTP/1.1 origin: records every byte per connection, parses each
    request strictly and flags anything that is not canonical framing;
    answers 200 with X-Recorder: 1."""

    def __init__(self, tls=None):
        self.tls = tls              # a server SSLContext: a TLS origin
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.requests = []
        self.errors = []            # (conn_id, message, bytes near the error)
        self.raw = {}               # conn_id -> every byte received
        self.closing = False
        self.ids = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closing:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            self.ids += 1
            threading.Thread(target=self._serve, args=(s, self.ids), daemon=True).start()

    def close(self):
        self.closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _serve(self, s, cid):
        buf = bytearray()
        with self.lock:
            self.raw[cid] = bytearray()
        s.settimeout(20)
        if self.tls is not None:
            try:
                s = self.tls.wrap_socket(s, server_side=True)
            except (OSError, ssl.SSLError) as e:
                with self.lock:
                    self.errors.append((cid, 'TLS handshake %r' % e, b''))
                s.close()
                return

        def fill():
            try:
                data = s.recv(65536)
            except OSError:
                data = b''
            with self.lock:
                self.raw[cid] += data
            buf.extend(data)
            return len(data)

        def take(n):
            while len(buf) < n:
                if not fill():
                    raise _Fail('EOF inside the body')
            data = bytes(buf[:n])
            del buf[:n]
            return data

        def line():
            while b'\n' not in buf:
                if len(buf) > 65536 or not fill():
                    raise _Fail('EOF or overlong line in chunked body')
            i = buf.index(b'\n')
            ln = bytes(buf[:i + 1])
            del buf[:i + 1]
            if not ln.endswith(b'\r\n') or b'\r' in ln[:-2]:
                raise _Fail('chunked body line without CRLF: %r' % ln)
            return ln

        req = None
        try:
            while True:
                while b'\r\n\r\n' not in buf:
                    if len(buf) > (1 << 20):
                        raise _Fail('head too large')
                    if not fill():
                        if buf:
                            raise _Fail('EOF inside a request head')
                        return
                i = buf.index(b'\r\n\r\n') + 4
                req = RecReq(cid, bytes(buf[:i]))
                del buf[:i]
                self._parse_head(req)
                with self.lock:
                    self.requests.append(req)
                cls = [v for k, v in req.headers if k.lower() == b'content-length']
                tes = [v for k, v in req.headers if k.lower() == b'transfer-encoding']
                if cls and tes:
                    req.problems.append('both Content-Length and Transfer-Encoding')
                    raise _Fail('ambiguous framing')
                if len(cls) > 1:
                    req.problems.append('%d Content-Length fields' % len(cls))
                if len(tes) > 1:
                    req.problems.append('%d Transfer-Encoding fields' % len(tes))
                if cls:
                    if not re.match(rb'^[0-9]{1,15}$', cls[0]):
                        req.problems.append('Content-Length %r' % cls[0])
                        raise _Fail('bad Content-Length')
                    req.body = req.raw_body = take(int(cls[0]))
                elif tes:
                    if tes[0] != b'chunked':
                        req.problems.append('Transfer-Encoding %r' % tes[0])
                        raise _Fail('bad Transfer-Encoding')
                    raw, body = bytearray(), bytearray()
                    while True:
                        ln = line()
                        raw += ln
                        if not re.match(rb'^[0-9a-fA-F]{1,15}\r\n$', ln):
                            req.problems.append('chunk-size line %r' % ln)
                            raise _Fail('bad chunk-size line')
                        n = int(ln[:-2], 16)
                        if n == 0:
                            while True:
                                t = line()
                                raw += t
                                if t == b'\r\n':
                                    break
                                if not FIELD_RE.match(t[:-2]):
                                    req.problems.append('trailer line %r' % t)
                            break
                        data = take(n + 2)
                        raw += data
                        if data[-2:] != b'\r\n':
                            req.problems.append('chunk data not followed by CRLF')
                            raise _Fail('bad chunk')
                        body += data[:-2]
                    req.raw_body, req.body = bytes(raw), bytes(body)
                req.complete = True
                s.sendall(RESPONSE)
                if any(v.lower() == b'close' for k, v in req.headers if k.lower() == b'connection'):
                    return
                req = None
        except _Fail as e:
            with self.lock:
                if req is not None and not req.complete:
                    req.raw_body = bytes(buf[:300])
                self.errors.append((cid, str(e), bytes(self.raw[cid][-2000:])))
        except OSError as e:
            with self.lock:
                self.errors.append((cid, 'socket error %r' % e, bytes(self.raw[cid][-2000:])))
        finally:
            s.close()

    @staticmethod
    def _parse_head(req):
        body = req.head[:-4]
        if re.search(rb'\r(?!\n)|(?<!\r)\n', body):
            req.problems.append('bare CR or LF in the head')
        lines = body.split(b'\r\n')
        m = REQLINE_RE.match(lines[0])
        if not m:
            req.problems.append('request line %r' % lines[0])
            req.target = lines[0].split(b' ')[1].decode('latin-1') if lines[0].count(b' ') >= 2 else ''
        else:
            req.target = m.group(2).decode('latin-1')
        for ln in lines[1:]:
            fm = FIELD_RE.match(ln)
            if not fm:
                req.problems.append('field line %r' % ln)
                name, _, value = ln.partition(b':')
                req.headers.append((name, value.strip(b' \t')))
                continue
            req.headers.append((fm.group(1), fm.group(2) or b''))
        hosts = [v for k, v in req.headers if k.lower() == b'host']
        if len(hosts) != 1:
            req.problems.append('%d Host fields' % len(hosts))


# --------------------------------------------------------------------------
# Running one case
# --------------------------------------------------------------------------

FIRST_TIMEOUT = 3.0     # the first answer to the case
NEXT_TIMEOUT = 1.0      # every further answer / the close


class Run:
    def __init__(self, name, category, mode, position, tok, data):
        self.name, self.category, self.mode, self.position = name, category, mode, position
        self.tok, self.data = tok, data
        self.expected = ['pipe', 'case'] if b'/%s/pipe ' % tok.encode() in data else ['case']
        self.declared, self.leftover = reference_parse(data, len(self.expected))
        self.ups = []
        self.good = None            # response to the good request (later position)
        self.responses = []
        self.end = None             # 'closed' | 'open' | 'timeout' | 'error: ...'
        self.verdict = None
        self.detail = ''

    @property
    def label(self):
        return '%s [%s, %s]' % (self.name, self.position, self.mode)


def _read_one(c, method, timeout):
    try:
        r = c.read_head(method, timeout=timeout)
        c.read_body(r, timeout=timeout)
        return r, None
    except NoResponse as e:
        if c.eof:
            return None, 'closed' + (' with unparsed bytes %r' % e.data[:120] if e.data else '')
        return None, 'timeout' + (' with unparsed bytes %r' % e.data[:120] if e.data else '')
    except OSError as e:
        return None, 'error: %r' % e


def plain_client(port):
    return HTTPClient(port, timeout=FIRST_TIMEOUT)


def tunnel_client(port, ctx, host='api.openai.com'):
    """A client inside an intercepted tunnel: CONNECT host:443, then TLS
    trusting only the proxy's CA; HTTPClient works on the TLS socket."""
    c = HTTPClient(port, timeout=FIRST_TIMEOUT)
    try:
        c.send(b'CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n' % (host.encode(), host.encode()))
        r = c.read_head('CONNECT')
        if r.status != 200 or c.buf:
            raise OSError('CONNECT answered %r, %r' % (r, bytes(c.buf[:100])))
        c.sock = ctx.wrap_socket(c.sock, server_hostname=host)
    except Exception:
        c.close()
        raise
    return c


def run_case(connect, run, good):
    try:
        c = connect()
    except (OSError, NoResponse) as e:
        run.end = 'error: connect %r' % e
        return run
    try:
        if good is not None:
            c.send(good)
            run.good, err = _read_one(c, 'GET', FIRST_TIMEOUT)
            if run.good is None or run.good.status != 200:
                run.end = 'error: good request got %r (%s)' % (run.good, err)
                return run
        try:
            c.send(run.data)
        except OSError as e:
            run.end = 'error: send %r' % e
            return run
        method = run.data.split(b' ', 1)[0].decode('latin-1')
        timeout = FIRST_TIMEOUT
        while True:
            # pipelined: the first answer is to the GET
            m = 'GET' if run.expected == ['pipe', 'case'] and not run.responses else method
            r, err = _read_one(c, m, timeout)
            if r is None:
                run.end = 'open' if err.startswith('timeout') and run.responses else err
                return run
            run.responses.append(r)
            timeout = NEXT_TIMEOUT
            if len(run.responses) > 4:
                run.end = 'open'
                return run
    finally:
        c.close()


def describe_response(r):
    if r.body.startswith(b'HTTP/1.'):
        return '%d, NOT the proxy\'s JSON; its body begins with a second response head: %r' % (
            r.status, r.body[:60])
    kind = ('recorder' if r.header('X-Recorder') == '1' else
            'proxy error %s' % r.header('X-Scopeproxy-Error') if r.header('X-Scopeproxy-Error')
            else 'NOT the proxy\'s JSON')
    return '%d (%s) %r' % (r.status, kind, r.body[:100])


def is_proxy_json_error(r):
    if not (400 <= r.status < 500) or not r.header('X-Scopeproxy-Error'):
        return False
    if not (r.header('Content-Type') or '').lower().startswith('application/json'):
        return False
    try:
        err = json.loads(r.body.decode('utf-8'))['error']
    except (ValueError, KeyError, TypeError):
        return False
    return (isinstance(err, dict) and err.get('code') == r.header('X-Scopeproxy-Error')
            and all(k in err for k in ('message', 'type', 'code', 'param')))


def judge(run, ups, errs, dual):
    """Sets run.verdict ('rejected', 'forwarded', 'FAIL') and run.detail."""
    why = []
    run.ups = ups
    if run.end and run.end.startswith('error: good'):
        run.verdict, run.detail = 'FAIL', run.end
        return
    k = 0
    while k < len(run.responses) and run.responses[k].header('X-Recorder') == '1':
        k += 1
    rest = run.responses[k:]
    outcome = 'forwarded'
    if k > len(run.expected):
        why.append('%d upstream answers for %d request(s): a smuggled request was answered'
                   % (k, len(run.expected)))
    if rest:
        r = rest[0]
        if k == len(run.expected):
            why.append('desync: another answer after the request(s): %s' % describe_response(r))
        elif not is_proxy_json_error(r):
            why.append('answered %s, not the proxy\'s JSON 4xx' % describe_response(r))
        else:
            outcome = 'rejected'
            if len(rest) > 1:
                why.append('further answers after the rejection: %s'
                           % ', '.join(describe_response(x) for x in rest[1:]))
            elif run.end != 'closed':
                why.append('connection not closed after the rejection (%s)' % run.end)
    elif k < len(run.expected):
        why.append('no answer (%s)' % run.end)
    # what the upstreams saw
    marker = '/%s/' % run.tok
    seen = [u.target.split(marker, 1)[1] if marker in u.target else 'case' for u in ups]
    want = run.expected[:k]
    if seen != want:
        why.append('upstream saw %s, expected %s' % (seen or 'nothing', want or 'nothing'))
    for i, u in enumerate(ups):
        if u.problems or not u.complete:
            why.append('non-canonical at upstream: %s' % u.describe())
        elif i < len(run.declared) and run.declared[i] is not None and u.body != run.declared[i]:
            why.append('body not as declared: upstream got %r, the request declares %r'
                       % (u.body[:200], run.declared[i][:200]))
    if any('smuggled' in s for s in seen):
        why.append('SMUGGLED request reached the upstream')
    for cid, msg, raw in errs:
        why.append('upstream conn %d: %s; bytes: %r' % (cid, msg, raw[-300:]))
    for d in dual:
        why.append('CREDENTIALED request reached api.openai.com (%s)' % d)
    if why:
        run.verdict = 'FAIL'
        run.detail = '; '.join(why)
        if ups:
            run.detail += ' || upstream saw: ' + ' | '.join(u.describe() for u in ups)
    else:
        run.verdict = outcome


class Smuggling(ProxyTestCase):
    TIMEOUT = 150

    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix='scopeproxy-smuggle-')
        cls.tls = tls_material()
        cls.rec = Recorder()
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(cls.tls.cert, cls.tls.key)
        cls.trec = Recorder(tls=sctx)
        cls.dual = UpstreamServer(dual=True)
        cls.auth = os.path.join(cls.work, 'auth.json')
        write_auth(cls.auth, auth_doc(identity_record(SPEC_V2_B64, RUNTIME, task_id=TASK)))
        cls.d = Daemon('--gateway', '/g/=http://127.0.0.1:%d/' % cls.rec.port,
                       '--auth-file', cls.auth, '--upstream-ca', cls.tls.ca,
                       '--resolve', 'api.openai.com:443:127.0.0.1:%d' % cls.dual.port,
                       '--resolve', 'api.openai.com:80:127.0.0.1:%d' % cls.dual.port,
                       '--audit-log', os.path.join(cls.work, 'audit.jsonl'))
        # Tunnel mode: intercepted CONNECTs to api.openai.com, whose
        # origin is the TLS recorder.
        cls.dt = Daemon('--auth-file', cls.auth, '--upstream-ca', cls.tls.ca,
                        '--ca-dir', os.path.join(cls.work, 'ca'),
                        '--resolve', 'api.openai.com:443:127.0.0.1:%d' % cls.trec.port,
                        '--audit-log', os.path.join(cls.work, 'audit-tunnel.jsonl'))
        try:
            cls.d.start()
            cls.dt.start()
        except Exception:
            cls.d.stop()
            cls.d.cleanup()
            cls.rec.close()
            cls.trec.close()
            cls.dual.close()
            raise
        cls.cctx = ssl.create_default_context(cafile=os.path.join(cls.work, 'ca', 'ca.crt'))

    @classmethod
    def tearDownClass(cls):
        probs = []
        for d in (cls.d, cls.dt):
            d.stop()
            probs += ['%s: %s' % (p, d.tail(1500)) for p in d.problems()]   # leaks show at exit
            d.cleanup()
        cls.rec.close()
        cls.trec.close()
        cls.dual.close()
        shutil.rmtree(cls.work, True)
        if probs:
            raise AssertionError('daemon problems after the corpus: %s' % '; '.join(probs))

    MODES = ('forward', 'gateway', 'tunnel')

    def connector(self, mode):
        if mode == 'tunnel':
            return lambda: tunnel_client(self.dt.port, self.cctx)
        return lambda: plain_client(self.d.port)

    def subst(self, mode, tok):
        hp = b'127.0.0.1:%d' % self.rec.port
        t = tok.encode()
        if mode == 'forward':
            s = {'U': b'http://' + hp + b'/' + t + b'/case', 'P': b'http://' + hp + b'/' + t + b'/pipe',
                 'H': hp, 'SU': b'http://' + hp + b'/' + t + b'/smuggled',
                 'CT': b'http://api.openai.com/v1/responses', 'CH': b'api.openai.com'}
        elif mode == 'gateway':
            s = {'U': b'/g/' + t + b'/case', 'P': b'/g/' + t + b'/pipe', 'H': b'127.0.0.1',
                 'SU': b'/g/' + t + b'/smuggled', 'CT': b'/v1/responses', 'CH': b'127.0.0.1'}
        else:
            # inside the tunnel every request goes to api.openai.com (the
            # TLS recorder); absolute forms name it too
            hp = b'api.openai.com'
            s = {'U': b'/' + t + b'/case', 'P': b'/' + t + b'/pipe', 'H': hp,
                 'SU': b'/' + t + b'/smuggled', 'CT': b'/v1/responses', 'CH': hp}
        s['HP'] = hp
        s['TOK'] = t
        s['SMUG'] = b'GET ' + s['SU'] + b' HTTP/1.1\r\nHost: ' + s['H'] + b'\r\n\r\n'
        s['CRED'] = (b'POST ' + s['CT'] + b' HTTP/1.1\r\nHost: ' + s['CH'] + b'\r\nX-Case: ' + t
                     + b'\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}')
        return s

    # -- a positive control: the credentialed path is live ---------------------
    def test_control_credentialed_request_is_minted(self):
        """A real credentialed request reaches the TLS upstream with an
        assertion, so a smuggled one could not hide."""
        for mode in ('forward', 'gateway'):
            with self.subTest(mode=mode):
                s = self.subst(mode, 'control-' + mode)
                r = request(self.d.port, s['CRED'], timeout=10)
                self.assertEqual(r.status, 200, r)
                up = self.dual.wait_request(lambda q: q.header('X-Case') == 'control-' + mode, timeout=5)
                self.assertIsNotNone(up, 'the control request never reached api.openai.com')
                self.assertTrue(up.tls)
                self.assertTrue((up.header('Authorization') or '').startswith('AgentAssertion '), up.headers)
        with self.subTest(mode='tunnel'):
            s = self.subst('tunnel', 'control-tunnel')
            c = tunnel_client(self.dt.port, self.cctx)
            try:
                c.send(s['CRED'])
                r = c.read_response('POST', timeout=10)
            finally:
                c.close()
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.header('X-Recorder'), '1', r)
            ups = [u for u in self.trec_requests() if rec_header(u, b'X-Case') == b'control-tunnel']
            self.assertEqual(len(ups), 1, ups)
            self.assertTrue(rec_header(ups[0], b'Authorization').startswith(b'AgentAssertion '),
                            ups[0].describe())

    def test_late_head_in_tunnel_is_not_parsed(self):
        """A head that reaches libmicrohttpd with the rest of a body, after
        the gate let the request through, is never parsed: the connection
        closes after the answer before it (the relay's count of bytes
        written into the socketpair tells the gate what MHD has read)."""
        tok = b'late-tunnel'
        c = tunnel_client(self.dt.port, self.cctx)
        try:
            c.send(b'POST /' + tok + b'/case HTTP/1.1\r\nHost: api.openai.com\r\n'
                   b'Content-Length: 10\r\n\r\nhello')
            time.sleep(0.3)     # the gate has let it through; MHD reads the body
            c.send(b'world' + b'GET /' + tok + b'/smuggled HTTP/1.1\r\nHost: api.openai.com\r\n'
                   b'X-A: a\x00b\r\n\r\n')
            r = c.read_response('POST', timeout=5)
            self.assertEqual((r.status, r.header('X-Recorder')), (200, '1'), r)
            with self.assertRaises(NoResponse):
                c.read_response(timeout=2)
            self.assertTrue(c.eof, 'the TLS session stayed open after an unchecked head')
        finally:
            c.close()
        ups = [u for u in self.trec_requests() if (u.target or '').startswith('/late-tunnel/')]
        self.assertEqual([(u.target, u.body) for u in ups], [('/late-tunnel/case', b'helloworld')],
                         [u.describe() for u in ups])

    # -- what libmicrohttpd's pool can hold ------------------------------------------
    # With the default limits.max_header_size (16384) a head may cost
    # 16384 + 4096 bytes: its own bytes and 64 per field (core/headers.h).
    MAX_HEADER = 16384
    POOL_BUDGET = MAX_HEADER + 4096

    def cost_head(self, s, extra_cost):
        """The head whose pool cost is POOL_BUDGET + extra_cost, with as
        many 40-byte fields as fit, and its list of those fields."""
        def build(n, pad):
            fields = [(b'X-F%03d' % i, b'v' * 40) for i in range(n)]
            fields.append((b'X-Pad', b'p' * (1 + pad)))
            data = (b'GET ' + s['U'] + b' HTTP/1.1\r\nHost: ' + s['H'] + b'\r\n'
                    + b''.join(k + b': ' + v + b'\r\n' for k, v in fields) + b'\r\n')
            return data, fields, len(data) + 64 * (len(fields) + 1)
        n = 0
        while build(n + 1, 0)[2] <= self.POOL_BUDGET:
            n += 1
        data, fields, cost = build(n, 0)
        data, fields, cost = build(n, self.POOL_BUDGET - cost + extra_cost)
        self.assertEqual(cost, self.POOL_BUDGET + extra_cost)
        self.assertLess(len(data), self.MAX_HEADER)
        return data, fields

    def test_pool_cost_boundary(self):
        """The largest head whose fields libmicrohttpd's pool can hold is
        forwarded intact, first and later on a connection, and inside a
        tunnel; one byte more gets the proxy's JSON 431 naming the limit,
        the upstream sees nothing of it and the connection closes."""
        for mode in self.MODES:
            for position in ('first', 'later'):
                with self.subTest(mode=mode, position=position):
                    tok = 'cost-%s-%s' % (mode, position)
                    s = self.subst(mode, tok)
                    good = (b'GET ' + s['U'].replace(b'/case', b'/good') + b' HTTP/1.1\r\nHost: '
                            + s['H'] + b'\r\n\r\n') if position == 'later' else None
                    for extra, want in ((0, 200), (1, 431)):
                        c = self.connector(mode)()
                        try:
                            if good is not None:
                                c.send(good)
                                self.assertEqual(c.read_response('GET', timeout=10).status, 200)
                            data, fields = self.cost_head(s, extra)
                            c.send(data)
                            r = c.read_response('GET', timeout=10)
                            self.assertEqual(r.status, want, describe_response(r))
                            if want == 431:
                                self.assertTrue(is_proxy_json_error(r), describe_response(r))
                                self.assertEqual(r.header('X-Scopeproxy-Error'), 'headers_too_large')
                                msg = json.loads(r.body)['error']['message']
                                self.assertIn('limits.max_header_size', msg)
                                self.assertIn(str(self.MAX_HEADER), msg)
                                with self.assertRaises(NoResponse):
                                    c.read_response(timeout=2)
                                self.assertTrue(c.eof, 'the connection stayed open after the 431')
                            else:
                                self.assertEqual(r.header('X-Recorder'), '1', describe_response(r))
                        finally:
                            c.close()
                    time.sleep(0.3)
                    rec = self.trec if mode == 'tunnel' else self.rec
                    with rec.lock:
                        ups = [u for u in rec.requests if ('/%s/case' % tok) in (u.target or '')]
                    # only the boundary head, with every field as sent
                    self.assertEqual(len(ups), 1, [u.describe() for u in ups])
                    got = [(k, v) for k, v in ups[0].headers if k.startswith(b'X-F') or k == b'X-Pad']
                    self.assertEqual(got, self.cost_head(s, 0)[1])
                    self.assertTrue(ups[0].complete and not ups[0].problems, ups[0].describe())

    def trec_requests(self, wait=0.5):
        time.sleep(wait)
        with self.trec.lock:
            return list(self.trec.requests)

    def test_control_templates(self):
        """The good requests the corpus builds on are forwarded as they should."""
        for mode in self.MODES:
            s = self.subst(mode, 'tmpl-' + mode)
            for name, tpl in (('get', get()), ('post', post(CL, b'{[}hello{]}')),
                              ('chunked', post(TE, CHUNKED_SMUG)), ('cred_body', post(CL, b'{[}{CRED}{]}'))):
                with self.subTest(mode=mode, template=name):
                    c = self.connector(mode)()
                    try:
                        data = expand(tpl, s)
                        c.send(data)
                        r = c.read_response(data.split(b' ', 1)[0].decode(), timeout=10)
                    finally:
                        c.close()
                    self.assertEqual(r.status, 200, r)
                    self.assertEqual(r.header('X-Recorder'), '1', r)

    def test_corpus_is_sound(self):
        """Where RFC 9112 accepts a case, what follows its request(s) is no
        valid request: a smuggled request is never a legitimate pipelined one."""
        for idx, (name, tpl, cat) in enumerate(CASES):
            for mode in self.MODES:
                with self.subTest(case=name, mode=mode):
                    s = self.subst(mode, 'sound')
                    run = Run(name, cat, mode, 'first', 'sound', expand(tpl, s))
                    if None not in run.declared and run.leftover:
                        self.assertEqual(reference_parse(run.leftover, 1)[0], [None],
                                         'a valid request follows: %r' % run.leftover[:200])

    # -- the corpus ---------------------------------------------------------------
    def test_corpus(self):
        names = [c[0] for c in CASES]
        self.assertEqual(len(names), len(set(names)), 'duplicate case names')
        runs = []
        for idx, (name, tpl, cat) in enumerate(CASES):
            for mode in self.MODES:
                for position in ('first', 'later'):
                    tok = 'k%03d%s%s' % (idx, mode[0], position[0])
                    s = self.subst(mode, tok)
                    run = Run(name, cat, mode, position, tok, expand(tpl, s))
                    good = None
                    if position == 'later':
                        good = b'GET ' + s['U'].replace(b'/case', b'/good') + b' HTTP/1.1\r\nHost: ' + s['H'] + b'\r\n\r\n'
                    runs.append((self.connector(mode), run, good))
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as ex:
            done = list(ex.map(lambda a: run_case(*a), runs))
        time.sleep(0.5)     # anything still on its way upstream
        elapsed = time.monotonic() - t0
        recs, errs = [], []
        for rec in (self.rec, self.trec):
            with rec.lock:
                recs += list(rec.requests)
                errs += list(rec.errors)
        by_tok = {}
        # a credentialed request (on the harness upstream, or a /v1/ one on
        # the TLS recorder) names its run in X-Case
        creds = [(q.header('X-Case'), '%s, tls=%s, auth=%r: %r' % (
                  q.request_line(), q.tls, (q.header('Authorization') or '')[:20], q.raw_head[:200]))
                 for q in self.dual.requests if not (q.header('X-Case') or '').startswith('control-')]
        for u in recs:
            if (u.target or '').startswith('/v1/'):
                case = rec_header(u, b'X-Case').decode('latin-1')
                if not case.startswith('control-'):
                    creds.append((case, 'tunnel: %s' % u.describe()))
                continue
            parts = (u.target or '').split('/')
            tok = parts[1] if len(parts) > 2 else (u.target or '').partition('?')[2]
            if tok and not tok.startswith(('tmpl-', 'cost-')) and not (len(parts) > 2 and parts[2] == 'good'):
                by_tok.setdefault(tok, []).append(u)
        for run in done:
            ups = by_tok.pop(run.tok, [])
            tok_b = run.tok.encode()
            run_errs = [e for e in errs if tok_b in e[2]]
            run_dual = [d for case, d in creds if case == run.tok]
            judge(run, ups, run_errs, run_dual)
        self.report(done, elapsed)
        for run in done:
            with self.subTest(case=run.name, position=run.position, mode=run.mode, category=run.category):
                if run.verdict == 'FAIL':
                    self.fail('%s: %s' % (run.label, run.detail))
        with self.subTest(check='no unattributed upstream traffic'):
            stray = [u.describe() for us in by_tok.values() for u in us]
            stray += ['upstream conn %d: %s: %r' % (c, m, r[-200:]) for c, m, r in errs
                      if not any(run.tok.encode() in r for run in done)]
            stray += ['api.openai.com got %s' % d for case, d in creds
                      if case not in {r.tok for r in done}]
            self.assertEqual(stray, [])
        with self.subTest(check='daemons healthy'):
            for d in (self.d, self.dt):
                self.assertTrue(d.alive(), 'a daemon died during the corpus')
                self.assertEqual(d.problems(), [])

    def report(self, done, elapsed):
        cats = []
        for r in done:
            if r.category not in cats:
                cats.append(r.category)
        out = ['', 'smuggling corpus: %d cases x %d modes x 2 positions = %d runs in %.1fs'
               % (len(CASES), len(self.MODES), len(done), elapsed),
               '%-14s %-6s %5s %9s %9s %5s' % ('category', 'pos', 'runs', 'rejected', 'forwarded', 'FAIL')]
        for cat in cats + ['TOTAL']:
            for pos in ('first', 'later'):
                rs = [r for r in done if (cat == 'TOTAL' or r.category == cat) and r.position == pos]
                out.append('%-14s %-6s %5d %9d %9d %5d' % (
                    cat, pos, len(rs), sum(r.verdict == 'rejected' for r in rs),
                    sum(r.verdict == 'forwarded' for r in rs), sum(r.verdict == 'FAIL' for r in rs)))
        fails = [r for r in done if r.verdict == 'FAIL']
        if fails:
            out.append('failing runs:')
            for r in fails:
                out.append('  FAIL %s: %s' % (r.label, r.detail[:700]))
        out.append('forwarded runs:')
        for r in done:
            if r.verdict == 'forwarded':
                out.append('  ok %s: %s' % (r.label, ' | '.join(u.describe() for u in r.ups)[:600]))
        path = os.environ.get('SMUGGLING_REPORT')
        if path:
            with open(path, 'w') as f:
                f.write('\n'.join(out) + '\n')
        sys.stderr.write('\n'.join(out[:4 + 2 * (len(cats) + 1) + 1 + len(fails)]) + '\n')


if __name__ == '__main__':
    main()
