"""`vgg serve` started for real on a free localhost port, answering real requests: the numbers of
`vgg predict`, the refusals (413, 400, 415, 503, 504), never a client's path, and a graceful SIGTERM."""

import io
import struct
import threading
import time
import zlib

import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from serve_helpers import Server  # noqa: E402

from vggnet.checkpoint import make_checkpoint, save_checkpoint  # noqa: E402
from vggnet.classification.predict import predict  # noqa: E402
from vggnet.cli import main  # noqa: E402
from vggnet.data.synthetic import SyntheticShapes  # noqa: E402
from vggnet.models import vgg  # noqa: E402

TINY = dict(width=1 / 16, fc_width=16, crop_size=32, dropout=0.0)
CAFFE = {"pixel_scale": 255.0, "mean": [120.0, 110.0, 100.0], "std": [60.0, 60.0, 60.0]}
CLASSES = ["circle", "square", "star", "triangle", "heart"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(5)
    model = vgg("A", num_classes=len(CLASSES), **TINY)
    for m in model.classifier:  # O(1) class scores in a tiny net, so that the classes are told apart
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=(2.0 / m.in_features) ** 0.5)
            torch.nn.init.normal_(m.bias, std=0.1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, make_checkpoint(model, preprocessing=CAFFE, classes=CLASSES, meta={"scale": 40}))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Synthetic JPEGs of a few sizes (the first two the same size, the third another)."""
    root = tmp_path_factory.mktemp("img")
    shapes = SyntheticShapes(3, classes=5, split="val", image_size=(40, 64))
    paths = []
    for i, size in enumerate([(56, 44), (56, 44), (48, 64)]):
        paths.append(root / f"{i}.jpg")
        shapes[i][0].resize(size).save(paths[-1], quality=90)
    return paths


@pytest.fixture(scope="module")
def server(ckpt):
    s = Server(ckpt, "--max-upload-mb", "0.5", "--max-pixels", "1000000", "--max-wait-ms", "20")
    yield s
    assert s.stop() == 0


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels, with a tiny (incomplete) image stream: what a
    decompression bomb's header looks like; decoding it would need width * height * 3 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + \
        chunk(b"IEND", b"")


def test_classify_gives_vgg_predict_s_numbers(server, ckpt, images):
    for method in ("dense", "center"):
        expected = predict(ckpt, images, method=method, amp="off")
        for path, want in zip(images, expected):
            r = httpx.post(f"{server.url}/v1/classify", params={"method": method}, content=path.read_bytes(),
                           headers={"content-type": "image/jpeg"}, timeout=30)
            assert r.status_code == 200, r.text
            got = r.json()
            assert [t["class"] for t in got["top"]] == [t["class"] for t in want["top"]]
            for g, w in zip(got["top"], want["top"]):
                assert g["probability"] == pytest.approx(w["probability"], abs=1e-5)
            assert got["method"] == method and got["image_size"] == list(Image.open(path).size)
            assert got["model"]["sha256"] and got["time_ms"] > 0
    # a multipart upload (what a browser form sends) and top_k
    with open(images[2], "rb") as f:
        r = httpx.post(f"{server.url}/v1/classify?top_k=2", files={"image": ("x.jpg", f, "image/jpeg")}, timeout=30)
    assert r.status_code == 200 and len(r.json()["top"]) == 2
    want = predict(ckpt, [images[2]], amp="off")[0]["top"][:2]
    assert [t["probability"] for t in r.json()["top"]] == pytest.approx([t["probability"] for t in want], abs=1e-5)


def test_concurrent_requests_are_batched_with_the_same_numbers(server, ckpt, images):
    expected = {str(p): predict(ckpt, [p], amp="off")[0]["top"] for p in images}
    results = {}

    def send(i):
        p = images[i % len(images)]
        results[i] = (str(p), httpx.post(f"{server.url}/v1/classify", content=p.read_bytes(), timeout=30))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for path, r in results.values():
        assert r.status_code == 200
        got = [t["probability"] for t in r.json()["top"]]
        assert got == pytest.approx([t["probability"] for t in expected[path]], abs=1e-5)
    metrics = httpx.get(f"{server.url}/metrics").text
    # some forward pass served more than one request (12 concurrent requests, 20 ms to gather)
    counts = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
              if line.startswith("vgg_batch_size_")}
    assert counts["vgg_batch_size_count"] < counts["vgg_batch_size_sum"]
    assert 'vgg_requests_total{route="/v1/classify",status="200"}' in metrics
    assert "vgg_queue_depth" in metrics and "vgg_request_latency_seconds_bucket" in metrics


def test_model_healthz_and_page(server, ckpt):
    import hashlib

    m = httpx.get(f"{server.url}/v1/model").json()
    assert m["classes"] == CLASSES and m["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert m["build"]["name"] == "A" and m["preprocessing"]["mean"] == CAFFE["mean"]
    from vggnet.classification.predict import Predictor

    assert m["scales"]["dense"] == Predictor(ckpt).scales and m["limits"]["max_pixels"] == 1_000_000
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    # no external resources: the page works without internet
    assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text


def refusal(r, status, *words):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status and all(w in body["error"] for w in words), body


def test_refusals_name_what_is_wrong(server, images, tmp_path):
    url = f"{server.url}/v1/classify"
    big = images[0].read_bytes() + b"\0" * (600 * 1024)  # over --max-upload-mb 0.5
    refusal(httpx.post(url, content=big), 413, "--max-upload-mb")

    def chunks():  # no Content-Length: counted while it streams
        for _ in range(100):
            yield b"\0" * 10_000

    refusal(httpx.post(url, content=chunks()), 413, "--max-upload-mb")
    t0 = time.perf_counter()
    refusal(httpx.post(url, content=png_header_claiming(60_000, 60_000)), 413, "--max-pixels", "3600000000")
    assert time.perf_counter() - t0 < 5  # refused from the header: 10.8 GB were never allocated
    refusal(httpx.post(url, content=png_header_claiming(1200, 1000)), 413, "--max-pixels", "1200x1000")
    refusal(httpx.post(url, content=b""), 400, "empty upload")
    refusal(httpx.post(url, content=b"just some text, not a picture"), 415, "not an image in a format we read")
    refusal(httpx.post(url, content=images[0].read_bytes()[:300]), 400)  # a truncated JPEG
    ico = io.BytesIO()
    Image.new("RGB", (32, 32)).save(ico, format="ICO")  # Pillow reads it, we do not
    refusal(httpx.post(url, content=ico.getvalue()), 415, "JPEG")
    refusal(httpx.post(url + "?top_k=zero", content=images[0].read_bytes()), 400, "top_k")
    refusal(httpx.post(url + "?method=sideways", content=images[0].read_bytes()), 400, "method must be one of")
    refusal(httpx.post(url, data={"note": "hi"}, files={"other": ("a.txt", b"", "text/plain")}), 400, "empty")
    refusal(httpx.post(f"{server.url}/v1/localize", content=images[0].read_bytes()), 404, "--localiser")
    # the server is still there and still right
    assert httpx.post(url, content=images[0].read_bytes()).status_code == 200
    metrics = httpx.get(f"{server.url}/metrics").text
    for kind in ("too_large", "too_many_pixels", "empty", "unsupported", "bad_image", "bad_request"):
        assert f'vgg_errors_total{{kind="{kind}"}}' in metrics, kind


def test_nothing_a_client_sends_is_read_as_a_path(server, ckpt, images, tmp_path):
    url = f"{server.url}/v1/classify"
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(images[2].read_bytes())
    # a file name is a label: the uploaded bytes are classified, not the file it names
    with open(images[0], "rb") as f:
        r = httpx.post(url, files={"image": (str(secret), f, "image/jpeg")})
    assert r.status_code == 200 and r.json()["image_size"] == list(Image.open(images[0]).size)
    refusal(httpx.post(url, content=str(secret).encode()), 415)          # a path as the body
    refusal(httpx.post(url + f"?path={secret}", content=b""), 400, "empty upload")
    assert httpx.get(f"{server.url}/{secret}").status_code == 404       # no route serves files


def wait_for(condition, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_full_queue_is_503_with_retry_after_and_a_late_answer_is_504(ckpt, images):
    body = images[0].read_bytes()
    # the first request waits 5 s for companions in its batch: longer than --timeout-s
    with Server(ckpt, "--max-batch-size", "4", "--max-wait-ms", "5000", "--max-queue", "1",
                "--timeout-s", "3") as s:
        first = {}
        t = threading.Thread(target=lambda: first.setdefault("r", httpx.post(f"{s.url}/v1/classify", content=body,
                                                                              timeout=30)))
        t.start()
        wait_for(lambda: httpx.get(f"{s.url}/healthz").json()["queue_depth"] == 1)  # admitted, waiting
        r = httpx.post(f"{s.url}/v1/classify", content=body, timeout=30)  # the queue holds one: full
        refusal(r, 503, "--max-queue 1")
        assert r.headers["retry-after"] == "1"
        t.join()
        refusal(first["r"], 504, "--timeout-s 3")
        # once the batch's wait is over, the timed-out request is dropped, not run
        wait_for(lambda: "vgg_dropped_total 1.0" in httpx.get(f"{s.url}/metrics").text)
        metrics = httpx.get(f"{s.url}/metrics").text
        assert 'vgg_errors_total{kind="queue_full"} 1.0' in metrics
        assert 'vgg_errors_total{kind="timeout"} 1.0' in metrics
        assert "vgg_batch_size_count 0.0" in metrics  # no forward pass ran
        assert s.stop() == 0


def test_sigterm_finishes_what_is_in_flight_and_exits_0(ckpt, images):
    body = images[0].read_bytes()
    with Server(ckpt, "--max-batch-size", "4", "--max-wait-ms", "3000") as s:
        answer = {}
        t = threading.Thread(target=lambda: answer.setdefault("r", httpx.post(f"{s.url}/v1/classify", content=body,
                                                                               timeout=30)))
        t.start()
        wait_for(lambda: httpx.get(f"{s.url}/healthz").json()["queue_depth"] == 1)  # in the batcher, waiting
        assert s.stop() == 0
        t.join()
        assert answer["r"].status_code == 200 and len(answer["r"].json()["top"]) == 5
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{s.url}/healthz")


def test_bad_flags_are_named_before_torch(capsys, ckpt):
    assert main(["serve", "--checkpoint", str(ckpt), "--max-queue", "0"]) == 2
    assert "--max-queue must be > 0" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(ckpt), "--max-wait-ms", "-1"]) == 2
    assert "--max-wait-ms must be >= 0" in capsys.readouterr().err
