"""Datasets, standard augmentation and input pipelines.

`load("digits")` needs no network: scikit-learn ships the 1,797 8x8 digits.
`load("fashion_mnist")` / `load("mnist")` go through Keras's own `keras.datasets`
loaders, fed offline from `data_dir=` or (Fashion-MNIST) the Debian package
`dataset-fashion-mnist`. Other names go through tensorflow-datasets (`data_dir=` for
prepared data). Nothing is downloaded. `as_arrays` turns any accepted dataset form
into NumPy arrays.
"""

from tf_dlthesis.data._arrays import as_arrays as as_arrays
from tf_dlthesis.data._pipeline import EpochSeeds as EpochSeeds
from tf_dlthesis.data._pipeline import as_seed as as_seed
from tf_dlthesis.data._pipeline import epoch_pairs as epoch_pairs
from tf_dlthesis.data._pipeline import epoch_permutation as epoch_permutation
from tf_dlthesis.data._pipeline import non_iid_batches as non_iid_batches
from tf_dlthesis.data._pipeline import standard_augment as standard_augment
from tf_dlthesis.data._pipeline import steps_per_epoch as steps_per_epoch
from tf_dlthesis.data._pipeline import steps_per_epoch_of as steps_per_epoch_of
from tf_dlthesis.data._pipeline import training_dataset as training_dataset
from tf_dlthesis.data._registry import THESIS_VALIDATION_SPLITS as THESIS_VALIDATION_SPLITS
from tf_dlthesis.data._registry import DatasetInfo as DatasetInfo
from tf_dlthesis.data._registry import DatasetNotFoundError as DatasetNotFoundError
from tf_dlthesis.data._registry import holds as holds
from tf_dlthesis.data._registry import info as info
from tf_dlthesis.data._registry import load as load
from tf_dlthesis.data._registry import load_arrays as load_arrays
from tf_dlthesis.data._registry import per_class_split as per_class_split
from tf_dlthesis.data._registry import validation_splits as validation_splits
