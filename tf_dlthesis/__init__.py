"""tf_dlthesis: Keras 3 components from *Understanding and Improving Deep Learning*.

Subpackages:
  runtime        seeds, op determinism, XLA flags
  data           digits (embedded) and tfds datasets, standard augmentation, non-i.i.d. batches
  models         pre-activation ResNets, small CNN, MLP, linear, with a pluggable norm layer
  augment        Ch. 2 mixed-example data augmentation
  robustness     Ch. 3 logit regularization and adversarial robustness
  normalization  Ch. 4 batch-normalization improvements
  variability    Ch. 5 nondeterminism and instability
  recipes        the thesis's training recipes (serializable learning-rate schedules)
  experiments    the thesis's tables and figures, results store, report (imported on demand)

`import tf_dlthesis` registers every Keras-serializable class and function of the
package (layers, losses, `RobustModel`, regularizers, schedules, callbacks) with
`keras.saving`, so a `.keras` file saved with any of them loads after just

>>> import keras, tf_dlthesis
>>> # model = keras.saving.load_model("robust.keras")   # safe_mode=True works too

Quiet by default: TensorFlow's C++ start-up banners (oneDNN, CUDA probing, CPU
features) are hidden while the package imports TensorFlow, and
`TF_CPP_MIN_LOG_LEVEL` defaults to 3 (set it yourself to choose another level).
Set the environment variable `TF_DLTHESIS_VERBOSE=1` (or pass `--verbose` to the
CLI) to see everything. Import `tf_dlthesis` before `tensorflow` for this to apply:
TensorFlow reads its log level once, when it is first imported.

Reference: C. Summers, *Understanding and Improving Deep Learning*, PhD thesis,
University of Auckland, 2021.
"""

__version__ = "0.1.0"

import importlib
import os
import sys

_SUBPACKAGES = ("runtime", "data", "models", "augment", "robustness", "normalization", "variability", "recipes",
                "experiments")
#: What `import tf_dlthesis` imports: every module that registers a Keras-serializable
#: object. `experiments` (matplotlib, the registry of tables) stays on demand.
_REGISTERING = ("runtime", "data", "models", "augment", "normalization", "robustness", "variability", "recipes")
#: `python -m NAME` / console-script names that start the CLI (see `_cli_startup`).
_CLI_MODULES = ("tf_dlthesis", "tf_dlthesis.__main__", "tf_dlthesis.cli")
_CLI_SCRIPTS = ("tf-dlthesis", "tf-dlthesis.exe", "tf-dlthesis-script.py")


def verbose() -> bool:
    """Whether the user asked to see TensorFlow's own log output.

    True when the environment variable `TF_DLTHESIS_VERBOSE` is set to `1`, `true`,
    `yes` or `on` (the CLI's `--verbose` sets it).

    Example:

    >>> import os, tf_dlthesis
    >>> os.environ["TF_DLTHESIS_VERBOSE"] = "1"
    >>> tf_dlthesis.verbose()
    True
    >>> del os.environ["TF_DLTHESIS_VERBOSE"]

    Returns:
        Whether verbose output is on.
    """
    return os.environ.get("TF_DLTHESIS_VERBOSE", "").strip().lower() in ("1", "true", "yes", "on")


def _import_tensorflow() -> None:
    """Imports TensorFlow and Keras, hiding their C++ start-up banners unless `verbose()`.

    TensorFlow's native code writes the banners to file descriptor 2 before its
    logging is initialised (so `TF_CPP_MIN_LOG_LEVEL` does not reach them). The
    descriptor is pointed at a temporary file during the import; if the import
    fails, what was written there is replayed on stderr before the exception
    propagates, so no real error is hidden.
    """
    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return
    if verbose():
        import keras  # noqa: F401
        import tensorflow  # noqa: F401

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):  # no real stderr (embedded interpreters)
        import keras  # noqa: F401,F811
        import tensorflow  # noqa: F401,F811

        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401,F811
            import tensorflow  # noqa: F401,F811
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            os.write(2, captured.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _open_results_store(path):
    """Opens `tf_dlthesis.experiments.ResultsStore(path)` for lower layers.

    `variability.run_protocol(store="path.sqlite")` needs the results store, which
    lives in `experiments`, a layer above it that `variability` must not import.
    The package root sits above every layer, so it supplies the opener
    (`variability.protocol._STORE_OPENER`).
    """
    from tf_dlthesis.experiments.results_store import ResultsStore

    return ResultsStore(path)


def _registering_modules() -> list:
    """Names of the package's modules whose source registers a Keras-serializable object.

    Found by scanning the source files, so a class in a private module that its
    subpackage imports only on demand (e.g. inside a builder function) is
    registered too.
    """
    marker = "@keras.saving.register_keras_serializable"
    root = os.path.dirname(os.path.abspath(__file__))
    names = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith((".", "__")))
        for file in sorted(files):
            if not file.endswith(".py") or (folder == root and file in ("__init__.py", "__main__.py", "cli.py")):
                continue
            try:
                with open(os.path.join(folder, file), encoding="utf-8") as fh:
                    if marker not in fh.read():
                        continue
            except OSError:
                continue
            rel = os.path.relpath(os.path.join(folder, file), root)[: -len(".py")].replace(os.sep, ".")
            names.append("tf_dlthesis." + rel.removesuffix(".__init__"))
    return names


def _register_all() -> None:
    """Imports every module that registers Keras-serializable objects (quietly)."""
    _import_tensorflow()
    for name in _REGISTERING:
        importlib.import_module(f"tf_dlthesis.{name}")
    for name in _registering_modules():
        importlib.import_module(name)
    from tf_dlthesis.variability import protocol

    protocol._STORE_OPENER = _open_results_store


def _cli_startup() -> bool:
    """Whether this interpreter was started as the `tf-dlthesis` command.

    Then the CLI parses its arguments first (`--help`, `--version` and argument
    errors answer at once, without importing TensorFlow) and imports the rest
    itself (`cli.main` calls `_register_all`). Detected from the console script's
    name or `python -m tf_dlthesis[.cli]` in `sys.orig_argv`.
    """
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if argv0 in _CLI_SCRIPTS:
        return True
    orig = list(getattr(sys, "orig_argv", []) or [])
    i = 1
    while i < len(orig):  # the interpreter's own options, up to the script / -c / -m
        arg = orig[i]
        if arg == "-m":
            return i + 1 < len(orig) and orig[i + 1] in _CLI_MODULES
        if arg == "-c" or arg == "-" or not arg.startswith("-"):
            return False
        i += 2 if arg in ("-X", "-W", "--check-hash-based-pycs") else 1
    return False


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"tf_dlthesis.{name}")
    raise AttributeError(f"module 'tf_dlthesis' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBPACKAGES))


if not _cli_startup():
    _register_all()
