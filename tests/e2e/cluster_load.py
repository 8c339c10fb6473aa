"""The load and the counts of tests/e2e/cluster-nspawn.sh.

    cluster_load.py produce --nodes IP,IP,IP --port 8085 --rate N --dir RUN
    cluster_load.py consume --nodes IP,IP,IP --dir RUN
    cluster_load.py check --nodes NAME=IP,... --monitor-port 8222 --dir RUN
    cluster_load.py leader --nodes IP,IP,IP --monitor-port 8222

produce: publishes numbered messages through POST /api/v1/publish with
message ids (a retry cannot store one twice), to the nodes in turn, one
new connection per request; a failed attempt is retried on the next node
until it is acknowledged (or given up after GIVE_UP_S). Every attempt is a
line of RUN/produced.jsonl, filed under the event named in RUN/event. Stops
once RUN/stop exists, after the publish in hand, then writes RUN/produced.done.

consume: a nats-py durable pull consumer of MARKET_DATA connected to all
three nodes; every message received (and acked) is a line of
RUN/consumed.jsonl. Once RUN/stop exists it drains: it stops when the
producer is done and it has received every seq the producer was
acknowledged (or DRAIN_MAX_S after RUN/stop).

check: waits until the nodes' own stream states (/jsz) agree, reads the
stream from each node in turn (the node hosting the reading consumer is
checked), prints the counts per event as a table, and exits 1 when an
acknowledged publish is missing from a node (or not at its acknowledged
seq) or from what the consumer
got, when a publish was given up, or when a publish during the upgrade
failed otherwise than with 503 and Retry-After.

leader: prints the stream's leader, from the nodes' monitor (/jsz).
"""

import argparse
import asyncio
import collections
import errno
import http.client
import json
import os
import socket
import sys
import time

STREAM = "MARKET_DATA"
SUBJECT = "market.e2e.trade"
FILTER = "market.e2e.>"
DURABLE = "e2e-check"
NATS_PORT = 4222
GIVE_UP_S = 90.0
CONNECT_TIMEOUT_S = 2.0
RESPONSE_TIMEOUT_S = 20.0
IDLE_S = 4.0
DRAIN_MAX_S = 120.0
# The events in the order the test runs them.
EVENTS = ["start", "upgrade", "poweroff", "partition", "end"]
# The event whose failures must all be 503 with Retry-After.
STRICT_EVENT = "upgrade"


