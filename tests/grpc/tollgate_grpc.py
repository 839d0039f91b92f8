"""A real gRPC client and upstream (PyPI grpcio) for Tollgate's end-to-end
gRPC test (tests/tests/grpc.rs).

    tollgate_grpc.py serve PORT
        A gRPC server on 127.0.0.1:PORT: /tollgate.test.Echo/Say answers
        each request with its own bytes and the initial metadata
        `echo: yes`. Runs until killed.

    tollgate_grpc.py call PORT KEY N
        N unary calls of /tollgate.test.Echo/Say through 127.0.0.1:PORT
        (plaintext HTTP/2), with `x-api-key: KEY` unless KEY is "-". One
        JSON line per call: {"code", "details", "initial", "trailing",
        "reply"}.

Messages are raw bytes, so no generated code is needed.
"""

import json
import sys
import time
from concurrent import futures

import grpc

METHOD = "/tollgate.test.Echo/Say"


def serve(port):
    def say(request, context):
        context.send_initial_metadata((("echo", "yes"),))
        return request

    handler = grpc.method_handlers_generic_handler(
        "tollgate.test.Echo",
        {"Say": grpc.unary_unary_rpc_method_handler(say)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"serving on {port}", flush=True)
    while True:
        time.sleep(3600)


def call(port, key, n):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        say = channel.unary_unary(METHOD)
        metadata = () if key == "-" else (("x-api-key", key),)
        for i in range(n):
            out = {"code": "OK", "details": "", "initial": {}, "trailing": {}, "reply": ""}
            try:
                reply, c = say.with_call(f"hello {i}".encode(), metadata=metadata, timeout=10)
                out["reply"] = reply.decode()
            except grpc.RpcError as e:
                c = e
                out["code"] = e.code().name
                out["details"] = e.details() or ""
            out["initial"] = dict(c.initial_metadata() or ())
            out["trailing"] = dict(c.trailing_metadata() or ())
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        call(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
