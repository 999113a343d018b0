"""The thesis's tables and figures, the results store and the report.

Importing this package registers every table/figure (`REGISTRY`).
"""

from tf_dlthesis.experiments.registry import REGISTRY as REGISTRY
from tf_dlthesis.experiments.registry import SCALES as SCALES
from tf_dlthesis.experiments.registry import VERDICTS as VERDICTS
from tf_dlthesis.experiments.registry import Experiment as Experiment
from tf_dlthesis.experiments.registry import Finding as Finding
from tf_dlthesis.experiments.registry import Output as Output
from tf_dlthesis.experiments.registry import Table as Table
from tf_dlthesis.experiments.registry import all_ids as all_ids
from tf_dlthesis.experiments.registry import fit_callbacks as fit_callbacks
from tf_dlthesis.experiments.registry import get as get
from tf_dlthesis.experiments.registry import register as register
from tf_dlthesis.experiments.registry import set_tensorboard as set_tensorboard
from tf_dlthesis.experiments.registry import thesis_rows as thesis_rows
from tf_dlthesis.experiments.registry import thesis_table as thesis_table
from tf_dlthesis.experiments.report import reproduce as reproduce
from tf_dlthesis.experiments.report import write_report as write_report
from tf_dlthesis.experiments.results_store import ResultsStore as ResultsStore
from tf_dlthesis.experiments.training import predict_logits as predict_logits
from tf_dlthesis.experiments.training import train_classifier as train_classifier

# Registration: importing each module registers its tables and figures.
from tf_dlthesis.experiments import foundation as foundation  # noqa: E402
from tf_dlthesis.experiments import chapter2 as chapter2  # noqa: E402
from tf_dlthesis.experiments import chapter3 as chapter3  # noqa: E402
from tf_dlthesis.experiments import chapter4 as chapter4  # noqa: E402
from tf_dlthesis.experiments import chapter5 as chapter5  # noqa: E402
