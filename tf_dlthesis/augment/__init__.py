"""Chapter 2: mixed-example data augmentation.

The 17 mixing methods of Thesis Sec. 2.3 (mixup, BC, BC+ and the thesis's 14 new
ones) as pure vectorized functions (`mix_pair`, `mix_batch`), as a `tf.data` stage
placed after standard augmentation (`mix_dataset`) and as an on-device Keras layer
(`MixedExample`) that compiles under XLA.

Reference: C. Summers, *Understanding and Improving Deep Learning*, PhD thesis, 2021,
Chapter 2; C. Summers and M. J. Dinneen, "Improved Mixed-Example Data Augmentation",
WACV 2019, https://arxiv.org/abs/1805.11272
"""

from tf_dlthesis.augment._beta import sample_beta as sample_beta
from tf_dlthesis.augment.dataset import mix_dataset as mix_dataset
from tf_dlthesis.augment.methods import DISPLAY_NAMES as DISPLAY_NAMES
from tf_dlthesis.augment.methods import METHODS as METHODS
from tf_dlthesis.augment.methods import canonical_name as canonical_name
from tf_dlthesis.augment.methods import default_params as default_params
from tf_dlthesis.augment.mix import mix_batch as mix_batch
from tf_dlthesis.augment.mix import mix_pair as mix_pair
from tf_dlthesis.augment.mixed_example import MixedExample as MixedExample
from tf_dlthesis.augment.plot import plot_methods as plot_methods
from tf_dlthesis.augment.stage import MixStage as MixStage
