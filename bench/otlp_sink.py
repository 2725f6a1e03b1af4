"""A collector stand-in for measuring tracing's cost: `python -m bench.otlp_sink PORT`
takes OTLP/HTTP exports (POST /v1/traces), counts their spans, answers 200, and prints
the count when stopped (SIGTERM). Run the bench with
OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:PORT to measure the saga with tracing on:
what the saga's processes spend building and exporting spans is counted in their CPU; what
a collector spends receiving them is not (it is not the saga's, as no collector is)."""

from __future__ import annotations

import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def main() -> None:
    port = int(sys.argv[1])
    counted = {"spans": 0, "exports": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            request = ExportTraceServiceRequest()
            request.ParseFromString(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            counted["exports"] += 1
            counted["spans"] += sum(
                len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans
            )
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)

    def stop(*_):
        print(f"{counted['spans']} spans in {counted['exports']} exports", flush=True)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
