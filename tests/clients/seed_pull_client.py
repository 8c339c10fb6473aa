"""The seed's Python client as a pull consumer of the config-declared durable.

js.pull_subscribe("market.>", durable="market-consumer") binds to the
durable the daemon declared (nats-py creates it only when it is missing),
fetches what is left and acks every message.

Usage: seed_pull_client.py NATS_URL EXPECT
Fetches until EXPECT messages arrived (or 20 s passed). Prints one JSON line
with what it saw and the consumer's state afterwards.
"""
import asyncio
import json
import sys

import nats


async def main(url, expect):
    nc = await nats.connect(url)
    js = nc.jetstream()
    psub = await js.pull_subscribe("market.>", durable="market-consumer")
    received = []
    deadline = asyncio.get_running_loop().time() + 20
    while len(received) < expect and asyncio.get_running_loop().time() < deadline:
        try:
            msgs = await psub.fetch(expect - len(received), timeout=2)
        except nats.errors.TimeoutError:
            continue
        for msg in msgs:
            received.append([msg.subject, msg.data.decode(), msg.metadata.num_delivered])
            await msg.ack_sync()
    # Anything beyond what was expected would show up here.
    try:
        extra = await psub.fetch(1, timeout=0.5)
    except nats.errors.TimeoutError:
        extra = []
    info = await js.consumer_info("MARKET_DATA", "market-consumer")
    await nc.close()
    print(json.dumps({
        "received": received,
        "extra": len(extra),
        "ack_pending": info.num_ack_pending,
        "pending": info.num_pending,
        "filter_subject": info.config.filter_subject,
        "deliver_subject": info.config.deliver_subject,
    }))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
