#!/usr/bin/python3
"""Regenerate the seed corpora in tests/fuzz/corpus/ from the string
literals of tests/unit/*.c, the shipped config files and a few vectors.

    tests/fuzz/make-corpus.py        (from the source tree's top)

Seeds are named by content hash, so running it again only adds files.
Each harness's input layout is described at the top of its fuzz_*.c."""
import base64, glob, hashlib, json, os, re, sys

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(TOP, "tests", "fuzz", "corpus")
MAXSEED = 4096

ESC = {"n": 10, "r": 13, "t": 9, "0": 0, "\\": 92, '"': 34, "'": 39,
       "a": 7, "b": 8, "f": 12, "v": 11, "?": 63}


def unescape(s):
    out, i = bytearray(), 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        n = s[i + 1]
        if n == "x":
            m = re.match(r"[0-9a-fA-F]+", s[i + 2:])
            out.append(int(m.group(0), 16) & 0xff)
            i += 2 + len(m.group(0))
        elif n in "01234567" and re.match(r"[0-7]{1,3}", s[i + 1:]):
            m = re.match(r"[0-7]{1,3}", s[i + 1:])
            out.append(int(m.group(0), 8) & 0xff)
            i += 1 + len(m.group(0))
        else:
            out.append(ESC.get(n, ord(n)))
            i += 2
    return bytes(out)


LIT = re.compile(r'"((?:[^"\\\n]|\\.)*)"')


def literals(path):
    """Adjacent literals are joined, as the C compiler does."""
    src = open(path, encoding="utf-8", errors="replace").read()
    src = re.sub(r"/\*.*?\*/", " ", src, flags=re.S)
    res, pos, cur, last_end = [], 0, None, -1
    for m in LIT.finditer(src):
        if cur is not None and src[last_end:m.start()].strip() == "":
            cur += unescape(m.group(1))
        else:
            if cur is not None:
                res.append(cur)
            cur = unescape(m.group(1))
        last_end = m.end()
    if cur is not None:
        res.append(cur)
    return res


UNIT = {}
for f in sorted(glob.glob(os.path.join(TOP, "tests", "unit", "*.c"))):
    UNIT[os.path.basename(f)] = literals(f)
ALL = [s for v in UNIT.values() for s in v]

seeds = {}


def add(h, data):
    if isinstance(data, str):
        data = data.encode()
    if len(data) <= MAXSEED:
        seeds.setdefault(h, set()).add(data)


def is_json(b):
    try:
        json.loads(b)
        return True
    except Exception:
        return False


V2 = ("MFECAQEwBQYDK2VwBCIEIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH"
      "gSEA6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw=")
V1 = "MC4CAQAwBQYDK2VwBCIEIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH"
SEALED = "6FFV/aqdaRAj5Nm4eSI6blitcoIb4FWJox1qBYZZqHlHYkYS/rfvIcGklYueQ9bTJXfoPSC9RjA="
IDENT = {"agent_runtime_id": "agent-123", "agent_private_key": V2,
         "account_id": "acct-1", "chatgpt_user_id": "user-1", "email": "",
         "plan_type": "pro", "chatgpt_account_is_fedramp": False}
CLAIMS = {"iss": "https://chatgpt.com/codex-backend/agent-identity",
          "aud": "codex-app-server", "exp": 1999999999,
          "agent_runtime_id": "agent-jwt", "agent_private_key": V1,
          "account_id": "acct-j", "chatgpt_user_id": "user-j",
          "email": "a@b.c", "plan_type": "team",
          "chatgpt_account_is_fedramp": True}

# target / route: request targets
for s in ALL:
    if re.match(rb"^(/|https?://|[a-zA-Z]+://)", s) and len(s) < 300 and b"\n" not in s:
        add("target", s)
        add("route", b"\x00\x00\x00\x00" + s)
        add("route", b"\x01\x01\xbbapi.openai.com\x00" + s)
add("route", b"\x03\x20\xfb::1\x00/v1/responses?x=1")
add("route", b"\x01\x01\xbbchatgpt.com\x00/healthz")

# headers: raw heads (mode 1) and header lists (mode 0)
for s in ALL:
    if re.match(rb"^[A-Z]+ \S* HTTP/", s) or s.startswith(b"GE"):
        add("headers", b"\x01\x10" + s)
    if s.startswith(b"CONNECT"):
        add("connect", s)
