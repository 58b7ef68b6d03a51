"""The engine's task interface: a second task — a toy regression head that predicts each crop's mean
colour — gets checkpoints, exact resume, logs and data parallelism without a line of engine code.

Also the layout rules that keep the engine readable: no two vggnet modules import each other,
and the command line lists only commands that work.
"""

from __future__ import annotations

import ast
import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vggnet import TrainConfig, train

TOY_TASK = '''
"""A toy task for the engine tests: regress the mean colour of the (normalised) training crop."""
import sys

import torch

from vggnet import distributed
from vggnet import TrainConfig, train
from vggnet.engine import Task


class MeanColour(Task):
    name = "mean_colour"
    monitor = "mse"
    monitor_label = "mse"
    metrics = ("mse",)

    def __init__(self, scale=0.01):
        self.scale = float(scale)

    def output_size(self, num_classes):
        return 3  # one value per colour channel, whatever the classes

    def inputs_targets(self, batch, device):
        x = batch[0].to(device)
        return x, self.scale * x.mean(dim=(2, 3))

    def empty_targets(self, n, device):
        return torch.zeros(n, 3, device=device)

    def loss(self, output, targets):
        return ((output.float() - targets) ** 2).sum()

    def validate(self, model, dataset, *, preprocessing, scale, device, batch_size, workers, amp):
        from torchvision.transforms import v2

        from vggnet.data.transforms import RescaleSmallestSide, ToNormalizedTensor

        crop = model.crop_size
        tf = v2.Compose([RescaleSmallestSide(crop), v2.CenterCrop(crop), ToNormalizedTensor(preprocessing)])
        rank, world = distributed.rank_world() if hasattr(distributed, "rank_world") else (
            (torch.distributed.get_rank(), torch.distributed.get_world_size())
            if distributed.is_distributed() else (0, 1))
        was = model.training
        model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for i in range(rank, len(dataset), world):
                x = tf(dataset[i][0]).as_subclass(torch.Tensor).unsqueeze(0).to(device)
                total += float(((model(x) - self.scale * x.mean(dim=(2, 3))) ** 2).sum())
                n += 1
        model.train(was)
        total, n = distributed.all_reduce_sum([total, float(n)])
        return {"loss": total / n, "mse": total / n}

    def settings(self):
        return {"scale": self.scale}


if __name__ == "__main__":  # under torchrun: python toy.py OUTPUT_DIR MICRO_BATCH
    import json

    settings = json.loads(sys.argv[3])
    train(TrainConfig(**settings, output_dir=sys.argv[1], micro_batch_size=int(sys.argv[2]), progress=False),
          task=MeanColour())
'''

