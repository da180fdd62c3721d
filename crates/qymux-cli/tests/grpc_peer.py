"""A gRPC server and client written with grpcio (Python), not by Qymux: the tests run
them on either side of a `qymux` tunnel. Generic handlers move raw bytes, so no
generated code is needed.

    grpc_peer.py server REPLY_PREFIX   # serves /qymux.test.Echo/Say on 127.0.0.1:0,
                                       # prints "listening PORT"
    grpc_peer.py client ADDR MESSAGE             # one unary call, prints the reply
"""
import sys
from concurrent import futures

import grpc


def serve(prefix):
    def say(request, context):
        return prefix.encode() + b": " + request

    handler = grpc.method_handlers_generic_handler(
        "qymux.test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("listening", port, flush=True)
    server.wait_for_termination()


def call(addr, message):
    with grpc.insecure_channel(addr) as channel:
        say = channel.unary_unary("/qymux.test.Echo/Say")
        reply = say(message.encode(), timeout=20)
        print(reply.decode(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(sys.argv[2])
    else:
        call(sys.argv[2], sys.argv[3])
