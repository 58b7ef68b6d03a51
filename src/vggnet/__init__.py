"""vggnet: the reference implementation of VGG (Simonyan & Zisserman, arXiv 1409.1556).

    >>> import vggnet
    >>> model = vggnet.vgg("D", num_classes=10, width=1/16, crop_size=64)
    >>> scores = model.dense(torch.randn(1, 3, 96, 128))  # (1, 10, 2, 3) class-score map

The public names resolve lazily (PEP 562): `import vggnet` does not import
torch, so `vgg --help` starts in a fraction of a second; the first use of
`vggnet.vgg` (or any name below) imports its module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vggnet.errors import CheckpointError, DataError, UserError
from vggnet.lazy import lazy_attributes

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "ALIASES": "vggnet.models", "CONFIGS": "vggnet.models", "NAMES": "vggnet.models", "VGG": "vggnet.models",
    "vgg": "vggnet.models", "resolve_name": "vggnet.models", "count_parameters": "vggnet.models",
    "count_macs": "vggnet.models",
    "init_weights": "vggnet.init", "init_from_a": "vggnet.init",
    "create_model": "vggnet.hub",
    "load_checkpoint": "vggnet.checkpoint", "save_checkpoint": "vggnet.checkpoint",
    "model_from_checkpoint": "vggnet.checkpoint",
    "Predictor": "vggnet.classification.predict", "predict": "vggnet.classification.predict",
    "evaluate": "vggnet.classification.evaluate", "validate": "vggnet.classification.evaluate",
    "EvalResult": "vggnet.classification.results", "ClassificationTask": "vggnet.classification.task",
    "train": "vggnet.classification.train", "TrainConfig": "vggnet.engine.config",
}

__all__ = [*_LAZY, "UserError", "DataError", "CheckpointError", "__version__"]

if TYPE_CHECKING:
    from vggnet.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from vggnet.classification.task import ClassificationTask
    from vggnet.classification.train import train
    from vggnet.engine.config import TrainConfig
    from vggnet.classification.evaluate import evaluate, validate
    from vggnet.classification.predict import Predictor, predict
    from vggnet.classification.results import EvalResult
    from vggnet.hub import create_model
    from vggnet.init import init_from_a, init_weights
    from vggnet.models import ALIASES, CONFIGS, NAMES, VGG, count_macs, count_parameters, resolve_name, vgg


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
