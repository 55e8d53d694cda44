"""An independent gRPC client, generated from the proto with grpcio-tools.

usage: client.py PROTO_DIR SOCKET OUT_DIR COUNTRY
Prints one JSON object: the status summary and the denied events to COUNTRY.
"""
import json
import subprocess
import sys

proto_dir, socket_path, out_dir, country = sys.argv[1:5]
subprocess.run(
    [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={out_dir}",
     f"--grpc_python_out={out_dir}", "egress_monitor/v1/egress_monitor.proto"],
    check=True,
)
sys.path.insert(0, out_dir)

import grpc  # noqa: E402
from egress_monitor.v1 import egress_monitor_pb2 as pb  # noqa: E402
from egress_monitor.v1 import egress_monitor_pb2_grpc as rpc  # noqa: E402

# The server's HTTP/2 stack accepts only a host name as :authority, and
# gRPC clients default to the socket path on unix sockets.
with grpc.insecure_channel(f"unix:{socket_path}", options=[("grpc.default_authority", "localhost")]) as channel:
    stub = rpc.EgressMonitorStub(channel)
    status = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    request = pb.StreamEventsRequest(
        filter=pb.EventFilter(verdicts=["denied"], countries=[country]), last=100, follow=False)
    events = [
        {"verdict": r.event.verdict, "country": r.event.country, "dst_ip": r.event.dst_ip, "tgid": r.event.tgid}
        for r in stub.StreamEvents(request, timeout=10) if r.WhichOneof("item") == "event"
    ]
    try:
        stub.StreamEvents(pb.StreamEventsRequest(filter=pb.EventFilter(ports=[70000])), timeout=10).next()
        bad = None
    except grpc.RpcError as e:
        bad = {"code": e.code().name, "details": e.details()}
print(json.dumps({
    "version": status.version,
    "programs": [p.hook for p in status.programs],
    "policies": [p.name for p in status.policies],
    "denied": status.counters.denied,
    "events": events,
    "bad_request": bad,
}))
