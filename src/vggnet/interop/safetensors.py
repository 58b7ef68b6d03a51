"""safetensors in and out: the released-weights form, with build arguments, preprocessing and class
names in a JSON sidecar.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from vggnet.checkpoint import VERSION, atomic_write, checkpoint_from_state
from vggnet.errors import CheckpointError, UserError
from vggnet.interop._common import as_checkpoint, check_state, class_names

__all__ = ["WEIGHTS_FORMAT", "import_safetensors", "export_safetensors", "sidecar_path"]

WEIGHTS_FORMAT = "vggnet.weights"  # the JSON sidecar of a safetensors export


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
    """A checkpoint from a safetensors export and its JSON sidecar (`vgg export safetensors`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    where = f"safetensors weights {path}"
    sidecar = sidecar_path(path)
    if not path.is_file():
        raise CheckpointError(f"{where} " + ("is a directory" if path.is_dir() else "does not exist"))
    if not sidecar.is_file():
        raise CheckpointError(f"{where} has no JSON sidecar {sidecar} (build arguments, preprocessing, classes): "
                              f"keep the two files of `vgg export safetensors` together")
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"sidecar {sidecar} is not valid JSON: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(f"{sidecar} is not a vggnet weights sidecar (no format={WEIGHTS_FORMAT!r} entry)")
    for key in ("build", "preprocessing", "classes"):
        if key not in info:
            raise CheckpointError(f"sidecar {sidecar} has no {key!r} entry")
    if info.get("sha256") and _sha256(path) != info["sha256"]:
        raise CheckpointError(f"{where} does not match the checksum in {sidecar}: the file is damaged or "
                              f"belongs to another export")
    try:
        state = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{where} cannot be read (truncated or not safetensors): {exc}") from None
    build = info["build"]
    state = check_state(where, build, state)
    names = class_names(classes, int(build["num_classes"])) or info["classes"]
    return checkpoint_from_state(build, state, preprocessing=info["preprocessing"], classes=names,
                                 meta={**info.get("meta", {}), "source_file": str(path)})


def export_safetensors(ckpt: Mapping[str, Any] | str | os.PathLike, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the released-weights form: `path` (safetensors) and its JSON sidecar (build, preprocessing,
    classes, meta, sha256). Returns both paths."""
    from safetensors.torch import save

    ckpt = as_checkpoint(ckpt)
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserError(f"--out {path}: a safetensors export needs the .safetensors suffix "
                        f"(the sidecar is written beside it as {sidecar_path(path).name})")
    state = {k: v.contiguous() for k, v in ckpt["state_dict"].items()}
    header = {"format": "pt", "vggnet": json.dumps(ckpt["build"])}
    atomic_write(path, lambda f: f.write(save(state, metadata=header)))
    info = {"format": WEIGHTS_FORMAT, "version": VERSION, "weights": path.name, "sha256": _sha256(path),
            "build": ckpt["build"], "preprocessing": ckpt["preprocessing"], "classes": ckpt["classes"],
            "meta": jsonable(ckpt.get("meta", {}))}
    sidecar = sidecar_path(path)
    atomic_write(sidecar, lambda f: f.write((json.dumps(info, indent=1) + "\n").encode("utf-8")))
    return path, sidecar


def jsonable(value: Any) -> Any:
    """`value` with whatever JSON cannot hold (tensors, ...) turned into strings."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))