def say(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


# --- produce -----------------------------------------------------------------


def classify_error(e):
    """A failed attempt's kind, from the exception it raised."""
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
        return "reset"
    if isinstance(e, socket.timeout):
        return "timeout"
    if isinstance(e, OSError) and e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    return "error:" + type(e).__name__


def publish_once(host, port, n, event):
    """One attempt: a dict with ok, and kind/status/retry_after or seq."""
    body = json.dumps(
        {"subject": SUBJECT, "message": {"n": n, "event": event}, "msg_id": f"e2e-{n}"}
    )
    conn = http.client.HTTPConnection(host, port, timeout=CONNECT_TIMEOUT_S)
    try:
        try:
            conn.connect()
        except socket.timeout:
            return {"ok": False, "kind": "connect-timeout"}
        conn.sock.settimeout(RESPONSE_TIMEOUT_S)
        conn.request(
            "POST",
            "/api/v1/publish",
            body=body,
            headers={"Content-Type": "application/json", "Connection": "close"},
        )
        r = conn.getresponse()
        text = r.read().decode(errors="replace")
        retry_after = r.getheader("Retry-After")
    except Exception as e:  # noqa: BLE001 - every failure is recorded
        return {"ok": False, "kind": classify_error(e), "detail": str(e)[:200]}
    finally:
        conn.close()
    if r.status == 200:
        try:
            v = json.loads(text)
        except ValueError:
            v = {}
        if v.get("success") and v.get("stream") == STREAM and isinstance(v.get("seq"), int):
            return {"ok": True, "status": 200, "seq": v["seq"], "dup": bool(v.get("duplicate"))}
        return {"ok": False, "kind": "200-without-seq", "status": 200, "detail": text[:200]}
    kind = f"{r.status}+retry-after" if retry_after else f"{r.status}"
    return {
        "ok": False,
        "kind": kind,
        "status": r.status,
        "retry_after": retry_after,
        "detail": text[:200],
    }


def read_event(run):
    try:
        with open(os.path.join(run, "event")) as f:
            return f.read().strip() or "start"
    except OSError:
        return "start"


def produce(args):
    nodes = args.nodes.split(",")
    run = args.dir
    stop = os.path.join(run, "stop")
    interval = 1.0 / args.rate
    out = open(os.path.join(run, "produced.jsonl"), "a", buffering=1)
    n = 0
    acked = 0
    while not os.path.exists(stop):
        n += 1
        event = read_event(run)
        first = time.monotonic()
        attempt = 0
        failed_in_a_row = 0
        while True:
            node = nodes[(n + attempt) % len(nodes)]
            rec = publish_once(node, args.port, n, event)
            rec.update(n=n, event=event, node=node, attempt=attempt, t=round(time.time(), 3))
            out.write(json.dumps(rec) + "\n")
            if rec["ok"]:
                acked += 1
                break
            attempt += 1
            failed_in_a_row += 1
            if time.monotonic() - first > GIVE_UP_S:
                out.write(json.dumps({"n": n, "event": event, "gave_up": True}) + "\n")
                say(f"gave up message {n} after {attempt} attempts")
                break
            # Every node refused it in turn: wait as told (at most 2 s).
            if failed_in_a_row % len(nodes) == 0:
                try:
                    wait = float(rec.get("retry_after") or 0.5)
                except ValueError:
                    wait = 0.5
                time.sleep(min(max(wait, 0.1), 2.0))
            else:
                time.sleep(0.05)
        if n % 500 == 0:
            say(f"message {n}: {acked} acked")
        rest = first + interval - time.monotonic()
        if rest > 0:
            time.sleep(rest)
    out.close()
    # Only now is produced.jsonl complete: the consumer drains against it
    # once this exists (a publish in flight when RUN/stop appeared, retried
    # for seconds, is written last).
    open(os.path.join(run, "produced.done"), "w").close()
    say(f"stopped: {n} messages, {acked} acked")


# --- consume -----------------------------------------------------------------


async def consume_async(args):
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    servers = [f"nats://{ip}:{NATS_PORT}" for ip in args.nodes.split(",")]
    run = args.dir
    stop = os.path.join(run, "stop")
    out = open(os.path.join(run, "consumed.jsonl"), "a", buffering=1)

    async def on_error(e):
        say(f"nats: {type(e).__name__}: {e}")

    nc = await nats.connect(
        servers=servers,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        error_cb=on_error,
    )
    js = nc.jetstream(timeout=5)
    config = ConsumerConfig(
        durable_name=DURABLE,
        filter_subject=FILTER,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=5,
        max_ack_pending=10000,
    )
    sub = None
    got = 0
    idle_since = time.monotonic()
    last_look = 0.0
    seen = set()  # stream seqs received
    stop_seen = None
    last_count = 0.0
    while True:
        now = time.monotonic()
        # Once the producer stopped: drain until every seq it was
        # acknowledged has come (or DRAIN_MAX_S).
        if os.path.exists(stop) and now - last_count >= 1:
            last_count = now
            stop_seen = stop_seen or now
            done = os.path.exists(os.path.join(run, "produced.done"))
            acked = {
                r["seq"]
                for r in load_jsonl(os.path.join(run, "produced.jsonl"))
                if r.get("ok")
            }
            if (done and acked <= seen) or now - stop_seen > DRAIN_MAX_S:
                if not acked <= seen:
                    say(f"gave up draining: {len(acked - seen)} acknowledged seqs not received")
                break
        # Nothing for a while: if the consumer says messages are waiting,
        # the pull subscription lost its way (its node went away): bind
        # again, as a long-running client would.
        if sub is not None and now - idle_since >= IDLE_S and now - last_look >= IDLE_S:
            last_look = now
            try:
                ci = await sub.consumer_info()
                if ci.num_pending or ci.num_ack_pending:
                    say(f"idle with {ci.num_pending} pending, {ci.num_ack_pending} unacked: binding again")
                    await sub.unsubscribe()
                    sub = None
            except Exception as e:  # noqa: BLE001
                say(f"consumer info: {type(e).__name__}: {e}")
        try:
            if sub is None:
                sub = await js.pull_subscribe(FILTER, durable=DURABLE, stream=STREAM, config=config)
                say("consumer bound")
            msgs = await sub.fetch(200, timeout=1)
        except asyncio.TimeoutError:
            continue
        except Exception as e:  # noqa: BLE001 - the cluster is being disturbed on purpose
            if type(e).__name__ in ("TimeoutError", "FetchTimeoutError"):
                continue
            say(f"fetch: {type(e).__name__}: {e}")
            if sub is not None and type(e).__name__ not in ("NoRespondersError",):
                try:
                    await sub.unsubscribe()
                except Exception:  # noqa: BLE001
                    pass
                sub = None
            await asyncio.sleep(0.5)
            continue
        for m in msgs:
            try:
                n = json.loads(m.data)["n"]
            except (ValueError, KeyError, TypeError):
                n = None
            md = m.metadata
            out.write(
                json.dumps({"n": n, "seq": md.sequence.stream, "delivered": md.num_delivered}) + "\n"
            )
            got += 1
            seen.add(md.sequence.stream)
            try:
                await m.ack()
            except Exception as e:  # noqa: BLE001 - redelivered later then
                say(f"ack: {type(e).__name__}: {e}")
        if msgs:
            idle_since = time.monotonic()
    say(f"stopped: {got} messages received")
    await nc.close()


# --- check -------------------------------------------------------------------


def jsz_stream(ip, port):
    """STREAM's detail in this node's own /jsz (its replica), or None."""
    conn = http.client.HTTPConnection(ip, port, timeout=5)
    conn.request("GET", "/jsz?accounts=true&streams=true")
    v = json.loads(conn.getresponse().read())
    conn.close()
    for acc in v.get("account_details") or []:
        for s in acc.get("stream_detail") or []:
            if s.get("name") == STREAM:
                return s
    return None


def jsz_state(ip, port):
    """This node's own state of STREAM: (messages, first_seq, last_seq), or
    None when it holds no replica."""
    s = jsz_stream(ip, port)
    if s is None:
        return None
    st = s["state"]
    return (st.get("messages", 0), st.get("first_seq", 0), st.get("last_seq", 0))


def leader(args):
    """Prints STREAM's leader as the first node that knows one says."""
    for ip in args.nodes.split(","):
        try:
            s = jsz_stream(ip, args.monitor_port)
        except Exception:  # noqa: BLE001 - the next node then
            continue
        name = ((s or {}).get("cluster") or {}).get("leader")
        if name:
            print(name)
            return 0
    return 1


async def read_from_each(nodes):
    """{node name: ({seq: n}, name of the server the reader was on)} for each
    node, read through a consumer hosted on that node (the stream leader is
    moved there first)."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await nats.connect(servers=[f"nats://{ip}:{NATS_PORT}" for _, ip in nodes])
    js = nc.jetstream(timeout=10)
    result = {}
    for name, _ in nodes:
        info = await js.stream_info(STREAM)
        if info.cluster is None or name not in [info.cluster.leader] + [
            r.name for r in (info.cluster.replicas or [])
        ]:
            result[name] = (None, "no replica")
            continue
        # Up to 5 tries: an election may move the consumer away mid-read.
        got = None
        for _ in range(5):
            reader = None
            tries = []
            for attempt in range(30):
                try:
                    info = await js.stream_info(STREAM)
                    leader = info.cluster.leader if info.cluster else None
                except Exception:  # noqa: BLE001 - no leader right now
                    leader = None
                host = None
                if leader is not None:
                    try:
                        sub = await js.pull_subscribe(
                            FILTER,
                            stream=STREAM,
                            config=ConsumerConfig(
                                ack_policy=AckPolicy.NONE,
                                deliver_policy=DeliverPolicy.ALL,
                                mem_storage=True,
                                num_replicas=1,
                                inactive_threshold=30,
                            ),
                        )
                        ci = await sub.consumer_info()
                        host = ci.cluster.leader if ci.cluster else None
                        if host == name:
                            reader = sub
                            break
                        await sub.unsubscribe()
                    except Exception as e:  # noqa: BLE001 - a leader election, try again
                        host = type(e).__name__
                tries.append(f"{leader}/{host}")
                # A reader lands where the stream leader is: move the leader
                # on (to a random other replica) until it is this node.
                if leader is not None and leader != name and attempt % 2 == 1:
                    try:
                        await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{STREAM}", b"", timeout=5)
                    except Exception as e:  # noqa: BLE001
                        say(f"stepdown: {type(e).__name__}: {e}")
                await asyncio.sleep(1)
            if reader is None:
                say(f"{name}: (stream leader/reader's host) seen: {' '.join(tries)}")
                result[name] = (None, "could not read from it")
                break
            got = {}
            while True:
                try:
                    msgs = await reader.fetch(1000, timeout=2)
                except Exception as e:  # noqa: BLE001
                    if "Timeout" in type(e).__name__:
                        break
                    # A leader election under the reader (a 503 status):
                    # read again through a new reader on this node.
                    say(f"{name}: reading: {type(e).__name__}: {e}; again")
                    got = None
                    break
                for m in msgs:
                    got[m.metadata.sequence.stream] = json.loads(m.data)["n"]
                if msgs and msgs[-1].metadata.num_pending == 0:
                    break
            if got is not None:
                break
            try:
                await reader.unsubscribe()
            except Exception:  # noqa: BLE001
                pass
            await asyncio.sleep(1)
        if reader is None:
            continue
        if got is None:
            result[name] = (None, "could not read from it")
            continue
        await reader.unsubscribe()
        result[name] = (got, name)
    await nc.close()
    return result


def load_jsonl(path):
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    return out


def check(args):
    nodes = [tuple(x.split("=", 1)) for x in args.nodes.split(",")]
    produced = load_jsonl(os.path.join(args.dir, "produced.jsonl"))
    consumed = load_jsonl(os.path.join(args.dir, "consumed.jsonl"))

    event_of = {}
    acked_seq = {}  # n -> seq
    failures = collections.defaultdict(collections.Counter)  # event -> kind -> count
    failed_msgs = set()
    gave_up = set()
    bad = []
    strict = collections.defaultdict(list)  # kind -> failed attempts
    for r in produced:
        n = r["n"]
        event_of.setdefault(n, r["event"])
        if r.get("gave_up"):
            gave_up.add(n)
        elif r["ok"]:
            if n in acked_seq and acked_seq[n] != r["seq"]:
                bad.append(f"message {n} acknowledged at seq {acked_seq[n]} and at {r['seq']}")
            acked_seq[n] = r["seq"]
        else:
            failures[event_of[n]][r["kind"]] += 1
            failed_msgs.add(n)
            if event_of[n] == STRICT_EVENT and r["kind"] != "503+retry-after":
                strict[r["kind"]].append(r)
    for kind, rs in sorted(strict.items()):
        r = rs[0]
        bad.append(
            f"{STRICT_EVENT}: {len(rs)} attempts failed with {kind}; the first: message"
            f" {r['n']} to {r['node']} ({r.get('detail', '')[:120]})"
        )
    max_seq = max(acked_seq.values(), default=0)
    shared = sorted(seq for seq, c in collections.Counter(acked_seq.values()).items() if c > 1)
    if shared:
        bad.append(
            f"{len(shared)} seqs acknowledged for more than one message, e.g. {shared[:10]}"
        )

    # The nodes' own stream states agree, and reach the last acked seq.
    deadline = time.monotonic() + 60
    while True:
        states = {}
        for name, ip in nodes:
            try:
                states[name] = jsz_state(ip, args.monitor_port)
            except Exception as e:  # noqa: BLE001
                states[name] = f"error: {e}"
        vals = list(states.values())
        settled = all(isinstance(v, tuple) for v in vals) and len(set(vals)) == 1
        if settled and vals[0][2] >= max_seq:
            break
        if time.monotonic() > deadline:
            bad.append(f"the nodes' stream states do not agree after 60 s: {states}")
            break
        time.sleep(1)
    say("stream state per node (messages, first seq, last seq): " + json.dumps(states))

    copies = asyncio.run(read_from_each(nodes))
    on_node = {}
    for name, _ in nodes:
        got, via = copies[name]
        if got is None:
            bad.append(f"{name}: its copy of {STREAM} could not be read ({via})")
            on_node[name] = set()
            continue
        ok = {n for n, seq in acked_seq.items() if got.get(seq) == n}
        missing = sorted(set(acked_seq) - ok, key=lambda n: acked_seq[n])
        if missing:
            first = missing[0]
            seq = acked_seq[first]
            where = {m: s for s, m in got.items()}
            bad.append(
                f"{name}: {len(missing)} acknowledged messages missing or not at their"
                f" acknowledged seq; the first: message {first} acknowledged at seq {seq},"
                f" where {name} has message {got.get(seq)}; {name} has message {first}"
                f" at seq {where.get(first)}"
            )
        say(f"{name}: read {len(got)} messages through a consumer hosted on {via}")
        on_node[name] = ok

    received = {r["n"] for r in consumed}
    not_consumed = sorted(set(acked_seq) - received)
    if not_consumed:
        bad.append(
            f"the consumer did not get {len(not_consumed)} acknowledged messages,"
            f" e.g. {not_consumed[:10]}"
        )
    if gave_up:
        bad.append(f"{len(gave_up)} publishes given up after {GIVE_UP_S:.0f} s, e.g. {sorted(gave_up)[:10]}")

    # The table.
    names = [name for name, _ in nodes]
    head = ["event", "published", "acked", "failed (by kind)", "retried ok", "gave up", "consumed"] + [
        f"on {x}" for x in names
    ]
    rows = []
    events = EVENTS + sorted(set(event_of.values()) - set(EVENTS))
    for ev in events + ["total"]:
        ns = {n for n, e in event_of.items() if ev in (e, "total")}
        if not ns and ev != "total":
            continue
        acked = {n for n in ns if n in acked_seq}
        fk = collections.Counter()
        for e, c in failures.items():
            if ev in (e, "total"):
                fk.update(c)
        kinds = " ".join(f"{k}:{v}" for k, v in sorted(fk.items())) or "-"
        rows.append(
            [
                ev,
                str(len(ns)),
                str(len(acked)),
                f"{sum(fk.values())} {kinds}" if fk else "0",
                str(len(acked & failed_msgs)),
                str(len(ns & gave_up)),
                str(len(acked & received)),
            ]
            + [str(len(acked & on_node[x])) for x in names]
        )
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    print()
    print(line(head))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))
    print()
    dups = sum(1 for r in produced if r.get("ok") and r.get("dup"))
    redelivered = len(consumed) - len(received)
    print(
        f"acknowledged as duplicates (a retry of a stored message): {dups};"
        f" consumer deliveries beyond the first: {redelivered}"
    )
    if bad:
        for b in bad:
            print(f"FAILED: {b}")
        return 1
    print(
        f"ok: all {len(acked_seq)} acknowledged publishes are on {', '.join(names)} at their"
        f" acknowledged seq and were consumed; {STRICT_EVENT} failures: only 503 + Retry-After"
    )
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("produce")
    a.add_argument("--nodes", required=True)
    a.add_argument("--port", type=int, default=8085)
    a.add_argument("--rate", type=float, default=40)
    a.add_argument("--dir", required=True)
    a = sub.add_parser("consume")
    a.add_argument("--nodes", required=True)
    a.add_argument("--dir", required=True)
    a = sub.add_parser("leader")
    a.add_argument("--nodes", required=True)
    a.add_argument("--monitor-port", type=int, default=8222)
    a = sub.add_parser("check")
    a.add_argument("--nodes", required=True)
    a.add_argument("--monitor-port", type=int, default=8222)
    a.add_argument("--dir", required=True)
    args = p.parse_args()
    if args.cmd == "produce":
        produce(args)
    elif args.cmd == "consume":
        asyncio.run(consume_async(args))
    elif args.cmd == "leader":
        sys.exit(leader(args))
    else:
        sys.exit(check(args))


if __name__ == "__main__":
    main()
