"""The thesis's tables and figures, the results store and the report.

Importing this package registers every table/figure (`REGISTRY`).
"""

from tf_dlthesis.experiments.registry import REGISTRY as REGISTRY
from tf_dlthesis.experiments.registry import SCALES as SCALES
from tf_dlthesis.experiments.registry import VERDICTS as VERDICTS
from tf_dlthesis.experiments.registry import Experiment as Experiment
from tf_dlthesis.experiments.registry import Check as Check
from tf_dlthesis.experiments.registry import Finding as Finding
from tf_dlthesis.experiments.registry import Output as Output
from tf_dlthesis.experiments.registry import Table as Table
from tf_dlthesis.experiments.registry import all_ids as all_ids
from tf_dlthesis.experiments.registry import get as get
from tf_dlthesis.experiments.registry import register as register
from tf_dlthesis.experiments.registry import thesis_rows as thesis_rows
from tf_dlthesis.experiments.registry import thesis_table as thesis_table
from tf_dlthesis.experiments.report import archive_reads as archive_reads
from tf_dlthesis.experiments.report import reproduce as reproduce
from tf_dlthesis.experiments.report import write_report as write_report
from tf_dlthesis.experiments.results_store import NotStoredError as NotStoredError
from tf_dlthesis.experiments.results_store import ResultsStore as ResultsStore
from tf_dlthesis.experiments.training import DataBundle as DataBundle
from tf_dlthesis.experiments.training import Run as Run
from tf_dlthesis.experiments.training import RunContext as RunContext
from tf_dlthesis.experiments.training import TrainSpec as TrainSpec
from tf_dlthesis.experiments.training import load_data as load_data
from tf_dlthesis.experiments.training import predict_logits as predict_logits
from tf_dlthesis.experiments.training import train as train
from tf_dlthesis.experiments import stats as stats  # noqa: E402

# Registration: importing each module registers its tables and figures.
from tf_dlthesis.experiments import foundation as foundation  # noqa: E402
from tf_dlthesis.experiments import chapter2 as chapter2  # noqa: E402
from tf_dlthesis.experiments import chapter3 as chapter3  # noqa: E402
from tf_dlthesis.experiments import chapter4 as chapter4  # noqa: E402
from tf_dlthesis.experiments import chapter5 as chapter5  # noqa: E402
from tf_dlthesis.experiments import chapter5_lm as chapter5_lm  # noqa: E402
