"""`vgg serve` under load on localhost: dynamic batching on against off, in the same run, and a soak.

The demo's net (A, width 1/8, FC 256, crop 64, batch norm, 10 classes; random weights, which cost what
trained ones cost) serves the synthetic shapes as JPEGs. A bounded asyncio client (a minimal HTTP/1.1 writer
on kept-alive connections: it costs the shared cores about 0.2 ms per request) keeps `concurrency` requests
in flight until `--requests` are answered, for concurrency 1, 8 and 32. Batching on is `--max-batch-size 32
--max-wait-ms W`, off is `--max-batch-size 1`; both servers run side by side with the same `--threads`
PyTorch threads for the forward pass and the same preprocessing threads, so like is compared with like, and
each level is measured `--rounds` times, the two modes alternating. Reported per measurement: requests/s,
p50 and p99; from the server's /metrics the forward passes, the mean requests per pass, the mean time of a
pass, of one request's preprocessing (decode, resize, crop, normalise) and of its wait in the batcher's
queue; the server's CPU time per request (robust to the machine's load, unlike the rates); the load average.

    python benchmarks/serve.py                       # batching on vs off, centre crop (the fixed-size input)
    python benchmarks/serve.py --method dense        # §3.2's dense evaluation (sizes vary: smaller batches)
    python benchmarks/serve.py --soak --seconds 120  # mixed load: valid, bad, oversized, slow clients

The client runs on the same machine and takes CPU from the server: the numbers are for the pair.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_helpers import Server  # noqa: E402  (tests/serve_helpers.py: `vgg serve` on a free port)

from vggnet.checkpoint import make_checkpoint, save_checkpoint  # noqa: E402
from vggnet.data.synthetic import SyntheticShapes  # noqa: E402
from vggnet.demo import DEMO  # noqa: E402
from vggnet.models import vgg  # noqa: E402


def demo_checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    model = vgg(DEMO["model"], DEMO["classes"], width=DEMO["width"], fc_width=DEMO["fc_width"],
                crop_size=DEMO["crop_size"], batch_norm=DEMO["batch_norm"], dropout=DEMO["dropout"]).eval()
    path = folder / "demo_net.pt"
    save_checkpoint(path, make_checkpoint(model, preprocessing={"pixel_scale": 255.0, "mean": [120.0] * 3,
                                                                "std": [60.0] * 3},
                                          classes=[f"c{i}" for i in range(DEMO["classes"])],
                                          meta={"scale": DEMO["scale"]}))
    return path


def jpegs(n: int) -> list[bytes]:
    shapes = SyntheticShapes(n, classes=DEMO["classes"], split="val", image_size=tuple(DEMO["image_size"]))
    out = []
    for i in range(n):
        buf = io.BytesIO()
        shapes[i][0].save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else float("nan")


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str,
               body: bytes) -> int:
    """One HTTP/1.1 POST on a kept-alive connection; the status code (the JSON answer is read and dropped)."""
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode("ascii") + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(ln.split(":", 1)[1]) for ln in lines if ln.lower().startswith("content-length:"))
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def load(url: str, bodies: list[bytes], concurrency: int, requests: int, method: str) -> dict:
    """`requests` POSTs with `concurrency` in flight, each connection kept alive. The client is a minimal
    HTTP/1.1 writer on asyncio streams rather than httpx: at concurrency 32 httpx's pool took 2-5 ms of CPU
    per request, twice as much when answers came in bursts (as batching returns them), and being on the
    same cores it measured itself more than the server."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    queue = list(range(requests))
    host, port = url.removeprefix("http://").split(":")
    path = f"/v1/classify?method={method}"

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while queue:
                i = queue.pop()
                t0 = time.perf_counter()
                status = await post(reader, writer, f"{host}:{port}", path, bodies[i % len(bodies)])
                latencies.append(time.perf_counter() - t0)
                statuses[status] += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": requests, "rps": requests / wall,
            "p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99),
            "statuses": dict(statuses)}


def server_counts(url: str) -> dict[str, float]:
    """The /metrics sums and counts of batch sizes and stage times (cumulative since the server started)."""
    wanted = ("vgg_batch_size_sum", "vgg_batch_size_count", 'vgg_stage_seconds_sum{stage="forward"}',
              'vgg_stage_seconds_count{stage="forward"}', 'vgg_stage_seconds_sum{stage="preprocess"}',
              'vgg_stage_seconds_count{stage="preprocess"}', 'vgg_stage_seconds_sum{stage="queue"}',
              'vgg_stage_seconds_count{stage="queue"}')
    lines = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in httpx.get(f"{url}/metrics").text.splitlines()
             if not ln.startswith("#")}
    return {k: lines.get(k, 0.0) for k in wanted}


