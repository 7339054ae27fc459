"""Request-smuggling and response-desync vectors, sent through HTTP/1.1
and HTTP/2 proxies side by side.

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
                    response hidden after it) and the second with CANARY;
                    then another client, on a new connection, asks once
                    more and must get CANARY too (a member connection
                    left in doubt must not be reused).
  HTTP/2 requests   (with --h2) a client sends one request as raw HTTP/2
                    frames; a malformed one must not reach the member in
                    any form, a well-formed one must, intact.
  HTTP/2 member     (with --h2-member) as response vectors, but the proxy
  responses         speaks HTTP/2 to a second, scripted member, which
                    answers with the vector's raw frames.

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
named with --require-clean has an unsafe or nonconforming result that
--known does not name.
"""

import argparse
import json
import re
import socket
import sys
import threading
import time

import h11
import hpack

SMUGGLED = "GET {p}/smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
FORGED = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nFORGED"
OK_HEAD = "HTTP/1.1 200 OK\r\n"
CANARY = b"CANARY"

# Request vectors: (name, raw bytes, expectation, options). {p} is the
# vector's own path prefix, {s} a request hidden after the first one.
#   R  the RFCs say it must be refused; F  it is valid and must be passed
#   on; E  refusing and passing on a normalised form are both right.
# Options: body (what the member must receive when it is passed on),
# close (the connection must end after the answer), host (the Host the
# member must receive), answer (the member's raw answer instead of its
# echo), notunnel (bytes after it must still go through HTTP), target (a
# target without the vector's prefix that the member may get as it is).
GET1 = "GET {p}/1 HTTP/1.1\r\nHost: t\r\n"
TE_FIELD = "Transfer-Encoding: chunked\r\n"
WS_UPGRADE = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
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
    ("length and a NUL", POST1 + "Content-Length: 5\x00\r\n\r\nhello{s}", "R", {}),
    ("length with a vertical tab", POST1 + "Content-Length:\x0b5\r\n\r\nhello{s}", "R", {}),
    ("length in fullwidth digits", POST1 + "Content-Length: \xef\xbc\x95\r\n\r\nhello{s}", "R", {}),
    ("an empty field name", POST1 + ": x\r\nContent-Length: 5\r\n\r\nhello", "R", {}),
    ("a chunked GET", GET1 + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "E", {"body": b"hello"}),
    ("Host in capitals", "GET {p}/1 HTTP/1.1\r\nHOST: t\r\n\r\n", "F", {"host": "t"}),
    ("a tab between method and target", "GET\t{p}/1 HTTP/1.1\r\nHost: t\r\n\r\n", "E", {}),
    ("absolute form, https scheme", "GET https://t{p}/1 HTTP/1.1\r\nHost: t\r\n\r\n", "E", {"host": "t"}),
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
    ("a websocket upgrade answered 200, then raw bytes", GET1 + WS_UPGRADE, "F",
     {"answer": "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "notunnel": True}),
    ("a websocket upgrade with a body, refused", POST1 + WS_UPGRADE[:-2] + "Content-Length: 5\r\n\r\nhello", "E",
     {"answer": "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n", "notunnel": True}),
    ("Upgrade not named by Connection, answered 101", GET1 + "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", "E",
     {"answer": "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", "notunnel": True}),
    ("a websocket upgrade on HTTP/1.0, answered 101", "GET {p}/1 HTTP/1.0\r\nHost: t\r\n" + WS_UPGRADE, "E",
     {"answer": "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", "notunnel": True}),
    ("Expect: 100-continue", POST1 + "Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", "F", {"body": b"hello"}),
    ("Expect: 100-continue without a body", GET1 + "Expect: 100-continue\r\n\r\n", "F", {}),
    ("Expect with another expectation", POST1 + "Expect: y 100-continue\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("Expect: 100-continue, a chunked body", POST1 + "Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "F",
     {"body": b"hello"}),
    # list syntax and codings seen less often
    ("TE chunked and a trailing comma", POST1 + "Transfer-Encoding: chunked,\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "E", {"body": b"hello"}),
    ("TE with an empty element first", POST1 + "Transfer-Encoding: , chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "E", {"body": b"hello"}),
    ("TE chunked in quotes", POST1 + "Transfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n{s}", "R", {}),
    ("TE chunked with a parameter", POST1 + "Transfer-Encoding: chunked;q=1\r\n\r\n5\r\nhello\r\n0\r\n\r\n{s}", "E",
     {"body": b"hello"}),
    ("TE gzip then chunked in two fields", POST1 + "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "E", {}),
    ("TE chunked then identity in two fields", POST1 + TE_FIELD + "Transfer-Encoding: identity\r\n\r\n0\r\n\r\n{s}", "R", {}),
    ("chunk size in capitals", POST1 + TE_FIELD + "\r\nA\r\nhellohello\r\n0\r\n\r\n", "F", {"body": b"hellohello"}),
    ("chunk size with an underscore", POST1 + TE_FIELD + "\r\n0_5\r\nhello\r\n0\r\n\r\n{s}", "R", {}),
    ("chunk size and a tab", POST1 + TE_FIELD + "\r\n5\t\r\nhello\r\n0\r\n\r\n", "E", {"body": b"hello"}),
    ("a request line in the trailer", POST1 + TE_FIELD + "\r\n5\r\nhello\r\n0\r\n{s}", "R", {}),
    ("a chunk extension of 100 KiB", POST1 + TE_FIELD + "\r\n5;" + "a" * 102400 + "\r\nhello\r\n0\r\n\r\n", "E", {"body": b"hello"}),
    ("a quoted chunk extension", POST1 + TE_FIELD + "\r\n5;a=\"b;c\"\r\nhello\r\n0\r\n\r\n", "F", {"body": b"hello"}),
    ("length and a trailing comma", POST1 + "Content-Length: 5,\r\n\r\nhello", "E", {"body": b"hello"}),
    ("length and an empty one", POST1 + "Content-Length: 5\r\nContent-Length: \r\n\r\nhello{s}", "R", {}),
    ("length of only a tab", POST1 + "Content-Length:\t\r\n\r\nhello{s}", "R", {}),
    ("a body on HEAD by length", "HEAD {p}/1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    # the request line and Host, again
    ("an HTTP/0.9 request", "GET {p}/1\r\n\r\n", "R", {}),
    ("a method in lower case", "get {p}/1 HTTP/1.1\r\nHost: t\r\n\r\n", "E", {}),
    ("a method of 1 KiB", "G" * 1024 + " {p}/1 HTTP/1.1\r\nHost: t\r\n\r\n", "E", {}),
    ("a target of 70 KiB", "GET {p}/1?" + "a" * 71680 + " HTTP/1.1\r\nHost: t\r\n\r\n", "E", {}),
    ("200 fields", GET1 + "".join(f"X-F{i}: {i}\r\n" for i in range(200)) + "\r\n", "E", {}),
    ("an empty Host", "GET {p}/1 HTTP/1.1\r\nHost: \r\n\r\n", "E", {}),
    ("Host with a bad port", "GET {p}/1 HTTP/1.1\r\nHost: t:8x\r\n\r\n", "R", {}),
    ("Host with an IPv6 address", "GET {p}/1 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", "F", {"host": "[::1]:8080"}),
    ("absolute form with a port", "GET http://a.example:8080{p}/1 HTTP/1.1\r\nHost: t\r\n\r\n", "F", {"host": "a.example:8080"}),
    ("absolute form, another scheme", "GET ftp://a.example{p}/1 HTTP/1.1\r\nHost: a.example\r\n\r\n", "E", {}),
    ("authority form for GET", "GET a.example:80 HTTP/1.1\r\nHost: a.example:80\r\n\r\n", "R", {}),
    ("CONNECT", "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", "E", {"notunnel": True}),
    ("OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", "E", {"target": "*"}),
    ("a bracket in a name", GET1 + "X-A]: a\r\n\r\n", "R", {}),
    ("space before the colon, another field", GET1 + "X-A : a\r\n\r\n", "R", {}),
    ("obs-text in a value", GET1 + "X-A: caf\xe9\r\n\r\n", "F", {}),
    ("a DEL in a value", GET1 + "X-A: a\x7fb\r\n\r\n", "E", {}),
    ("a line of only a space", GET1 + "X-A: a\r\n \r\n\r\n", "E", {}),
    ("a request after an HTTP/1.0 keep-alive one", "GET {p}/1 HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n{s}", "E", {}),
    ("a pipelined request", GET1 + "\r\n{s}", "F", {}),
    ("a chunk size line ended by a bare CR", POST1 + TE_FIELD + "\r\n5\rhello\r\n0\r\n\r\n{s}", "R", {}),
    ("a body longer than its length", POST1 + "Content-Length: 3\r\n\r\nhello{s}", "E", {"body": b"hel"}),
    ("a space after the version", "GET {p}/1 HTTP/1.1 \r\nHost: t\r\n\r\n", "E", {}),
    ("a NUL in the target", "GET {p}/1\x00x HTTP/1.1\r\nHost: t\r\n\r\n", "R", {}),
    ("Host with a trailing dot", "GET {p}/1 HTTP/1.1\r\nHost: t.\r\n\r\n", "F", {"host": "t."}),
    ("TE after a tab", POST1 + "Transfer-Encoding:\tchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "F", {"body": b"hello"}),
]

# Response vectors: (name, the member's raw answer to the first request,
# expectation, options). R: the proxy must answer 502 (or end the
# connection); F: the client must get options["body"]; E: either;
# T: truncated, the client must not get a complete 2xx answer.
# Options: method (HEAD), close (the member closes after answering),
# alone (the client sends only the first request, with Connection: close),
# later (bytes the member sends 20 ms after its answer, unasked).
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
    ("bytes after the body, one request", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + FORGED, "E",
     {"body": b"hello", "alone": True}),
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
    ("a body on 204, one request", "HTTP/1.1 204 No Content\r\nContent-Length: 41\r\n\r\n" + FORGED, "E",
     {"body": b"", "alone": True}),
    ("a body on 304", "HTTP/1.1 304 Not Modified\r\nContent-Length: 41\r\n\r\n" + FORGED, "E", {"body": b""}),
    ("a chunked body on 304", "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n29\r\n" + FORGED
     + "\r\n0\r\n\r\n", "E", {"body": b""}),
    ("a body on a HEAD answer", "HTTP/1.1 200 OK\r\nContent-Length: 41\r\n\r\n" + FORGED, "E", {"body": b"", "method": "HEAD"}),
    ("chunked HEAD answer with a body", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + FORGED, "E", {"body": b"", "method": "HEAD"}),
    ("100 Continue first", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "F", {"body": b"hello"}),
    ("two 100 Continue first", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n"
     "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "F", {"body": b"hello"}),
    ("100 Continue with a length", "HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\n"
     "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("103 Early Hints first", "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "F", {"body": b"hello"}),
    ("101 nobody asked for", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n" + FORGED, "R", {}),
    ("a folded field", "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("a NUL in a value", "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("a bare CR in a value", "HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("a space in a name", "HTTP/1.1 200 OK\r\nX A: a\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("a field line without a colon", "HTTP/1.1 200 OK\r\nX-A\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("a length with a NUL", "HTTP/1.1 200 OK\r\nContent-Length: 5\x00\r\n\r\nhello" + FORGED, "R", {}),
    ("a length with a vertical tab", "HTTP/1.1 200 OK\r\nContent-Length:\x0b5\r\n\r\nhello" + FORGED, "R", {}),
    ("a tab in the status line", "HTTP/1.1\t200 OK\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("whitespace before the status line", " HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "R", {}),
    ("status 2000", "HTTP/1.1 2000 OK\r\nContent-Length: 5\r\n\r\nhello", "R", {}),
    ("status 20", "HTTP/1.1 20 OK\r\nContent-Length: 5\r\n\r\nhello", "R", {}),
    ("no space after the status", "HTTP/1.1 200\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("version HTTP/2.0", "HTTP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", "R", {}),
    ("not HTTP at all", "hello world\r\n\r\n", "R", {"close": True}),
    ("shorter than its length", "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhello", "T", {"close": True}),
    ("chunked without its last chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "T", {"close": True}),
    ("TE identity and a length (read to the close)", OK_HEAD + "Transfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello" + FORGED,
     "E", {"close": True}),
    ("TE chunked then identity (read to the close)", OK_HEAD + "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\nhello",
     "E", {"close": True}),
    ("TE gzip then chunked in two fields", OK_HEAD + "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
     "E", {"body": b"hello"}),
    ("a folded TE", OK_HEAD + "Transfer-Encoding:\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "E", {"body": b"hello"}),
    ("a chunked body on 204", "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n29\r\n" + FORGED + "\r\n0\r\n\r\n",
     "E", {"body": b""}),
    ("a length list 5, 5", OK_HEAD + "Content-Length: 5, 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("a length and a trailing comma", OK_HEAD + "Content-Length: 5,\r\n\r\nhello", "E", {"body": b"hello"}),
    ("a length and an empty one", OK_HEAD + "Content-Length: 5\r\nContent-Length: \r\n\r\nhello" + FORGED, "R", {}),
    ("chunk size in capitals", OK_HEAD + "Transfer-Encoding: chunked\r\n\r\nA\r\nhellohello\r\n0\r\n\r\n", "F",
     {"body": b"hellohello"}),
    ("chunk size and a tab", OK_HEAD + "Transfer-Encoding: chunked\r\n\r\n5\t\r\nhello\r\n0\r\n\r\n", "E", {"body": b"hello"}),
    ("a response line in the trailer", OK_HEAD + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n" + FORGED, "R", {}),
    ("a chunk extension of 100 KiB", OK_HEAD + "Transfer-Encoding: chunked\r\n\r\n5;" + "a" * 102400 + "\r\nhello\r\n0\r\n\r\n",
     "E", {"body": b"hello"}),
    ("a head of 80 KiB", OK_HEAD + "X-A: " + "a" * 81920 + "\r\nContent-Length: 5\r\n\r\nhello", "R", {}),
    ("200 fields", OK_HEAD + "".join(f"X-F{i}: {i}\r\n" for i in range(200)) + "Content-Length: 5\r\n\r\nhello", "E",
     {"body": b"hello"}),
    ("a head ended by bare LF", "HTTP/1.1 200 OK\nContent-Length: 5\n\nhello", "E", {"body": b"hello"}),
    ("status 099", "HTTP/1.1 099 X\r\nContent-Length: 5\r\n\r\nhello", "R", {}),
    ("status 600", "HTTP/1.1 600 X\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("a reason in obs-text", "HTTP/1.1 200 \xc3\xa9t\xc3\xa9\r\nContent-Length: 5\r\n\r\nhello", "F", {"body": b"hello"}),
    ("an empty reason", "HTTP/1.1 200 \r\nContent-Length: 5\r\n\r\nhello", "F", {"body": b"hello"}),
    ("two spaces before the status", "HTTP/1.1  200 OK\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("version in lower case", "http/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "R", {}),
    ("Connection: close, bytes after the body", OK_HEAD + "Connection: close\r\nContent-Length: 5\r\n\r\nhello" + FORGED, "E",
     {"body": b"hello"}),
    ("HTTP/1.0 keep-alive by length", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello", "F",
     {"body": b"hello"}),
    ("a body on 205", "HTTP/1.1 205 Reset Content\r\nContent-Length: 5\r\n\r\nhello", "E", {}),
    ("bytes after the body, a moment later", OK_HEAD + "Content-Length: 5\r\n\r\nhello", "E",
     {"body": b"hello", "later": FORGED}),
    ("a bare CR in the status line", "HTTP/1.1 200 O\rK\r\nContent-Length: 5\r\n\r\nhello", "R", {}),
    ("a NUL in the reason", "HTTP/1.1 200 O\x00K\r\nContent-Length: 5\r\n\r\nhello", "E", {"body": b"hello"}),
    ("a 100 and then the end", "HTTP/1.1 100 Continue\r\n\r\n", "T", {"close": True}),
    ("a trailer section cut short", OK_HEAD + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 1\r\n", "T",
     {"close": True}),
    ("a body longer than its length, then the end", OK_HEAD + "Content-Length: 3\r\n\r\nhello", "E",
     {"body": b"hel", "close": True}),
]

# HTTP/2 request vectors, sent by a client as raw frames (every field an
# HPACK literal, exactly as given) to a proxy that passes them on as
# HTTP/1.1: (name, fields, DATA or None, expectation). R: RFC 9113 §8.1.1
# calls the request malformed, so no part of it may reach the member; F:
# well formed, it must; E: either. Options as for REQUESTS: host (the only
# Host the member may get), cookie (the one cookie field it must get,
# RFC 9113 §8.2.3). {p} is the vector's path prefix; the
# DATA of some hides a request for {p}/smuggled.
H2_SMUGGLED = "0\r\n\r\nGET {p}/smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
H2_POST = [(":method", "POST"), (":scheme", "http"), (":authority", "t"), (":path", "{p}/1")]
H2_GET = [(":method", "GET"), (":scheme", "http"), (":authority", "t"), (":path", "{p}/1")]


def h2_post(*extra):
    return H2_POST + list(extra)


H2_REQUESTS = [
    ("well formed, by length", h2_post(("content-length", "5")), "hello", "F"),
    ("well formed, no length", h2_post(), "hello", "F"),
    ("CRLF in a value", h2_post(("x-a", "b\r\ntransfer-encoding: chunked")), H2_SMUGGLED, "R"),
    ("LF in a value", h2_post(("x-a", "b\nx-b: c")), None, "R"),
    ("NUL in a value", h2_post(("x-a", "b\0c")), None, "R"),
    ("CRLF in a name", h2_post(("x-a\r\nx-b", "c")), None, "R"),
    ("an uppercase name", h2_post(("X-Upper", "a")), None, "R"),
    ("a space in a name", h2_post(("x a", "b")), None, "R"),
    ("a colon in a name", h2_post(("x:a", "b")), None, "R"),
    ("transfer-encoding", h2_post(("transfer-encoding", "chunked")), H2_SMUGGLED, "R"),
    ("connection", h2_post(("connection", "close")), None, "R"),
    ("keep-alive", h2_post(("keep-alive", "timeout=5")), None, "R"),
    ("upgrade", h2_post(("upgrade", "websocket")), None, "R"),
    ("te other than trailers", h2_post(("te", "gzip")), None, "R"),
    ("a length below the data", h2_post(("content-length", "5")),
     "hello" + "GET {p}/smuggled HTTP/1.1\r\nHost: t\r\n\r\n", "R"),
    ("a length above the data", h2_post(("content-length", "50")), "hello", "R"),
    ("a length with a sign", h2_post(("content-length", "+5")), "hello", "R"),
    ("two lengths that differ", h2_post(("content-length", "5"), ("content-length", "50")), "hello", "R"),
    ("a request line in :path", [(":method", "GET"), (":scheme", "http"), (":authority", "t"),
                                 (":path", "{p}/1 HTTP/1.1\r\nHost: t\r\n\r\nGET {p}/smuggled")], None, "R"),
    ("a space in :path", [(":method", "GET"), (":scheme", "http"), (":authority", "t"),
                          (":path", "{p}/1 HTTP/1.1")], None, "R"),
    ("a request line in :method", [(":method", "GET {p}/smuggled HTTP/1.1\r\nHost: t\r\n\r\nGET"),
                                   (":scheme", "http"), (":authority", "t"), (":path", "{p}/1")], None, "R"),
    ("CRLF in :authority", [(":method", "GET"), (":scheme", "http"), (":authority", "t\r\nx: y"),
                            (":path", "{p}/1")], None, "R"),
    ("a space in :authority", [(":method", "GET"), (":scheme", "http"), (":authority", "t u"),
                               (":path", "{p}/1")], None, "R"),
    ("host other than :authority", h2_post(("host", "other")), None, "E", {"host": "t"}),
    ("an empty :path", [(":method", "GET"), (":scheme", "http"), (":authority", "t"), (":path", "")], None, "R"),
    ("no :path", [(":method", "GET"), (":scheme", "http"), (":authority", "t")], None, "R"),
    ("two :authority", h2_post((":authority", "u")), None, "R"),
    ("an unknown pseudo-header", h2_post((":protocol2", "x")), None, "R"),
    ("a pseudo-header after a field", [(":method", "GET"), ("x-a", "b"), (":scheme", "http"),
                                       (":authority", "t"), (":path", "{p}/1")], None, "R"),
    ("a response pseudo-header", h2_post((":status", "200")), None, "R"),
    ("a value with a space at its end", h2_post(("x-a", "b ")), None, "E"),
    ("cookies in two fields", H2_GET + [("cookie", "a=1"), ("cookie", "b=2")], None, "F", {"cookie": "a=1; b=2"}),
    ("a value with a space at its start", h2_post(("x-a", " b")), None, "E"),
    ("a tab inside a value", h2_post(("x-a", "b\tc")), "hello", "F"),
    ("obs-text in a value", h2_post(("x-a", "caf\xe9")), "hello", "F"),
    ("te: trailers", h2_post(("te", "trailers")), "hello", "F"),
    ("a length of 0 and data", h2_post(("content-length", "0")), "hello" + "GET {p}/smuggled HTTP/1.1\r\nHost: t\r\n\r\n", "R"),
    ("a length and no data", h2_post(("content-length", "5")), None, "R"),
    ("host and no :authority", [(":method", "GET"), (":scheme", "http"), (":path", "{p}/1"), ("host", "t")], None, "F",
     {"host": "t"}),
    ("neither :authority nor host", [(":method", "GET"), (":scheme", "http"), (":path", "{p}/1")], None, "R"),
    ("userinfo in :authority", [(":method", "GET"), (":scheme", "http"), (":authority", "u@t"), (":path", "{p}/1")], None, "R"),
    ("no :scheme", [(":method", "GET"), (":authority", "t"), (":path", "{p}/1")], None, "R"),
    ("no :method", [(":scheme", "http"), (":authority", "t"), (":path", "{p}/1")], None, "R"),
    ("two :path", H2_GET + [(":path", "{p}/2")], None, "R"),
    ("an empty :method", [(":method", ""), (":scheme", "http"), (":authority", "t"), (":path", "{p}/1")], None, "R"),
    ("a space in :method", [(":method", "G T"), (":scheme", "http"), (":authority", "t"), (":path", "{p}/1")], None, "R"),
    ("a :path of * for GET", [(":method", "GET"), (":scheme", "http"), (":authority", "t"), (":path", "*")], None, "R"),
    ("CONNECT", [(":method", "CONNECT"), (":authority", "a.example:443")], None, "E"),
    ("an empty name", h2_post(("", "b")), None, "R"),
    ("a DEL in a name", h2_post(("x-a\x7f", "b")), None, "R"),
]

# HTTP/2 member vectors: a member speaking HTTP/2 answers the first of two
# requests a client sends on one HTTP/1.1 connection with these frames
# (the second is answered CANARY): (name, frames, expectation, options),
# read as RESPONSES are. Frames: ("headers", fields, end of stream),
# ("data", bytes, end of stream), ("reset",) or ("goaway",).
H2_200 = [(":status", "200")]
H2_RESPONSES = [
    ("plain", [("headers", H2_200 + [("content-length", "5")], False), ("data", "hello", True)], "F", {"body": b"hello"}),
    ("no length", [("headers", H2_200, False), ("data", "hello", True)], "F", {"body": b"hello"}),
    ("in many DATA frames", [("headers", H2_200, False)] + [("data", c, False) for c in "hell"] + [("data", "o", True)],
     "F", {"body": b"hello"}),
    ("a length below the data", [("headers", H2_200 + [("content-length", "5")], False), ("data", "hello" + FORGED, True)],
     "T", {}),
    ("a length above the data", [("headers", H2_200 + [("content-length", "50")], False), ("data", "hello", True)], "T", {}),
    ("a length and no data", [("headers", H2_200 + [("content-length", "5")], True)], "T", {}),
    ("a length with a sign", [("headers", H2_200 + [("content-length", "+5")], False), ("data", "hello", True)], "R", {}),
    ("two lengths that differ", [("headers", H2_200 + [("content-length", "5"), ("content-length", "50")], False),
                                 ("data", "hello", True)], "R", {}),
    ("transfer-encoding chunked", [("headers", H2_200 + [("transfer-encoding", "chunked")], False),
                                   ("data", "5\r\nhello\r\n0\r\n\r\n" + FORGED, True)], "R", {}),
    ("connection", [("headers", H2_200 + [("connection", "close")], False), ("data", "hello", True)], "R", {}),
    ("CRLF in a value", [("headers", H2_200 + [("x-a", "b\r\ncontent-length: 0")], False), ("data", "hello", True)], "R", {}),
    ("NUL in a value", [("headers", H2_200 + [("x-a", "b\0c")], False), ("data", "hello", True)], "R", {}),
    ("an uppercase name", [("headers", H2_200 + [("X-Upper", "a")], False), ("data", "hello", True)], "R", {}),
    ("a space in a name", [("headers", H2_200 + [("x a", "b")], False), ("data", "hello", True)], "R", {}),
    ("no :status", [("headers", [("content-length", "5")], False), ("data", "hello", True)], "R", {}),
    ("status 20", [("headers", [(":status", "20")], False), ("data", "hello", True)], "R", {}),
    ("status 2000", [("headers", [(":status", "2000")], False), ("data", "hello", True)], "R", {}),
    ("status 101", [("headers", [(":status", "101"), ("upgrade", "websocket")], True)], "R", {}),
    ("a request pseudo-header", [("headers", H2_200 + [(":path", "/")], False), ("data", "hello", True)], "R", {}),
    # The same as HPACK also sends it: `:status: 200` and `:path: /` as
    # static table entries (8, 4); `:method: GET` with its name
    # Huffman-coded, a literal that leaves the table alone.
    ("a request pseudo-header from the static table", [("block", b"\x88\x84", False), ("data", "hello", True)],
     "R", {}),
    ("a request pseudo-header named in Huffman code",
     [("block", b"\x88\x00\x85\xb9\x49\x53\x39\xe4\x03GET", False), ("data", "hello", True)], "R", {}),
    ("a pseudo-header after a field", [("headers", [("x-a", "b"), (":status", "200")], False), ("data", "hello", True)],
     "R", {}),
    ("103 Early Hints first", [("headers", [(":status", "103"), ("link", "</a>; rel=preload")], False),
                               ("headers", H2_200, False), ("data", "hello", True)], "F", {"body": b"hello"}),
    ("framing and cookies in the trailer", [("headers", H2_200, False), ("data", "hello", False),
                                            ("headers", [("content-length", "50"), ("set-cookie", "session=evil"),
                                                         ("location", "/evil"), ("x-sum", "1")], True)],
     "F", {"body": b"hello", "te": True}),
    ("a body on 204", [("headers", [(":status", "204")], False), ("data", FORGED, True)], "E", {"body": b""}),
    ("a body on 304", [("headers", [(":status", "304"), ("content-length", "41")], False), ("data", FORGED, True)],
     "E", {"body": b""}),
    ("a body on a HEAD answer", [("headers", H2_200 + [("content-length", "41")], False), ("data", FORGED, True)],
     "E", {"body": b"", "method": "HEAD"}),
    ("reset inside a body by length", [("headers", H2_200 + [("content-length", "50")], False), ("data", "hello", False),
                                       ("reset",)], "T", {"close": True}),
    ("reset inside a body with no length", [("headers", H2_200, False), ("data", "hello", False), ("reset",)],
     "T", {"close": True}),
    ("GOAWAY inside a body", [("headers", H2_200, False), ("data", "hello", False), ("goaway",)], "T", {"close": True}),
    ("two final heads", [("headers", H2_200, False), ("headers", [(":status", "201")], False), ("data", "hello", True)],
     "R", {}),
    ("a pseudo-header in the trailer", [("headers", H2_200, False), ("data", "hello", False),
                                        ("headers", [(":status", "200")], True)], "T", {"te": True}),
    ("a 100 that ends the stream", [("headers", [(":status", "100")], True)], "R", {}),
    ("a space in :status", [("headers", [(":status", "200 ")], False), ("data", "hello", True)], "R", {}),
    ("a status with a sign", [("headers", [(":status", "+200")], False), ("data", "hello", True)], "R", {}),
    ("an empty name", [("headers", H2_200 + [("", "a")], False), ("data", "hello", True)], "R", {}),
    ("keep-alive", [("headers", H2_200 + [("keep-alive", "timeout=5")], False), ("data", "hello", True)], "R", {}),
    ("a length of 0 and data", [("headers", H2_200 + [("content-length", "0")], False), ("data", FORGED, True)],
     "R", {}),
    ("a length on 304 and no data", [("headers", [(":status", "304"), ("content-length", "41")], True)],
     "F", {"body": b""}),
    ("set-cookie in two fields", [("headers", H2_200 + [("set-cookie", "a=1"), ("set-cookie", "b=2"),
                                                        ("content-length", "5")], False), ("data", "hello", True)],
     "F", {"body": b"hello"}),
]

TIMEOUT = 2.0


class Listening:
    """Serves each connection to 127.0.0.1:port on a thread of its own."""

    def __init__(self, port):
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
        raise NotImplementedError


class Member(Listening):
    """The scripted member: parses each connection with h11 (server side),
    records every request and every protocol error, answers with what it
    saw (request vectors) or the vector's bytes (response vectors)."""

    def __init__(self, port):
        self.records = []  # {target, method, headers, body, xff, trailers, raw_head}
        self.errors = []  # (the bytes of the message h11 refused, its error)
        self.lock = threading.Lock()
        super().__init__(port)

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
        close, opts = False, {}
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
        if m and m.group(1) == "r" and m.group(3) == "1" and "later" in opts:
            time.sleep(0.02)  # after the answer is read, before the next request
            s.sendall(opts["later"].encode())
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


class Problems(list):
    """What a result found wrong: (kind, why) pairs."""

    def unsafe(self, why):
        self.append(("unsafe", why))

    def nonconforming(self, why):
        self.append(("nonconforming", why))


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
    problems = Problems()
    unsafe, nonconforming = problems.unsafe, problems.nonconforming

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
        # means the request went on in another form (or, for a target
        # without the vector's prefix, as it was).
        body = answers[0]["body"]
        if body.startswith(b"{") and json.loads(body)["target"] == opts.get("target"):
            refused = False
        elif body.startswith(b"{"):
            nonconforming(f"passed on as {json.loads(body)['target']!r}")
        else:
            nonconforming(f"answered {answers[0]['status']} without passing it on")
    if (expect == "R" or opts.get("close")) and any(t.endswith("/smuggled") for t in answered):
        nonconforming("read on after a message the connection had to end with")
    return result(name, "request", expect, refused, problems, answers, error, got)


# HTTP/2 as raw frames: no HTTP/2 library would send most of the vectors.
def h2_frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def hpack_literals(fields):
    """A header block of literals without indexing, new names, no Huffman:
    the bytes of every name and value exactly as given."""
    def string(b):
        n = len(b)
        if n < 127:
            return bytes([n]) + b
        out, n = bytes([127]), n - 127
        while n >= 128:
            out += bytes([n % 128 | 0x80])
            n //= 128
        return out + bytes([n]) + b
    block = b""
    for name, value in fields:
        block += b"\0" + string(name.encode("latin-1")) + string(value.encode("latin-1"))
    return block


class H2Frames:
    """Reads whole frames off a socket; header blocks decoded with hpack."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""
        self.decoder = hpack.Decoder()

    def next(self):
        """(kind, flags, stream, payload), or None at the end or a timeout."""
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            try:
                data = self.sock.recv(65536)
            except OSError:
                return None
            if not data:
                return None
            self.buf += data
        n = int.from_bytes(self.buf[:3], "big")
        kind, flags = self.buf[3], self.buf[4]
        stream = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
        payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
        return kind, flags, stream, payload

    def fields(self, flags, payload):
        """The fields of a HEADERS frame (one with END_HEADERS)."""
        if flags & 0x8:  # padded
            payload = payload[1:len(payload) - payload[0]]
        if flags & 0x20:  # priority
            payload = payload[5:]
        return [(n.decode("latin-1") if isinstance(n, bytes) else n,
                 v.decode("latin-1") if isinstance(v, bytes) else v)
                for n, v in self.decoder.decode(payload, raw=True)]


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class H2Member(Listening):
    """A member that speaks HTTP/2 (prior knowledge): answers each request
    for /PROXY/m/N/1 with H2_RESPONSES[N]'s frames, any other with CANARY."""

    def serve(self, s):
        s.settimeout(10)
        try:
            frames = H2Frames(s)
            while len(frames.buf) < len(PREFACE):
                data = s.recv(65536)
                if not data:
                    return
                frames.buf += data
            if not frames.buf.startswith(PREFACE):
                return
            frames.buf = frames.buf[len(PREFACE):]
            s.sendall(h2_frame(4, 0, 0, b""))
            while (f := frames.next()) is not None:
                kind, flags, stream, payload = f
                if kind == 4 and not flags & 1:
                    s.sendall(h2_frame(4, 1, 0, b""))
                elif kind == 6 and not flags & 1:
                    s.sendall(h2_frame(6, 1, 0, payload))
                elif kind == 7:
                    return
                elif kind == 1:
                    path = dict(frames.fields(flags, payload)).get(":path", "")
                    m = re.match(r"/\w+/m/(\d+)/1$", path)
                    script = H2_RESPONSES[int(m.group(1))][1] if m else [
                        ("headers", H2_200 + [("content-length", "6")], False), ("data", CANARY.decode(), True)]
                    out, close = self.frames(script, stream)
                    s.sendall(out)
                    if close:
                        return
        except (OSError, hpack.HPACKError):
            pass
        finally:
            s.close()

    @staticmethod
    def frames(script, stream):
        """The bytes of a vector's frames, and whether the connection ends."""
        out = b""
        for step in script:
            if step[0] == "headers":
                out += h2_frame(1, 0x4 | (1 if step[2] else 0), stream, hpack_literals(step[1]))
            elif step[0] == "block":  # a header block as given
                out += h2_frame(1, 0x4 | (1 if step[2] else 0), stream, step[1])
            elif step[0] == "data":
                out += h2_frame(0, 1 if step[2] else 0, stream, step[1].encode("latin-1"))
            elif step[0] == "reset":
                out += h2_frame(3, 0, stream, (2).to_bytes(4, "big"))  # INTERNAL_ERROR
            elif step[0] == "goaway":
                out += h2_frame(7, 0, 0, stream.to_bytes(4, "big") + (2).to_bytes(4, "big"))
                return out, True
        return out, False


def h2_exchange(addr, fields, data):
    """Sends one request as raw frames on a new prior-knowledge connection
    and returns what came back on its stream: ("reset" | "goaway" |
    "closed" | "timeout", None) or ("answered", (status, body))."""
    s = socket.create_connection(addr, timeout=TIMEOUT)
    try:
        out = PREFACE + h2_frame(4, 0, 0, b"")
        out += h2_frame(1, 0x4 | (1 if data is None else 0), 1, hpack_literals(fields))
        if data is not None:
            out += h2_frame(0, 1, 1, data.encode("latin-1"))
        try:
            s.sendall(out)
        except OSError:
            pass
        frames, status, body = H2Frames(s), None, b""
        while True:
            f = frames.next()
            if f is None:
                return ("timeout" if status is None else "closed"), (status, body)
            kind, flags, stream, payload = f
            if kind == 4 and not flags & 1:
                s.sendall(h2_frame(4, 1, 0, b""))
            elif kind == 7:
                return ("goaway" if status is None else "closed"), (status, body)
            elif kind == 3 and stream == 1:
                return ("reset" if status is None else "closed"), (status, body)
            elif kind == 1 and stream == 1:
                got = dict(frames.fields(flags, payload))
                if not got.get(":status", "").startswith("1"):
                    status = int(got.get(":status", "0"))
                if flags & 1:
                    return "answered", (status, body)
            elif kind == 0 and stream == 1:
                body += payload[1:len(payload) - payload[0]] if flags & 0x8 else payload
                if flags & 1:
                    return "answered", (status, body)
    finally:
        s.close()


def run_h2_request(member, proxy, addr, n):
    name, fields, data, expect, *rest = H2_REQUESTS[n]
    opts = rest[0] if rest else {}
    p = f"/{proxy}/h/{n}"
    fields = [(k, v.replace("{p}", p)) for k, v in fields]
    outcome, (status, body) = h2_exchange(addr, fields, data.replace("{p}", p) if data else None)
    time.sleep(0.05)
    with member.lock:
        seen = [r for r in member.records if p + "/" in r["target"]]
        errors = [e for raw, e in member.errors if p.encode() + b"/" in raw]
    problems = Problems()
    unsafe, nonconforming = problems.unsafe, problems.nonconforming

    for r in seen:
        if r["target"] != p + "/1":
            unsafe(f"the member got {r['target']!r}, which the client never sent as a request")
        if both_lengths(r["raw_head"]):
            unsafe("passed on with both Content-Length and Transfer-Encoding")
        for fault in head_faults(r["raw_head"]):
            nonconforming(f"passed on with {fault}")
        if "host" in opts and r["headers"].get("host") != [opts["host"]]:
            nonconforming(f"the member got Host {r['headers'].get('host')}, not {opts['host']}")
        if "cookie" in opts and r["headers"].get("cookie") != [opts["cookie"]]:
            nonconforming(f"the member got cookie fields {r['headers'].get('cookie')}, not {opts['cookie']!r}")
    for e in errors:
        nonconforming(f"passed on what a strict member cannot read: {e}")
    firsts = [r for r in seen if r["target"] == p + "/1"]
    if firsts and expect == "R":
        nonconforming("passed on; RFC 9113 §8.1.1 says it is malformed")
    if firsts and data is not None and firsts[0]["body"] != data.replace("{p}", p).encode("latin-1"):
        unsafe(f"the member framed the body as {firsts[0]['body'][:40]!r}")
    refused = not firsts
    if refused and outcome == "answered" and status is not None and status < 400:
        nonconforming(f"answered {status} without passing it on")
    if not refused and outcome != "answered":
        nonconforming(f"passed on, then the stream ended with {outcome}")
    answers = [{"status": status}] if status is not None else []
    return result(name, "h2 request", expect, refused, problems, answers, outcome, body)


def run_response(member, proxy, addr, n, h2=False):
    """A RESPONSES vector, or with h2 an H2_RESPONSES one."""
    name, _, expect, opts = (H2_RESPONSES if h2 else RESPONSES)[n]
    p = f"/{proxy}/{'m' if h2 else 'r'}/{n}"
    method = opts.get("method", "GET")
    te = "TE: trailers\r\n" if opts.get("te") else ""
    parts = [f"{method} {p}/1 HTTP/1.1\r\nHost: t\r\n{te}\r\n".encode(),
             f"GET {p}/2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()]
    if opts.get("alone"):
        parts = [f"{method} {p}/1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()]
    got = exchange(addr, parts)
    answers, error = read_answers(got, method)
    problems = Problems()
    unsafe, nonconforming = problems.unsafe, problems.nonconforming

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
    # A member connection the vector left in doubt must serve nobody else:
    # another client, on a connection of its own, must not get its bytes.
    later, _ = read_answers(exchange(addr, [f"GET {p}/3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()]))
    for a in later:
        if 200 <= a["status"] < 300 and a["body"] != CANARY:
            unsafe(f"another client was then answered {a['status']} {a['body'][:40]!r}, not CANARY")
    return result(name, "h2 member response" if h2 else "response", expect, refused, problems, answers, error, got)


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


def addresses(specs):
    """NAME=HOST:PORT arguments as {name: (host, port)}."""
    out = {}
    for spec in specs:
        name, _, hostport = spec.partition("=")
        host, _, port = hostport.rpartition(":")
        out[name] = (host, int(port))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--member-port", type=int, required=True)
    parser.add_argument("--h2-member-port", type=int, help="where the HTTP/2 member listens")
    parser.add_argument("--proxy", action="append", required=True, help="NAME=HOST:PORT, HTTP/1.1 to the member")
    parser.add_argument("--h2", action="append", default=[],
                        help="NAME=HOST:PORT that takes prior-knowledge HTTP/2 and passes it on to the member")
    parser.add_argument("--h2-member", action="append", default=[],
                        help="NAME=HOST:PORT that passes HTTP/1.1 on to the HTTP/2 member")
    parser.add_argument("--require-clean", action="append", default=[])
    parser.add_argument("--known", action="append", default=[],
                        help="NAME=KIND/VECTOR: a result --require-clean forgives, and says so")
    parser.add_argument("--json", help="write every result here")
    args = parser.parse_args()
    member = Member(args.member_port)
    if args.h2_member:
        H2Member(args.h2_member_port)
    h2, h2_member = addresses(args.h2), addresses(args.h2_member)
    results = {}
    for name, addr in addresses(args.proxy).items():
        rs = ([run_request(member, name, addr, n) for n in range(len(REQUESTS))]
              + [run_response(member, name, addr, n) for n in range(len(RESPONSES))])
        if name in h2:
            rs += [run_h2_request(member, name, h2[name], n) for n in range(len(H2_REQUESTS))]
        if name in h2_member:
            rs += [run_response(member, name, h2_member[name], n, h2=True) for n in range(len(H2_RESPONSES))]
        results[name] = rs
    verdicts = ["ok", "strict", "nonconforming", "unsafe"]
    print(f"vectors: {len(REQUESTS)} requests, {len(RESPONSES)} responses (HTTP/1.1); "
          f"{len(H2_REQUESTS)} HTTP/2 requests, {len(H2_RESPONSES)} HTTP/2 member responses")
    print(f"| proxy | vectors run | {' | '.join(verdicts)} |")
    print(f"|---|---|{'---|' * len(verdicts)}")
    for name, rs in results.items():
        counts = [sum(r["verdict"] == v for r in rs) for v in verdicts]
        print(f"| {name} | {len(rs)} | {' | '.join(map(str, counts))} |")
    for name, rs in results.items():
        for r in rs:
            if r["verdict"] != "ok":
                print(f"{name}: {r['verdict']}: {r['kind']} \"{r['name']}\" (answers {r['answers']}): "
                      + "; ".join(r["why"] or ["refused; the RFCs allow it"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    known = {tuple(k.split("=", 1)) for k in args.known}
    for name, vector in sorted(known):
        r = next((r for r in results.get(name, []) if f"{r['kind']}/{r['name']}" == vector), None)
        print(f"{name}: known: {vector}: " + (r["verdict"] if r else "no such vector"))
    bad = [n for n in args.require_clean
           if any(r["verdict"] in ("unsafe", "nonconforming") and (n, f"{r['kind']}/{r['name']}") not in known
                  for r in results.get(n, []))]
    if bad:
        print(f"not clean: {', '.join(bad)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
