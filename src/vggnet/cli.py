"""The `vgg` command: one entry point, a sub-command per job.

`main(argv)` takes an argument list, so tests drive the real command line. Each
sub-command lives with the code it runs: `COMMANDS` maps its name to a module
that defines `add_<name>_arguments(parser)` and `run_<name>(args) -> int`, and
only that module is imported (so `vgg info` does not load scikit-learn).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from vggnet.errors import UserError

__all__ = ["COMMANDS", "main", "parse_args_with_config", "add_model_arguments"]

# name -> (module, one-line help): the commands that work in this version, and only those
# (tests/test_cli.py runs `--help` of each)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("vggnet.cli", "Table 1 and Table 2 from the code: layers, parameters, MACs"),
    "synth": ("vggnet.data.synthetic", "write the synthetic shapes dataset to disk"),
    "stats": ("vggnet.data.stats", "training-set mean RGB and RGB PCA"),
    "train": ("vggnet.train", "train with the paper's protocol (§3.1)"),
    "eval": ("vggnet.evaluate_cli", "dense / multi-crop / multi-scale / fused evaluation (§3.2)"),
    "predict": ("vggnet.evaluate_cli", "top-5 classes for image files and folders"),
    "localize": ("vggnet.localize_cli", "localisation (Appendix A): train, eval, predict"),
    "features": ("vggnet.transfer_cli", "Appendix B descriptors of a folder (dense, flip, multi-scale; resumable)"),
    "transfer": ("vggnet.transfer_cli", "Appendix B: linear SVMs on descriptors; VOC mAP, Caltech accuracy; predict"),
    "import": ("vggnet.interop.cli", "torchvision/timm .pth, Keras .h5, Caffe .caffemodel, safetensors -> checkpoint"),
    "export": ("vggnet.interop.cli", "checkpoint -> safetensors, torchvision .pth, ONNX"),
    "experiment": ("vggnet.experiments", "the paper's tables as cached, resumable experiment grids"),
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


def _load_command(name: str):
    module_name, help_ = COMMANDS[name]
    attr = name.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise UserError(f"`vgg {name}` is not available in this version of vggnet") from None
        raise
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
        add, run, help_ = _load_command(name)
        parser = argparse.ArgumentParser(prog=f"vgg {name}", description=help_)
        add(parser)
        args = parse_args_with_config(parser, argv[1:])
        return int(run(args) or 0)
    except UserError as exc:
        print(f"vgg {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vgg {name}: interrupted", file=sys.stderr)
        return 130


def parse_args_with_config(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse with the precedence YAML file -> parser defaults -> command-line flags.

    If the parser has a `--config-file` option, the YAML file's keys (flag names
    with '-' or '_') become the parser's defaults, so flags given on the command
    line still win. An unknown key, or a value of the wrong type for its flag
    (`batch_norm: "yes please"`, `data: 12`, `epochs: 2.5`), is an error that
    names the key and the file.
    """
    dests = {a.dest: a for a in parser._actions}
    if "config_file" not in dests:
        return parser.parse_args(argv)
    pre, _ = parser.parse_known_args(argv)
    if pre.config_file:
        values = load_config_file(pre.config_file)
        defaults: dict[str, Any] = {}
        for key, value in values.items():
            if not isinstance(key, str):
                raise UserError(f"{pre.config_file}: setting names are text, got {key!r}")
            dest = key.replace("-", "_")
            if dest not in dests or dest in ("help", "config_file"):
                known = sorted(d.replace("_", "-") for d in dests if d not in ("help", "config_file"))
                raise UserError(f"{pre.config_file}: unknown setting {key!r}; known settings: {', '.join(known)}")
            action = dests[dest]
            if isinstance(value, bool) and action.choices is not None and "off" in action.choices:
                # `amp: false` / `channels_last: true` for a flag of words: the flag means the word
                value = ("on" if "on" in action.choices else value) if value else "off"
            value = _config_value(pre.config_file, key, action, value)
            if action.choices is not None and value not in action.choices:
                raise UserError(f"{pre.config_file}: {key!r} must be one of "
                                f"{', '.join(map(str, action.choices))}, got {value!r}")
            defaults[dest] = value
        parser.set_defaults(**defaults)
    return parser.parse_args(argv)


