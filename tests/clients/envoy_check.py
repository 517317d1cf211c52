"""An Envoy ext_authz client built from Envoy's own protos (the envoy-data-plane package),
independent of Portcullis's code: sends Check requests to the gRPC door and prints what came
back, one JSON object per line, for tests/it/grpc.rs to compare.

Usage: python3 envoy_check.py HOST:PORT TOKEN
"""

import json
import sys

import grpc
from envoy_data_plane.envoy.config.core.v3 import Address, SocketAddress
from envoy_data_plane.envoy.service.auth.v3 import (
    AttributeContext,
    AttributeContextHttpRequest,
    AttributeContextPeer,
    AttributeContextRequest,
    AuthorizationSyncStub,
    CheckRequest,
)


def check(stub, path, headers, source="198.51.100.7"):
    request = CheckRequest(
        attributes=AttributeContext(
            source=AttributeContextPeer(
                address=Address(socket_address=SocketAddress(address=source, port_value=40000))
            ),
            request=AttributeContextRequest(
                http=AttributeContextHttpRequest(
                    method="GET",
                    host="app.test",
                    path=path,
                    scheme="https",
                    headers=dict(headers, **{":authority": "app.test", ":path": path}),
                )
            ),
        )
    )
    try:
        response = stub.check(request)
    except grpc.RpcError as e:
        return {"path": path, "rpc_error": e.code().name}
    out = {"path": path, "code": response.status.code if response.status else 0}
    if response.is_set("ok_response"):
        ok = response.ok_response
        out["set"] = {h.header.key: h.header.value for h in ok.headers}
        out["remove"] = sorted(ok.headers_to_remove)
    if response.is_set("denied_response"):
        denied = response.denied_response
        out["status"] = int(denied.status.code)
        out["headers"] = {h.header.key: h.header.value for h in denied.headers}
        out["body"] = json.loads(denied.body) if denied.body else None
    return out


def main():
    address, token = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel(address) as channel:
        stub = AuthorizationSyncStub(channel)
        for path, headers in [
            ("/api/orders", {"authorization": "Bearer " + token, "x-user-id": "root"}),
            ("/api/orders", {}),
            ("/admin/x", {}),
            ("/a%2Fb", {}),
        ]:
            print(json.dumps(check(stub, path, headers)), flush=True)


if __name__ == "__main__":
    main()
