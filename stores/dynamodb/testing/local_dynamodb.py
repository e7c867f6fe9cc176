#!/usr/bin/env python3
"""A local DynamoDB-compatible server for pum's tests: moto's DynamoDB, one request at a time.

Why this wrapper and not `moto_server`:

- Exact counting. moto applies `ADD` as a read-modify-write in Python; its threaded server runs
  requests in parallel and loses concurrent increments (run with --threaded to see it). Real
  DynamoDB serializes writes to an item. Served one request at a time, moto does too, so a
  concurrency test against this server fails only if the *store* loses counts.
- Same data across a kill. With --state FILE, the tables are written to FILE (atomically, by
  rename) after every write request and before its answer is sent, and read back at start: a
  test can SIGKILL the server and start it again on the same port with every acknowledged write.
- Gone with its parent: it exits when the process that started it does.
- Counting writes for real. GET /_pum/stats answers how many requests of each operation arrived
  and how many item writes the TransactWriteItems requests carried; POST /_pum/stats/reset
  zeroes them.

Prints "local-dynamodb listening on http://127.0.0.1:PORT" once it accepts connections.
"""

import argparse
import io
import json
import os
import pickle
import signal
import sys
import threading

from moto.dynamodb.models import dynamodb_backends
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

READS = {"GetItem", "BatchGetItem", "Query", "Scan", "DescribeTable", "ListTables",
         "DescribeTimeToLive", "DescribeContinuousBackups", "ListTagsOfResource"}


def tables():
    """Every table, by (account, region, name)."""
    out = {}
    for account, per_region in dynamodb_backends.items():
        for region, backend in per_region.items():
            for name, table in backend.tables.items():
                out[(account, region, name)] = table
    return out


def save(path):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(tables(), f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path):
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        saved = pickle.load(f)
    for (account, region, name), table in saved.items():
        dynamodb_backends[account][region].tables[name] = table
    return len(saved)


class App:
    def __init__(self, state, threaded):
        self.inner = DomainDispatcherApplication(create_backend_app)
        self.state = state
        self.lock = threading.Lock()
        self.threaded = threaded
        self.stats = {}

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_pum/stats"):
            if environ.get("REQUEST_METHOD") == "POST":
                self.stats = {}
            body = json.dumps(self.stats, sort_keys=True).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        op = target.split(".")[-1]
        size = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(size) if size else b""

        environ["wsgi.input"] = io.BytesIO(raw)
        if op:
            self.stats[op] = self.stats.get(op, 0) + 1
            if op == "TransactWriteItems":
                try:
                    n = len(json.loads(raw).get("TransactItems", []))
                except ValueError:
                    n = 0
                self.stats["TransactWriteItems.items"] = self.stats.get(
                    "TransactWriteItems.items", 0) + n
        if self.threaded:
            return self.inner(environ, start_response)
        with self.lock:
            captured = {}

            def capture(status, headers, exc_info=None):
                captured["args"] = (status, headers, exc_info)
                return lambda data: None

            chunks = list(self.inner(environ, capture))
            if self.state and op and op not in READS:
                save(self.state)
        status, headers, exc_info = captured["args"]
        start_response(status, headers, exc_info)
        return chunks


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--state", help="file that keeps the tables across restarts")
    parser.add_argument("--threaded", action="store_true",
                        help="moto's default: parallel requests (loses concurrent ADDs)")
    args = parser.parse_args()
    # moto parses an update expression recursively, a level per action; DynamoDB takes up to
    # 300 operators in one expression.
    sys.setrecursionlimit(20000)
    if args.state:
        load(args.state)
    app = App(args.state, args.threaded)
    server = make_server(args.host, args.port, app, threaded=args.threaded)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Tests may hold the server in a static that is never dropped: stop when the parent is gone.
    parent = os.getppid()

    def watch_parent():
        while os.getppid() == parent:
            threading.Event().wait(0.5)
        os._exit(0)

    threading.Thread(target=watch_parent, daemon=True).start()
    print(f"local-dynamodb listening on http://{args.host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
