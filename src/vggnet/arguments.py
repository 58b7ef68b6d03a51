"""What every command's parser shares: YAML config files and the model's build flags.

`parse_args_with_config(parser, argv)` gives the precedence YAML file -> parser
defaults -> command-line flags (timm's); `load_config_file` reads such a file
safely; `add_model_arguments` adds the model's build arguments (`--model`,
`--width`, ...). The library (the engine's `TrainConfig`, experiment grids)
uses these too, so they live here and not in the `vgg` dispatcher.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from vggnet.errors import UserError

__all__ = ["parse_args_with_config", "explicit_settings", "load_config_file", "add_model_arguments", "MODEL_NAMES_HELP",
           "AMP_CHOICES", "CHANNELS_LAST_CHOICES", "METHODS", "CROP_PCT", "HEADS", "BOX_MODES", "TARGETS",
           "AGGREGATIONS", "C_GRID", "IMPORT_FORMATS", "EXPORT_FORMATS", "parse_test_scales", "TestScalesError", "INFERENCE_BATCH_SIZE", "AtLeast", "positive_int",
           "non_negative_int", "default_workers", "resolve_workers", "deprecation_note", "add_checkpoint_argument",
           "add_data_argument", "output_dir_default", "add_output_dir_argument", "add_output_argument",
           "add_execution_arguments", "add_threads_argument", "add_workers_argument", "add_batch_size_argument",
           "add_seed_argument", "add_json_argument", "add_progress_argument", "check_required_output",
           "take_positional_checkpoints"]


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
        args = parser.parse_args(argv)
        args._explicit = explicit_settings(parser, argv)
        return args
    pre, _ = parser.parse_known_args(argv)
    from_file: set[str] = set()
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
        from_file = set(defaults)
    args = parser.parse_args(argv)
    args._explicit = explicit_settings(parser, argv) | from_file
    return args


def explicit_settings(parser: argparse.ArgumentParser, argv: Sequence[str]) -> frozenset[str]:
    """The dests that `argv` sets itself (not left at a default), sub-commands included: what a
    checkpoint given as input may not override (`--init from:CKPT` brings the net's shape unless
    `--model`, `--width`, ... say otherwise). Call it after `argv` parsed without error."""
    parsers, saved = [parser], []
    while parsers:
        p = parsers.pop()
        saved.append((p, dict(p._defaults), [(a, a.default) for a in p._actions]))
        p._defaults.clear()
        for a in p._actions:
            if a.option_strings:  # (a positional's absence is its default, checked against its choices)
                a.default = argparse.SUPPRESS
            if isinstance(a, argparse._SubParsersAction):
                parsers.extend(a.choices.values())
    global _QUIET
    _QUIET = True  # the second parse of the same argv: its deprecation notes were said already
    try:
        given, _ = parser.parse_known_args(list(argv))
    finally:
        _QUIET = False
        for p, defaults, actions in saved:
            p._defaults.update(defaults)
            for a, default in actions:
                a.default = default
    positional = {a.dest: a.default for p, _, actions in saved for a, _ in actions if not a.option_strings}
    return frozenset(k for k, v in vars(given).items() if k not in positional or v != positional[k])


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
    if isinstance(action.type, AtLeast):
        try:
            return action.type(value)
        except argparse.ArgumentTypeError as exc:
            raise UserError(f"bad value for {key!r} in {path}: {exc}") from None
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


# The names `vggnet.vgg` accepts, for help texts written before torch is loaded
# (tests/test_cli_vocabulary.py checks it against vggnet.models.NAMES).
MODEL_NAMES_HELP = "A, A-LRN, B, B-5x5, C, D, E, vgg11, vgg13, vgg16, vgg19"


def add_model_arguments(parser: argparse.ArgumentParser, *, model_default: str | None = None) -> None:
    """The model's build arguments as flags (`--model`, `--width`, ...), shared by train and friends.

    Left out, a flag stays None: the net of an `--init from:CKPT` checkpoint gives it, else the
    paper's value named in its help (the engine's `NET_DEFAULTS`)."""
    from_ckpt = "with --init from:CKPT the checkpoint's, else"
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=model_default, metavar="NAME",
                   help=f"configuration: {MODEL_NAMES_HELP} (default: "
                        f"{model_default or from_ckpt + ' D'})")
    g.add_argument("--width", type=float, default=None, help=f"conv channel multiplier (default: {from_ckpt} 1.0)")
    g.add_argument("--fc-width", type=int, default=None, help=f"hidden FC width (default: {from_ckpt} 4096)")
    g.add_argument("--crop-size", type=int, default=None,
                   help=f"training crop, a multiple of 32 (default: {from_ckpt} 224)")
    g.add_argument("--dropout", type=float, default=None, help=f"dropout after FC1 and FC2 (default: {from_ckpt} 0.5)")
    g.add_argument("--batch-norm", action="store_true", default=None,
                   help=f"BatchNorm after every conv (beyond the paper) (default: {from_ckpt} off)")


# --------------------------------------------------------------------------- the shared vocabulary
#
# Every command spells a shared flag the same way, with the same form and the same default rule
# (docs/cli.md has the table; tests/test_cli_vocabulary.py walks every parser against it). The
# helpers below are the only place these flags are defined; none imports torch, so a wrong value
# is answered before a command loads PyTorch.

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
CHANNELS_LAST_CHOICES = ("auto", "on", "off")
INFERENCE_BATCH_SIZE = 32  # images per forward pass of every inference command

# The words the parts' flags accept, here (torch-free) so that a parser is built, and a wrong value
# refused, before torch is imported; the parts import them from here (one definition).
METHODS = ("dense", "multi-crop", "both", "center")            # vgg eval --method (classification.evaluate)
CROP_PCT = 0.875  # torchvision's and timm's ImageNet evaluation: resize to 256, centre crop 224
HEADS = ("scr", "pcr")                                          # vgg localize train --head (Appendix A)
BOX_MODES = ("whole", "clip")
TARGETS = ("overlap", "largest")
AGGREGATIONS = ("average", "stack")                             # vgg features --aggregate (Appendix B)
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)                          # vgg transfer --C-grid
IMPORT_FORMATS = ("torchvision", "timm", "keras", "caffe", "safetensors")
EXPORT_FORMATS = ("safetensors", "torchvision", "onnx")


class TestScalesError(UserError, argparse.ArgumentTypeError):
    """Bad test scales: argparse names the flag when it parses them; called by a command (a grid's
    list, a flag read as text), it is a `UserError`: a message, exit status 2, no traceback."""


def parse_test_scales(value: str | int | Sequence[int]) -> list[int]:
    """`--test-scales 256,384,512` (or a YAML list) -> [256, 384, 512]."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
    elif isinstance(value, int):
        parts = [value]
    else:
        parts = list(value)
    try:
        scales = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise TestScalesError(f"test scales: expected comma-separated integers such as 256,384,512, got {value!r}") \
            from None
    if not scales or min(scales) < 1:
        raise TestScalesError(f"test scales: expected positive integers such as 256,384,512, got {value!r}")
    return sorted(set(scales))


