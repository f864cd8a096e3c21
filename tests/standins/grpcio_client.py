"""A real grpcio (gRPC C-core) client against the daemon's Unix socket.

Usage: grpcio_client.py SOCKET KEY

grpcio sends the socket path as the HTTP/2 :authority ("tmp%2Fdir%2Fbroker.sock"), which
h2 (the daemon's HTTP/2 server) refuses with RST_STREAM(PROTOCOL_ERROR). The README's
"Any gRPC client on the Unix socket" section gives each ecosystem's option; this script
checks both halves: without the option the call is refused (so the README is not stale),
with `grpc.default_authority` it works, end to end through WrapKey, UnwrapKey and
RevokeStatus.

No generated code: requests are protobuf bytes built by hand (a few length-delimited
fields), responses are read the same way. Prints one line per check; exits 1 on the first
failure.
"""

import os
import sys

import grpc


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, payload):
    """A length-delimited field (wire type 2): strings, bytes, messages."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def fields(msg):
    """The length-delimited fields of a message, as (number, bytes); others skipped."""
    i, out = 0, []
    while i < len(msg):
        key, i = read_varint(msg, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, i = read_varint(msg, i)
        elif wire == 2:
            n, i = read_varint(msg, i)
            out.append((number, msg[i : i + n]))
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return out


def read_varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def call(channel, method, request):
    rpc = channel.unary_unary(
        f"/kmsbroker.v1.KeyBroker/{method}",
        request_serializer=None,
        response_deserializer=None,
    )
    return rpc(request, timeout=20)


def fail(msg):
    print(f"FAIL {msg}")
    sys.exit(1)


def main():
    sock, key = sys.argv[1], sys.argv[2].encode()
    target = "unix:" + sock

    # 1. As grpcio is: refused by h2 before the daemon sees the call.
    with grpc.insecure_channel(target) as ch:
        try:
            call(ch, "RevokeStatus", b"")
            fail("a call without grpc.default_authority was served: update the README")
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.INTERNAL or "RST_STREAM" not in (e.details() or ""):
                fail(f"unexpected refusal without the option: {e.code()} {e.details()}")
    print("ok refused without grpc.default_authority (h2 rejects the socket path)")

    # 2. With the documented option.
    opts = [("grpc.default_authority", "localhost")]
    with grpc.insecure_channel(target, options=opts) as ch:
        status = call(ch, "RevokeStatus", b"")
        names = [v for n, v in fields(status) if n == 1 for n2, v in fields(v) if n2 == 1]
        if key not in names:
            fail(f"RevokeStatus does not list {key!r}: {names!r}")
        print("ok RevokeStatus lists the key")

        plaintext = os.urandom(32)
        wrapped = call(ch, "WrapKey", field(1, key) + field(2, plaintext))
        blob = dict(fields(wrapped)).get(1)
        if not blob:
            fail("WrapKey returned no wrapped blob")
        unwrapped = call(ch, "UnwrapKey", field(1, blob))
        if dict(fields(unwrapped)).get(1) != plaintext:
            fail("UnwrapKey did not return the wrapped plaintext")
        print("ok WrapKey then UnwrapKey round-trips")


if __name__ == "__main__":
    main()