for lst in ([b"Host:h", b"Content-Length:5", b"Transfer-Encoding:chunked"],
            [b"Host:h", b"Content-Length:5", b"content-length:6"],
            [b"Host:h", b"Connection:keep-alive, Upgrade, X-Foo", b"Upgrade:websocket",
             b"X-Foo:1", b"Authorization:Bearer k", b"Keep-Alive:timeout=5"],
            [b"Host:h", b"Transfer-Encoding:gzip, chunked", b"TE:trailers"],
            [b"Accept:*/*", b"Content-Type:application/json", b"Fo o:bar", b"X:a\r\nB: c"]):
    add("headers", b"\x02\x40" + b"\x00".join(lst))
    add("headers", b"\x06\x40" + b"\x00".join(lst))

# connect extras
add("connect", b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n"
    b"Proxy-Authorization: Basic dTpw\r\nUser-Agent: codex\r\n\r\n")

# b64, pkcs8
for s in (V1, V2, SEALED, "", "Zg==", "Zm8=", "Zm9v", "_-8", "c2ln", "e30"):
    add("b64", s)
add("pkcs8", base64.b64decode(V1))
add("pkcs8", base64.b64decode(V2))
v2 = base64.b64decode(V2)
add("pkcs8", v2[:48] + b"\xa1\x23\x03\x21\x00" + v2[-32:])

# providers: tables (mode 0) and host patterns (mode 1)
prov = open(os.path.join(TOP, "config", "providers.json"), "rb").read()
add("providers", b"\x00" + prov)
for p in json.loads(prov)["providers"]:
    add("providers", b"\x00" + json.dumps([p]).encode())
    for h in p["hosts"]:
        add("providers", b"\x01" + h.encode() + b"\x00" + h.replace("*", "x").encode())
for s in ALL:
    if s.lstrip()[:1] in (b"{", b"[") and b"providers" in s or b'"hosts"' in s:
        if is_json(s):
            add("providers", b"\x00" + s)
add("providers", b'\x00[{"id":"openai","base":"/v2"},{"id":"mine","hosts":["[::1]","*.x.example"],'
    b'"ports":[8080],"policy":"assert","routes":[{"method":"POST","path":"/r","kind":"compaction",'
    b'"websocket":false}]}]')

# classify: flags, port, method\0scheme\0host\0path
for meth, path in (("POST", "/v1/responses"), ("GET", "/v1/responses"),
                   ("POST", "/v1/responses/compact"), ("POST", "/backend-api/codex/responses"),
                   ("post", "/v1/responses"), ("POST", "/v1//responses"),
                   ("POST", "/v1/responses/"), ("POST", "/v1/%72esponses"),
                   ("POST", "/v1/./responses"), ("POST", "/V1/Responses"),
                   ("POST", "/v1/responses;x")):
    for host in ("api.openai.com", "chatgpt.com", "EU.API.OPENAI.COM.", "localhost"):
        add("classify", b"\x08\x00\x00" + "\0".join((meth, "https", host, path)).encode())
add("classify", b"\x09\x00\x00GET\x00wss\x00api.openai.com\x00/v1/responses")
add("classify", b"\x02\x01\xbbCONNECT\x00\x00chatgpt.com\x00")
add("classify", b"\x00\x2c\xaaPOST\x00http\x00[::1]\x00/api/chat")

# config
for s in ALL:
    if s.startswith(b"{") and is_json(s) and b"agent_identity" not in s:
        add("config", s)
add("config", open(os.path.join(TOP, "config", "scopeproxy.json"), "rb").read())

# identity: whole documents (mode 0), JWT claims (mode 1)
for s in UNIT.get("test_cred.c", []) + UNIT.get("test_register.c", []):
    if b"agent_identity" in s and s.startswith(b"{"):
        add("identity", b"\x00" + s)
rec = json.dumps({"OPENAI_API_KEY": None, "agent_identity": IDENT}).encode()
add("identity", b"\x00" + rec)
add("identity", b"\x00" + json.dumps({"agent_identity": dict(IDENT, task_id="task-123")}).encode())
add("identity", b"\x01" + json.dumps(CLAIMS).encode())
add("identity", b"\x01" + json.dumps(dict(CLAIMS, task_id="t")).encode())
add("identity", b"\x00" + b'{"agent_identity":"e30.e30.c2ln"}')

# register: response bodies (mode 0), URLs (mode 1)
for s in UNIT.get("test_register.c", []):
    if s.lstrip().startswith(b"{") and (b"task" in s.lower()):
        add("register", b"\x00" + s)
