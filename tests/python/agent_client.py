#!/usr/bin/env python3
"""A Python client of the Outpost agent's management API, generated from
`proto/` with grpcio-tools at run time (no generated code is checked in).

It proves the API is usable from another language than Rust: the bearer
token from the agent's token file on every call, a package streamed in
chunks, the results as JSON.

    agent_client.py --agent 127.0.0.1:9465 --token-file /var/lib/outpost/state/api.token deploy pkg.opkg
    agent_client.py ... upgrade pkg-2.opkg
    agent_client.py ... rollback NAME
    agent_client.py ... list
    agent_client.py ... status

Each command prints one JSON object on stdout (protobuf field names). A
refused call prints `{"error": {"code": ..., "message": ...}}` and exits 1;
a missing module (grpcio, grpcio-tools) exits 3 naming `cargo xtask setup`.
"""

import argparse
import importlib
import json
import os
import sys
import tempfile

EXIT_REFUSED = 1
EXIT_SETUP = 3
CHUNK = 256 * 1024
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO = "outpost/agent/v1/agent.proto"


def fail_setup(what, err):
    sys.stderr.write(
        f"agent_client.py: {what} is not installed ({err}); "
        "`cargo xtask setup` installs grpcio and grpcio-tools from PyPI\n"
    )
    sys.exit(EXIT_SETUP)


def generate_stubs(proto_dir, out_dir):
    """Runs grpc_tools.protoc on agent.proto into out_dir; returns (pb2, pb2_grpc)."""
    try:
        import grpc  # noqa: F401
    except ImportError as e:
        fail_setup("grpcio", e)
    try:
        from grpc_tools import protoc
    except ImportError as e:
        fail_setup("grpcio-tools", e)
    # The well-known types (google/protobuf/*.proto) ship inside grpc_tools.
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        os.path.join(proto_dir, PROTO),
    ]
    status = protoc.main(args)
    if status != 0:
        sys.stderr.write(f"agent_client.py: protoc failed on {os.path.join(proto_dir, PROTO)} (exit {status})\n")
        sys.exit(2)
    sys.path.insert(0, out_dir)
    module = PROTO[: -len(".proto")].replace("/", ".")
    return importlib.import_module(module + "_pb2"), importlib.import_module(module + "_pb2_grpc")


def read_token(path):
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        sys.stderr.write(f"agent_client.py: cannot read the API token {path}: {e}\n")
        sys.exit(2)
    if not token:
        sys.stderr.write(f"agent_client.py: the token file {path} is empty\n")
        sys.exit(2)
    return token


def chunks(pb2, path, approved_by):
    """The package as PackageChunk messages; options ride on the first one."""
    with open(path, "rb") as f:
        data = f.read()
    total = len(data)
    for i, at in enumerate(range(0, max(total, 1), CHUNK)):
        piece = data[at : at + CHUNK]
        if i == 0:
            yield pb2.PackageChunk(data=piece, total_size=total, approved_by=approved_by)
        else:
            yield pb2.PackageChunk(data=piece)


def as_dict(message):
    from google.protobuf import json_format

    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def main():
    parser = argparse.ArgumentParser(description="Outpost management API client (Python, grpcio)")
    parser.add_argument("--agent", default="127.0.0.1:9465", help="host:port of the agent's [api] listen")
    parser.add_argument("--token-file", default="/var/lib/outpost/state/api.token")
    parser.add_argument("--proto-dir", default=os.path.join(REPO, "proto"))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("deploy", "upgrade"):
        p = sub.add_parser(name, help=f"{name} a signed package (.opkg) from a local file")
        p.add_argument("package")
        p.add_argument("--approved-by", default=os.environ.get("USER", "python-client"))
    sub.add_parser("rollback", help="back to the version the last upgrade replaced").add_argument("service")
    sub.add_parser("list", help="installed services with their previous versions")
    sub.add_parser("status", help="the agent's state and running services")
    args = parser.parse_args()

    token = read_token(args.token_file)
    with tempfile.TemporaryDirectory(prefix="outpost-pystubs-") as out_dir:
        pb2, pb2_grpc = generate_stubs(args.proto_dir, out_dir)
        import grpc

        metadata = [("authorization", f"Bearer {token}")]
        with grpc.insecure_channel(args.agent) as channel:
            stub = pb2_grpc.AgentStub(channel)
            call = dict(metadata=metadata, timeout=args.timeout)
            try:
                if args.command == "deploy":
                    reply = stub.Deploy(chunks(pb2, args.package, args.approved_by), **call)
                elif args.command == "upgrade":
                    reply = stub.Upgrade(chunks(pb2, args.package, args.approved_by), **call)
                elif args.command == "rollback":
                    reply = stub.Rollback(pb2.ServiceRef(name=args.service), **call)
                elif args.command == "list":
                    reply = stub.ListServices(pb2.ListServicesRequest(), **call)
                else:
                    reply = stub.GetStatus(pb2.GetStatusRequest(), **call)
            except grpc.RpcError as e:
                print(json.dumps({"error": {"code": e.code().name, "message": e.details()}}))
                sys.exit(EXIT_REFUSED)
            except OSError as e:
                sys.stderr.write(f"agent_client.py: cannot read {args.package}: {e}\n")
                sys.exit(2)
            print(json.dumps(as_dict(reply), sort_keys=True))


if __name__ == "__main__":
    main()