class AtLeast:
    """An argparse `type`: an integer >= `minimum` (`--batch-size 0` is a usage error, before any work)."""

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum
        self.__name__ = {0: "non-negative integer", 1: "positive integer"}.get(minimum, f"integer >= {minimum}")

    def __call__(self, value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            number = int(value)
        else:
            raise argparse.ArgumentTypeError(f"expected a {self.__name__}, got {value!r}")
        if number < self.minimum:
            raise argparse.ArgumentTypeError(f"expected a {self.__name__}, got {value!r}")
        return number

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AtLeast) and other.minimum == self.minimum

    def __hash__(self) -> int:
        return hash(("AtLeast", self.minimum))

    def __repr__(self) -> str:
        return f"AtLeast({self.minimum})"


positive_int = AtLeast(1)
non_negative_int = AtLeast(0)


def default_workers() -> int:
    """Loader processes when --workers is not given: min(4, cores - 1), one core left for the main
    process. `cores` is what this process may use (sched_getaffinity), the same count PyTorch's
    DataLoader compares --workers with, so the default never draws its "suggested max" warning."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(0, min(4, cores - 1))


def resolve_workers(workers: int | None) -> int:
    """`--workers` as given, or `default_workers()` when it was left unset (None)."""
    return default_workers() if workers is None else workers


class _DeprecatedStore(argparse.Action):
    """An old spelling that still works for one release: stores into the new flag's dest, and says so
    on stderr in one line (`--out` -> `--output`)."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        deprecation_note(f"{option_string}", self.new)
        setattr(namespace, self.dest, values)


_QUIET = False  # set while `explicit_settings` parses argv a second time


def deprecation_note(old: str, new: str) -> None:
    """One line on stderr: `old` still works in this release; `new` is the spelling to use."""
    import sys

    if _QUIET:
        return
    print(f"vgg: note: {old} is deprecated and goes in the next release; use {new}", file=sys.stderr)


def add_checkpoint_argument(parser: Any, *, multiple: bool = False, required: bool = False,
                            help: str = "vggnet checkpoint (.pt)", metavar: str = "CKPT") -> None:
    """`--checkpoint CKPT`: the input net (repeatable where several nets are fused or stacked)."""
    if multiple:
        parser.add_argument("--checkpoint", action="append", default=None, required=required, metavar=metavar,
                            help=help + " (repeat it for several nets)")
    else:
        parser.add_argument("--checkpoint", default=None, required=required, metavar=metavar, help=help)


def add_data_argument(parser: Any, *, required: bool = False, help: str = "dataset root (DIR/train, DIR/val)") -> None:
    """`--data DIR`: the dataset folder."""
    parser.add_argument("--data", default=None, required=required, metavar="DIR", help=help)


def output_dir_default(command: str) -> str:
    """The one rule for a command's default output folder: runs/<command> (`runs/localize-predict`)."""
    return f"runs/{command.replace(' ', '-')}"


