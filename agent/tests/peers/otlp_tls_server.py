"""An OTLP metrics, traces and logs receiver behind TLS (optionally mTLS) on 127.0.0.1, over
gRPC (grpcio) and HTTP (http.server + ssl, gzip bodies too; `/v1/traces` is traces, `/v1/logs`
logs, any other path metrics), decoding with the opentelemetry-proto package.

Usage: otlp_tls_server.py CERT KEY OUT [CLIENT_CA]
With CLIENT_CA both servers require a client certificate that chains to it. Every export
received is appended to OUT as one JSON line: transport, signal, request headers, service
names, and for logs the records' event names.
Prints `ready grpc=PORT http=PORT` once both listen.
"""

import gzip
import json
import ssl
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as pb_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as tpb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tpb_grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as lpb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as lpb_grpc

CERT, KEY, OUT = sys.argv[1], sys.argv[2], sys.argv[3]
CLIENT_CA = sys.argv[4] if len(sys.argv) > 4 else None
LOCK = threading.Lock()


def services(request):
    names = []
    resources = (
        getattr(request, "resource_metrics", None)
        or getattr(request, "resource_spans", None)
        or getattr(request, "resource_logs", [])
    )
    for rm in resources:
        for kv in rm.resource.attributes:
            if kv.key == "service.name":
                names.append(kv.value.string_value)
    return names


def events(request):
    return [
        r.event_name
        for rl in getattr(request, "resource_logs", [])
        for sl in rl.scope_logs
        for r in sl.log_records
    ]


def record(transport, signal, headers, request):
    line = json.dumps(
        {
            "transport": transport,
            "signal": signal,
            "headers": headers,
            "services": services(request),
            "events": events(request),
        }
    )
    with LOCK, open(OUT, "a", encoding="utf-8") as f:
        f.write(line + "\n")


class Metrics(pb_grpc.MetricsServiceServicer):
    def Export(self, request, context):
        record("grpc", "metrics", {k: v for k, v in context.invocation_metadata()}, request)
        return pb.ExportMetricsServiceResponse()


class Traces(tpb_grpc.TraceServiceServicer):
    def Export(self, request, context):
        record("grpc", "traces", {k: v for k, v in context.invocation_metadata()}, request)
        return tpb.ExportTraceServiceResponse()


class Logs(lpb_grpc.LogsServiceServicer):
    def Export(self, request, context):
        record("grpc", "logs", {k: v for k, v in context.invocation_metadata()}, request)
        return lpb.ExportLogsServiceResponse()


# path prefix: (signal, request type, response type); any other path is metrics.
HTTP_SIGNALS = {
    "/v1/traces": ("traces", tpb.ExportTraceServiceRequest, tpb.ExportTraceServiceResponse),
    "/v1/logs": ("logs", lpb.ExportLogsServiceRequest, lpb.ExportLogsServiceResponse),
}
METRICS = ("metrics", pb.ExportMetricsServiceRequest, pb.ExportMetricsServiceResponse)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        signal, request_type, response_type = next(
            (v for k, v in HTTP_SIGNALS.items() if self.path.startswith(k)), METRICS
        )
        request = request_type()
        body = self.rfile.read(length)
        if self.headers.get("content-encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        request.ParseFromString(body)
        record("http", signal, {k.lower(): v for k, v in self.headers.items()}, request)
        answer = response_type().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        sys.stderr.write("http: " + (args[0] % args[1:]) + "\n")


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    client_ca = read(CLIENT_CA) if CLIENT_CA else None
    creds = grpc.ssl_server_credentials(
        [(read(KEY), read(CERT))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    tpb_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    lpb_grpc.add_LogsServiceServicer_to_server(Logs(), server)
    grpc_port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(CERT, KEY)
    if CLIENT_CA:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(CLIENT_CA)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    print(f"ready grpc={grpc_port} http={httpd.server_address[1]}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
