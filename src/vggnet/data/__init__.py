"""Files -> tensors: datasets, the synthetic default, the paper's transforms (§3.1, §3.2), statistics.

    >>> from vggnet.data import build_dataset, TrainPreset, Preprocessing
    >>> pre = Preprocessing.caffe(mean=stats["mean"])
    >>> train = build_dataset("DATA", TrainPreset(crop_size=224, scale=(256, 512), preprocessing=pre, pca=stats))
"""

from typing import TYPE_CHECKING

from vggnet.lazy import lazy_attributes

# The public names resolve lazily (PEP 562), as in `vggnet` itself: importing one module of this
# package (its flags, for `--help` and argument errors) does not import torch.
_LAZY = {
    'IMAGE_EXTENSIONS': 'vggnet.data.datasets',
    'BadImageWarning': 'vggnet.data.datasets',
    'Batch': 'vggnet.data.datasets',
    'ImageDataset': 'vggnet.data.datasets',
    'LeftOutWarning': 'vggnet.data.datasets',
    'build_dataset': 'vggnet.data.datasets',
    'image_file_problem': 'vggnet.data.datasets',
    'check_bad_fraction': 'vggnet.data.datasets',
    'collate_skip_bad': 'vggnet.data.datasets',
    'make_loader': 'vggnet.data.datasets',
    'read_labels_file': 'vggnet.data.annotations',
    'read_loc_solution': 'vggnet.data.annotations',
    'read_synsets': 'vggnet.data.annotations',
    'read_voc_xml': 'vggnet.data.annotations',
    'compute_stats': 'vggnet.data.stats',
    'load_stats': 'vggnet.data.stats',
    'save_stats': 'vggnet.data.stats',
    'SHAPES': 'vggnet.data.synthetic',
    'SyntheticShapes': 'vggnet.data.synthetic',
    'write_synthetic': 'vggnet.data.synthetic',
    'ToNormalizedTensor': 'vggnet.data.transforms',
    'CAFFE_MEAN': 'vggnet.data.transforms',
    'TORCHVISION_MEAN': 'vggnet.data.transforms',
    'TORCHVISION_STD': 'vggnet.data.transforms',
    'DenseEvalPreset': 'vggnet.data.transforms',
    'MultiCropEvalPreset': 'vggnet.data.transforms',
    'PCALighting': 'vggnet.data.transforms',
    'Preprocessing': 'vggnet.data.transforms',
    'RandomRescaleCrop': 'vggnet.data.transforms',
    'RescaleSmallestSide': 'vggnet.data.transforms',
    'ToFloat01': 'vggnet.data.transforms',
    'TrainPreset': 'vggnet.data.transforms',
    'grid_crops': 'vggnet.data.transforms',
    'parse_scale': 'vggnet.data.transforms',
    'rescale_smallest_side': 'vggnet.data.transforms',
    'rescaled_size': 'vggnet.data.transforms',
    'BadImageError': 'vggnet.data.images',
    'decode_image': 'vggnet.data.images',
    'load_image': 'vggnet.data.images',
    'open_image': 'vggnet.data.images',
    'to_rgb': 'vggnet.data.images',
}

__all__ = [
    "IMAGE_EXTENSIONS", "BadImageWarning", "LeftOutWarning", "image_file_problem", "Batch", "ImageDataset", "build_dataset", "check_bad_fraction", "collate_skip_bad",
    "make_loader", "read_labels_file", "read_loc_solution", "read_synsets", "read_voc_xml",
    "compute_stats", "load_stats", "save_stats",
    "SHAPES", "SyntheticShapes", "write_synthetic",
    "CAFFE_MEAN", "TORCHVISION_MEAN", "TORCHVISION_STD", "BadImageError", "DenseEvalPreset",
    "MultiCropEvalPreset", "PCALighting", "Preprocessing", "RandomRescaleCrop", "RescaleSmallestSide",
    "ToFloat01", "ToNormalizedTensor", "TrainPreset", "decode_image", "grid_crops", "load_image", "open_image", "parse_scale",
    "rescale_smallest_side", "rescaled_size", "to_rgb",
]

if TYPE_CHECKING:
    from vggnet.data.datasets import IMAGE_EXTENSIONS, BadImageWarning, Batch, ImageDataset, LeftOutWarning, build_dataset, image_file_problem, check_bad_fraction, collate_skip_bad, make_loader
    from vggnet.data.annotations import read_labels_file, read_loc_solution, read_synsets, read_voc_xml
    from vggnet.data.stats import compute_stats, load_stats, save_stats
    from vggnet.data.synthetic import SHAPES, SyntheticShapes, write_synthetic
    from vggnet.data.transforms import ToNormalizedTensor, CAFFE_MEAN, TORCHVISION_MEAN, TORCHVISION_STD, DenseEvalPreset, MultiCropEvalPreset, PCALighting, Preprocessing, RandomRescaleCrop, RescaleSmallestSide, ToFloat01, TrainPreset, grid_crops, parse_scale, rescale_smallest_side, rescaled_size
    from vggnet.data.images import BadImageError, decode_image, load_image, open_image, to_rgb


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
