"""Request-smuggling and response-desync vectors, sent through HTTP/1.1
proxies side by side.

Starts a scripted member on 127.0.0.1:--member-port (each proxy under test
must send its traffic there), then, for each proxy named with --proxy
NAME=HOST:PORT, sends every vector through it over real sockets and judges
what came out of both ends with h11, a strict parser independent of every
proxy under test:

  request vectors   a client sends raw bytes (often a second request
                    hidden in the first one's body), then, if the
                    connection is still open, a last request with
                    `Connection: close`; the member records what it
                    received and answers each request with what it saw.
  response vectors  a client sends two requests on one connection, as a
                    CDN in front of the proxy would; the member answers
                    the first with the vector's bytes (often with a forged
                    response hidden after it) and the second with CANARY.

Each result is one of
  ok             the proxy did what RFC 9110/9112 ask (refusing, or
                 passing on a well-formed equivalent);
  strict         it refused a message the RFCs allow (allowed, counted);
  nonconforming  it passed on or produced what the RFCs forbid, but the
                 two ends still agree on where each message ends;
  unsafe         the two ends disagree: a request the proxy never
                 answered reached the member, a client got bytes of
                 another answer, or the proxy sent both lengths or a
                 tunnel nobody asked for.

Prints a table (and every result that is not ok) and exits 1 when a proxy
named with --require-clean has an unsafe or nonconforming result.
"""

import argparse
import json
import re
import socket
import sys
import threading
import time

import h11

SMUGGLED = "GET {p}/smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
FORGED = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nFORGED"
CANARY = b"CANARY"