def add_output_dir_argument(parser: Any, command: str, *, help: str = "folder the results go to",
                            default: str | None = "rule", old: str | None = None) -> None:
    """`--output-dir DIR` (a folder; default runs/<command>); `old` an earlier spelling kept one release."""
    value = output_dir_default(command) if default == "rule" else default
    parser.add_argument("--output-dir", default=value, metavar="DIR",
                        help=f"{help} (default: {value})" if value else help)
    if old:
        parser.add_argument(old, dest="output_dir", action=_DeprecatedStore, new="--output-dir",
                            help=argparse.SUPPRESS)


def add_output_argument(parser: Any, *, required: bool = False, help: str = "file to write",
                        metavar: str = "FILE", old: Sequence[str] = ()) -> None:
    """`--output FILE` (one file); `old` earlier spellings (`--out`) kept one release."""
    parser.add_argument("--output", default=None, required=False, metavar=metavar,
                        help=help + (" (required)" if required else ""))
    for spelling in old:
        parser.add_argument(spelling, dest="output", action=_DeprecatedStore, new="--output", help=argparse.SUPPRESS)
    if required:
        parser.set_defaults(_required_output=True)


def add_execution_arguments(parser: Any, *, passthrough: bool = False) -> None:
    """`--device`, `--amp`, `--channels-last` (bare: on) and `--threads`: how a net runs (vggnet.execution).

    `passthrough`: the flags are handed on to other commands (`vgg experiment`), so unset is None
    (each command's own default) rather than auto."""
    auto = None if passthrough else "auto"
    g = parser.add_argument_group("execution")
    g.add_argument("--device", default=auto, metavar="DEVICE",
                   help="auto | cpu | cuda | cuda:N (default: auto = cuda if available; under torchrun each "
                        "process takes GPU LOCAL_RANK)")
    g.add_argument("--amp", choices=AMP_CHOICES, default=auto,
                   help="mixed precision; auto = bf16 on CUDA and on CPUs that compute bf16 natively "
                        "(AVX512-BF16/AMX), off elsewhere (default: auto)")
    g.add_argument("--channels-last", nargs="?", const="on", choices=CHANNELS_LAST_CHOICES, default=auto,
                   help="NHWC memory layout; the bare flag means on; auto = on for CUDA and with bf16 on a CPU "
                        "(default: auto)")
    add_threads_argument(g)


def add_threads_argument(parser: Any) -> None:
    """`--threads N`: CPU threads for the net (None: PyTorch's default, one per core)."""
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="CPU threads for the net (torch.set_num_threads; default: PyTorch's, one per core)")


def add_workers_argument(parser: Any, *, help: str = "data-loading processes") -> None:
    """`--workers N`: loader processes; unset = min(4, cores - 1) (`default_workers`)."""
    parser.add_argument("--workers", type=non_negative_int, default=None, metavar="N",
                        help=f"{help} (default: min(4, cores - 1), here {default_workers()})")


def add_batch_size_argument(parser: Any, *, default: int | None = INFERENCE_BATCH_SIZE,
                            help: str = "images per forward pass") -> None:
    """`--batch-size N`: the global training batch (256, the paper's) or images per inference pass (32)."""
    parser.add_argument("--batch-size", type=positive_int, default=default, metavar="N",
                        help=f"{help} (default: {default})" if default is not None else help)


def add_seed_argument(parser: Any, *, default: int | None = 0, help: str = "seed of every random choice") -> None:
    parser.add_argument("--seed", type=int, default=default, metavar="N",
                        help=f"{help} (default: {default})" if default is not None else help)


def add_json_argument(parser: Any, *, help: str = "print the results as JSON") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def add_progress_argument(parser: Any) -> None:
    """`--no-progress`: no progress bars (bars are drawn only on a terminal anyway)."""
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def check_required_output(args: argparse.Namespace, *, dest: str = "output", flag: str = "--output") -> None:
    """`--output` is required where the command writes one file; checked after parsing so the old
    spelling (`--out`) still satisfies it."""
    if getattr(args, "_required_output", False) and not getattr(args, dest, None):
        raise UserError(f"{flag} FILE is required")


def take_positional_checkpoints(args: argparse.Namespace, dest: str, *, required: bool = True,
                                multiple: bool = True) -> None:
    """Merge checkpoints given the old way (positional CKPT) into `--checkpoint`, with the note."""
    old = getattr(args, dest, None) or []
    if isinstance(old, str):
        old = [old]
    if old:
        deprecation_note("a positional CKPT", "--checkpoint CKPT")
        if multiple:
            args.checkpoint = list(args.checkpoint or []) + list(old)
        elif args.checkpoint:
            raise UserError(f"--checkpoint {args.checkpoint} and a positional checkpoint {old[0]}: give one")
        else:
            args.checkpoint = old[0]
    if required and not args.checkpoint:
        raise UserError("--checkpoint CKPT is required")
