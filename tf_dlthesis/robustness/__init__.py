"""Chapter 3: logit regularization and adversarial robustness.

Losses (label smoothing with Eq. 3.8 targets, logit squeezing, ALP, decoupled
pairing), CleverHans-based attacks (FGSM, PGD, batched SPSA with a Keras-3
adapter; named attacks as ``Attack`` objects), ``RobustModel`` (adversarial
training through ``model.fit``, with the thesis's per-dataset ``PRESETS``) and the
evaluation used by thesis Tables 3.1-3.6 and Figures 3.1-3.2.
"""

from .attacks import ATTACK_NAMES as ATTACK_NAMES
from .attacks import Attack as Attack
from .attacks import BatchedSPSAAdam as BatchedSPSAAdam
from .attacks import SPSAAdamAdapter as SPSAAdamAdapter
from .attacks import cleverhans_spsa as cleverhans_spsa
from .attacks import fgsm as fgsm
from .attacks import make_attack as make_attack
from .attacks import pgd as pgd
from .attacks import spsa as spsa
from .losses import CLASS_REDUCTIONS as CLASS_REDUCTIONS
from .losses import H_GRADIENTS as H_GRADIENTS
from .losses import DecoupledLogitPairing as DecoupledLogitPairing
from .losses import LabelSmoothingCrossEntropy as LabelSmoothingCrossEntropy
from .losses import LogitPairing as LogitPairing
from .losses import LogitSqueezing as LogitSqueezing
from .losses import decoupled_logit_pairing as decoupled_logit_pairing
from .losses import decoupled_parts as decoupled_parts
from .losses import label_smoothing_cross_entropy as label_smoothing_cross_entropy
from .losses import logit_pairing as logit_pairing
from .losses import logit_squeezing as logit_squeezing
from .losses import pairing_cross_entropy as pairing_cross_entropy
from .losses import scale_to_ratio as scale_to_ratio
from .losses import smoothed_targets as smoothed_targets
from .robust_model import DEFENSES as DEFENSES
from .robust_model import PRESETS as PRESETS
from .robust_model import RobustModel as RobustModel
from .evaluation import STRONG_ATTACKS as STRONG_ATTACKS
from .evaluation import WHITE_BOX_ATTACKS as WHITE_BOX_ATTACKS
from .evaluation import SanityCheck as SanityCheck
from .evaluation import SanityReport as SanityReport
from .evaluation import black_box_matrix as black_box_matrix
from .evaluation import evaluate_white_box as evaluate_white_box
from .evaluation import logit_statistics as logit_statistics
from .evaluation import per_example_correct as per_example_correct
from .evaluation import sanity_report as sanity_report