# Request vectors: (name, raw bytes, expectation, options). {p} is the
# vector's own path prefix, {s} a request hidden after the first one.
#   R  the RFCs say it must be refused; F  it is valid and must be passed
#   on; E  refusing and passing on a normalised form are both right.
# Options: body (what the member must receive when it is passed on),
# close (the connection must end after the answer), host (the Host the
# member must receive), answer (the member's raw answer instead of its
# echo), notunnel (bytes after it must still go through HTTP).
GET1 = "GET {p}/1 HTTP/1.1\r\nHost: t\r\n"
POST1 = "POST {p}/1 HTTP/1.1\r\nHost: t\r\n"
REQUESTS = [
    ("plain GET", GET1 + "\r\n", "F", {}),
    ("GET, a body by length", GET1 + "Content-Length: 5\r\n\r\nhello", "F", {"body": b"hello"}),
    ("POST by length", POST1 + "Content-Length: 5\r\n\r\nhello", "F", {"body": b"hello"}),
    ("POST chunked", POST1 + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "F", {"body": b"hello"}),
    ("length 0, a request after", POST1 + "Content-Length: 0\r\n\r\n{s}", "F", {"body": b""}),
    # Content-Length
    ("CL and TE", POST1 + "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{s}", "E", {"body": b"", "close": True}),
    ("TE and CL", POST1 + "Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{s}", "E", {"body": b"", "close": True}),
    ("two lengths that differ", POST1 + "Content-Length: 5\r\nContent-Length: 40\r\n\r\nhello{s}", "R", {}),
    ("two equal lengths", POST1 + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("a length list 5, 5", POST1 + "Content-Length: 5, 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("a length list 5, 40", POST1 + "Content-Length: 5, 40\r\n\r\nhello{s}", "R", {}),
    ("length +5", POST1 + "Content-Length: +5\r\n\r\nhello{s}", "R", {}),
    ("length -5", POST1 + "Content-Length: -5\r\n\r\nhello{s}", "R", {}),
    ("length 0x5", POST1 + "Content-Length: 0x5\r\n\r\nhello{s}", "R", {}),
    ("length 5 5", POST1 + "Content-Length: 5 5\r\n\r\nhello{s}", "R", {}),
    ("length 5.0", POST1 + "Content-Length: 5.0\r\n\r\nhello{s}", "R", {}),
    ("length empty", POST1 + "Content-Length: \r\n\r\nhello{s}", "R", {}),
    ("length overflows", POST1 + "Content-Length: 18446744073709551621\r\n\r\nhello{s}", "R", {}),
    ("length 05", POST1 + "Content-Length: 05\r\n\r\nhello", "F", {"body": b"hello"}),
    ("length with a tab around it", POST1 + "Content-Length:\t5\t\r\n\r\nhello", "F", {"body": b"hello"}),
    ("space before the colon, length", POST1 + "Content-Length : 5\r\n\r\nhello{s}", "R", {}),
    ("length named by Connection", POST1 + "Connection: Content-Length\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    # Transfer-Encoding
    ("TE Chunked (case)", POST1 + "Transfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "F", {"body": b"hello"}),
    ("TE with spaces around", POST1 + "Transfer-Encoding:  chunked  \r\n\r\n5\r\nhello\r\n0\r\n\r\n", "F", {"body": b"hello"}),
    ("TE chunked, chunked", POST1 + "Transfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{s}", "E", {"close": True}),
    ("TE in two fields", POST1 + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{s}", "E", {"close": True}),
    ("TE chunked, gzip", POST1 + "Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n{s}", "R", {}),
    ("TE gzip, chunked", POST1 + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "E", {}),
    ("TE identity", POST1 + "Transfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello{s}", "E", {"close": True}),
    ("TE xchunked", POST1 + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{s}", "R", {}),
    ("TE chunked with a vertical tab", POST1 + "Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n{s}", "R", {}),
    ("TE chunked and a NUL", POST1 + "Transfer-Encoding: chunked\x00\r\n\r\n0\r\n\r\n{s}", "R", {}),
    ("space before the colon, TE", POST1 + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n{s}", "R", {}),
    ("tab before the colon, TE", POST1 + "Transfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n{s}", "R", {}),
    ("TE folded onto a second line", POST1 + "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{s}", "E", {"body": b""}),
    ("TE named by Connection", POST1 + "Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "E", {"body": b"hello"}),
    ("HTTP/1.0 and TE", "POST {p}/1 HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{s}", "E", {"close": True}),
    # chunks
    ("chunk size +5", POST1 + "Transfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n{s}", "R", {}),
    ("chunk size -5", POST1 + "Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n{s}", "R", {}),
    ("chunk size 0x5", POST1 + "Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n{s}", "R", {}),
    ("chunk size overflows", POST1 + "Transfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n{s}", "R", {}),
    ("chunk size with leading zeros", POST1 + "Transfer-Encoding: chunked\r\n\r\n00000000000000000005\r\nhello\r\n0\r\n\r\n", "E", {"body": b"hello"}),
    ("chunk size and a space", POST1 + "Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", "E", {"body": b"hello"}),
    ("chunk extension", POST1 + "Transfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n", "F", {"body": b"hello"}),
    ("chunk extension with a bare CR", POST1 + "Transfer-Encoding: chunked\r\n\r\n5;a\rb\r\nhello\r\n0\r\n\r\n{s}", "R", {}),
    ("chunk extension with a bare LF", POST1 + "Transfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n{s}", "R", {}),
    ("chunk longer than its size", POST1 + "Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n{s}", "R", {}),
    ("chunk without its CRLF", POST1 + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello0\r\n\r\n{s}", "R", {}),
    ("chunks ended by bare LF", POST1 + "Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n", "E", {"body": b"hello"}),
    ("several chunks", POST1 + "Transfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n", "F", {"body": b"hello"}),
    ("a trailer", POST1 + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n", "F", {"body": b"hello"}),
    ("a length in the trailer", POST1 + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n", "E", {"body": b"hello"}),
    ("routing and forwarding fields in the trailer", POST1 + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
     "Host: evil\r\nX-Forwarded-For: 6.6.6.6\r\nTransfer-Encoding: gzip\r\nX-Sum: 1\r\n\r\n", "F", {"body": b"hello"}),
    # Host
    ("no Host", "GET {p}/1 HTTP/1.1\r\n\r\n", "R", {}),
    ("two Hosts", "GET {p}/1 HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n", "R", {}),
    ("two equal Hosts", "GET {p}/1 HTTP/1.1\r\nHost: t\r\nHost: t\r\n\r\n", "R", {}),
    ("Host with a space", "GET {p}/1 HTTP/1.1\r\nHost: t u\r\n\r\n", "R", {}),
    ("Host with userinfo", "GET {p}/1 HTTP/1.1\r\nHost: u@t\r\n\r\n", "R", {}),
    ("Host with a path", "GET {p}/1 HTTP/1.1\r\nHost: t/x\r\n\r\n", "R", {}),
    ("Host with a port", "GET {p}/1 HTTP/1.1\r\nHost: t:8080\r\n\r\n", "F", {"host": "t:8080"}),
    ("absolute form and another Host", "GET http://a.example{p}/1 HTTP/1.1\r\nHost: t\r\n\r\n", "F", {"host": "a.example"}),
    ("HTTP/1.0 without Host", "GET {p}/1 HTTP/1.0\r\n\r\n", "F", {}),
    ("space before the colon, Host", "GET {p}/1 HTTP/1.1\r\nHost : t\r\n\r\n", "R", {}),
    # field syntax
    ("a folded field", GET1 + "X-A: a\r\n b\r\n\r\n", "E", {}),
    ("whitespace before the first field", "GET {p}/1 HTTP/1.1\r\n X-A: a\r\nHost: t\r\n\r\n", "E", {}),
    ("a bare CR in a value", GET1 + "X-A: a\rb\r\n\r\n", "E", {}),
    ("a NUL in a value", GET1 + "X-A: a\x00b\r\n\r\n", "E", {}),
    ("a space in a name", GET1 + "X A: a\r\n\r\n", "R", {}),
    ("a field without a colon", GET1 + "X-A\r\n\r\n", "R", {}),
    ("a head ended by bare LF", "GET {p}/1 HTTP/1.1\nHost: t\n\n", "E", {}),
    ("Host named by Connection", GET1 + "Connection: Host\r\n\r\n", "E", {"host": "t"}),
    # request line
    ("two spaces in the request line", "GET  {p}/1 HTTP/1.1\r\nHost: t\r\n\r\n", "E", {}),
    ("a space in the target", "GET {p}/1 x HTTP/1.1\r\nHost: t\r\n\r\n", "R", {}),
    ("version http/1.1", "GET {p}/1 http/1.1\r\nHost: t\r\n\r\n", "R", {}),
    ("version HTTP/1.10", "GET {p}/1 HTTP/1.10\r\nHost: t\r\n\r\n", "R", {}),
    ("version HTTP/2.0", "GET {p}/1 HTTP/2.0\r\nHost: t\r\n\r\n", "R", {}),
    ("a bare CR in the request line", "GET {p}/1\rX HTTP/1.1\r\nHost: t\r\n\r\n", "R", {}),
    ("a method with a bracket", "GE(T {p}/1 HTTP/1.1\r\nHost: t\r\n\r\n", "R", {}),
    ("a head of 80 KiB", GET1 + "X-A: " + "a" * 81920 + "\r\n\r\n", "R", {}),
    ("a request after Connection: close", GET1 + "Connection: close\r\n\r\n{s}", "F", {"close": True}),
    ("a request after an HTTP/1.0 one", "GET {p}/1 HTTP/1.0\r\nHost: t\r\n\r\n{s}", "F", {"close": True}),
    ("target * for GET", "GET * HTTP/1.1\r\nHost: t\r\n\r\n", "R", {}),
    ("absolute form with userinfo", "GET http://u@a.example{p}/1 HTTP/1.1\r\nHost: a.example\r\n\r\n", "E", {"host": "a.example"}),
    ("a fragment in the target", "GET {p}/1#x HTTP/1.1\r\nHost: t\r\n\r\n", "E", {}),
    # upgrades
    ("a refused websocket upgrade, then raw bytes",
     GET1 + "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 1337\r\n\r\n",
     "F", {"answer": "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n", "notunnel": True}),
    ("a websocket upgrade answered with another protocol",
     GET1 + "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
     "E", {"answer": "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", "notunnel": True}),
    ("an h2c upgrade", GET1 + "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
     "E", {"answer": "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", "notunnel": True}),
    ("Expect: 100-continue", POST1 + "Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", "F", {"body": b"hello"}),
]

# Response vectors: (name, the member's raw answer to the first request,
# expectation, options). R: the proxy must answer 502 (or end the
# connection); F: the client must get options["body"]; E: either;
# T: truncated, the client must not get a complete 2xx answer.
# Options: method (HEAD), close (the member closes after answering).
RESPONSES = [
    ("plain", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "F", {"body": b"hello"}),
    ("chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "F", {"body": b"hello"}),
    ("to the close", "HTTP/1.1 200 OK\r\n\r\nhello", "F", {"body": b"hello", "close": True}),
    ("HTTP/1.0 to the close", "HTTP/1.0 200 OK\r\n\r\nhello", "F", {"body": b"hello", "close": True}),
    ("CL and TE, a response after", "HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + FORGED, "E", {"body": b"hello"}),
    ("TE and CL, short", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "E", {"body": b"hello"}),
    ("two lengths that differ", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\nhello" + FORGED, "R", {}),
    ("two equal lengths", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("length +5", "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello" + FORGED, "R", {}),
    ("length 0x5", "HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello" + FORGED, "R", {}),
    ("length 5 5", "HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\n\r\nhello" + FORGED, "R", {}),
    ("length overflows", "HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551621\r\n\r\nhello" + FORGED, "R", {}),
    ("space before the colon, length", "HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("bytes after the body", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + FORGED, "E", {"body": b"hello"}),
    ("length named by Connection", "HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello" + FORGED, "E", {"body": b"hello"}),
    ("TE chunked, gzip (read to the close)", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nhello", "E", {"close": True}),
    ("TE xchunked (read to the close)", "HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\nhello", "E", {"close": True}),
    ("TE Chunked (case)", "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "F", {"body": b"hello"}),
    ("HTTP/1.0 and TE", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + FORGED, "E", {"body": b"hello"}),
    ("chunk size +5", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n" + FORGED, "R", {}),
    ("chunk size 0x5", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n" + FORGED, "R", {}),
    ("chunk size overflows", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n" + FORGED, "R", {}),
    ("chunk longer than its size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n" + FORGED, "R", {}),
    ("chunks ended by bare LF", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n", "E", {"body": b"hello"}),
    ("chunk extension", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n", "F", {"body": b"hello"}),
    ("a length in the trailer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n", "E", {"body": b"hello"}),
    ("framing and cookies in the trailer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
     "Content-Length: 50\r\nSet-Cookie: session=evil\r\nLocation: /evil\r\nX-Sum: 1\r\n\r\n", "F", {"body": b"hello", "te": True}),
    ("a body on 204", "HTTP/1.1 204 No Content\r\nContent-Length: 41\r\n\r\n" + FORGED, "E", {"body": b""}),
    ("a body on 304", "HTTP/1.1 304 Not Modified\r\nContent-Length: 41\r\n\r\n" + FORGED, "E", {"body": b""}),
    ("a body on a HEAD answer", "HTTP/1.1 200 OK\r\nContent-Length: 41\r\n\r\n" + FORGED, "E", {"body": b"", "method": "HEAD"}),
    ("chunked HEAD answer with a body", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + FORGED, "E", {"body": b"", "method": "HEAD"}),
    ("100 Continue first", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "F", {"body": b"hello"}),
    ("103 Early Hints first", "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "F", {"body": b"hello"}),
    ("101 nobody asked for", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n" + FORGED, "R", {}),
    ("a folded field", "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("a NUL in a value", "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("a bare CR in a value", "HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("a space in a name", "HTTP/1.1 200 OK\r\nX A: a\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("status 2000", "HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\nhello", "R", {}),
    ("status 20", "HTTP/1.1 20 OK\r\nContent-Length: 5\r\n\r\nhello", "R", {}),
    ("no space after the status", "HTTP/1.1 200\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("version HTTP/2.0", "HTTP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", "R", {}),
    ("not HTTP at all", "hello world\r\n\r\n", "R", {"close": True}),
    ("shorter than its length", "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhello", "T", {"close": True}),
    ("chunked without its last chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "T", {"close": True}),
]

TIMEOUT = 2.0


class Member:
    """The scripted member: parses each connection with h11 (server side),
    records every request and every protocol error, answers with what it
    saw (request vectors) or the vector's bytes (response vectors)."""

    def __init__(self, port):
        self.records = []  # {target, method, headers, body, xff, trailers, raw_head}
        self.errors = []  # (the bytes of the message h11 refused, its error)
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(512)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            s, _ = self.sock.accept()
            threading.Thread(target=self.serve, args=(s,), daemon=True).start()

    def serve(self, s):
        conn = h11.Connection(our_role=h11.SERVER)
        raw = b""
        req, body = None, b""
        start = 0  # where the message being read began in `raw`
        s.settimeout(10)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = s.recv(65536)
                    raw += data
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
                if isinstance(event, h11.Request):
                    req, body = event, b""
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    trailers = [n.decode().lower() for n, _ in event.headers]
                    if not self.answer(s, conn, req, body, raw[start:], trailers):
                        return
                    start = len(raw) - len(conn.trailing_data[0])
        except h11.RemoteProtocolError as e:
            with self.lock:
                self.errors.append((raw[start:], str(e)))
        except OSError:
            pass
        finally:
            s.close()

    def answer(self, s, conn, req, body, raw, trailers):
        """Answers `req`, whose bytes `raw` begins with."""
        target = req.target.decode("latin-1")
        headers = {}
        for name, value in req.headers:
            headers.setdefault(name.decode().lower(), []).append(value.decode("latin-1"))
        record = {
            "target": target,
            "method": req.method.decode(),
            "headers": headers,
            "body": body,
            "xff": "x-forwarded-for" in headers,
            "trailers": trailers,
            "raw_head": raw[:raw.find(b"\r\n\r\n") + 4],
        }
        with self.lock:
            self.records.append(record)
        close = False
        m = re.match(r"/\w+/([vr])/(\d+)/(\w+)", target)
        if m and m.group(1) == "r" and m.group(3) == "1":
            _, answer, _, opts = RESPONSES[int(m.group(2))]
            out, close = answer.encode("latin-1"), opts.get("close", False)
        elif m and m.group(1) == "r":
            out = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n" + CANARY
        elif m and m.group(3) == "1" and "answer" in REQUESTS[int(m.group(2))][3]:
            out = REQUESTS[int(m.group(2))][3]["answer"].encode()
        else:
            seen = json.dumps({"target": target, "body": len(body)}).encode()
            out = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(seen), seen)
        s.sendall(out)
        # h11 must believe it answered too, to read the next request.
        conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
        conn.send(h11.EndOfMessage())
        if close or conn.our_state is not h11.DONE:
            return False
        conn.start_next_cycle()
        return True


def read_answers(data, first_method="GET"):
    """The answers in `data` as a strict client frames them: a list of
    {status, headers, body, raw_head} and, if the bytes end in something
    that is not a whole answer, an error text."""
    answers = []
    conn = h11.Connection(our_role=h11.CLIENT)
    conn.receive_data(data)
    conn.receive_data(b"")
    method = first_method
    pos = 0
    while True:
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "t")]))
        conn.send(h11.EndOfMessage())
        method = "GET"
        answer = None
        try:
            while True:
                event = conn.next_event()
                if isinstance(event, h11.InformationalResponse):
                    pos = data.find(b"\r\n\r\n", data.find(b"HTTP/", pos)) + 4
                    continue
                if isinstance(event, h11.Response):
                    headers = {}
                    for name, value in event.headers:
                        headers.setdefault(name.decode().lower(), []).append(value.decode("latin-1"))
                    end = data.find(b"\r\n\r\n", data.find(b"HTTP/", pos))
                    answer = {"status": event.status_code, "headers": headers, "body": b"",
                              "raw_head": data[pos:end + 4]}
                    pos = end + 4
                elif isinstance(event, h11.Data):
                    answer["body"] += event.data
                elif isinstance(event, h11.EndOfMessage):
                    answer["trailers"] = [n.decode().lower() for n, _ in event.headers]
                    answers.append(answer)
                    break
                elif isinstance(event, h11.ConnectionClosed) or event in (h11.NEED_DATA, h11.PAUSED):
                    if answer is not None:
                        return answers, "the connection ended inside an answer"
                    return answers, None
        except h11.RemoteProtocolError as e:
            text = str(e)
            if "_SWITCH_UPGRADE" in text:  # a 101 h11 was not told to expect
                answers.append({"status": 101, "headers": {}, "body": b"", "raw_head": data[pos:]})
                return answers, None
            if "ConnectionClosed" in text and answer is None:
                return answers, None  # closed with no answer under way
            if "without sending complete message body" in text:
                return answers, "the connection ended inside an answer"
            return answers, f"unreadable answer: {text}"
        if conn.their_state is not h11.DONE or conn.our_state is not h11.DONE:
            return answers, None
        conn.start_next_cycle()
        pos = max(pos, len(data) - len(conn.trailing_data[0]))


def exchange(addr, parts):
    """Sends each part in turn on one connection (the next only once an
    answer or the end has come back after the one before) and returns
    every byte received."""
    s = socket.create_connection(addr, timeout=TIMEOUT)
    got = b""
    try:
        for i, part in enumerate(parts):
            try:
                s.sendall(part)
            except OSError:
                break
            deadline = time.monotonic() + TIMEOUT
            last = i == len(parts) - 1
            before = len(got)
            while time.monotonic() < deadline:
                try:
                    data = s.recv(65536)
                except socket.timeout:
                    break
                except OSError:
                    return got
                if not data:
                    return got
                got += data
                if not last and answers_in(got) > answers_in(got[:before]):
                    s.settimeout(0.1)  # and whatever came right after it
            s.settimeout(TIMEOUT)
    finally:
        s.close()
    return got


def answers_in(data):
    return len(re.findall(rb"HTTP/\d\.\d [2-5]\d\d", data))


# Fields a trailer must not carry (RFC 9110 §6.5.1: framing, routing,
# authentication, cookies, redirects) and the forwarding fields a proxy
# writes: a member or client that merges trailers would believe them.
NOT_TRAILERS = {"content-length", "transfer-encoding", "host", "authorization",
                "cookie", "set-cookie", "location", "x-forwarded-for", "forwarded"}

HEAD_CHECKS = [
    (rb"\r\n[ \t]", "a folded field"),
    (rb"\x00", "a NUL"),
    (rb"\r(?!\n)", "a bare CR"),
    (rb"\n[^:\r\n]*[ \t]:", "whitespace before a colon"),
]


def head_faults(raw_head):
    faults = [why for pattern, why in HEAD_CHECKS if re.search(pattern, raw_head)]
    lengths = re.findall(rb"(?im)^content-length:[ \t]*([^\r\n]*)", raw_head)
    if any(not re.fullmatch(rb"\d+[ \t]*", v) for v in lengths):
        faults.append("a malformed Content-Length")
    if len(lengths) > 1:
        faults.append("two Content-Length fields")
    return faults


def both_lengths(raw_head):
    return (re.search(rb"(?im)^content-length:", raw_head) is not None
            and re.search(rb"(?im)^transfer-encoding:", raw_head) is not None)


def run_request(member, proxy, addr, n):
    name, template, expect, opts = REQUESTS[n]
    p = f"/{proxy}/v/{n}"
    first = template.replace("{s}", SMUGGLED).replace("{p}", p).encode("latin-1")
    parts = [first]
    if opts.get("notunnel"):
        parts.append(SMUGGLED.replace("{p}", p).encode())
    parts.append(f"GET {p}/last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    got = exchange(addr, parts)
    time.sleep(0.05)
    answers, error = read_answers(got, "HEAD" if first.startswith(b"HEAD") else "GET")
    answered = [json.loads(a["body"])["target"] for a in answers
                if a["body"].startswith(b"{")]
    with member.lock:
        seen = [r for r in member.records if r["target"].startswith(p + "/")]
        errors = [e for raw, e in member.errors if p.encode() + b"/" in raw]
    firsts = [r for r in seen if r["target"] == p + "/1"]
    problems = []

    def unsafe(why):
        problems.append(("unsafe", why))

    def nonconforming(why):
        problems.append(("nonconforming", why))

    for r in seen:
        if r["target"] != p + "/1" and r["target"] not in answered and r["target"] != p + "/last":
            unsafe(f"the member got {r['target']}, which the client never had answered")
        if opts.get("notunnel") and not r["xff"]:
            unsafe(f"{r['target']} reached the member outside HTTP (a tunnel)")
        if both_lengths(r["raw_head"]):
            unsafe("passed on with both Content-Length and Transfer-Encoding")
        for fault in head_faults(r["raw_head"]):
            nonconforming(f"passed on with {fault}")
        for field in sorted(set(r["trailers"]) & NOT_TRAILERS):
            nonconforming(f"passed on {field} as a trailer field (RFC 9110 §6.5.1)")
    for e in errors:
        nonconforming(f"passed on what a strict member cannot read: {e}")
    if error and "unreadable" in error:
        nonconforming(error)
    refused = not firsts
    if firsts:
        r = firsts[0]
        if "body" in opts and r["body"] != opts["body"]:
            unsafe(f"the member framed the body as {r['body'][:40]!r}, not {opts['body']!r}")
        if "host" in opts and r["headers"].get("host") != [opts["host"]]:
            nonconforming(f"the member got Host {r['headers'].get('host')}, not {opts['host']}")
        if expect == "R":
            nonconforming("passed on; RFC 9112 says to refuse it")
    elif answers and answers[0]["status"] < 400:
        # The member echoes the target it got: a first answer of its own
        # means the request went on in another form.
        body = answers[0]["body"]
        if body.startswith(b"{"):
            nonconforming(f"passed on as {json.loads(body)['target']!r}")
        else:
            nonconforming(f"answered {answers[0]['status']} without passing it on")
    if (expect == "R" or opts.get("close")) and any(t.endswith("/smuggled") for t in answered):
        nonconforming("read on after a message the connection had to end with")
    return result(name, "request", expect, refused, problems, answers, error, got)


def run_response(member, proxy, addr, n):
    name, _, expect, opts = RESPONSES[n]
    p = f"/{proxy}/r/{n}"
    method = opts.get("method", "GET")
    te = "TE: trailers\r\n" if opts.get("te") else ""
    parts = [f"{method} {p}/1 HTTP/1.1\r\nHost: t\r\n{te}\r\n".encode(),
             f"GET {p}/2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()]
    got = exchange(addr, parts)
    answers, error = read_answers(got, method)
    problems = []

    def unsafe(why):
        problems.append(("unsafe", why))

    def nonconforming(why):
        problems.append(("nonconforming", why))

    first = answers[0] if answers else None
    for a in answers[1:]:
        if a["body"] != CANARY:
            unsafe(f"the second request was answered {a['status']} {a['body'][:40]!r}, not CANARY")
    if len(answers) > 2:
        unsafe(f"{len(answers)} answers to 2 requests")
    if first is not None:
        if both_lengths(first["raw_head"]):
            unsafe("answered with both Content-Length and Transfer-Encoding")
        if first["status"] == 101:
            unsafe("switched protocols for a request that asked for no upgrade")
        for fault in head_faults(first["raw_head"]):
            nonconforming(f"answered with {fault}")
        for field in sorted(set(first.get("trailers", [])) & NOT_TRAILERS):
            nonconforming(f"passed on {field} as a trailer field (RFC 9110 §6.5.1)")
    if error and (len(answers) > 1 or "unreadable" in error):
        (unsafe if len(answers) >= 1 and "unreadable" in error else nonconforming)(error)
    refused = first is None or first["status"] >= 500
    if expect in ("R", "T") and not refused and first["status"] < 300:
        nonconforming(f"passed on as a whole {first['status']} answer"
                      + (" though the member never finished it" if expect == "T" else ""))
    if not refused and "body" in opts and first["body"] != opts["body"]:
        nonconforming(f"the client got {first['body'][:40]!r}, not {opts['body']!r}")
    return result(name, "response", expect, refused, problems, answers, error, got)


def result(name, kind, expect, refused, problems, answers, error, raw):
    verdict = "ok"
    if any(k == "unsafe" for k, _ in problems):
        verdict = "unsafe"
    elif problems:
        verdict = "nonconforming"
    elif expect == "F" and refused:
        verdict = "strict"
    statuses = [a["status"] for a in answers]
    return {"name": name, "kind": kind, "expect": expect, "verdict": verdict,
            "why": [w for _, w in problems], "answers": statuses,
            "error": error, "received": raw[:600].decode("latin-1")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--member-port", type=int, required=True)
    parser.add_argument("--proxy", action="append", required=True, help="NAME=HOST:PORT")
    parser.add_argument("--require-clean", action="append", default=[])
    parser.add_argument("--json", help="write every result here")
    args = parser.parse_args()
    member = Member(args.member_port)
    proxies = []
    for spec in args.proxy:
        name, _, hostport = spec.partition("=")
        host, _, port = hostport.rpartition(":")
        proxies.append((name, (host, int(port))))
    results = {}
    for name, addr in proxies:
        results[name] = ([run_request(member, name, addr, n) for n in range(len(REQUESTS))]
                         + [run_response(member, name, addr, n) for n in range(len(RESPONSES))])
    verdicts = ["ok", "strict", "nonconforming", "unsafe"]
    total = len(REQUESTS) + len(RESPONSES)
    print(f"{total} vectors ({len(REQUESTS)} requests, {len(RESPONSES)} responses)")
    print(f"| proxy | {' | '.join(verdicts)} |")
    print(f"|---|{'---|' * len(verdicts)}")
    for name, rs in results.items():
        counts = [sum(r["verdict"] == v for r in rs) for v in verdicts]
        print(f"| {name} | {' | '.join(map(str, counts))} |")
    for name, rs in results.items():
        for r in rs:
            if r["verdict"] != "ok":
                print(f"{name}: {r['verdict']}: {r['kind']} \"{r['name']}\" (answers {r['answers']}): "
                      + "; ".join(r["why"] or ["refused; the RFCs allow it"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    bad = [n for n in args.require_clean
           if any(r["verdict"] in ("unsafe", "nonconforming") for r in results.get(n, []))]
    if bad:
        print(f"not clean: {', '.join(bad)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
