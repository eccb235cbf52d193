"""A real OTLP/HTTP receiver and a real HTTP backend for the tracing tests (stdlib only).

The receiver is as strict as a collector may be: a body that is not valid UTF-8 (Python's
strict decoder: no overlong forms, no surrogates, nothing above U+10FFFF) or not JSON gets a
400, as the OTLP/HTTP specification answers a bad request, and is counted in `rejected`.
"""
import gzip
import http.server
import json
import socket
import threading


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass  # HAProxy resetting an idle keep-alive connection is not news


class OtlpReceiver:
    """Stores every ExportTraceServiceRequest POSTed to /v1/traces; can go down and come back
    on the same port."""

    def __init__(self, port):
        self.port = port
        self.bodies = []
        self.raw = []  # the accepted bodies as received (after gzip), bytes
        self.requests = 0
        self.rejected = 0
        self.lock = threading.Lock()
        self.server = None
        self.conns = set()

    def start(self):
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                with owner.lock:
                    owner.conns.add(self.connection)

            def finish(self):
                with owner.lock:
                    owner.conns.discard(self.connection)
                super().finish()

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = self.path == "/v1/traces" and \
                    self.headers.get("Content-Type", "").startswith("application/json")
                status = 200 if ok else 404
                if ok:
                    try:
                        doc = json.loads(body.decode("utf-8", "strict"))
                    except ValueError:  # UnicodeDecodeError and JSONDecodeError
                        doc = None
                    with owner.lock:
                        if doc is None:
                            owner.rejected += 1
                            status = 400
                        else:
                            owner.bodies.append(doc)
                            owner.raw.append(body)
                            owner.requests += 1
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = _Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        """Down for real: no listener, and the keep-alive connections are cut."""
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def spans(self):
        """[(span, resource attributes dict)] of everything received."""
        out = []
        with self.lock:
            bodies = list(self.bodies)
        for b in bodies:
            for rs in b.get("resourceSpans", []):
                res = {a["key"]: list(a["value"].values())[0]
                       for a in rs.get("resource", {}).get("attributes", [])}
                for ss in rs.get("scopeSpans", []):
                    for sp in ss.get("spans", []):
                        out.append((sp, res))
        return out


class Backend:
    """An HTTP/1.1 server (keep-alive) that answers 200 and records the headers it got for
    each path. A request for /slow/... is held until release() (or 60 s, a failure guard)."""

    def __init__(self, port):
        self.port = port
        self.seen = {}
        self.lock = threading.Lock()
        self.gate = threading.Event()

    def release(self):
        self.gate.set()

    def start(self):
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                with owner.lock:
                    owner.seen[self.path] = {k.lower(): v for k, v in self.headers.items()}
                if self.path.startswith("/slow"):
                    owner.gate.wait(60)
                status = 503 if self.path.startswith("/fail") else 200
                body = b"ok"
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = _Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def attrs(span):
    return {a["key"]: list(a["value"].values())[0] for a in span.get("attributes", [])}
