"""One vocabulary across commands: the same flag accepts the same values everywhere, help texts
name only flags that exist, a closed pipe is no traceback, and no progress-bar fragments in logs."""

import argparse
import os
import re
import sys

import pytest

from vggnet.cli import COMMANDS, load_command, main

def parser_of(name: str) -> argparse.ArgumentParser:
    add, _, help_ = load_command(name)
    parser = argparse.ArgumentParser(prog=f"vgg {name}", description=help_)
    add(parser)
    return parser


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_mentions_only_flags_that_exist(name):
    parser = parser_of(name)
    text = parser.format_help()
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
    missing = sorted(mentioned - option_strings(parser))
    assert not missing, f"`vgg {name} --help` mentions {missing}, which `vgg {name}` does not have"


@pytest.mark.parametrize("name,extra", [("train", []), ("eval", []), ("predict", ["x.jpg"])])
def test_amp_and_channels_last_accept_the_same_values(name, extra):
    parser = parser_of(name)
    for amp in ("auto", "bf16", "fp16", "off"):
        for cl in ("auto", "on", "off"):
            args = parser.parse_args(["--amp", amp, "--channels-last", cl, *extra])
            assert (args.amp, args.channels_last) == (amp, cl)
    actions = {a.dest: a for a in parser._actions}
    for dest, allowed in (("amp", "{auto,bf16,fp16,off}"), ("channels_last", "{auto,on,off}")):
        shown = actions[dest].metavar or "{" + ",".join(actions[dest].choices) + "}"
        assert shown == allowed and actions[dest].default == "auto"


def test_checkpoint_flag_for_eval_and_predict():
    for name in ("eval", "predict"):
        assert "--checkpoint" in option_strings(parser_of(name))


@pytest.mark.parametrize("argv", [["info", "--json"], ["--help"]])
def test_output_into_a_closed_pipe_is_not_a_traceback(monkeypatch, capsys, argv):
    # `vgg info --json | head -1`, `vgg --help | head`: stdout is a pipe whose reader has gone
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = open(write_end, "w")
    monkeypatch.setattr(sys, "stdout", stream)
    try:
        assert main(argv) == 141
        stream.write("x" * 100_000)  # stdout now leads to /dev/null: Python's exit flush cannot fail again
        stream.flush()
    finally:
        monkeypatch.undo()
        stream.close()
    assert "Traceback" not in capsys.readouterr().err


def test_training_progress_bar_only_on_a_terminal(tmp_path, capsys):
    from vggnet.engine.outputs import RunOutputs

    outputs = RunOutputs(tmp_path, is_main=True)
    outputs.open_bar(total=10, initial=0, desc="epoch 3/30")  # capsys: stderr is not a terminal
    assert outputs.bar is None
    outputs.log("epoch   3/30  train loss 1.0")
    outputs.close_bar()
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == "epoch   3/30  train loss 1.0\n"


def test_unknown_amp_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--checkpoint", "x.pt", "--data", ".", "--amp", "fp32"])
    assert exc.value.code == 2 and "invalid choice: 'fp32'" in capsys.readouterr().err


def test_yaml_off_and_on_mean_the_words(tmp_path):
    from vggnet.arguments import parse_args_with_config

    (tmp_path / "eval.yaml").write_text("amp: off\nchannels_last: on\n")  # YAML 1.1: booleans
    args = parse_args_with_config(parser_of("eval"), ["--config-file", str(tmp_path / "eval.yaml")])
    assert (args.amp, args.channels_last) == ("off", "on")


# --------------------------------------------------------------------------- the table of shared flags
# docs/cli.md's table, as data: flag -> (dest, action kind, nargs, type, choices, const). Every parser of
# every command (sub-commands included) is walked; a shared flag spelt or shaped otherwise fails.

