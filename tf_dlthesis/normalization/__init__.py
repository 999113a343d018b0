"""Chapter 4: improving Batch Normalization.

One core op normalizes over groups of examples x groups of channels
(`_core.py`); four Keras layers are settings of it:
`ExampleWeightedBatchNormalization` (inference example weighing, Eq. 4.3),
`GhostBatchNormalization` (Eq. 4.4), `BatchGroupNormalization` (Sec. 4.3.4) and
`ExampleWeightedGroupNormalization` (GN with moving statistics, Fig. 4.2).
`patch_model` / `set_example_weight` / `sweep_example_weight` apply example
weighing retroactively to trained Keras models; `apply_normalization_weight_decay`
regularizes gamma/beta (Sec. 4.3.3); `output_bound` / `measure_output_range`
check App. A.1's bound; `update_bn_statistics` / the `PreciseBN` callback
recompute moving statistics exactly from data (Precise BN, App. A.3). TF-Slim and frozen-GraphDef support lives in
`tf_dlthesis.normalization.slim` (imports tf_slim / tf_keras only there).

Importing this package registers the `norm=` kinds `"ghost:B"`,
`"batch_group:G"` / `"batch_group:G:B"`, `"ew_batch"`, `"ew_group:G"` and
`"renorm"` (Keras Batch Renormalization) with `tf_dlthesis.models.build`.

Reference: C. Summers, *Understanding and Improving Deep Learning*, Ch. 4 and
App. A (2021); https://arxiv.org/abs/1906.03548.
"""

import keras as _keras

from tf_dlthesis.normalization._base import ExampleGroupNormalization as ExampleGroupNormalization
from tf_dlthesis.normalization.batch_group_normalization import BatchGroupNormalization as BatchGroupNormalization
from tf_dlthesis.normalization.diagnostics import measure_output_range as measure_output_range
from tf_dlthesis.normalization.diagnostics import output_bound as output_bound
from tf_dlthesis.normalization.example_weighted_batch_normalization import (
    ExampleWeightedBatchNormalization as ExampleWeightedBatchNormalization,
)
from tf_dlthesis.normalization.example_weighted_group_normalization import (
    ExampleWeightedGroupNormalization as ExampleWeightedGroupNormalization,
)
from tf_dlthesis.normalization.ghost_batch_normalization import GhostBatchNormalization as GhostBatchNormalization
from tf_dlthesis.normalization.patching import normalization_layers as normalization_layers
from tf_dlthesis.normalization.patching import patch_model as patch_model
from tf_dlthesis.normalization.patching import set_example_weight as set_example_weight
from tf_dlthesis.normalization.patching import sweep_example_weight as sweep_example_weight
from tf_dlthesis.normalization.precise_bn import PreciseBN as PreciseBN
from tf_dlthesis.normalization.precise_bn import bn_layers as bn_layers
from tf_dlthesis.normalization.precise_bn import update_bn_statistics as update_bn_statistics
from tf_dlthesis.normalization.weight_decay import CenteredL2 as CenteredL2
from tf_dlthesis.normalization.weight_decay import (
    apply_normalization_weight_decay as apply_normalization_weight_decay,
)


def _ghost(channels, ghost_batch_size, *, name, **kwargs):
    return GhostBatchNormalization(ghost_batch_size, name=name, **kwargs)


def _batch_group(channels, groups, ghost_batch_size=None, *, name, **kwargs):
    return BatchGroupNormalization(groups, ghost_batch_size=ghost_batch_size, name=name, **kwargs)


def _ew_batch(channels, *, name, **kwargs):
    return ExampleWeightedBatchNormalization(name=name, **kwargs)


def _ew_group(channels, groups, *, name, **kwargs):
    # tracks moving statistics: these models are trained for alpha sweeps (Fig. 4.2)
    return ExampleWeightedGroupNormalization(groups, name=name, **{"moving_statistics": True, **kwargs})


def _renorm(channels, *, name, **kwargs):
    return _keras.layers.BatchNormalization(renorm=True, name=name, **kwargs)


def _register():
    from tf_dlthesis.models import register_norm

    register_norm("ghost", _ghost)
    register_norm("batch_group", _batch_group)
    register_norm("ew_batch", _ew_batch)
    register_norm("ew_group", _ew_group)
    register_norm("renorm", _renorm)


_register()
