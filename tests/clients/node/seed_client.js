// The seed's Node.js client example against the daemon: js.publish(...),
// js.subscribe('market.>', {stream: 'MARKET_DATA', durable_name:
// 'market-consumer'}), msg.ack().
// Usage: node seed_client.js NATS_URL COUNT EXPECT_EXTRA
const { connect, StringCodec, consumerOpts, createInbox } = require("nats");

async function main() {
  const [url, countArg, extraArg] = process.argv.slice(2);
  const count = Number(countArg);
  const extra = Number(extraArg);
  const nc = await connect({ servers: url });
  const js = nc.jetstream();
  const sc = StringCodec();
  const acked = [];
  for (let i = 0; i < count; i++) {
    const trade = { symbol: "ETHUSDT", price: "3000.00", i };
    const ack = await js.publish("market.binance.ETHUSDT.trade", sc.encode(JSON.stringify(trade)));
    acked.push(ack.seq);
  }
  const opts = consumerOpts();
  opts.bindStream("MARKET_DATA");
  opts.durable("market-consumer");
  opts.manualAck();
  opts.ackExplicit();
  opts.deliverTo(createInbox());
  const sub = await js.subscribe("market.>", opts);
  const received = [];
  const timer = setTimeout(() => sub.stop(), 20000);
  for await (const m of sub) {
    received.push([m.subject, sc.decode(m.data)]);
    m.ack();
    if (received.length >= count + extra) break;
  }
  clearTimeout(timer);
  await nc.flush();
  const jsm = await nc.jetstreamManager();
  // Acks are processed by JetStream asynchronously: give them a moment.
  let info;
  for (let i = 0; i < 50; i++) {
    info = await jsm.consumers.info("MARKET_DATA", "market-consumer");
    if (info.num_ack_pending === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  await nc.close();
  console.log(JSON.stringify({ acked_seqs: acked, received, ack_pending: info.num_ack_pending, pending: info.num_pending }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
