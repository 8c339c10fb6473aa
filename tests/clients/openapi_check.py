"""Checks the daemon's OpenAPI document with real OpenAPI tooling.

usage: openapi_check.py DOC BASE_URL WRITE_TOKEN READ_TOKEN

1. Validates DOC as an OpenAPI 3.1 document (openapi-spec-validator).
2. Checks GET /api/v1/openapi.json serves that same document.
3. Sends a battery of requests (good and bad) to every route and validates
   each request and response against the document (openapi-core): a status
   code, a header or a body shape the document does not describe is a
   failure.

Prints JSON: {"exchanges": [[method, path, status], ...], "failures": [...]}.
"""

import json
import sys
import urllib.error
import urllib.parse
import urllib.request

from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import validate

doc_path, base, write, read = sys.argv[1:5]
doc = json.load(open(doc_path))
validate(doc)
# The document's server is relative ("/": the daemon that serves it).
api = OpenAPI.from_dict(dict(doc, servers=[{"url": base}]))

exchanges = []
failures = []


def call(method, path, body=None, ctype="application/json", token=write, stream=False):
    """One request; returns (status, headers, parsed body or None)."""
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None and ctype:
        req.add_header("Content-Type", ctype)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        resp = urllib.request.urlopen(req, timeout=15)
    except urllib.error.HTTPError as e:
        resp = e
    status = resp.status if hasattr(resp, "status") else resp.code
    # hyper sends lower-case names: look them up as the document writes them.
    headers = {k.title(): v for k, v in resp.headers.items()}
    if stream and status == 200:
        # An event stream does not end: its first event is enough.
        raw = b""
        while not raw.endswith(b"\n\n"):
            line = resp.readline()
            if not line:
                break
            raw += line
    else:
        raw = resp.read()
    resp.close()
    exchanges.append([method, path, status])
    check(method, path, data, ctype if data is not None else None, status, headers, raw)
    try:
        return status, headers, json.loads(raw) if raw else None
    except ValueError:
        return status, headers, raw


def template_of(path):
    """The document's path template for `path`, concrete paths first."""
    segs = path.split("/")
    found = None
    for t in doc["paths"]:
        ts = t.split("/")
        if len(ts) == len(segs) and all(
            a == b or (a.startswith("{") and b) for a, b in zip(ts, segs)
        ):
            if "{" not in t:
                return t
            found = found or t
    return found


def check(method, path, data, ctype, status, headers, raw):
    path_only, _, query = path.partition("?")
    template = template_of(path_only)
    if template is None:
        if status != 404:
            failures.append(f"{method} {path} -> {status}: a path the document lacks")
        return
    item = doc["paths"][template]
    if method.lower() not in item:
        # A method the path does not take: 405 naming the ones it does.
        allow = {m.strip() for m in headers.get("Allow", "").split(",") if m.strip()}
        want = {m.upper() for m in item}
        if status != 405 or allow != want:
            failures.append(f"{method} {path} -> {status}, Allow {sorted(allow)}: wanted 405, Allow {sorted(want)}")
        return
    args = {}
    for kv in filter(None, query.split("&")):
        k, _, v = kv.partition("=")
        args[urllib.parse.unquote(k)] = urllib.parse.unquote(v)
    request = MockRequest(base, method.lower(), path_only, args=args, data=data or b"",
                          content_type=ctype or "application/json",
                          headers={"Authorization": "Bearer x"})
    mimetype = headers.get("Content-Type", "").split(";")[0].strip()
    response = MockResponse(raw, status_code=status, headers=headers,
                            content_type=mimetype or "application/json")
    try:
        api.validate_response(request, response)
    except Exception as e:  # every validation error is a finding
        cause = e.__cause__
        failures.append(f"{method} {path} -> {status}: {type(e).__name__}: {e}" + (f" ({cause})" if cause else ""))


S = "/api/v1/streams/MARKET_DATA"
C = S + "/consumers/reader"

# Health, status, streams, nats-server.
for p in ["/health", "/api/v1/status", "/api/v1/streams", S, "/api/v1/nats/info",
          "/api/v1/nats/varz", "/api/v1/nats/jsz?streams=true", "/metrics",
          "/api/v1/openapi.json"]:
    call("GET", p)
    call("HEAD", p)
call("GET", "/api/v1/streams/NO_SUCH_STREAM")
call("GET", "/api/v1/nats/connz?sort=bogus")
call("GET", "/api/v1/nats/nonsense")
call("POST", "/api/v1/nats/varz", {})
call("DELETE", "/api/v1/streams")
status, _, served = call("GET", "/api/v1/openapi.json")
if served != doc:
    failures.append("GET /api/v1/openapi.json is not doc/openapi.json")

