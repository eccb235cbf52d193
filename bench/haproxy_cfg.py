"""The pieces of the benchmarks' HAProxy and spoad configurations (bench/run.py,
bench/ip_store.py): one HAProxy thread, the timeouts of every benchmark, the ip-checker
frontend and agent, the SPOE backends."""


def head(bufsize=True):
    """`global` (one thread; tune.bufsize 16384, HAProxy 2.6's default, unless bufsize=False)
    and `defaults` (HTTP, the benchmarks' timeouts)."""
    return ("\nglobal\n    nbthread 1\n" + ("    tune.bufsize 16384\n" if bufsize else "")
            + "defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n"
            "    timeout server 30s\n")


def _return(text):
    return "    http-request return status 200 content-type text/plain string \"%s\"\n" % text


def return_frontend(name, port, text="ok"):
    """A frontend on 127.0.0.1:`port` that answers 200 `text` itself."""
    return "frontend %s\n    bind 127.0.0.1:%d\n" % (name, port) + _return(text)


def iprep_frontend(name, port, spoe):
    """A frontend on 127.0.0.1:`port` asking the ip-checker (SPOE file `spoe`): 403 when the
    agent says blocked, else 200 "ok"."""
    return ("frontend %s\n    bind 127.0.0.1:%d\n"
            "    filter spoe engine ip-checker config %s\n"
            "    http-request deny deny_status 403 if { var(txn.iprep.blocked) -m bool }\n"
            % (name, port, spoe)) + _return("ok")


def spoe_backend(name, server):
    """The backend of an SPOE engine: spoad at `server` ("127.0.0.1:PORT")."""
    return ("backend %s\n    mode tcp\n    timeout connect 1s\n    timeout server 3m\n"
            "    server spoad %s\n" % (name, server))


def iprep_yaml(port, deny="entries: [192.0.2.0/24]"):
    """spoad with one ip-checker agent (one worker) on 127.0.0.1:`port` whose deny list
    `bench` has `deny` (one entry by default, or e.g. "file: PATH")."""
    return """
agents:
  - name: iprep
    type: ip-checker
    listen: 127.0.0.1:%d
    deny:
      - name: bench
        score: 100
        %s
""" % (port, deny)