SETTINGS = dict(model="A", width=1 / 16, fc_width=16, crop_size=32, scale=[32, 48], synthetic_classes=3,
                synthetic_train=32, synthetic_val=5, synthetic_image_size=[32, 48], batch_size=16, epochs=2,
                dropout=0.0, workers=0, stats_sample=16, device="cpu", checkpoint_every=1, amp="off", lr=0.003, keep=10)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "toy.py"
    path.write_text(TOY_TASK)
    spec = importlib.util.spec_from_file_location("toy_task", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def run(toy, out, **extra):
    module, _ = toy
    return train(TrainConfig(**{**SETTINGS, **extra}, output_dir=str(out), progress=False), task=module.MeanColour())


@pytest.fixture(scope="module")
def straight(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    return out, run(toy, out)


def test_a_second_task_trains_logs_and_checkpoints_with_its_own_metric(straight):
    out, result = straight
    assert result["task"] == "mean_colour" and result["monitor"] == "mse"
    assert result["epochs"] == 2 and result["global_step"] == 4
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert "val_mse" in rows[0] and "val_top1_error" not in rows[0]
    mses = [h["val_mse"] for h in result["history"]]
    assert [float(r["val_mse"]) for r in rows] == pytest.approx(mses, rel=1e-5)
    # best.pt is the epoch with the lowest validation MSE (the task's monitor, lower is better)
    assert result["best_metric"] == result["best_mse"] == min(mses)
    best = load(out / "best.pt")
    assert best["meta"]["task"] == "mean_colour" and best["meta"]["task_settings"] == {"scale": 0.01}
    assert best["train"]["epoch"] == mses.index(min(mses)) + 1
    assert best["build"]["num_classes"] == 3 and best["state_dict"]["classifier.6.weight"].shape == (3, 16)
    assert best["train"]["task"] == {"scale": 0.01}
    assert (out / "curves.png").stat().st_size > 0 and (out / "config.yaml").is_file()
    log = (out / "train.log").read_text()
    assert "; task mean_colour" in log and "mse " in log


def test_a_second_task_resumes_bitwise(toy, straight, tmp_path):
    ref, _ = straight
    first = run(toy, tmp_path, max_steps=3)  # killed mid-epoch 2, as a SIGTERM would leave it
    assert first["stopped"] == "max_steps" and first["global_step"] == 3
    resumed = run(toy, tmp_path, resume="auto")
    assert resumed["global_step"] == 4
    a, b = load(ref / "last.pt"), load(tmp_path / "last.pt")
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    timing = ("train_images_per_s", "epoch_time_s")
    assert [{k: v for k, v in h.items() if k not in timing} for h in a["train"]["history"]] == \
        [{k: v for k, v in h.items() if k not in timing} for h in b["train"]["history"]]


def test_a_checkpoint_of_another_task_or_other_task_settings_is_not_resumed(toy, straight, tmp_path):
    module, _ = toy
    ref, _ = straight
    from vggnet.errors import CheckpointError

    with pytest.raises(CheckpointError, match="mean_colour checkpoint, not a classification net"):
        train(TrainConfig(**SETTINGS, output_dir=str(tmp_path / "c"), resume=str(ref / "last.pt"),
                          progress=False))
    with pytest.raises(CheckpointError, match="setting scale 0.01 in the checkpoint, 2.0 now"):
        train(TrainConfig(**SETTINGS, output_dir=str(tmp_path / "s"), resume=str(ref / "last.pt"),
                          progress=False), task=module.MeanColour(scale=2.0))


def test_init_from_a_net_for_other_classes_and_crops_keeps_what_fits_and_names_the_rest(tmp_path, capsys):
    """--init from:CKPT of the same configuration with 4 classes at crop 64 into a 3-class net at crop 32:
    every conv layer and FC2 are copied; FC1 (other grid) and the last FC (other classes) are new."""
    from vggnet.checkpoint import CAFFE_PREPROCESSING, make_checkpoint, save_checkpoint
    from vggnet.engine import init_from
    from vggnet.models import vgg

    source = vgg("A", 4, width=1 / 16, fc_width=16, crop_size=64)
    with torch.no_grad():
        for p in source.parameters():  # no zero biases: a copied bias must be told apart from a fresh one
            p.normal_()
    ckpt = make_checkpoint(source, preprocessing=CAFFE_PREPROCESSING, classes=list("abcd"))
    path = save_checkpoint(tmp_path / "src.pt", ckpt)
    model = vgg("A", 3, width=1 / 16, fc_width=16, crop_size=32)
    text = init_from(model, ckpt, str(path), rest="gaussian")
    assert text.startswith(f"{path}, except classifier.0, classifier.6 (re-initialised gaussian: ")
    assert "classifier.0 (16, 128) -> (16, 32)" in text and "classifier.6 (4, 16) -> (3, 16)" in text
    mine, theirs = model.state_dict(), source.state_dict()
    for key in mine:
        same = torch.equal(mine[key], theirs[key]) if mine[key].shape == theirs[key].shape else False
        assert same == (not key.startswith(("classifier.0", "classifier.6"))), key
    # the engine logs it, in one line
    train(TrainConfig(**{**SETTINGS, "epochs": 1}, output_dir=str(tmp_path / "run"), init=f"from:{path}",
                      max_steps=1, progress=False))
    assert "init " + text in capsys.readouterr().out


def test_init_from_a_checkpoint_of_another_task_is_refused(straight, tmp_path):
    from vggnet.errors import CheckpointError

    ref, _ = straight
    with pytest.raises(CheckpointError, match="mean_colour checkpoint, not a classification net"):
        train(TrainConfig(**SETTINGS, output_dir=str(tmp_path), init=f"from:{ref / 'best.pt'}", progress=False))


def test_torchrun_two_processes_equal_one_for_a_second_task(toy, tmp_path):
    """DDP (gloo, 2 processes x 4 images x 2 accumulation steps) takes the single process's steps."""
    import json

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    _, path = toy
    settings = {**SETTINGS, "epochs": 1}
    one = tmp_path / "one"
    run(toy, one, epochs=1)
    two = tmp_path / "two"
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(path), str(two), "4", json.dumps(settings)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for step in (1, 2):
        a, b = load(one / f"checkpoint_{step:08d}.pt"), load(two / f"checkpoint_{step:08d}.pt")
        for key in a["state_dict"]:
            torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=1e-5, atol=1e-6, msg=key)
    assert load(two / "last.pt")["train"]["world_size"] == 2
    h1, h2 = load(one / "last.pt")["train"]["history"][0], load(two / "last.pt")["train"]["history"][0]
    assert h2["val_mse"] == pytest.approx(h1["val_mse"], rel=1e-5)


# --------------------------------------------------------------------------- layout rules

SRC = Path(__file__).resolve().parents[1] / "src" / "vggnet"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every vggnet module `path` imports, at module level or inside functions (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vggnet"):
            found.add(node.module)
            for alias in node.names:  # `from vggnet import distributed` names a module
                if (SRC / f"{alias.name}.py").exists() and node.module == "vggnet":
                    found.add(f"vggnet.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("vggnet"))
    return found


def test_no_two_modules_import_each_other():
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    # a package's __init__ re-exporting its submodules is not a cycle of the code
    pairs = sorted((a, b) for a in graph for b in graph[a]
                   if a in graph.get(b, ()) and a < b and not (b.startswith(a + ".") or a.startswith(b + ".")))
    assert pairs == []


def test_the_command_list_names_only_commands_that_work(capsys):
    from vggnet.cli import COMMANDS, main

    assert main(["--help"]) == 0
    listed = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name}" in listed
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0, name
        assert "usage: vgg " + name in capsys.readouterr().out


def test_help_does_not_import_torch():
    code = ("import sys; from vggnet.cli import main; main(['--help']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip().endswith("NO TORCH")
    out = subprocess.run([sys.executable, "-c", "import sys, vggnet; vggnet.UserError; "
                          "print('torch' in sys.modules); vggnet.vgg; print('torch' in sys.modules)"],
                         capture_output=True, text=True, timeout=60).stdout
    assert out.split() == ["False", "True"]