# Publishing.
call("POST", "/api/v1/publish", {"subject": "market.binance.BTCUSDT.trade", "message": {"p": 1}})
call("POST", "/api/v1/publish", {"subject": "test.core", "message": "hi", "headers": {"a": ["1", "2"]}})
call("POST", "/api/v1/publish", {"subject": "market.x", "message": 1, "msg_id": "m1"})
call("POST", "/api/v1/publish", {"subject": "bad subject", "message": 1})
call("POST", "/api/v1/publish", b"{not json")
call("POST", "/api/v1/publish", b"subject=x", ctype="text/plain")
call("POST", "/api/v1/publish", {"subject": "market.big", "message": "x" * (2 << 20)})
call("GET", "/api/v1/publish")
call("POST", "/api/v1/publish/batch", [{"subject": "market.b", "message": i} for i in range(3)])
call("POST", "/api/v1/publish/batch", [{"subject": "market.b", "message": 1}, {"subject": "$SYS.x", "message": 1}])
call("POST", "/api/v1/publish/batch",
     b'{"subject":"market.n","message":1}\n{"subject":"market.n","message":2}\n',
     ctype="application/x-ndjson")
call("POST", "/api/v1/publish/batch", {"not": "an array"})
# Streaming ingest (urllib sends the body whole; the answer is read to its end).
call("POST", "/api/v1/publish/stream",
     b'{"subject":"market.s","message":1}\nnot json\n{"subject":"test.core","message":2}\n',
     ctype="application/x-ndjson")
call("POST", "/api/v1/publish/stream", b'{"subject":"market.s","message":1}\n')
call("POST", "/api/v1/publish/stream", b'{"subject":"market.s","message":1}\n',
     ctype="application/x-ndjson", token=read)
call("GET", "/api/v1/publish/stream")

# Tokens: none (401), a read token where a write one is needed (403).
call("POST", "/api/v1/publish", {"subject": "market.x", "message": 1}, token=None)
call("POST", "/api/v1/publish", {"subject": "market.x", "message": 1}, token=read)
call("GET", "/health", token=None)

# Subscribing (the event stream itself is only opened).
call("GET", "/api/v1/subscribe?subject=market.%3E", stream=True)
call("GET", "/api/v1/subscribe")
call("GET", "/api/v1/subscribe?subject=a..b")
call("POST", "/api/v1/subscribe?subject=a", {})

# Consuming.
call("GET", S + "/consumers")
call("HEAD", S + "/consumers")
call("GET", C)
call("HEAD", C)
call("GET", S + "/consumers/nobody")
call("GET", "/api/v1/streams/NO_SUCH_STREAM/consumers")
status, _, fetched = call("POST", C + "/fetch", {"batch": 5, "expires_ms": 200})
tokens = [m["ack_token"] for m in (fetched or {}).get("messages", [])]
call("POST", C + "/fetch", {"batch": 0})
call("POST", C + "/fetch", b"", ctype=None)
call("POST", S + "/consumers/nobody/fetch", {"batch": 1, "expires_ms": 100})
call("GET", C + "/fetch")
if len(tokens) >= 5:
    call("POST", C + "/ack", {"tokens": tokens[:1]})
    call("POST", C + "/nak", {"tokens": tokens[1:2], "delay_ms": 10})
    call("POST", C + "/term", {"tokens": tokens[2:3]})
    call("POST", C + "/ack", {"tokens": tokens[3:4], "confirm": False})
    call("POST", C + "/nak", {"tokens": tokens[4:5], "confirm": False})
else:
    failures.append(f"fetch gave {len(tokens)} messages, wanted at least 5")
call("POST", C + "/ack", {"tokens": ["$JS.ACK.OTHER.reader.1.1.1.1.1"]})
call("POST", C + "/ack", {"tokens": []})
call("POST", C + "/nak", {"tokens": tokens[:1], "delay_ms": -1})
call("POST", C + "/term", b"[", ctype="application/json")

# Replay and latest values (read tokens may use them).
status, _, page = call("GET", S + "/replay?start_seq=1&limit=2", token=read)
cursor = (page or {}).get("next_cursor", "")
call("GET", S + "/replay?cursor=" + cursor)
call("HEAD", S + "/replay?last=2")
call("GET", S + "/replay?start_time=2025-01-31T09:30:00%2B01:00&subject=market.%3E")
call("GET", S + "/replay?last_per_subject=true&subject=market.b")
call("GET", S + "/replay?start_seq=0")
call("GET", S + "/replay?cursor=garbage")
call("GET", "/api/v1/streams/NO_SUCH_STREAM/replay")
call("POST", S + "/replay", {})
call("GET", S + "/latest?subject=market.%3E&limit=1", token=read)
call("HEAD", S + "/latest")
call("GET", S + "/latest?limit=0")
call("GET", "/api/v1/streams/NO_SUCH_STREAM/latest")
call("GET", S + "/subjects/market.b/last", token=read)
call("HEAD", S + "/subjects/market.b/last")
call("GET", S + "/subjects/market.*/last")
call("GET", S + "/subjects/market.nothing/last")
call("GET", S + "/messages/1", token=read)
call("HEAD", S + "/messages/1")
call("GET", S + "/messages/0")
call("GET", S + "/messages/999999")
call("DELETE", S + "/messages/1")

# A path that is not in the document: 404.
call("GET", "/api/v1/nothing-here")

print(json.dumps({"exchanges": exchanges, "failures": failures}))
