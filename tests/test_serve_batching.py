"""`vgg serve`'s dynamic batching, in process: each request preprocesses its own image, the worker thread gets
ready tensors only, N concurrent requests of one size take fewer than N passes, and dense inputs are batched
by shape (never padded), with the numbers of one image at a time."""

import io
import threading
import time

import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from vggnet.checkpoint import make_checkpoint, save_checkpoint  # noqa: E402
from vggnet.classification.predict import Predictor  # noqa: E402
from vggnet.data.synthetic import SyntheticShapes  # noqa: E402
from vggnet.models import vgg  # noqa: E402
from vggnet.serve.app import Limits, build_app  # noqa: E402
from vggnet.serve.uploads import decode_upload  # noqa: E402

CLASSES = ["circle", "square", "star", "triangle", "heart"]
WORKER = "vgg-serve-net"  # the batcher's worker thread's name prefix


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(3)
    model = vgg("A", num_classes=len(CLASSES), width=1 / 16, fc_width=16, crop_size=32, dropout=0.0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, make_checkpoint(model, preprocessing={"pixel_scale": 255.0, "mean": [120.0] * 3,
                                                                "std": [60.0] * 3},
                                          classes=CLASSES, meta={"scale": 40}))
    return path


def jpeg(i: int, size: tuple[int, int]) -> bytes:
    img = SyntheticShapes(i + 1, classes=5, split="val", image_size=(40, 64))[i][0].resize(size)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_worker_gets_ready_tensors_and_n_requests_take_fewer_than_n_passes(ckpt):
    predictor = Predictor(ckpt, method="center", amp="off")
    passes: list[tuple[str, int, bool]] = []  # (thread, requests in the pass, every input a tensor)
    prepared_on: list[str] = []
    gate = threading.Event()
    forward, prepare = predictor.posteriors_of_inputs, predictor.inputs

    def spy_forward(inputs, method=None):
        passes.append((threading.current_thread().name, len(inputs),
                       all(isinstance(t, torch.Tensor) for x in inputs for t in x)))
        gate.wait(30)  # the first pass holds the worker until every request is admitted
        return forward(inputs, method)

    def spy_prepare(image, method=None):
        prepared_on.append(threading.current_thread().name)
        return prepare(image, method)

    predictor.posteriors_of_inputs, predictor.inputs = spy_forward, spy_prepare
    app = build_app(predictor, identity={"checkpoint": "tiny.pt"}, methods=("center",),
                    limits=Limits(max_batch_size=16, max_wait_ms=0.0, max_queue=64))
    n = 8
    bodies = [jpeg(i, (56, 44)) for i in range(n)]
    answers: dict[int, object] = {}
    with TestClient(app) as client:
        def send(i):
            answers[i] = client.post("/v1/classify", content=bodies[i])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while app.state.batcher.depth() < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert app.state.batcher.depth() == n  # one in the held pass, n - 1 waiting behind it
        gate.set()
        for t in threads:
            t.join()
    assert all(answers[i].status_code == 200 for i in range(n)), [answers[i].text for i in range(n)]
    # every image was decoded and preprocessed in its request's thread, never in the worker
    assert len(prepared_on) == n and not any(name.startswith(WORKER) for name in prepared_on)
    # the worker received tensors, and the requests that waited behind the first pass made one pass: two in
    # all (the first takes whatever was admitted before the worker picked it up, usually one request)
    assert all(name.startswith(WORKER) and tensors for name, _, tensors in passes)
    sizes = [size for _, size, _ in passes]
    assert len(sizes) == 2 and sum(sizes) == n, sizes
    expected = Predictor(ckpt, method="center", amp="off").posteriors(
        [decode_upload(b, max_pixels=10 ** 7, min_side=None) for b in bodies])
    for i in range(n):
        got = [t["probability"] for t in answers[i].json()["top"]]
        assert got == pytest.approx(expected[i].sort(descending=True).values.tolist(), abs=1e-5)


def test_dense_inputs_are_batched_by_shape_with_one_image_s_numbers(ckpt):
    from PIL import Image

    predictor = Predictor(ckpt, method="dense", scales=[40], amp="off")
    images = [Image.open(io.BytesIO(jpeg(i, size))).convert("RGB")
              for i, size in enumerate([(56, 44), (48, 64), (56, 44), (56, 44), (48, 64)])]
    batches: list[int] = []
    hook = predictor.model.features.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        together = predictor.posteriors_of_inputs([predictor.inputs(img) for img in images])
    finally:
        hook.remove()
    # two shapes at one scale: one pass of 3 images and one of 2 (with their flips: 6 and 4), not five passes
    assert sorted(batches) == [4, 6]
    alone = torch.cat([predictor.posteriors([img]) for img in images])
    assert torch.allclose(together, alone, atol=1e-5)
    with pytest.raises(ValueError, match="expected 1 inputs per image"):
        predictor.posteriors_of_inputs([[]])