def _vocabulary():
    from vggnet.arguments import AMP_CHOICES, CHANNELS_LAST_CHOICES, non_negative_int, positive_int

    store, true, false, append = "store", "store_true", "store_false", "append"
    return {
        "--checkpoint": ("checkpoint", (store, append), None, None, None, None),
        "--data": ("data", (store,), None, None, None, None),
        "--output": ("output", (store,), None, None, None, None),
        "--output-dir": ("output_dir", (store,), None, None, None, None),
        "--device": ("device", (store,), None, None, None, None),
        "--amp": ("amp", (store,), None, None, AMP_CHOICES, None),
        "--channels-last": ("channels_last", (store,), "?", None, CHANNELS_LAST_CHOICES, "on"),
        "--threads": ("threads", (store,), None, positive_int, None, None),
        "--workers": ("workers", (store,), None, non_negative_int, None, None),
        "--batch-size": ("batch_size", (store,), None, positive_int, None, None),
        "--seed": ("seed", (store,), None, int, None, None),
        "--json": ("json", (true,), 0, None, None, None),
        "--no-progress": ("progress", (false,), 0, None, None, None),
    }


# spellings that the table replaces: a parser may keep them only as hidden, deprecated aliases
_OLD_SPELLINGS = {"--out", "-o", "--output-file", "--ckpt", "--checkpoints", "--num-workers", "-j", "--progress"}
# commands whose pass-through flags are unset (None) by default: each cell's command decides
_PASSTHROUGH = {"vgg experiment"}
_EXECUTION = {"--device", "--amp", "--channels-last", "--threads"}
# commands that run a net, so take every execution flag
_RUNS_A_NET = {"vgg train", "vgg eval", "vgg predict", "vgg localize train", "vgg localize eval",
               "vgg localize predict", "vgg features", "vgg transfer", "vgg transfer predict", "vgg experiment",
               "vgg demo"}


def all_parsers():
    """(prog, parser) for every command and sub-command."""
    import importlib

    out = []
    for name in COMMANDS:
        parser = parser_of(name)
        stack = [parser]
        module = importlib.import_module(COMMANDS[name][0])  # sub-commands of their own (`vgg transfer predict`)
        for attr in dir(module):
            match = re.fullmatch(rf"add_{name.replace('-', '_')}_(\w+)_arguments", attr)
            if match:
                sub = argparse.ArgumentParser(prog=f"vgg {name} {match.group(1).replace('_', '-')}")
                getattr(module, attr)(sub)
                stack.append(sub)
        while stack:
            p = stack.pop()
            out.append((p.prog, p))
            for action in p._actions:
                if isinstance(action, argparse._SubParsersAction):
                    stack.extend(action.choices.values())
    return out


def _kind(action):
    return {argparse._StoreAction: "store", argparse._StoreTrueAction: "store_true",
            argparse._StoreFalseAction: "store_false", argparse._AppendAction: "append"}.get(type(action), "other")


