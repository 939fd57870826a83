"""Datasets as in-memory TensorDatasets scaled to [-1, 1] (see nfedge.data.datasets); readers per format in
this package register themselves in nfedge.data.config.DATASETS."""

from nfedge.data.config import DATASETS, IMAGE_SIZE, DataConfig, RawData
from nfedge.data.datasets import DatasetInfo, list_datasets, load_dataset, scale_images
from nfedge.data.fashion_mnist import FASHION_MNIST_ROOT, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC

__all__ = ["DATASETS", "DataConfig", "DatasetInfo", "FASHION_MNIST_ROOT", "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC",
           "IMAGE_SIZE", "RawData", "list_datasets", "load_dataset", "scale_images"]
