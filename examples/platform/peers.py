#!/usr/bin/env python3
"""The outside world of the platform example, on 127.0.0.1.

    peers.py WORK_DIR    serve; print "HTTP_PORT SMTP_PORT" on the first line

HTTP:
  POST /token          an OAuth2 token endpoint (client credentials grant,
                       client "isoflow-demo" / "demo-client-secret", HTTP
                       Basic or form): tokens "crm-at-N", valid 1 hour
  GET  /crm/orders     the CRM's API: 401 unless a live token, else a few
                       orders as JSON
  POST /crm/revoke     (for the demo) every access token stops working
  POST /alerts         a receiver of Isoflow's signed alerts: each body is
                       appended to WORK_DIR/alerts.jsonl
SMTP:
  a sink that accepts every message and appends it to WORK_DIR/mail.txt

Standard library only.
"""

import base64
import json
import os
import socketserver
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CLIENT_ID = "isoflow-demo"
CLIENT_SECRET = "demo-client-secret"
ORDERS = [
    {"id": "A1001", "customer": "Acme GmbH", "total": 120.5, "status": "open"},
    {"id": "A1002", "customer": "Nordic Tools AB", "total": 80.0, "status": "cancelled"},
    {"id": "A1003", "customer": "Baker Industrial", "total": 310.25, "status": "open"},
]


def http_handler(work):
    lock = threading.Lock()
    state = {"issued": 0, "live": {}}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, status, value):
            body = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def body(self):
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_POST(self):
            data = self.body()
            if self.path == "/token":
                form = dict(urllib.parse.parse_qsl(data.decode()))
                client = (form.get("client_id"), form.get("client_secret"))
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    pair = base64.b64decode(auth[6:]).decode()
                    client = tuple(urllib.parse.unquote_plus(p) for p in pair.split(":", 1))
                if client != (CLIENT_ID, CLIENT_SECRET):
                    return self.reply(401, {"error": "invalid_client"})
                if form.get("grant_type") != "client_credentials":
                    return self.reply(400, {"error": "unsupported_grant_type"})
                with lock:
                    state["issued"] += 1
                    token = f"crm-at-{state['issued']}"
                    state["live"][token] = time.time() + 3600
                return self.reply(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600})
            if self.path == "/crm/revoke":
                with lock:
                    state["live"].clear()
                return self.reply(200, {"revoked": True})
            if self.path == "/alerts":
                with open(os.path.join(work, "alerts.jsonl"), "ab") as f:
                    f.write(data.strip() + b"\n")
                return self.reply(200, {"ok": True})
            self.reply(404, {"error": "not found"})

        def do_GET(self):
            if self.path.startswith("/crm/orders"):
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                with lock:
                    live = state["live"].get(token, 0) > time.time()
                if not live:
                    return self.reply(401, {"error": "invalid_token"})
                return self.reply(200, {"orders": ORDERS})
            self.reply(404, {"error": "not found"})

    return Handler


def smtp_handler(work):
    class Session(socketserver.StreamRequestHandler):
        def send(self, line):
            self.wfile.write(line.encode() + b"\r\n")

        def handle(self):
            self.send("220 peers.local ESMTP sink")
            envelope = {"from": "", "to": []}
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                verb = line.decode(errors="replace").strip()
                upper = verb.upper()
                if upper.startswith(("EHLO", "HELO")):
                    self.send("250 peers.local")
                elif upper.startswith("MAIL FROM:"):
                    envelope = {"from": verb[10:].strip(), "to": []}
                    self.send("250 OK")
                elif upper.startswith("RCPT TO:"):
                    envelope["to"].append(verb[8:].strip())
                    self.send("250 OK")
                elif upper == "DATA":
                    self.send("354 end with <CRLF>.<CRLF>")
                    lines = []
                    while True:
                        data = self.rfile.readline()
                        if not data or data in (b".\r\n", b".\n"):
                            break
                        lines.append(data.decode(errors="replace").rstrip("\r\n"))
                    with open(os.path.join(work, "mail.txt"), "a") as f:
                        f.write(f"From {envelope['from']} to {', '.join(envelope['to'])}\n")
                        f.write("\n".join(lines) + "\n\n")
                    self.send("250 OK queued")
                elif upper == "QUIT":
                    self.send("221 bye")
                    return
                elif upper in ("RSET", "NOOP"):
                    self.send("250 OK")
                else:
                    self.send("502 not implemented")

    return Session


def main():
    work = sys.argv[1]
    http = ThreadingHTTPServer(("127.0.0.1", 0), http_handler(work))
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    smtp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), smtp_handler(work))
    threading.Thread(target=smtp.serve_forever, daemon=True).start()
    print(http.server_address[1], smtp.server_address[1], flush=True)
    http.serve_forever()


if __name__ == "__main__":
    main()
