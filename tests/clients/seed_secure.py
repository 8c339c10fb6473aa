"""The seed's Python producer and consumer, each logged in as its own user
(the seed's `users:` block), against the daemon's nats-server.

Usage:
  seed_secure.py produce NATS_URL COUNT   js.publish COUNT trades
  seed_secure.py consume NATS_URL COUNT   js.subscribe("market.>",
      durable="market-consumer"), ack COUNT messages
  seed_secure.py tls-peer HOST PORT CA CERT   whether the certificate
      nats-server presents to a new TLS connection is the one in CERT
NATS_URL carries the credentials: nats://user:password@127.0.0.1:4222.
Prints one JSON line; errors the server reported (permission violations)
are listed under "errors".
"""
import asyncio
import hashlib
import json
import socket
import ssl
import sys

import nats


async def connect(url, errors):
    async def on_error(e):
        errors.append(str(e))

    return await nats.connect(url, error_cb=on_error, max_reconnect_attempts=0)


async def produce(url, count):
    errors = []
    nc = await connect(url, errors)
    js = nc.jetstream()
    seqs = []
    for i in range(count):
        trade = {"symbol": "BTCUSDT", "price": "50000.00", "quantity": "0.1", "i": i}
        ack = await js.publish("market.binance.BTCUSDT.trade", json.dumps(trade).encode())
        seqs.append(ack.seq)
    await nc.close()
    return {"acked_seqs": seqs, "errors": errors}


async def consume(url, count):
    errors = []
    nc = await connect(url, errors)
    js = nc.jetstream()
    received = []
    done = asyncio.Event()

    async def handler(msg):
        received.append(json.loads(msg.data.decode()).get("i"))
        await msg.ack()
        if len(received) >= count:
            done.set()

    # No stream= : nats-py looks the stream up by subject (STREAM.NAMES).
    sub = await js.subscribe("market.>", cb=handler, durable="market-consumer")
    try:
        await asyncio.wait_for(done.wait(), timeout=20)
    finally:
        await sub.unsubscribe()
    await nc.flush()
    info = None
    for _ in range(50):
        info = await js.consumer_info("MARKET_DATA", "market-consumer")
        if info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.1)
    await nc.close()
    return {
        "received": received,
        "ack_pending": info.num_ack_pending,
        "errors": errors,
    }


def tls_peer(host, port, ca, cert_file):
    # NATS sends INFO in the clear, then the client starts TLS.
    raw = socket.create_connection((host, int(port)), timeout=5)
    f = raw.makefile("rb")
    info = json.loads(f.readline()[5:])
    ctx = ssl.create_default_context(cafile=ca)
    tls = ctx.wrap_socket(raw, server_hostname=host)
    der = tls.getpeercert(binary_form=True)
    tls.close()
    with open(cert_file) as f:
        want = ssl.PEM_cert_to_DER_cert(f.read())
    return {
        "sha256": hashlib.sha256(der).hexdigest(),
        "matches_file": der == want,
        "tls_required": info.get("tls_required"),
    }


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "produce":
        out = asyncio.run(produce(sys.argv[2], int(sys.argv[3])))
    elif mode == "consume":
        out = asyncio.run(consume(sys.argv[2], int(sys.argv[3])))
    elif mode == "tls-peer":
        out = tls_peer(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    else:
        sys.exit(f"unknown mode {mode}")
    print(json.dumps(out))
