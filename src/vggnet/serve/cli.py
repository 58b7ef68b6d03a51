"""`vgg serve`: a trained net as an HTTP service (Starlette on uvicorn) with a page to try it.

    vgg serve --checkpoint runs/train/best.pt                       # http://127.0.0.1:8000/
    vgg serve --checkpoint cls.pt --localiser loc.pt --port 9000    # adds POST /v1/localize
    curl --data-binary @photo.jpg 'http://127.0.0.1:8000/v1/classify?top_k=5'

docs/serving.md describes the API, the limits and what each refusal looks like.
"""

from __future__ import annotations

import argparse
import signal
import sys

from vggnet.errors import UserError
from vggnet.arguments import add_threads_argument  # (torch-free: `vgg serve --help` loads no torch)

__all__ = ["add_serve_arguments", "run_serve"]

METHOD_CHOICES = ("dense", "center", "multi-crop", "both")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="classification checkpoint (.pt)")
    parser.add_argument("--localiser", default=None, metavar="CKPT",
                        help="localisation checkpoint: enables POST /v1/localize (classes ranked by --checkpoint)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    parser.add_argument("--method", choices=METHOD_CHOICES, default="dense",
                        help="default evaluation method of /v1/classify, as in vgg predict; a request may ask "
                             "for another with ?method= (default: %(default)s)")
    parser.add_argument("--test-scales", default=None, metavar="Q,Q,...",
                        help="test scales Q, as in vgg predict (default: from the checkpoint's training scale)")
    parser.add_argument("--max-batch-size", type=int, default=16,
                        help="most requests in one forward pass; 1 turns batching off (default: %(default)s)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long the first request of a batch waits for others (default: %(default)s)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests waiting or running; past it the answer is 503 (default: %(default)s)")
    parser.add_argument("--timeout-s", type=float, default=30.0,
                        help="a request not answered within this many seconds gets 504 (default: %(default)s)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0,
                        help="largest upload; larger ones get 413 (default: %(default)s)")
    parser.add_argument("--max-pixels", type=int, default=40_000_000,
                        help="largest image in pixels, read from its header before decoding; larger ones get "
                             "413 (default: %(default)s)")
    parser.add_argument("--max-connections", type=int, default=256,
                        help="open connections uvicorn accepts before answering 503 (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: %(default)s)")
    parser.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto",
                        help="mixed precision as in vgg predict (default: %(default)s)")
    parser.add_argument("--channels-last", nargs="?", const="on", default="auto", choices=["auto", "on", "off"],
                        help="channels-last (NHWC) memory format as in vgg predict (default: %(default)s)")
    add_threads_argument(parser)
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level (default: %(default)s)")


def check_serve_arguments(args: argparse.Namespace) -> None:
    """Every bound checked before torch is imported, each error naming its flag."""
    positive = {"--max-batch-size": args.max_batch_size, "--max-queue": args.max_queue,
                "--timeout-s": args.timeout_s, "--max-upload-mb": args.max_upload_mb,
                "--max-pixels": args.max_pixels, "--max-connections": args.max_connections}
    for flag, value in positive.items():
        if not value > 0:
            raise UserError(f"{flag} must be > 0, got {value}")
    if args.max_wait_ms < 0:
        raise UserError(f"--max-wait-ms must be >= 0, got {args.max_wait_ms}")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0 to 65535, got {args.port}")


def run_serve(args: argparse.Namespace) -> int:
    check_serve_arguments(args)
    import uvicorn

    from vggnet.classification.predict import Predictor
    from vggnet.execution import choose_execution, set_threads
    from vggnet.inference import parse_test_scales, resolve_device
    from vggnet.serve.app import Limits, build_app, file_sha256

    set_threads(args.threads)
    scales = parse_test_scales(args.test_scales) if args.test_scales is not None else None
    dev = resolve_device(args.device)
    chosen = choose_execution(args.amp, args.channels_last, dev)
    print(f"vgg serve: {chosen.reason}", file=sys.stderr)
    predictor = Predictor(args.checkpoint, scales=scales, method=args.method, device=dev, amp=chosen.amp,
                          channels_last=chosen.channels_last)
    identity = {"checkpoint": str(args.checkpoint).rsplit("/", 1)[-1], "sha256": file_sha256(args.checkpoint),
                "name": predictor.model.name}
    localiser = None
    if args.localiser is not None:
        from vggnet.serve.localize import BoxPredictor

        localiser = BoxPredictor(args.localiser, args.checkpoint, device=dev, scales=scales,
                                 identity={"checkpoint": str(args.localiser).rsplit("/", 1)[-1],
                                           "sha256": file_sha256(args.localiser)})
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2 ** 20), max_pixels=args.max_pixels,
                    timeout_s=args.timeout_s, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                    max_queue=args.max_queue)
    app = build_app(predictor, identity=identity, limits=limits, localiser=localiser)
    print(f"vgg serve: {identity['name']} from {args.checkpoint} on http://{args.host}:{args.port}/ "
          f"(batches of <= {args.max_batch_size} within {args.max_wait_ms:g} ms)", file=sys.stderr, flush=True)
    # uvicorn handles SIGINT/SIGTERM: it stops accepting, lets the requests in flight finish, runs the
    # app's shutdown (the batcher drains) and returns
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            limit_concurrency=args.max_connections, timeout_graceful_shutdown=args.timeout_s + 5,
                            access_log=False)
    server = uvicorn.Server(config)
    stopped: list[int] = []
    # uvicorn re-raises the signal it stopped on once it has shut down, for the handler that was there before
    # it; that handler is this one, so a SIGTERM ends in the exit status 0 of a clean stop, not in death by signal
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stopped:
        print("vgg serve: stopped by SIGTERM after finishing the requests in flight", file=sys.stderr)
    return 0 if server.started else 1
