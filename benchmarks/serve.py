"""`vgg serve` under load on localhost: dynamic batching on against off, in the same run, and a soak.

The demo's net (A, width 1/8, FC 256, crop 64, batch norm, 10 classes; random weights, which cost what
trained ones cost) serves the synthetic shapes as JPEGs. A bounded asyncio client (httpx) keeps
`concurrency` requests in flight until `--requests` are answered, for concurrency 1, 8 and 32; batching on
is `--max-batch-size 32 --max-wait-ms 5`, off is `--max-batch-size 1`. Reported: requests/s, p50 and p99.

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
import random
import statistics
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


async def load(url: str, bodies: list[bytes], concurrency: int, requests: int, method: str) -> dict:
    latencies: list[float] = []
    statuses: Counter = Counter()
    queue = list(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        async def worker() -> None:
            while queue:
                i = queue.pop()
                t0 = time.perf_counter()
                r = await client.post(f"{url}/v1/classify", params={"method": method},
                                      content=bodies[i % len(bodies)])
                latencies.append(time.perf_counter() - t0)
                statuses[r.status_code] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": requests, "rps": requests / wall,
            "p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99),
            "statuses": dict(statuses)}


def batch_sizes(url: str) -> float:
    lines = {ln.split()[0]: float(ln.split()[1]) for ln in httpx.get(f"{url}/metrics").text.splitlines()
             if ln.startswith("vgg_batch_size_sum") or ln.startswith("vgg_batch_size_count")}
    return lines["vgg_batch_size_sum"] / max(1.0, lines["vgg_batch_size_count"])


def throughput(args: argparse.Namespace, ckpt: Path, bodies: list[bytes]) -> list[dict]:
    rows = []
    for mode, flags in (("on", ["--max-batch-size", "32", "--max-wait-ms", str(args.max_wait_ms)]),
                        ("off", ["--max-batch-size", "1"])):
        with Server(ckpt, *flags, "--method", args.method, "--max-queue", "256", threads=args.threads) as s:
            asyncio.run(load(s.url, bodies, 4, 16, args.method))  # warm-up
            for c in args.concurrency:
                row = asyncio.run(load(s.url, bodies, c, args.requests, args.method))
                row.update(batching=mode, mean_batch=round(batch_sizes(s.url), 2))
                rows.append(row)
                print(f"batching {mode:<3}  concurrency {c:>2}: {row['rps']:7.1f} req/s  p50 {row['p50_ms']:7.1f} ms"
                      f"  p99 {row['p99_ms']:7.1f} ms  {row['statuses']}", flush=True)
            s.stop()
    for c in args.concurrency:
        on = next(r for r in rows if r["batching"] == "on" and r["concurrency"] == c)
        off = next(r for r in rows if r["batching"] == "off" and r["concurrency"] == c)
        print(f"concurrency {c:>2}: batching on / off = {on['rps'] / off['rps']:.2f}x throughput")
    return rows


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
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2, help="the server's --threads")
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