def server_stages(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    d = {k: after[k] - before[k] for k in after}
    passes = d["vgg_batch_size_count"]
    return {"passes": int(passes), "mean_batch": round(d["vgg_batch_size_sum"] / max(1.0, passes), 2),
            "forward_ms_per_pass": round(1000 * d['vgg_stage_seconds_sum{stage="forward"}']
                                         / max(1.0, d['vgg_stage_seconds_count{stage="forward"}']), 2),
            "preprocess_ms_per_request": round(1000 * d['vgg_stage_seconds_sum{stage="preprocess"}']
                                               / max(1.0, d['vgg_stage_seconds_count{stage="preprocess"}']), 2),
            "queue_ms_per_request": round(1000 * d['vgg_stage_seconds_sum{stage="queue"}']
                                          / max(1.0, d['vgg_stage_seconds_count{stage="queue"}']), 2)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads) so far: what a request costs the server,
    which a shared machine's load does not inflate the way it inflates wall-clock rates."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> float:
    with open("/proc/loadavg", encoding="ascii") as f:
        return float(f.read().split()[0])


def measure(s: Server, mode: str, c: int, args: argparse.Namespace, bodies: list[bytes]) -> dict:
    before, load_before = server_counts(s.url), load_average()
    cpu_before, client_before = cpu_seconds(s.process.pid), time.process_time()
    row = asyncio.run(load(s.url, bodies, c, args.requests, args.method))
    row.update(batching=mode, threads=args.threads, max_wait_ms=args.max_wait_ms, channels_last=args.channels_last,
               server_cpu_ms_per_request=round(1000 * (cpu_seconds(s.process.pid) - cpu_before) / args.requests, 2),
               client_cpu_ms_per_request=round(1000 * (time.process_time() - client_before) / args.requests, 2),
               **server_stages(before, server_counts(s.url)), load_average=[load_before, load_average()])
    print(f"batching {mode:<3}  concurrency {c:>2}: {row['rps']:7.1f} req/s  p50 {row['p50_ms']:7.1f} ms"
          f"  p99 {row['p99_ms']:7.1f} ms  {row['passes']} passes of {row['mean_batch']:.2f} "
          f"({row['forward_ms_per_pass']:.1f} ms each), preprocess {row['preprocess_ms_per_request']:.1f} ms, "
          f"queue {row['queue_ms_per_request']:.1f} ms, server CPU {row['server_cpu_ms_per_request']:.1f} ms "
          f"per request  load {load_before:.1f}-{row['load_average'][1]:.1f}  {row['statuses']}", flush=True)
    return row


def throughput(args: argparse.Namespace, ckpt: Path, bodies: list[bytes]) -> dict:
    """Both servers run side by side; every level is measured `--rounds` times, on and off alternating (the
    order flipped each round), so that drift in a shared machine's load falls on both modes alike. The
    median round of each is reported."""
    common = ["--method", args.method, "--max-queue", "256", "--channels-last", args.channels_last]
    rows: list[dict] = []
    with Server(ckpt, "--max-batch-size", "32", "--max-wait-ms", str(args.max_wait_ms), *common,
                threads=args.threads) as on, Server(ckpt, "--max-batch-size", "1", *common,
                                                    threads=args.threads) as off:
        servers = {"on": on, "off": off}
        for s in servers.values():
            asyncio.run(load(s.url, bodies, 4, 32, args.method))  # warm-up
        for r in range(args.rounds):
            for c in args.concurrency:
                for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
                    rows.append({**measure(servers[mode], mode, c, args, bodies), "round": r})
        for s in servers.values():
            s.stop()
    summary = []
    for c in args.concurrency:
        med = {}
        for mode in ("on", "off"):
            runs = sorted((x for x in rows if x["batching"] == mode and x["concurrency"] == c),
                          key=lambda x: x["rps"])
            med[mode] = runs[len(runs) // 2]
        ratio = med["on"]["rps"] / med["off"]["rps"]
        summary.append({"concurrency": c, "on": med["on"], "off": med["off"], "on_over_off": round(ratio, 2)})
        print(f"concurrency {c:>2} (median of {args.rounds}): on {med['on']['rps']:.1f} req/s (p99 "
              f"{med['on']['p99_ms']:.0f} ms, batches of {med['on']['mean_batch']:.2f}), off "
              f"{med['off']['rps']:.1f} req/s (p99 {med['off']['p99_ms']:.0f} ms): on / off = {ratio:.2f}x")
    return {"runs": rows, "median": summary}


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def soak(url: str, pid: int, bodies: list[bytes], seconds: float, concurrency: int) -> dict:
    """Mixed load for `seconds`: 70% valid images, 10% not images, 10% over the upload limit, 10% slow
    clients (the body dribbled in ten pieces over about a second). RSS sampled every second."""
    kinds = ["valid"] * 7 + ["bad", "oversized", "slow"]
    statuses: Counter = Counter()
    latencies: list[float] = []
    rss: list[tuple[float, int]] = []
    big = b"\xff\xd8" + bytes(3 * 2 ** 20)  # 3 MB, over --max-upload-mb 2
    rng = random.Random(0)
    t_start = time.perf_counter()
    deadline = t_start + seconds

    async def dribble(body: bytes):
        step = max(1, len(body) // 10)
        for i in range(0, len(body), step):
            yield body[i:i + step]
            await asyncio.sleep(0.1)

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            while time.perf_counter() < deadline:
                kind = rng.choice(kinds)
                body = rng.choice(bodies)
                content = {"valid": body, "bad": b"%PDF-1.4 not an image", "oversized": big,
                           "slow": dribble(body)}[kind]
                t0 = time.perf_counter()
                try:
                    r = await client.post(f"{url}/v1/classify", content=content)
                    statuses[(kind, r.status_code)] += 1
                except httpx.HTTPError as exc:  # a refused upload may close the connection mid-body
                    statuses[(kind, type(exc).__name__)] += 1
                latencies.append(time.perf_counter() - t0)

        async def sampler() -> None:
            while time.perf_counter() < deadline:
                rss.append((time.perf_counter() - t_start, rss_kb(pid)))
                await asyncio.sleep(1.0)

        await asyncio.gather(sampler(), *(worker() for _ in range(concurrency)))
    warm = [kb for t, kb in rss if t <= seconds * 0.25] or [rss[0][1]]
    late = [kb for t, kb in rss if t >= seconds * 0.75] or [rss[-1][1]]
    unexpected = sum(n for (k, s), n in statuses.items() if isinstance(s, int) and s >= 500 and s not in (503, 504))
    return {"seconds": seconds, "requests": sum(statuses.values()),
            "by_kind_and_status": {f"{k} {s}": n for (k, s), n in sorted(statuses.items(), key=str)},
            "p99_ms": 1000 * percentile(latencies, 99), "unexpected_5xx": unexpected,
            "rss_mb_after_warmup": max(warm) / 1024, "rss_mb_peak": max(kb for _, kb in rss) / 1024,
            "rss_mb_last_quarter": max(late) / 1024,
            "grew_mb": (max(late) - max(warm)) / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=lambda s: [int(v) for v in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=256, help="requests per concurrency level")
    parser.add_argument("--method", default="center", choices=["center", "dense", "multi-crop", "both"])
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="batching on's --max-wait-ms")
    parser.add_argument("--threads", type=int, default=1,
                        help="the server's --threads, the same for both modes (default 1: on 2 shared cores the "
                             "second core is the event loop's and the decoders')")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each level and mode")
    parser.add_argument("--channels-last", choices=["on", "off"], default="off",
                        help="the servers' --channels-last (both modes alike; default: %(default)s)")
    parser.add_argument("--soak", action="store_true", help="the mixed-load soak instead of the comparison")
    parser.add_argument("--seconds", type=float, default=60.0, help="soak duration")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results here")
    args = parser.parse_args(argv)
    bodies = jpegs(64)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = demo_checkpoint(Path(tmp))
        if args.soak:
            with Server(ckpt, "--method", args.method, "--max-upload-mb", "2", "--timeout-s", "10",
                        "--max-queue", "64", threads=args.threads) as s:
                result = asyncio.run(soak(s.url, s.process.pid, bodies, args.seconds, 16))
                result["exit_status"] = s.stop()
            print(json.dumps(result, indent=2))
        else:
            result = throughput(args, ckpt, bodies)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