add("register", b'\x00{"encrypted_task_id":"' + SEALED.encode() + b'"}')
add("register", b'\x00{"task_id":"t\\u00e2che","status":"ok"}')
add("register", b"\x00<html>502 Bad Gateway</html>")
add("register", b"\x01https://chatgpt.com/backend-api/\x00agent-123")
add("register", b"\x01http://127.0.0.1:8080\x00a/b c?%")

# sealed: base64 text (mode 0), plaintext to seal (mode 1)
add("sealed", b"\x00" + SEALED.encode())
add("sealed", b"\x00AAAA")
add("sealed", b"\x01task-123")
add("sealed", b"\x01t\xc3\xa2che-\xf0\x9f\x98\x80-42")
add("sealed", b"\x01a\x00b")
add("sealed", b"\x01\xc0\xaf")
add("sealed", b"\x01 \t ")

# authwrite: task id \0 auth.json (leading 0x01: pass the sha256)
for doc in (json.dumps({"OPENAI_API_KEY": None, "agent_identity": IDENT}, indent=2),
            json.dumps({"agent_identity": IDENT, "tokens": {"a": 1.5}}, indent=4),
            json.dumps({"agent_identity": dict(IDENT, task_id="old")}),
            json.dumps({"agent_identity": IDENT}, separators=(", ", ": ")),
            '{"agent_identity":"e30.e30.c2ln"}'):
    add("authwrite", b"task-123\x00" + doc.encode())
    add("authwrite", b"\x01t\xc3\xa2che\x00" + doc.encode())

# resp_head: lines (mode 0), chunked bodies (mode 1)
add("resp_head", b"\x00HTTP/1.1 200 OK\r\nContent-Type:  text/plain\r\ncontent-length: 12\r\nX-Empty:\n\r\nX-Trailer: 1\r\n")
add("resp_head", b"\x00HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\nA: b\r\n\r\n")
add("resp_head", b"\x00HTTP/1.1 101 Switching Protocols\r\n\r\n")
add("resp_head", b"\x00HTTP/1.1 200 OK\nContent-Length: 7\nTransfer-Encoding: chunked\n\n")
add("resp_head", b"\x00HTTP/1.1 204\r\n\r\n")
for s in UNIT.get("test_resp_head.c", []):
    if s.startswith(b"HTTP/"):
        add("resp_head", b"\x00" + s + b"\r\n\r\n")
    if re.match(rb"^[0-9a-fA-F]+[;\r\n]", s):
        add("resp_head", b"\x01\x14\x03" + s)
add("resp_head", b"\x01\x14\x03" + b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n")
add("resp_head", b"\x01\x02\x00" + b"a\nabcdefghij\n0\n\n")

# sigproto: datagrams as received (mode 0), messages from fields (mode 1)
def sigp(t, flags=0, status=0, code=0, mid=1, gen=1, ts=1764950400, fields=()):
    f = list(fields) + [b""] * (4 - len(fields))
    head = bytes([1, t, flags, status]) + code.to_bytes(2, "big") + b"\0\0"
    head += mid.to_bytes(4, "big") + gen.to_bytes(8, "big") + ts.to_bytes(8, "big")
    return head + b"".join(len(x).to_bytes(2, "big") for x in f) + b"".join(f)


for msg in (sigp(1), sigp(2, gen=7), sigp(3), sigp(4, flags=1, fields=[b"c2VhbGVk"]),
            sigp(5, fields=[b"api.openai.com", b"\x30\x59\x30\x13"]), sigp(6), sigp(7),
            sigp(8, fields=[b"AgentAssertion eyJ9"]), sigp(9, code=2, fields=[b"stale"]),
            sigp(10, flags=5, fields=[b"", b"agent-123", b"acct-1", b"0123abcd"])):
    add("sigproto", b"\x00" + msg)
add("sigproto", b"\x01\x0a\x05\x00\x00\x01\x02\x03\x04\x00agent-123\x00acct\x00abcdef01")
add("sigproto", b"\x01\x05\x00\x00\x00\x01\x02\x03\x04host.example\x00\x30\x59")

if __name__ == "__main__":
    total = 0
    for h, ss in sorted(seeds.items()):
        d = os.path.join(OUT, h)
        os.makedirs(d, exist_ok=True)
        for s in ss:
            name = hashlib.sha1(s).hexdigest()[:16]
            with open(os.path.join(d, name), "wb") as fp:
                fp.write(s)
            total += len(s)
        print(f"{h}: {len(ss)} seeds")
    print(f"total {total} bytes", file=sys.stderr)
