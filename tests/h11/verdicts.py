"""h11's verdict on HTTP/1.1 messages, for Keel's differential test.

Reads a JSON list of cases from stdin: {"kind": "request" | "response",
"data": [bytes], "method": the request's method (responses)}. Writes a JSON
list: {"ok": bool, "body": [bytes] (when ok), "error": text}: the first
message in the bytes, as a strict, independent parser frames it. A
response is read as a client reads it from a connection the server then
closes.
"""

import json
import sys

import h11


def first_request(data):
    conn = h11.Connection(our_role=h11.SERVER)
    conn.receive_data(data)
    body = b""
    seen = False
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            return {"ok": False, "error": "incomplete"}
        if isinstance(event, h11.Request):
            seen = True
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage) and seen:
            return {"ok": True, "body": list(body)}


def first_response(data, method):
    conn = h11.Connection(our_role=h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "t")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            return {"ok": False, "error": "incomplete"}
        if isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return {"ok": True, "body": list(body)}
        elif isinstance(event, h11.ConnectionClosed):
            return {"ok": False, "error": "closed"}


def verdict(case):
    data = bytes(case["data"])
    try:
        if case["kind"] == "request":
            return first_request(data)
        return first_response(data, case.get("method", "GET"))
    except h11.RemoteProtocolError as e:
        return {"ok": False, "error": str(e)}


json.dump([verdict(c) for c in json.load(sys.stdin)], sys.stdout)
