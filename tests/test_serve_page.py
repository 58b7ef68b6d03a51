"""`vgg serve --localiser`: POST /v1/localize against `vgg localize predict`, and the page driven in a real
headless Chromium (Debian's chromium + chromedriver through selenium; skipped, saying why, without them)."""

import os
import shutil

import pytest
import torch
from PIL import Image

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

from serve_helpers import Server  # noqa: E402

from vggnet.checkpoint import make_checkpoint, save_checkpoint  # noqa: E402
from vggnet.data.synthetic import SyntheticShapes  # noqa: E402
from vggnet.localisation.cli import predict_localisation  # noqa: E402
from vggnet.localisation.task import make_localisation_checkpoint  # noqa: E402
from vggnet.models import vgg  # noqa: E402

CLASSES = ["circle", "square", "star"]
IDENTITY = {"pixel_scale": 1.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp("nets")
    torch.manual_seed(0)
    cls = vgg("A", len(CLASSES), crop_size=32, width=1 / 16, fc_width=32)
    loc = vgg("A", 4 * len(CLASSES), crop_size=32, width=1 / 16, fc_width=32)
    for m in cls.classifier:  # O(1) class scores in a tiny net: bars of different lengths
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=(8.0 / m.in_features) ** 0.5)
            torch.nn.init.normal_(m.bias, std=1.0)
    with torch.no_grad():  # one box everywhere, larger than the window: it must come back clipped to the image
        loc.classifier[-1].weight.mul_(0.01)
        loc.classifier[-1].bias.copy_(torch.tensor([0.5, 0.5, 3.0, 3.0]).repeat(len(CLASSES)))
    save_checkpoint(root / "cls.pt", make_checkpoint(cls, preprocessing=IDENTITY, classes=CLASSES,
                                                     meta={"scale": 40}))
    save_checkpoint(root / "loc.pt", make_localisation_checkpoint(loc, head="pcr", classes=CLASSES,
                                                                  preprocessing=IDENTITY, scale=40))
    image = root / "shape.png"
    SyntheticShapes(1, classes=3, split="val", image_size=(48, 64))[0][0].save(image)
    return root / "cls.pt", root / "loc.pt", image


@pytest.fixture(scope="module")
def server(nets):
    cls, loc, _ = nets
    s = Server(cls, "--localiser", str(loc), "--max-wait-ms", "5")
    yield s
    assert s.stop() == 0


def test_localize_gives_vgg_localize_predict_s_boxes_clipped(server, nets, tmp_path):
    cls, loc, image = nets
    r = httpx.post(f"{server.url}/v1/localize", content=image.read_bytes(), timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    want = predict_localisation([str(loc)], [str(cls)], [str(image)], str(tmp_path / "out"))[0]["predictions"]
    w, h = Image.open(image).size
    assert [p["class"] for p in got] == [p["class"] for p in want] and len(got) == 3
    for g, p in zip(got, want):
        clipped = [min(max(p["box"][0], 0), w), min(max(p["box"][1], 0), h),
                   min(max(p["box"][2], 0), w), min(max(p["box"][3], 0), h)]
        assert g["box"] == pytest.approx(clipped, abs=0.02) and g["score"] == pytest.approx(p["score"], abs=1e-5)
        assert 0 <= g["box"][0] <= g["box"][2] <= w and 0 <= g["box"][1] <= g["box"][3] <= h
    # the net's boxes (3x the window) leave the image: clipped, they span it
    assert all(g["box"][0] == 0 and g["box"][2] == w for g in got)
    assert r.json()["localiser"]["sha256"]


def browser():
    """A headless Chromium driven by selenium, or a skip naming what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("no headless browser here: apt-get install chromium chromium-driver (CI's .ci/run does)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1000,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


@pytest.mark.slow
def test_the_page_shows_the_bars_of_v1_classify_and_the_boxes(server, nets, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, _, image = nets
    expected = httpx.post(f"{server.url}/v1/classify", content=image.read_bytes(), timeout=60).json()["top"]
    driver = browser()
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "classes" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(str(image))
        wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-done") == "1")
        rows = driver.find_elements(By.CSS_SELECTOR, "#bars .row")
        assert [r.get_attribute("data-class") for r in rows] == [t["class"] for t in expected]
        got = [float(r.get_attribute("data-probability")) for r in rows]
        assert got == pytest.approx([t["probability"] for t in expected], abs=1e-6)
        widths = [r.find_element(By.CSS_SELECTOR, ".fill").size["width"] for r in rows]
        assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]  # bars drawn to scale
        wait.until(lambda d: d.find_element(By.ID, "boxes").is_displayed())  # the localiser's boxes, drawn
        shot = os.environ.get("VGG_SERVE_SCREENSHOT") or str(tmp_path / "page.png")
        driver.save_screenshot(shot)
        assert os.path.getsize(shot) > 1000
        # an error is shown as text on the page
        bad = tmp_path / "notes.txt"
        bad.write_text("not a picture")
        driver.find_element(By.ID, "file").send_keys(str(bad))
        wait.until(lambda d: "415" in d.find_element(By.ID, "error").text)
        assert not driver.find_elements(By.CSS_SELECTOR, "#bars .row")
    finally:
        driver.quit()
