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
