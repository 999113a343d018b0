"""tf_dlthesis: Keras 3 components from *Understanding and Improving Deep Learning*.

Subpackages:
  runtime        seeds, op determinism, XLA flags
  data           digits (embedded) and tfds datasets, standard augmentation, non-i.i.d. batches
  models         pre-activation ResNets, small CNN, MLP, linear, with a pluggable norm layer
  augment        Ch. 2 mixed-example data augmentation
  robustness     Ch. 3 logit regularization and adversarial robustness
  normalization  Ch. 4 batch-normalization improvements
  variability    Ch. 5 nondeterminism and instability
  experiments    the thesis's tables and figures, results store, report (imported on demand)

Reference: C. Summers, *Understanding and Improving Deep Learning*, PhD thesis,
University of Auckland, 2021.
"""

__version__ = "0.1.0"

import importlib

_SUBPACKAGES = ("runtime", "data", "models", "augment", "robustness", "normalization", "variability", "experiments")


def __getattr__(name):
    # Subpackages load on first use, so `import tf_dlthesis` (and `tf-dlthesis --help`)
    # does not pay for importing TensorFlow.
    if name in _SUBPACKAGES:
        return importlib.import_module(f"tf_dlthesis.{name}")
    raise AttributeError(f"module 'tf_dlthesis' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBPACKAGES))
