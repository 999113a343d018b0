"""Chapter 5: nondeterminism and instability in neural network optimization.

Per-source seed control (`SeedPlan`), the one-ULP bit change (`bit_change`), the
resumable R-run protocol (`run_protocol`, executors "local", "ray", "serial"), its
variability metrics, linear CKA, and the two mitigations: snapshot ensembles
(`CyclicCosineSchedule` + `SnapshotEnsemble`) and test-time augmentation
(`predict_tta`).

Reference: C. Summers, *Understanding and Improving Deep Learning*, Ch. 5 and
App. B; Summers & Dinneen, ICML 2021, arXiv:2103.04514.
"""

from tf_dlthesis.variability.bit_change import BitChange as BitChange
from tf_dlthesis.variability.bit_change import bit_change as bit_change
from tf_dlthesis.variability.cka import cka_matrix as cka_matrix
from tf_dlthesis.variability.cka import layer_activations as layer_activations
from tf_dlthesis.variability.cka import layer_cka as layer_cka
from tf_dlthesis.variability.cka import linear_cka as linear_cka
from tf_dlthesis.variability.cka import mean_pairwise_cka as mean_pairwise_cka
from tf_dlthesis.variability.cyclic_cosine_schedule import CyclicCosineSchedule as CyclicCosineSchedule
from tf_dlthesis.variability.metrics import accuracy_sd as accuracy_sd
from tf_dlthesis.variability.metrics import bootstrap_sd as bootstrap_sd
from tf_dlthesis.variability.metrics import cross_entropy_sd as cross_entropy_sd
from tf_dlthesis.variability.metrics import ensemble_delta as ensemble_delta
from tf_dlthesis.variability.metrics import pairwise_correlation as pairwise_correlation
from tf_dlthesis.variability.metrics import pairwise_correlation_matrix as pairwise_correlation_matrix
from tf_dlthesis.variability.metrics import pairwise_disagreement as pairwise_disagreement
from tf_dlthesis.variability.metrics import per_run_accuracy as per_run_accuracy
from tf_dlthesis.variability.metrics import per_run_cross_entropy as per_run_cross_entropy
from tf_dlthesis.variability.metrics import variability_metrics as variability_metrics
from tf_dlthesis.variability.metrics import ensemble_perplexity_delta as ensemble_perplexity_delta, language_model_metrics as language_model_metrics, mixture_perplexity_delta as mixture_perplexity_delta, perplexity_sd as perplexity_sd, prediction_disagreement as prediction_disagreement  # noqa: E501
from tf_dlthesis.variability.protocol import EXECUTORS as EXECUTORS
from tf_dlthesis.variability.protocol import ProtocolResult as ProtocolResult
from tf_dlthesis.variability.protocol import run_protocol as run_protocol
from tf_dlthesis.variability.seed_plan import ALL_SOURCES as ALL_SOURCES
from tf_dlthesis.variability.seed_plan import SOURCES as SOURCES
from tf_dlthesis.variability.seed_plan import SeedPlan as SeedPlan
from tf_dlthesis.variability.seed_plan import derive_seed as derive_seed
from tf_dlthesis.variability.seed_plan import order_hash as order_hash
from tf_dlthesis.variability.seed_plan import parse_source as parse_source
from tf_dlthesis.variability.seed_plan import reseed_stochastic_layers as reseed_stochastic_layers
from tf_dlthesis.variability.seed_plan import weights_hash as weights_hash
from tf_dlthesis.variability.snapshot_ensemble import SnapshotEnsemble as SnapshotEnsemble
from tf_dlthesis.variability.swa import SWASchedule as SWASchedule
from tf_dlthesis.variability.swa import StochasticWeightAveraging as StochasticWeightAveraging
from tf_dlthesis.variability.swa import recompute_batch_norm_statistics as recompute_batch_norm_statistics
from tf_dlthesis.variability.tta import TTA_MODES as TTA_MODES
from tf_dlthesis.variability.tta import predict_tta as predict_tta
from tf_dlthesis.variability.tta import tta_views as tta_views
from tf_dlthesis.variability.weight_noise import WeightNoise as WeightNoise
