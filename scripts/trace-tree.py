#!/usr/bin/env python3
"""Prints the traces of a spoad tracing `file` exporter (OTLP/JSON lines) as trees.

  scripts/trace-tree.py /tmp/spoad-demo/traces.jsonl [--path /p] [--last N]
"""
import argparse
import collections
import json


def attrs(span):
    return {a["key"]: list(a["value"].values())[0] for a in span.get("attributes", [])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--path", help="only the traces of requests for this path")
    ap.add_argument("--last", type=int, default=1, help="how many traces (the last ones)")
    a = ap.parse_args()
    traces = collections.OrderedDict()
    with open(a.file) as f:
        for line in f:
            for rs in json.loads(line).get("resourceSpans", []):
                pid = next((list(x["value"].values())[0] for x in rs["resource"]["attributes"]
                            if x["key"] == "process.pid"), "?")
                for ss in rs.get("scopeSpans", []):
                    for sp in ss.get("spans", []):
                        traces.setdefault(sp["traceId"], []).append((sp, pid))
    chosen = []
    for tid, spans in traces.items():
        root = [s for s, _ in spans if s["name"] == "HAProxy session"]
        if not root:
            continue
        if a.path and attrs(root[0]).get("url.path") != a.path:
            continue
        chosen.append((tid, spans))
    for tid, spans in chosen[-a.last:]:
        by_id = {s["spanId"]: (s, pid) for s, pid in spans}
        children = collections.defaultdict(list)
        roots = []
        for s, _ in spans:
            p = s.get("parentSpanId")
            (children[p] if p in by_id else roots).append(s)
        t0 = min(int(s["startTimeUnixNano"]) for s, _ in spans)
        root = next(s for s in roots if s["name"] == "HAProxy session")
        ra = attrs(root)
        print("trace %s  %s %s%s -> %s" % (tid, ra.get("http.request.method", "?"),
                                           ra.get("url.path", "?"),
                                           "?" + ra["url.query"] if ra.get("url.query") else "",
                                           ra.get("http.response.status_code", "?")))

        def show(s, depth):
            start = (int(s["startTimeUnixNano"]) - t0) / 1000
            dur = (int(s["endTimeUnixNano"]) - int(s["startTimeUnixNano"])) / 1000
            rel = "follows from" if s.get("links") else "child of"
            print("  %s%-24s +%7.0f us %7.0f us  worker %-6s %s" % (
                "  " * depth, s["name"], start, dur, by_id[s["spanId"]][1],
                "" if depth == 0 else "(%s its parent)" % rel))
            for c in sorted(children[s["spanId"]], key=lambda x: int(x["startTimeUnixNano"])):
                show(c, depth + 1)

        for r in roots:
            show(r, 0)


if __name__ == "__main__":
    main()
