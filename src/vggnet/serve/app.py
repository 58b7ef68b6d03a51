"""The ASGI application of `vgg serve` (Starlette): routes, limits, errors as JSON, Prometheus metrics.

    GET  /               the page to try the net (page.html: no external resources)
    POST /v1/classify    an image (raw body or multipart) -> top-k classes; ?top_k=5&method=dense|center|...
    POST /v1/localize    with a localiser: top-5 classes, each with its box in the upload's pixels
    GET  /v1/model       configuration, classes, preprocessing, checkpoint hash
    GET  /healthz        liveness
    GET  /metrics        Prometheus text format

Numbers are `vgg predict`'s: the same `Predictor`, the same decoding (JPEG draft to the largest Q, full size
for the centre crop); only the forward pass is shared by the requests of one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vggnet.serve.batching import Batcher, QueueFull
from vggnet.serve.uploads import UploadError, decode_upload, image_from_body, read_body

__all__ = ["Limits", "Metrics", "build_app", "file_sha256"]

PAGE = Path(__file__).with_name("page.html")


@dataclass(frozen=True)
class Limits:
    """What one request may cost; each bound is a flag of `vgg serve`."""

    max_upload_bytes: int = 10 * 2 ** 20   # --max-upload-mb
    max_pixels: int = 40_000_000          # --max-pixels, read from the header before decoding
    timeout_s: float = 30.0               # --timeout-s: 504 past it (408 while the upload is still arriving)
    max_batch_size: int = 16              # --max-batch-size
    max_wait_ms: float = 5.0              # --max-wait-ms
    max_queue: int = 64                   # --max-queue: 503 + Retry-After past it


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("vgg_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.errors = Counter("vgg_errors", "refused or failed requests by kind", ["kind"], registry=r)
        self.latency = Histogram("vgg_request_latency_seconds", "time from request to answer", ["route"],
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30), registry=r)
        self.batch = Histogram("vgg_batch_size", "requests per forward pass",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.depth = Gauge("vgg_queue_depth", "requests waiting or running", registry=r)
        self.dropped = Counter("vgg_dropped", "requests dropped from a batch after their client's timeout",
                               registry=r)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "kind": kind, "status": status}, status_code=status, headers=headers)


def build_app(predictor: Any, *, identity: dict[str, Any], limits: Limits = Limits(),
              localiser: Any | None = None, methods: Sequence[str] = ("dense", "center", "multi-crop", "both")
              ) -> Starlette:
    """The service for `predictor` (a `vggnet.classification.predict.Predictor`) and, optionally, `localiser`
    (a `vggnet.serve.localize.BoxPredictor`). `identity` describes the checkpoint (its path name and hash)."""
    metrics = Metrics()
    methods = tuple(m for m in methods)
    for m in methods:  # build and check every method's presets now, not on a request
        predictor.method_presets(m)

    def run_batch(payloads: Sequence[tuple[str, Any, Any]]) -> list[Any]:
        # payload: (what, image, option); one forward pass per method (or per localiser call) present
        out: list[Any] = [None] * len(payloads)
        groups: dict[tuple[str, Any], list[int]] = {}
        for i, (what, _, option) in enumerate(payloads):
            groups.setdefault((what, option), []).append(i)
        for (what, option), idx in groups.items():
            images = [payloads[i][1] for i in idx]
            if what == "classify":
                post = predictor.posteriors(images, option)
                for row, i in enumerate(idx):
                    out[i] = post[row]
            else:
                for row, i in zip(localiser.predict(images), idx):
                    out[i] = row
        return out

    batcher = Batcher(run_batch, max_batch_size=limits.max_batch_size, max_wait_ms=limits.max_wait_ms,
                      max_queue=limits.max_queue, on_batch=metrics.batch.observe, on_depth=metrics.depth.set,
                      on_drop=metrics.dropped.inc)

    def timed(route: str, handler: Callable) -> Callable:
        async def endpoint(request: Request) -> Response:
            start = time.perf_counter()
            try:
                response = await handler(request, start)
            except UploadError as exc:
                metrics.errors.labels(exc.kind).inc()
                response = error(exc.status, exc.kind, exc.message)
            except QueueFull as exc:
                metrics.errors.labels("queue_full").inc()
                response = error(503, "queue_full", f"server busy: {exc}; retry later", {"Retry-After": "1"})
            except asyncio.TimeoutError:
                metrics.errors.labels("timeout").inc()
                response = error(504, "timeout", f"no answer within --timeout-s {limits.timeout_s:g}; "
                                                 f"the request was dropped")
            except Exception as exc:  # noqa: BLE001 - a bug of ours answers 500 and the server goes on
                metrics.errors.labels("internal").inc()
                response = error(500, "internal", f"internal error: {type(exc).__name__}")
            metrics.requests.labels(route, str(response.status_code)).inc()
            metrics.latency.labels(route).observe(time.perf_counter() - start)
            return response
        return endpoint

    def query_options(request: Request, default_topk: int) -> tuple[int, str]:
        q = request.query_params
        try:
            top_k = int(q.get("top_k", default_topk))
        except ValueError:
            raise UploadError(400, "bad_request", f"top_k must be a positive integer, got {q.get('top_k')!r}") \
                from None
        if top_k < 1:
            raise UploadError(400, "bad_request", f"top_k must be a positive integer, got {top_k}")
        method = q.get("method", predictor.method)
        if method not in methods:
            raise UploadError(400, "bad_request", f"method must be one of {', '.join(methods)}, got {method!r}")
        return min(top_k, len(predictor.classes)), method

    async def upload(request: Request, min_side: int | None, start: float) -> Any:
        remaining = limits.timeout_s - (time.perf_counter() - start)
        try:
            body = await asyncio.wait_for(read_body(request.stream(), request.headers.get("content-length"),
                                                    limits.max_upload_bytes), remaining)
        except asyncio.TimeoutError:
            raise UploadError(408, "slow_upload", f"the upload did not arrive within --timeout-s "
                                                  f"{limits.timeout_s:g}") from None
        data = await image_from_body(body, request.headers.get("content-type", ""), limits.max_upload_bytes)
        return await run_in_threadpool(decode_upload, data, max_pixels=limits.max_pixels, min_side=min_side)

    async def classify(request: Request, start: float) -> Response:
        top_k, method = query_options(request, predictor.k)
        image = await upload(request, predictor.decode_side(method), start)
        remaining = max(0.0, limits.timeout_s - (time.perf_counter() - start))
        post = await batcher.submit(("classify", image, method), timeout=remaining)
        return JSONResponse({"top": predictor.top(post, top_k), "method": method, "scales":
                             predictor.method_presets(method)[0], "image_size": list(image.size),
                             "model": identity, "time_ms": round(1000 * (time.perf_counter() - start), 3)})

    async def localize(request: Request, start: float) -> Response:
        if localiser is None:
            return error(404, "no_localiser", "this server has no localiser: start it with --localiser CKPT")
        image = await upload(request, localiser.decode_side, start)
        remaining = max(0.0, limits.timeout_s - (time.perf_counter() - start))
        rows = await batcher.submit(("localize", image, None), timeout=remaining)
        return JSONResponse({"predictions": rows, "image_size": list(image.size), "model": identity,
                             "localiser": localiser.identity,
                             "time_ms": round(1000 * (time.perf_counter() - start), 3)})

    async def model(request: Request, start: float) -> Response:
        net = predictor.model
        return JSONResponse({**identity, "build": dict(net.build_args), "classes": predictor.classes,
                             "preprocessing": predictor.preprocessing.to_dict(), "method": predictor.method,
                             "methods": list(methods),
                             "scales": {m: predictor.method_presets(m)[0] for m in methods},
                             "device": str(predictor.device), "amp": predictor.amp,
                             "localiser": None if localiser is None else localiser.identity,
                             "limits": {"max_upload_bytes": limits.max_upload_bytes,
                                        "max_pixels": limits.max_pixels, "timeout_s": limits.timeout_s,
                                        "max_batch_size": limits.max_batch_size,
                                        "max_wait_ms": limits.max_wait_ms, "max_queue": limits.max_queue}})

    async def healthz(request: Request, start: float) -> Response:
        return JSONResponse({"status": "ok", "queue_depth": batcher.depth()})

    async def page(request: Request, start: float) -> Response:
        return Response(PAGE.read_bytes(), media_type="text/html; charset=utf-8")

    async def metrics_page(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        batcher.start()
        yield
        await batcher.stop()  # after uvicorn has let the requests in flight finish

    routes = [Route("/", timed("/", page)), Route("/healthz", timed("/healthz", healthz)),
              Route("/v1/model", timed("/v1/model", model)),
              Route("/v1/classify", timed("/v1/classify", classify), methods=["POST"]),
              Route("/v1/localize", timed("/v1/localize", localize), methods=["POST"]),
              Route("/metrics", metrics_page)]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.metrics, app.state.batcher = metrics, batcher
    return app
