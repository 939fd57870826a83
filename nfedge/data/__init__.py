"""Datasets as in-memory TensorDatasets scaled to [-1, 1] (see nfedge.data.datasets); readers per format in
this package register themselves in nfedge.data.config.DATASETS. Besides the named datasets, two generic
formats take a user's own data: `folder` (train/<class>/ and test/<class>/ image folders, nfedge.data.folder)
and `npz` (x_train, y_train, x_test, y_test arrays, nfedge.data.npz)."""

from nfedge.data.config import DATASETS, IMAGE_SIZE, DataConfig, RawData
from nfedge.data.datasets import DatasetInfo, list_datasets, load_dataset, scale_images
from nfedge.data.fashion_mnist import FASHION_MNIST_ROOT, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC
from nfedge.data.folder import IMAGE_SUFFIXES
from nfedge.data.npz import NPZ_ARRAYS

__all__ = ["DATASETS", "FASHION_MNIST_ROOT", "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "IMAGE_SIZE", "IMAGE_SUFFIXES",
           "NPZ_ARRAYS", "DataConfig", "DatasetInfo", "RawData", "list_datasets", "load_dataset", "scale_images"]
