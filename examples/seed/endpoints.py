#!/usr/bin/env python3
"""The two endpoints the seed integration talks to, on 127.0.0.1.

    endpoints.py TOKEN RECEIVED_FILE    serve; print the port on the first line
    endpoints.py --print-xml            print the order export and exit

GET /orders.xml    the shop's order export: 100 orders, the same document as
                   seed_orders_xml(100) in tests/testkit/src/seed.rs (change
                   both together; the testkit's tests compare them)
POST /erp/orders   the ERP: 401 unless "Authorization: Bearer TOKEN", else
                   201 {"accepted": <count>, "total": <total>}; the body it
                   accepted is written to RECEIVED_FILE

Standard library only.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXPORTED = "2026-11-27T02:00:00Z"
CUSTOMERS = [
    "Acme GmbH",
    "Nordic Tools AB",
    "Müller & Söhne KG",
    "Baker Industrial",
    "Costa Hermanos SA",
    "Dubois et Fils",
    "Eastern Fasteners",
    "Fjord Supply AS",
]


def orders_xml(orders=100):
    """Deterministic: every fifth order cancelled, 1 to 4 lines each."""
    out = [f'<orders exported="{EXPORTED}">\n']
    for i in range(orders):
        status = "cancelled" if i % 5 == 3 else "open"
        customer = CUSTOMERS[(i * 3) % len(CUSTOMERS)].replace("&", "&amp;")
        out.append(f'  <order id="A{1000 + i}" status="{status}">\n')
        out.append(f"    <customer>{customer}</customer>\n")
        for j in range(1 + (i * 7) % 4):
            sku = (i * 13 + j * 29) % 500 + 1
            qty = (i * 5 + j * 3) % 9 + 1
            cents = 150 + (i * 37 + j * 91) % 4850
            out.append(f'    <line sku="SKU-{sku:04d}" qty="{qty}" price="{cents // 100}.{cents % 100:02d}"/>\n')
        out.append("  </order>\n")
    out.append("</orders>\n")
    return "".join(out)


def handler(token, received_file):
    export = orders_xml(100).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive; every reply has a Content-Length

        def reply(self, status, content_type, body):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def reply_json(self, status, value):
            self.reply(status, "application/json", json.dumps(value).encode())

        def do_GET(self):
            if self.path.split("?")[0] == "/orders.xml":
                self.reply(200, "application/xml", export)
            else:
                self.reply(404, "text/plain", b"not found\n")

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path.split("?")[0] != "/erp/orders":
                self.reply(404, "text/plain", b"not found\n")
            elif self.headers.get("Authorization") != f"Bearer {token}":
                self.reply_json(401, {"error": "missing or wrong bearer token"})
            else:
                try:
                    order_batch = json.loads(body)
                except ValueError as e:
                    self.reply_json(400, {"error": f"body is not JSON: {e}"})
                    return
                with open(received_file, "wb") as f:
                    f.write(body)
                self.reply_json(201, {"accepted": order_batch.get("count"), "total": order_batch.get("total")})

        def log_message(self, format, *args):
            pass  # the run's own progress lines say what happened

    return Handler


def main():
    if sys.argv[1:] == ["--print-xml"]:
        sys.stdout.buffer.write(orders_xml(100).encode())
        return
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    token, received_file = sys.argv[1:]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(token, received_file))
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
