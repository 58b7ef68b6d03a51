"""vggnet: the reference implementation of VGG (Simonyan & Zisserman, arXiv 1409.1556).

    >>> import vggnet
    >>> model = vggnet.vgg("D", num_classes=10, width=1/16, crop_size=64)
    >>> scores = model.dense(torch.randn(1, 3, 96, 128))  # (1, 10, 2, 3) class-score map
"""

from vggnet.errors import CheckpointError, DataError, UserError
from vggnet.hub import create_model
from vggnet.init import init_from_a, init_weights
from vggnet.models import ALIASES, CONFIGS, NAMES, VGG, count_macs, count_parameters, resolve_name, vgg

__version__ = "0.1.0"

__all__ = [
    "ALIASES", "CONFIGS", "NAMES", "VGG", "vgg", "resolve_name", "count_parameters", "count_macs",
    "init_weights", "init_from_a", "create_model", "UserError", "DataError", "CheckpointError", "__version__",
]
