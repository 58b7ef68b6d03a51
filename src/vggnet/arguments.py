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

__all__ = ["parse_args_with_config", "load_config_file", "add_model_arguments"]


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