@pytest.mark.parametrize("prog,parser", all_parsers(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_shared_flag_follows_the_table(prog, parser):
    from vggnet.arguments import INFERENCE_BATCH_SIZE, output_dir_default

    table = _vocabulary()
    problems = []
    for action in parser._actions:
        shared = [s for s in action.option_strings if s in table]
        if action.help == argparse.SUPPRESS:
            continue  # a hidden, deprecated alias
        old = [s for s in action.option_strings if s in _OLD_SPELLINGS]
        if old:
            problems.append(f"{old[0]}: an old spelling shown in --help (use the table's)")
        if not shared:
            continue
        flag = shared[0]
        dest, kinds, nargs, type_, choices, const = table[flag]
        if action.option_strings != [flag]:
            problems.append(f"{flag}: spelt {action.option_strings}, expected only {flag}")
        if action.dest != dest:
            problems.append(f"{flag}: dest {action.dest!r}, expected {dest!r}")
        if _kind(action) not in kinds:
            problems.append(f"{flag}: action {_kind(action)}, expected {' or '.join(kinds)}")
        if nargs != 0 and action.nargs != nargs:
            problems.append(f"{flag}: nargs {action.nargs!r}, expected {nargs!r}")
        if action.type != type_:
            problems.append(f"{flag}: type {action.type!r}, expected {type_!r}")
        if (tuple(action.choices) if action.choices is not None else None) != choices:
            problems.append(f"{flag}: choices {action.choices!r}, expected {choices!r}")
        if const is not None and action.const != const:
            problems.append(f"{flag}: the bare flag means {action.const!r}, expected {const!r}")
        # one default rule each
        passthrough = prog in _PASSTHROUGH
        default = action.default
        expected: tuple = ()
        if flag in ("--device", "--amp", "--channels-last"):
            expected = (None,) if passthrough else ("auto",)
        elif flag in ("--threads", "--workers", "--checkpoint", "--data", "--output"):
            expected = (None,)  # workers: None = min(4, cores - 1) at run time
        elif flag == "--output-dir":
            expected = (output_dir_default(prog.removeprefix("vgg ")), None) + (("demo_run",) if prog == "vgg demo"
                                                                               else ())
        elif flag == "--batch-size":
            expected = (None,) if passthrough else ((256,) if prog in ("vgg train", "vgg localize train")
                                                    else (INFERENCE_BATCH_SIZE,))
        elif flag == "--seed":
            expected = (None,) if passthrough else (0,)
        elif flag == "--json":
            expected = (False,)
        elif flag == "--no-progress":
            expected = (True,)
        if default not in expected:
            problems.append(f"{flag}: default {default!r}, expected {' or '.join(map(repr, expected))}")
    if prog in _RUNS_A_NET:
        have = {s for a in parser._actions for s in a.option_strings}
        missing = sorted(_EXECUTION - have)
        if missing:
            problems.append(f"runs a net but lacks {', '.join(missing)}")
    assert not problems, f"`{prog}` departs from docs/cli.md: " + "; ".join(problems)


def test_the_walk_sees_every_sub_command():
    progs = {prog for prog, _ in all_parsers()}
    assert {"vgg localize train", "vgg localize eval", "vgg localize predict", "vgg transfer", "vgg transfer predict",
            "vgg export",
            "vgg import", "vgg experiment", "vgg features"} <= progs


def test_the_table_is_the_documented_one():
    # every flag of the table is in docs/cli.md's table, and the model names of --help are the library's
    from pathlib import Path

    from vggnet.arguments import MODEL_NAMES_HELP
    from vggnet.models import NAMES

    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    for flag in _vocabulary():
        assert f"`{flag}" in text, f"docs/cli.md does not document {flag}"
    assert MODEL_NAMES_HELP.split(", ") == list(NAMES)


@pytest.mark.parametrize("argv,new", [
    (["localize", "predict", "--checkpoint", "L.pt", "--classifier", "C.pt", "x.jpg", "--out", "D"], "output_dir"),
    (["features", "--checkpoint", "a.pt", "--data", "D", "--out", "f.safetensors"], "output"),
    (["import", "w.pth", "--out", "c.pt"], "output"),
    (["export", "onnx", "--checkpoint", "a.pt", "--out", "a.onnx"], "output"),
    (["stats", "D", "-o", "s.json"], "output"),
])
def test_old_output_spellings_still_work_with_a_note(capsys, argv, new):
    from vggnet.arguments import parse_args_with_config

    name, rest = argv[0], argv[1:]
    args = parse_args_with_config(parser_of(name), rest)
    assert getattr(args, new) == argv[-1]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "deprecated" in err and ("--output" in err)


def test_channels_last_bare_flag_means_on_in_train():
    args = parser_of("train").parse_args(["--channels-last"])
    assert args.channels_last == "on"


def test_workers_default_rule(monkeypatch):
    import os

    from vggnet.arguments import default_workers

    for cores, expected in ((1, 0), (2, 1), (3, 2), (8, 4), (64, 4)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert default_workers() == expected


def test_positional_checkpoint_of_export_still_works_with_a_note(tmp_path, capsys):
    # the old form `vgg export FORMAT CKPT --out FILE` reaches the same error as the new one
    assert main(["export", "safetensors", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "positional CKPT is deprecated" in err and "missing.pt" in err


def test_positional_and_flag_checkpoints_of_features_are_merged(tmp_path, capsys):
    from vggnet.arguments import parse_args_with_config, take_positional_checkpoints

    args = parse_args_with_config(parser_of("features"), ["old.pt", "--checkpoint", "new.pt", "--data", "D",
                                                          "--output", "f"])
    take_positional_checkpoints(args, "old_checkpoints")
    assert args.checkpoint == ["new.pt", "old.pt"]
    assert "deprecated" in capsys.readouterr().err


# --------------------------------------------------------------------------- fail fast

_BAD = [
    ["train", "--batch-size", "0"], ["train", "--channels-last", "maybe"], ["train", "--workers", "-1"],
    ["eval", "--checkpoint", "x.pt", "--data", ".", "--amp", "fp32"], ["eval", "--threads", "0"],
    ["predict", "--topk", "0", "x.jpg"], ["localize", "train", "--head", "xyz"],
    ["localize", "eval", "--checkpoint", "l.pt", "--data", ".", "--amp", "fp8"],
    ["localize", "predict", "--checkpoint", "l.pt", "x.jpg"],
    ["features", "--checkpoint", "a.pt", "--data", ".", "--batch-size", "-3"],
    ["features", "--checkpoint", "a.pt", "--data", "."],  # no --output
    ["transfer", "--checkpoint", "a.pt", "--data", ".", "--folds", "0"], ["transfer", "--checkpoint", "a.pt"],
    ["import", "w.pth"], ["export", "onnx", "--checkpoint", "a.pt"], ["export", "onnx", "--output", "a.onnx"],
    ["export", "torchvision", "--checkpoint", "a.pt", "--output", "x", "--dense"],
    ["export", "onnx", "--checkpoint", "a.pt", "--output", "x", "--int8"],
    ["experiment", "table3", "--threads", "0"], ["experiment", "table3", "--amp", "maybe"],
    ["experiment", "table3"],  # no --data
    ["synth", "out", "--workers", "x"], ["stats", "d", "--workers", "-2"], ["demo", "--epochs", "0"],
    ["info", "--bogus"],
]


def test_wrong_flags_are_answered_before_torch_is_imported(tmp_path):
    import json
    import subprocess

    # one fresh interpreter runs every case: each must exit with 2 and leave torch unimported
    script = (
        "import json, sys\n"
        "from vggnet.cli import main\n"
        "out = []\n"
        f"for argv in {_BAD!r}:\n"
        "    try:\n"
        "        rc = main(argv)\n"
        "    except SystemExit as exc:\n"
        "        rc = exc.code\n"
        "    out.append([argv, rc, 'torch' in sys.modules])\n"
        "print(json.dumps(out))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=120)
    results = json.loads(done.stdout.strip().splitlines()[-1])
    wrong = [(argv, rc, torch) for argv, rc, torch in results if rc != 2 or torch]
    assert not wrong, f"(argv, exit status, torch imported): {wrong}\n{done.stderr[-2000:]}"


def test_help_and_experiment_list_are_torch_free(tmp_path):
    import subprocess

    script = (
        "import sys, contextlib, io\n"
        "from vggnet.cli import main, COMMANDS\n"
        "for name in [*COMMANDS, 'localize train', 'localize eval', 'localize predict']:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main(name.split() + ['--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        "    assert 'torch' not in sys.modules, name\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['experiment', 'list']) == 0\n"
        "assert 'torch' not in sys.modules, 'experiment list'\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=120)
    assert done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_experiment_dry_run_does_not_need_the_data(tmp_path, capsys):
    assert main(["experiment", "table3", "--data", str(tmp_path / "imagenet"), "--dry-run",
                 "--output-dir", str(tmp_path / "exp")]) == 0
    captured = capsys.readouterr()
    assert "torchrun" in captured.out and "not checked" in captured.err
    assert not (tmp_path / "exp").exists()
