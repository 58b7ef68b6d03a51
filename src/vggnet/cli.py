"""The `vgg` command: one entry point, a sub-command per job.

`main(argv)` takes an argument list, so tests drive the real command line. Each
sub-command lives with the code it runs: `COMMANDS` maps its name to a module
that defines `add_<name>_arguments(parser)` and `run_<name>(args) -> int`, and
only that module is imported (so `vgg info` does not load scikit-learn). A
command whose first argument is a word may have a sub-command of that name
with its own parser and `--help`: `vgg transfer predict` is
`add_transfer_predict_arguments` / `run_transfer_predict` of the same module,
while `vgg transfer CKPT ...` stays the command itself.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from vggnet.arguments import parse_args_with_config
from vggnet.errors import UserError, plain_message

__all__ = ["COMMANDS", "main", "load_command"]

# name -> (module, one-line help): the commands that work in this version, and only those
# (tests/test_cli.py runs `--help` of each)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("vggnet.info", "Table 1 and Table 2 from the code: layers, parameters, MACs"),
    "synth": ("vggnet.data.cli", "write the synthetic shapes dataset to disk"),
    "stats": ("vggnet.data.cli", "training-set mean RGB and RGB PCA"),
    "train": ("vggnet.classification.cli", "train with the paper's protocol (§3.1)"),
    "eval": ("vggnet.classification.cli", "dense / multi-crop / multi-scale / fused evaluation (§3.2)"),
    "predict": ("vggnet.classification.cli", "top-5 classes for image files and folders"),
    "localize": ("vggnet.localisation.cli", "localisation (Appendix A): train, eval, predict"),
    "features": ("vggnet.transfer.cli", "Appendix B descriptors of a folder (dense, flip, multi-scale; resumable)"),
    "transfer": ("vggnet.transfer.cli", "Appendix B: linear SVMs on descriptors; VOC mAP, Caltech accuracy; predict"),
    "import": ("vggnet.interop.cli", "torchvision/timm .pth, Keras .h5, Caffe .caffemodel, safetensors -> checkpoint"),
    "export": ("vggnet.interop.cli", "checkpoint -> safetensors, torchvision .pth, ONNX"),
    "serve": ("vggnet.serve.cli", "a trained net as an HTTP service with a page to try it (batched, bounded)"),
    "experiment": ("vggnet.experiments.cli", "the paper's tables as cached, resumable experiment grids"),
    "demo": ("vggnet.demo", "the main job end to end on the synthetic dataset"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: vgg <command> [options]", "",
             "VGG (Simonyan & Zisserman, arXiv 1409.1556): models, training, evaluation, localisation, "
             "transfer.", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`vgg <command> --help` describes a command."]
    return "\n".join(lines)


def load_command(name: str, sub: str | None = None):
    """`(add_arguments, run, help)` of command `name` (or of its sub-command `sub`, None where the
    module has no such sub-command), importing only its module."""
    module_name, help_ = COMMANDS[name]
    attr = name.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise UserError(f"`vgg {name}` is not available in this version of vggnet") from None
        raise
    if sub is not None:
        attr = f"{attr}_{sub.replace('-', '_')}"
        add, run = getattr(module, f"add_{attr}_arguments", None), getattr(module, f"run_{attr}", None)
        if add is None or run is None:
            return None
        return add, run, (run.__doc__ or help_).strip().splitlines()[0]
    add = getattr(module, f"add_{attr}_arguments", None)
    run = getattr(module, f"run_{attr}", None)
    if add is None or run is None:
        raise UserError(f"`vgg {name}` is not available in this version of vggnet")
    return add, run, help_


def main(argv: Sequence[str] | None = None) -> int:
    """Run `vgg` with `argv` (default: sys.argv[1:]); returns the exit status."""
    try:
        status = _main(argv)  # (argparse's own --help output ignores a closed pipe by itself)
        sys.stdout.flush()  # inside the try: a closed pipe is reported here, not at interpreter exit
        return status
    except BrokenPipeError:
        # `vgg info --json | head -1`, `vgg train --help | head`: the reader has gone, which is not an
        # error of ours. Point stdout at /dev/null so that Python's final flush does not raise again
        # (Python docs, "Note on SIGPIPE"); 141 = 128 + SIGPIPE, what a C tool's status would be.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"vggnet {version('vggnet')}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"vgg: error: unknown command {name!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        rest = argv[1:]
        # `vgg transfer predict ...`: a sub-command word (not a file of that name, such as a checkpoint)
        found = (load_command(name, rest[0]) if rest and rest[0].isidentifier() and not os.path.exists(rest[0])
                 else None)
        if found is not None:
            name, rest = f"{name} {rest[0]}", rest[1:]
        add, run, help_ = found or load_command(name)
        parser = argparse.ArgumentParser(prog=f"vgg {name}", description=help_)
        add(parser)
        args = parse_args_with_config(parser, rest)
        return int(run(args) or 0)
    except UserError as exc:
        print(f"vgg {name}: error: {plain_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vgg {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise  # main's: the reader has gone
    except OSError as exc:
        # what the system refused (a file too large for `ulimit -f`, a full disk, a read-only folder): the
        # file and the reason, not a traceback; the commands name their inputs' problems before this
        if exc.errno is None:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"vgg {name}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
