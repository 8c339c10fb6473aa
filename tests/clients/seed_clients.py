"""The seed's Python client example, unchanged in spirit, against the daemon.

Producer: js.publish("market.binance.BTCUSDT.trade", json bytes).
Consumer: js.subscribe("market.>", cb=handler, stream="MARKET_DATA",
durable="market-consumer") with await msg.ack().

Usage: seed_clients.py NATS_URL COUNT EXPECT_EXTRA
Publishes COUNT trades, then expects to receive COUNT + EXPECT_EXTRA
messages (the extra ones were published through the HTTP API before).
Prints one JSON line with what it saw.
"""
import asyncio
import json
import sys

import nats


async def main(url, count, extra):
    nc = await nats.connect(url)
    js = nc.jetstream()
    acks = []
    for i in range(count):
        trade = {"symbol": "BTCUSDT", "price": "50000.00", "quantity": "0.1", "i": i}
        ack = await js.publish("market.binance.BTCUSDT.trade", json.dumps(trade).encode())
        acks.append(ack.seq)

    received = []
    done = asyncio.Event()

    async def handler(msg):
        received.append((msg.subject, msg.data.decode()))
        await msg.ack()
        if len(received) >= count + extra:
            done.set()

    sub = await js.subscribe("market.>", cb=handler, stream="MARKET_DATA", durable="market-consumer")
    try:
        await asyncio.wait_for(done.wait(), timeout=20)
    finally:
        await sub.unsubscribe()
    # Acks are processed by JetStream asynchronously: give them a moment
    # before reading the consumer's state.
    await nc.flush()
    for _ in range(50):
        info = await js.consumer_info("MARKET_DATA", "market-consumer")
        if info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.1)
    await nc.close()
    print(json.dumps({
        "acked_seqs": acks,
        "received": received,
        "ack_pending": info.num_ack_pending,
        "pending": info.num_pending,
    }))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
