#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets listed in TARGETS into tests/fuzz/corpus/<target>/.

The seeds are valid examples (real HAPROXY-HELLO, NOTIFY, ACK and DISCONNECT frames built
with the tests' independent SPOP client, tests/integration/spop.py; list files; config files)
plus a few near misses. Run it again after changing it; the files it writes are committed.
"""
import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import spop  # noqa: E402
from spop import (ABORT, ACK, AGENT_DISCONNECT, AGENT_HELLO, FIN, HAPROXY_DISCONNECT,  # noqa: E402
                  HAPROXY_HELLO, NOTIFY, T_BIN, T_INT32, T_IPV4, T_IPV6, T_STR, T_UINT32,
                  T_UINT64, UNSET, Typed)

CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(path):
    with open(os.path.join(ROOT, path), "rb") as f:
        return f.read()


# ---- SPOP --------------------------------------------------------------------------------

def hdrs_bin(headers):
    return b"".join(spop.sstr(n) + spop.sstr(v) for n, v in headers) + b"\x00\x00"


HEADERS = [("host", "example.com"), ("user-agent", "curl/8.0"), ("accept", "*/*"),
           ("content-type", "application/json"), ("content-length", "2"),
           ("connection", "keep-alive, x-hop"), ("x-hop", "1"),
           ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]

MESSAGES = {
    "ip-checker": [("check-client-ip", [("ip", Typed(T_IPV4, "192.0.2.1"))])],
    "ip-checker-v6": [("check-client-ip", [("", Typed(T_IPV6, "2001:db8::1"))])],
    "tracing": [("on-frontend-http-request",
                 [("id", "4bf92f3577b34da6"), ("method", "GET"), ("uri", "/checkout?cart=42"),
                  ("host", "example.com"), ("ts", Typed(T_UINT64, 1700000000123456)),
                  ("status", Typed(T_INT32, -1))])],
    "mirror": [("mirror", [("method", "POST"), ("path", "/api?x=1"), ("version", "1.1"),
                           ("headers", Typed(T_BIN, hdrs_bin(HEADERS))), ("body", b"{}")])],
    "echo": [("echo", [("a", None), ("b", True), ("c", False), ("d", Typed(T_UINT32, 7)),
                       ("e", -5), ("f", "text"), ("g", b"\x00\xff")]),
             ("second", [])],
}


def spop_seeds():
    hello = spop.hello()
    write("spop_frame", "hello", hello)
    write("spop_frame", "hello-healthcheck", spop.hello(healthcheck=True))
    write("spop_frame", "hello-all-caps",
          spop.hello(capabilities="pipelining,async,fragmentation", versions="1.0, 2.0"))
    write("spop_frame", "hello-engine-id-0xff", spop.frame(HAPROXY_HELLO, spop.kv([
        ("supported-versions", "2.0"), ("max-frame-size", Typed(T_UINT32, 16380)),
        ("capabilities", "pipelining"), ("engine-id", Typed(T_STR, b"\xff"))])))
    for i, (name, msgs) in enumerate(sorted(MESSAGES.items())):
        write("spop_frame", "hello-notify-" + name, hello + spop.notify(1, i + 1, msgs))
    write("spop_frame", "notify-empty", spop.notify(5, 9, []))
    write("spop_frame", "notify-pipelined",
          spop.notify(1, 1, MESSAGES["ip-checker"]) + spop.notify(2, 1, MESSAGES["echo"]))
    payload = b"".join(spop.message(n, a) for n, a in MESSAGES["tracing"])
    half = len(payload) // 2
    write("spop_frame", "notify-fragmented",
          spop.frame(NOTIFY, payload[:half], 0, 3, 4) + spop.frame(UNSET, payload[half:], FIN, 3, 4))
    write("spop_frame", "notify-aborted",
          spop.frame(NOTIFY, payload[:half], 0, 3, 4) + spop.frame(UNSET, b"", FIN | ABORT, 3, 4))
    write("spop_frame", "disconnect", spop.disconnect(0, "normal"))
    write("spop_frame", "disconnect-agent",
          spop.frame(AGENT_DISCONNECT, spop.kv([("status-code", Typed(T_UINT32, 3)),
                                                ("message", "frame is too big")])))
    actions = (bytes([1, 3, 2]) + spop.sstr("ip_score") + spop.typed(Typed(T_UINT32, 100)) +
               bytes([1, 3, 2]) + spop.sstr("ip_list") + spop.typed("demo-drop") +
               bytes([2, 2, 1]) + spop.sstr("old"))
    write("spop_frame", "ack", spop.frame(ACK, actions, FIN, 1, 1))
    write("spop_frame", "agent-hello",
          spop.frame(AGENT_HELLO, spop.kv([("version", "2.0"),
                                           ("max-frame-size", Typed(T_UINT32, 16380)),
                                           ("capabilities", "pipelining")])))
    write("spop_frame", "unknown-type", spop.frame(42, b"\x01\x02\x03", FIN, 0, 0))

    # spop_hello: one flags byte (FIN), then the KV-LIST payload.
    def hello_payload(frame_bytes):
        length = struct.unpack(">I", frame_bytes[:4])[0]
        body = frame_bytes[4:4 + length]
        return body[1 + 4 + 1 + 1:]  # type, flags, stream-id 0, frame-id 0

    write("spop_hello", "hello", b"\x01" + hello_payload(hello))
    write("spop_hello", "healthcheck", b"\x01" + hello_payload(spop.hello(healthcheck=True)))
    write("spop_hello", "all-caps", b"\x01" + hello_payload(
        spop.hello(capabilities=" pipelining , async,fragmentation,x", versions="2.3,1.0")))
    write("spop_hello", "engine-id-binary", b"\x01" + spop.kv([
        ("supported-versions", "2.0"), ("max-frame-size", Typed(T_UINT32, 256)),
        ("capabilities", ""), ("engine-id", Typed(T_STR, b"\xff\xc0\x80\r\n\x1b[31m"))]))
    write("spop_hello", "no-fin", b"\x00" + hello_payload(hello))

    # reassembler: max size, budget, then <kind><flags><ids><len><payload> records.
    def rec(kind, flags, sid, fid, data):
        return bytes([kind, flags, sid | fid << 2, len(data)]) + data

    body = payload[:200]
    write("reassembler", "two-fragments",
          b"\x04\x00\x0f\xff" + rec(0, 0, 1, 2, body[:100]) + rec(1, 1, 1, 2, body[100:]))
    write("reassembler", "three-fragments-then-plain",
          b"\x02\x00\x01\x00" + rec(0, 0, 3, 3, body[:50]) + rec(1, 0, 3, 3, body[50:120]) +
          rec(1, 1, 3, 3, body[120:]) + rec(0, 1, 1, 1, body[:20]))
    write("reassembler", "aborted", b"\x04\x00\x0f\xff" + rec(0, 0, 1, 1, body[:40]) + rec(1, 2, 1, 1, b""))
    write("reassembler", "interlaced", b"\x04\x00\x0f\xff" + rec(0, 0, 1, 1, body[:40]) +
          rec(1, 0, 2, 1, body[:10]))
    write("reassembler", "too-big", b"\x00\x40\x0f\xff" + rec(0, 0, 1, 1, body[:60]) +
          rec(1, 1, 1, 1, body[:60]))
    write("reassembler", "two-connections-budget", b"\x04\x00\x00\xa0" + rec(0, 0, 1, 1, body[:100]) +
          rec(4, 0, 1, 1, body[:100]) + rec(1, 1, 1, 1, body[:10]) + rec(4, 0, 2, 2, body[:50]))
    write("reassembler", "orphan-unset", b"\x04\x00\x0f\xff" + rec(1, 1, 1, 1, body[:10]) +
          rec(3, 0, 0, 0, b"") + rec(2, 1, 0, 0, b""))


# ---- mirror ------------------------------------------------------------------------------

def mirror_seeds():
    write("mirror_request", "hdrs-bin", hdrs_bin(HEADERS))
    write("mirror_request", "hdrs-bin-unterminated", hdrs_bin(HEADERS[:3])[:-2])
    write("mirror_request", "hdrs-bin-empty-values",
          hdrs_bin([("x-empty", ""), ("Host", "h"), ("Expect", "100-continue"),
                    ("Transfer-Encoding", "chunked")]))
    write("mirror_request", "hdrs-bin-long-value", hdrs_bin([("cookie", "a=" + "x" * 300)]))
    write("mirror_request", "hdrs-text",
          "".join("%s: %s\r\n" % (n, v) for n, v in HEADERS) + "\r\n")
    write("mirror_request", "hdrs-text-lf", "Host:  example.com \nAccept:\tx\n\nignored")
    # Found by this target: a 20-digit Content-Length overflowed a long long (UBSan).
    write("mirror_request", "content-length-overflow",
          "content-length: 99999999999999999999\r\n\r\n")
    write("mirror_request", "url-absolute", "https://example.com:8443/a/b?c=d#frag")
    write("mirror_request", "url-origin", "/search?q=%C3%A9")
    write("mirror_request", "url-authority-only", "http://h?x")
    write("mirror_request", "url-star", "*")


# ---- CLI ---------------------------------------------------------------------------------

def cli_seeds():
    for i, line in enumerate([
            "show proc", "help", "@1 show info", "@!4242 show stat json", "@master reload",
            "show stat; show info;;", "@1 show ip 192.0.2.1", b"@1 show ip \xff",
            "show\\ ip a\\;b c\\\\", "\\", "@1 show ip \\\r", "@ @0 @foo @!x @!0",
            "prompt", "quit", "\tshow  \t proc  ", "@1 " + "a" * 63 + "\u00e9"]):
        write("cli_command", "line-%02d" % i, line)


# ---- ip-checker lists --------------------------------------------------------------------

def list_seeds():
    drop = read("config/lists/demo-drop.txt")
    netset = read("config/lists/suspicious.netset")
    write("ip_lists", "demo-lists",
          b"\x01" + b"127.0.10.5\n" + b"\0" + b"\x64" + drop + b"\0" + b"\x1e" + netset)
    write("ip_lists", "nested",
          b"\x00" + b"10.0.0.0/8\n10.1.0.0/16 # comment\n10.1.2.3\n" + b"\0" +
          b"\x01" + b"10.1.2.0/24\n" + b"\0" + b"\x32" + b"0.0.0.0/0\n")
    write("ip_lists", "v6-and-mapped",
          b"\x02" + b"2001:db8::/32\n::ffff:10.0.0.0/104\n::/0\n" + b"\0" +
          b"\x63" + b"\xef\xbb\xbf10.0.0.1/8\r\n  192.0.2.255 ; x\n" + b"\0" +
          b"\x03" + b"2001:db8:1::/48\n::1\n")
    write("ip_lists", "malformed", b"\x00" + b"1.2.3.4/33\n" + b"\0" + b"\x00" + b"01.2.3.4\n")
    write("ip_lists", "edges", b"\x00" + b"255.255.255.255\n0.0.0.0/32\n" + b"\0" + b"\x01" +
          b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128\n::/128\n")


# ---- config ------------------------------------------------------------------------------

def config_seeds():
    write("config", "spoad.yaml", read("config/spoad.yaml"))
    write("config", "echo-minimal.yaml",
          "agents:\n  - name: a\n    type: echo\n    listen: 127.0.0.1:12345\n")
    write("config", "runtime-keys.yaml", """global:
  log-level: debug
  grace: 3s
  handover: 1s
  pidfile: /tmp/spoad.pid
cli:
  socket: /tmp/spoad.sock
  mode: "0660"
agents:
  - name: a
    type: echo
    listen: unix:/tmp/a.sock
    workers: 3
    max-frame-size: 4k
    max-inflight: 8
    max-fragmented-size: 2m
    pipelining: false
    fragmentation: true
    async: true
    max-connections: 100
    backlog: 16
    timeout:
      hello: 500ms
      idle: 2m
    scope: sess
    echo-max-size: 1k
    delay: 0
""")
    write("config", "ip-checker-inline.yaml", """agents:
  - name: iprep
    type: ip-checker
    listen: "[::1]:${PORT-12345}"
    message: check-client-ip
    argument: ip
    block-threshold: 50
    watch: false
    allow:
      - name: office
        entries: [127.0.10.5, "2001:db8::/32"]
    deny:
      - name: bad
        score: 100
        entries:
          - 192.0.2.0/24
          - 10.0.0.1/8
""")
    write("config", "tracing-otlp.yaml", """agents:
  - name: tracing
    type: tracing
    listen: 127.0.0.1:12346
    sampling: 0.5
    exporter:
      type: otlp-http
      endpoint: http://127.0.0.1:4318/v1/traces
      headers: ["Authorization: Bearer x"]
      gzip: true
      max-batch: 512
      flush-interval: 1s
      max-queue: 10000
      timeout: 5s
      retry-initial: 100ms
      retry-max: 10s
      service-name: spoad
      resource-attributes: ["deployment.environment=test"]
""")
    write("config", "mirror.yaml", """agents:
  - name: m
    type: mirror
    listen: "*:12347"
    message: mirror
    targets:
      - url: https://shadow.example:8443/prefix/
        sampling: 12.5
    host: target
    add-headers: ["X-Mirrored-By: spoad"]
    remove-headers: [Cookie]
    connect-timeout: 1s
    replay-timeout: 5s
    max-replays: 10
    max-body: 64k
    http-version: "2"
""")
    write("config", "latin1-comment.yaml",
          b"# caf\xe9\nagents:\n  - name: a\n    type: echo\n    listen: 127.0.0.1:1\n")
    write("config", "errors.yaml", """agents:
  - name: a
    type: echo
    listen: 127.0.0.1:1
    unknown-key: 1
  - name: a
    type: nope
    listen: ${OPEN
""")
    write("config", "anchors.yaml", """defaults: &d
  type: echo
agents:
  - <<: *d
    name: a
    listen: [1, {x: !!binary aGVsbG8=}]
""")


# The targets whose seeds this script writes; other targets' seeds are left alone.
TARGETS = ["spop_frame", "spop_hello", "reassembler", "mirror_request", "cli_command", "ip_lists",
           "config"]


def main():
    for t in TARGETS:
        shutil.rmtree(os.path.join(CORPUS, t), ignore_errors=True)
    spop_seeds()
    mirror_seeds()
    cli_seeds()
    list_seeds()
    config_seeds()
    for t in TARGETS:
        print("%-16s %d seeds" % (t, len(os.listdir(os.path.join(CORPUS, t)))))


if __name__ == "__main__":
    main()
