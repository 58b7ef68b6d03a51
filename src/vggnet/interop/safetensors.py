"""safetensors in and out: the released-weights form, with build arguments, preprocessing and class
names in the file's own header metadata, so that the file alone is enough.

The header's `__metadata__` (string to string, as safetensors allows) holds
`vggnet.format`, `vggnet.version`, and JSON texts `vggnet.build`,
`vggnet.preprocessing`, `vggnet.classes`, `vggnet.meta`, and `vggnet.pretrained_cfg`: the
centre-crop evaluation in timm's field names (input_size, crop_pct, resize, interpolation,
antialias, mean/std on the [0, 1] scale, label_names), enough to run the net without vggnet. A JSON sidecar
(`NAME.json`, with the weights' sha256) is still written beside it, and is what
older exports, whose header held the build arguments only, are read from.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from vggnet.checkpoint import (SKIP_CHECKSUM_ENV, VERSION, atomic_write, checkpoint_from_state, checkpoint_kind,
                               weights_checksum)
from vggnet.data.transforms import deployment_config
from vggnet.errors import CheckpointError, UserError
from vggnet.interop.common import as_checkpoint, check_state, class_names

__all__ = ["WEIGHTS_FORMAT", "import_safetensors", "export_safetensors", "sidecar_path"]

WEIGHTS_FORMAT = "vggnet.weights"  # the JSON sidecar of a safetensors export, and the header's vggnet.format
_HEADER_KEYS = ("build", "preprocessing", "classes", "meta")  # JSON texts under vggnet.<key> in the header


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar beside a safetensors file: `vgg16.safetensors` -> `vgg16.json`."""
    return Path(path).with_suffix(".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def import_safetensors(
    path: str | os.PathLike,
    *,
    classes: Sequence[str] | str | os.PathLike | None = None,
) -> dict[str, Any]:
    """A checkpoint from a safetensors export (`vgg export safetensors`): build arguments,
    preprocessing and classes from its header metadata, or from its JSON sidecar for
    older exports. A sidecar beside the file, when present, also checks its sha256."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    where = f"safetensors weights {path}"
    sidecar = sidecar_path(path)
    if not path.is_file():
        raise CheckpointError(f"{where} " + ("is a directory" if path.is_dir() else "does not exist"))
    sidecar_info, sidecar_error = None, None
    if sidecar.is_file():
        try:
            sidecar_info = _read_sidecar(sidecar)
        except CheckpointError as exc:  # a foreign .json of the same name is no error when the header suffices
            sidecar_error = exc
    if sidecar_info and sidecar_info.get("sha256") and _sha256(path) != sidecar_info["sha256"]:
        raise CheckpointError(f"{where} does not match the checksum in {sidecar}: the file is damaged or "
                              f"belongs to another export")
    info = _header_info(path, where)
    if info is None:  # an older export: everything is in the sidecar
        if sidecar_error is not None:
            raise sidecar_error
        if sidecar_info is None:
            raise CheckpointError(f"{where} has no JSON sidecar {sidecar} (build arguments, preprocessing, "
                                  f"classes): keep the two files of `vgg export safetensors` together")
        info = sidecar_info
    try:
        state = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{where} cannot be read (truncated or not safetensors): {exc}") from None
    stored = _header_value(path, "vggnet.weights_sha256")
    if stored and weights_checksum(state) != stored and os.environ.get(SKIP_CHECKSUM_ENV) != "1":
        raise CheckpointError(f"{where}: its weights do not match the checksum stored in its header (bits changed "
                              f"on disk or in a copy); export it again from a good checkpoint, or, if you edited "
                              f"the weights on purpose, import it with {SKIP_CHECKSUM_ENV}=1")
    build = info["build"]
    state = check_state(where, build, state)
    names = class_names(classes, int(build["num_classes"])) or info["classes"]
    return checkpoint_from_state(build, state, preprocessing=info["preprocessing"], classes=names,
                                 meta={**info.get("meta", {}), "source_file": str(path)})


def _read_sidecar(sidecar: Path) -> dict[str, Any]:
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"sidecar {sidecar} is not valid JSON: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(f"{sidecar} is not a vggnet weights sidecar (no format={WEIGHTS_FORMAT!r} entry)")
    for key in ("build", "preprocessing", "classes"):
        if key not in info:
            raise CheckpointError(f"sidecar {sidecar} has no {key!r} entry")
    return info


def _header_value(path: Path, key: str) -> str | None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get(key)


def _header_info(path: Path, where: str) -> dict[str, Any] | None:
    """Build arguments, preprocessing, classes and meta from the header metadata; None for a file
    without them (an older export, whose sidecar holds them, or a foreign file)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{where} cannot be read (truncated or not safetensors): {exc}") from None
    if header.get("vggnet.format") != WEIGHTS_FORMAT:
        return None
    info: dict[str, Any] = {}
    for key in _HEADER_KEYS:
        try:
            info[key] = json.loads(header[f"vggnet.{key}"])
        except (KeyError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{where}: header metadata 'vggnet.{key}' is missing or not JSON "
                                  f"({type(exc).__name__}: {exc})") from None
    return info


def export_safetensors(ckpt: Mapping[str, Any] | str | os.PathLike, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the released-weights form: `path` (safetensors, with build, preprocessing, classes and meta
    in its header metadata) and its JSON sidecar (the same and the sha256). Returns both paths."""
    from safetensors.torch import save

    ckpt = as_checkpoint(ckpt)
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserError(f"--output {path}: a safetensors export needs the .safetensors suffix "
                        f"(the sidecar is written beside it as {sidecar_path(path).name})")
    state = {k: v.contiguous() for k, v in ckpt["state_dict"].items()}
    meta = jsonable(ckpt.get("meta", {}))
    cfg = deployment_config(ckpt["build"], ckpt["preprocessing"], ckpt["classes"])
    header = {"format": "pt", "vggnet": json.dumps(ckpt["build"]),  # "vggnet": what older readers look at
              "vggnet.format": WEIGHTS_FORMAT, "vggnet.version": str(VERSION),
              "vggnet.build": json.dumps(ckpt["build"]), "vggnet.preprocessing": json.dumps(ckpt["preprocessing"]),
              "vggnet.classes": json.dumps(list(ckpt["classes"])), "vggnet.meta": json.dumps(meta),
              "vggnet.pretrained_cfg": json.dumps(cfg),
              # the checkpoint's weights checksum travels with them: `vgg import` verifies it
              "vggnet.weights_sha256": weights_checksum(state), "vggnet.kind": checkpoint_kind(ckpt)}
    atomic_write(path, lambda f: f.write(save(state, metadata=header)))
    info = {"format": WEIGHTS_FORMAT, "version": VERSION, "weights": path.name, "sha256": _sha256(path),
            "build": ckpt["build"], "preprocessing": ckpt["preprocessing"], "classes": ckpt["classes"],
            "meta": meta, "pretrained_cfg": cfg}
    sidecar = sidecar_path(path)
    atomic_write(sidecar, lambda f: f.write((json.dumps(info, indent=1) + "\n").encode("utf-8")))
    return path, sidecar


def jsonable(value: Any) -> Any:
    """`value` with whatever JSON cannot hold (tensors, ...) turned into strings."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))