# What a YAML file may say for an on/off flag (a closed list: "yes please" is an error, not true).
_TRUE_WORDS = {"true", "yes", "on"}
_FALSE_WORDS = {"false", "no", "off"}


def _config_value(path: str, key: str, action: argparse.Action, value: Any) -> Any:
    """`value` of setting `key` checked (and converted) for the flag `action` it stands for."""
    where = f"{path}: {key!r}"
    if value is None:
        return None  # `micro_batch_size: null`: unset, as the flag's default (the command checks the rest)
    if isinstance(value, dict):
        raise UserError(f"{where} expects a single value, got a mapping {value!r}")
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
            value = value.strip().lower() in _TRUE_WORDS
        if not isinstance(value, bool):
            raise UserError(f"{where} is on or off: expected true or false, got {value!r}")
        return value  # the flag's own value (`progress: false` is `--no-progress`)
    if isinstance(value, bool):
        raise UserError(f"{where} is not an on/off setting: expected "
                        f"{_expected(action)}, got {str(value).lower()}")
    if action.type in (int, float):
        if isinstance(value, str):
            try:
                return action.type(value)
            except ValueError:
                raise UserError(f"bad value for {key!r} in {path}: expected {_expected(action)}, "
                                f"got {value!r}") from None
        if action.type is int and not isinstance(value, int):
            raise UserError(f"bad value for {key!r} in {path}: expected {_expected(action)}, got {value!r}")
        if action.type is float and not isinstance(value, (int, float)):
            raise UserError(f"bad value for {key!r} in {path}: expected {_expected(action)}, got {value!r}")
        return action.type(value)
    if action.type is not None:
        if isinstance(value, str):
            try:
                return action.type(value)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                raise UserError(f"{path}: bad value for {key!r}: {exc}") from None
        return value
    # a text flag (a path, a name, S or Smin:Smax): YAML reads `data: 12` or `scale: 256` as numbers;
    # the flag means the text (the command then checks it: `--data 12: no such directory`)
    if isinstance(value, (int, float)) and not isinstance(action.default, (int, float)):
        return str(value)
    return value


def _expected(action: argparse.Action) -> str:
    return {int: "an integer", float: "a number"}.get(action.type, "text")  # type: ignore[arg-type]


# A settings file is a few hundred bytes; anything much larger is not one (and is not read whole).
_MAX_CONFIG_BYTES = 1 << 20


