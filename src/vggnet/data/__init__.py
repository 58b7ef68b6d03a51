"""Files -> tensors: datasets, the synthetic default, the paper's transforms (§3.1, §3.2), statistics.

    >>> from vggnet.data import build_dataset, TrainPreset, Preprocessing
    >>> pre = Preprocessing.caffe(mean=stats["mean"])
    >>> train = build_dataset("DATA", TrainPreset(crop_size=224, scale=(256, 512), preprocessing=pre, pca=stats))
"""

from vggnet.data.datasets import IMAGE_EXTENSIONS, BadImageWarning, Batch, ImageDataset, LeftOutWarning, build_dataset, image_file_problem, check_bad_fraction, collate_skip_bad, make_loader
from vggnet.data.annotations import read_labels_file, read_loc_solution, read_synsets, read_voc_xml
from vggnet.data.stats import compute_stats, load_stats, save_stats
from vggnet.data.synthetic import SHAPES, SyntheticShapes, write_synthetic
from vggnet.data.transforms import ToNormalizedTensor, CAFFE_MEAN, TORCHVISION_MEAN, TORCHVISION_STD, DenseEvalPreset, MultiCropEvalPreset, PCALighting, Preprocessing, RandomRescaleCrop, RescaleSmallestSide, ToFloat01, TrainPreset, grid_crops, parse_scale, rescale_smallest_side, rescaled_size
from vggnet.data.images import BadImageError, decode_image, load_image, open_image, to_rgb

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