def _config_loader() -> type:
    """PyYAML's safe loader with three changes for settings files:

    - `a:b` stays a string: YAML 1.1 reads `scale: 32:48` as the base-60 number
      1968, where a user means the range Smin:Smax;
    - only true/false are booleans (YAML 1.2): YAML 1.1 also reads yes/no/on/off,
      which turns `amp: off` into False; on/off flags accept those words themselves;
    - aliases (`*name`) are refused: a 400-byte "billion laughs" file of nested
      aliases expands to gigabytes, and settings have no use for them.
    """
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a settings file; "
                                                              "write the value out", event.start_mark)
            return super().compose_node(parent, index)

    bool_tag = "tag:yaml.org,2002:bool"
    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))

    def number(kind: str):
        base = getattr(yaml.SafeLoader, f"construct_yaml_{kind}")

        def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
            if ":" in str(node.value):
                return loader.construct_scalar(node)
            return base(loader, node)
        return construct

    Loader.add_constructor("tag:yaml.org,2002:int", number("int"))
    Loader.add_constructor("tag:yaml.org,2002:float", number("float"))
    return Loader


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of settings; a clear error for a missing, malformed, oversized or non-UTF-8 file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config-file {path}: no such file")
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise UserError(f"--config-file {path}: cannot be read: {exc.strerror or exc}") from None
    if len(raw) > _MAX_CONFIG_BYTES:
        raise UserError(f"--config-file {path}: larger than {_MAX_CONFIG_BYTES >> 20} MiB; "
                        f"a settings file is a short YAML mapping")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UserError(f"--config-file {path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); "
                        f"save the file as UTF-8") from None
    try:
        values = yaml.load(text, Loader=_config_loader())
    except yaml.YAMLError as exc:
        raise UserError(f"--config-file {path}: not valid YAML: {exc}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"--config-file {path}: expected a mapping of settings, got {type(values).__name__}")
    return values


def add_model_arguments(parser: argparse.ArgumentParser, *, model_default: str = "D") -> None:
    """The model's build arguments as flags (`--model`, `--width`, ...), shared by train and friends."""
    from vggnet.models import NAMES

    g = parser.add_argument_group("model")
    g.add_argument("--model", default=model_default, metavar="NAME",
                   help=f"configuration: {', '.join(NAMES)} (default: %(default)s)")
    g.add_argument("--width", type=float, default=1.0, help="conv channel multiplier (default: %(default)s)")
    g.add_argument("--fc-width", type=int, default=4096, help="hidden FC width (default: %(default)s)")
    g.add_argument("--crop-size", type=int, default=224, help="training crop, a multiple of 32 (default: %(default)s)")
    g.add_argument("--dropout", type=float, default=0.5, help="dropout after FC1 and FC2 (default: %(default)s)")
    g.add_argument("--batch-norm", action="store_true", help="BatchNorm after every conv (beyond the paper)")


# --------------------------------------------------------------------------- vgg info


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="one configuration (default: all of Table 1)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classes (default: %(default)s)")
    parser.add_argument("--crop-size", type=int, default=224, help="input size (default: %(default)s)")
    parser.add_argument("--width", type=float, default=1.0, help="conv channel multiplier (default: %(default)s)")
    parser.add_argument("--fc-width", type=int, default=4096, help="hidden FC width (default: %(default)s)")
    parser.add_argument("--batch-norm", action="store_true", help="count the BatchNorm variant")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def describe(name: str, **build: Any) -> dict[str, Any]:
    """Table 1 column and Table 2 row of one configuration, computed from the built model."""
    import torch

    from vggnet.models import CONFIGS, count_macs, count_parameters, vgg, weight_layers

    with torch.device("meta"):  # no memory, no initialisation cost: only shapes are needed
        model = vgg(name, **build)
    layers = list(CONFIGS[model.name])
    fc = [f"FC-{build.get('fc_width', 4096)}", f"FC-{build.get('fc_width', 4096)}",
          f"FC-{model.num_classes}", "soft-max"]
    return {
        "name": model.name,
        "layers": layers + fc,
        "weight_layers": weight_layers(model),
        "parameters": count_parameters(model),
        "macs": count_macs(model),
        "gmacs": round(count_macs(model) / 1e9, 2),
        "build": model.build_args,
    }


def run_info(args: argparse.Namespace) -> int:
    from vggnet.models import CONFIGS, resolve_name

    try:
        names = [resolve_name(args.name)] if args.name else list(CONFIGS)
        build = dict(num_classes=args.num_classes, crop_size=args.crop_size, width=args.width,
                     fc_width=args.fc_width, batch_norm=args.batch_norm)
        rows = [describe(n, **build) for n in names]
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps({r["name"]: r for r in rows}, indent=2))
        return 0
    print(f"Table 1: ConvNet configurations (input {args.crop_size}x{args.crop_size} RGB image)")
    columns = [[f"{r['name']}", f"{r['weight_layers']} weight layers"] + r["layers"] for r in rows]
    height = max(len(c) for c in columns)
    widths = [max(len(s) for s in c) for c in columns]
    for i in range(height):
        print("  ".join(f"{c[i] if i < len(c) else '':<{w}}" for c, w in zip(columns, widths)).rstrip())
    print()
    print("Table 2: number of parameters" + (" (with BatchNorm)" if args.batch_norm else ""))
    print(f"{'net':<6} {'weight layers':>13} {'parameters':>14} {'GMACs':>8}")
    for r in rows:
        print(f"{r['name']:<6} {r['weight_layers']:>13} {r['parameters']:>14,} {r['gmacs']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
