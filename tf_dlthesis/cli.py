"""The `tf-dlthesis` command line (also `python -m tf_dlthesis`).

Every argument is checked before anything is created or trained: malformed
values (negative or zero counts, a negative seed, an empty `--only`, an unknown
scale, a `--save` path that is not a writable `.keras` file) are rejected while
parsing, before TensorFlow is imported; names that need the library to check
(table/figure ids and their kind, datasets, models, norms, mixing methods,
recipes) and what needs the data (`train`: the dataset's files, a subset larger
than the data, a batch larger than it with `--mixing`; without mixing such a batch
is one partial batch per epoch, as in Keras) are checked right after it, still before any output folder
exists. All
of them exit with status 2 and argparse's usage and one-line error.

TensorFlow's C++ log output is hidden unless `--verbose` is given (or the
environment variable `TF_DLTHESIS_VERBOSE=1` is set).
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
import tempfile

from tf_dlthesis import __version__


def _writable_dir(path: str) -> str:
    """argparse type: an output folder that can be created and written to.

    Probes by creating the folder and a file in it, then removes whatever the probe
    created, so a command that fails later (a bad model name, ...) leaves nothing
    behind; `main` creates the folder once the command is known to be valid.
    """
    if not path:
        raise argparse.ArgumentTypeError("expected a folder, got ''")
    created = []
    target = os.path.abspath(path)
    try:
        missing = target
        while not os.path.exists(missing):
            created.append(missing)
            missing = os.path.dirname(missing)
        for attempt in range(20):  # another process probing the same new folder may remove it meanwhile
            try:  # a probe of its own: two processes starting on one folder never share (and remove) one
                os.makedirs(target, exist_ok=True)
                fd, probe = tempfile.mkstemp(prefix=".tf-dlthesis-write-test-", dir=target)
            except (FileNotFoundError, FileExistsError):
                # FileExistsError: makedirs found a parent being created, which the other caller then
                # removed before makedirs could see it as a folder (seen once in 600 probes in CI)
                if attempt == 19:
                    raise
                continue
            os.close(fd)
            os.remove(probe)
            break
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot write to output folder {path!r}: {err.strerror or err}")
    finally:
        for folder in created:  # deepest first
            try:
                os.rmdir(folder)
            except OSError:
                pass
    return path


def _keras_file(path: str) -> str:
    """argparse type: where `train --save` writes the model: a `.keras` file in a writable folder."""
    if not path.endswith(".keras"):
        raise argparse.ArgumentTypeError(f"expected a file name ending in .keras (Keras's saving format), got {path!r}")
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"expected a file name ending in .keras, got the folder {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        _writable_dir(folder)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"cannot write {path!r}: {err}")
    return path


def _existing_dir(path: str) -> str:
    """argparse type: a folder that exists (for `--data-dir`)."""
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"no such folder: {path!r}")
    return path


def _jobs(text: str):
    """argparse type of `reproduce --jobs`: a positive int, or 'auto'."""
    if text == "auto":
        return text
    try:
        return _positive(int)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive int or 'auto', got {text!r}") from None


def _positive(kind):
    """argparse type: a finite number of `kind` (int or float) that is > 0."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


#: The largest `--seed`: `runtime.configure` seeds NumPy's global RNG, which takes 32-bit seeds.
MAX_SEED = 2**32 - 1


def _seed(text: str) -> int:
    """argparse type: an int seed in [0, MAX_SEED]."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int seed >= 0, got {text!r}")
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an int seed <= {MAX_SEED} (NumPy's seeds are 32-bit), got {text!r}")
    return value


def _name(text: str) -> str:
    """argparse type: a non-empty name (checked against the library after parsing)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a name, got {text!r}")
    return text.strip()


def _id_list(text: str) -> list:
    """argparse type: comma-separated table/figure ids, at least one."""
    ids = [s.strip() for s in text.split(",") if s.strip()]
    if not ids:
        raise argparse.ArgumentTypeError(f"must name at least one table or figure id (e.g. 2.1,fig4.1), got {text!r}")
    return ids


def _parser():
    """The argument parser and its subcommand parsers by name."""
    parser = argparse.ArgumentParser(
        prog="tf-dlthesis",
        description="Reproduce 'Understanding and Improving Deep Learning' (Summers, 2021) with Keras 3.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's own log output (also: TF_DLTHESIS_VERBOSE=1)")
    # subcommands accept --verbose too; SUPPRESS keeps a top-level --verbose from being reset
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show TensorFlow's own log output (also: TF_DLTHESIS_VERBOSE=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subs = {}

    def common_run(p):
        p.add_argument("--scale", choices=("quick", "standard", "full"), default="quick",
                       help="quick: digits, minutes on a CPU; standard: Fashion-MNIST in the thesis's regimes, "
                            "hours on a CPU; full: the thesis's settings (GPU)")
        p.add_argument("--dataset", type=_name, default=None,
                       help="override the scale's dataset (quick: digits, standard: fashion_mnist, full: each "
                            "table's thesis dataset)")
        p.add_argument("--data-dir", type=_existing_dir, default=None,
                       help="folder with dataset files (IDX files, mnist.npz or a prepared tensorflow-datasets "
                            "directory), directly or in DIR/<name>/; datasets it lacks come from their default "
                            "source")
        p.add_argument("--out", type=_writable_dir, default="tf-dlthesis-out",
                       help="output folder (report.md, figures/, results.sqlite)")
        p.add_argument("--tensorboard", type=_writable_dir, default=None, metavar="DIR",
                       help="write every training run's curves here")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    rep = subs["reproduce"] = sub.add_parser("reproduce", parents=[shared],
                                             help="rerun the thesis's tables and figures and write a report")
    common_run(rep)
    rep.add_argument("--archive", type=_writable_dir, default=None, metavar="DIR",
                     help="a folder of finished runs, one small file each, safe to commit: read into the "
                          "store at the start, every finished run written to it after each item (resume a "
                          "long run on another machine)")
    rep.add_argument("--jobs", type=_jobs, default="auto", metavar="N",
                     help="run the chapters side by side in up to N processes (the same numbers as 1). Default "
                          "'auto': at --scale quick one more than the cores (3 on 2 cores: Chapter 5's two "
                          "workers beside one more chapter), else 1")
    rep.add_argument("--only", type=_id_list, default=None, metavar="IDS",
                     help="comma-separated ids, e.g. 2.1,4.1,fig2.2; they run and are reported in report order "
                          "(`tf-dlthesis list`), whatever the order given")

    for kind, example in (("table", "2.1"), ("figure", "4.1")):
        one = subs[kind] = sub.add_parser(kind, parents=[shared], help=f"reproduce one {kind} (e.g. `{kind} {example}`)")
        one.add_argument("id", type=_name, help=f"a {kind} id (`tf-dlthesis list` shows them)")
        common_run(one)

    subs["list"] = sub.add_parser("list", parents=[shared], help="list the registered tables and figures")

    train = subs["train"] = sub.add_parser("train", parents=[shared],
                                           help="train and evaluate one model (a TrainSpec), recording the result")
    train.add_argument("--dataset", type=_name, default="digits", help="digits, fashion_mnist, mnist or a tfds name")
    train.add_argument("--data-dir", type=_existing_dir, default=None,
                       help="folder with the dataset's files, directly or in DIR/<name>/ (default: the dataset's "
                            "default source)")
    train.add_argument("--model", type=_name, default="cnn", help="linear, mlp, conv1, cnn, preact_resnet6|8|10|14|18")
    train.add_argument("--norm", type=_name, default="batch", help="batch, none, group:G, ghost:B, batch_group:G:B, ...")
    train.add_argument("--mixing", type=_name, default=None, help="a Chapter 2 mixing method, e.g. vh_mixup (pair mode)")
    train.add_argument("--recipe", type=_name, default="cosine", help="a tf_dlthesis.recipes name")
    train.add_argument("--epochs", type=_positive(int), default=20)
    train.add_argument("--batch-size", type=_positive(int), default=64)
    train.add_argument("--lr", type=_positive(float), default=None, help="peak learning rate (default: the recipe's)")
    train.add_argument("--train-examples", type=_positive(int), default=None, help="train on a stratified subset")
    train.add_argument("--seed", type=_seed, default=0)
    train.add_argument("--image-size", type=_positive(int), default=None, help="resize images (e.g. 32)")
    train.add_argument("--no-augment", action="store_true")
    train.add_argument("--deterministic", action="store_true", help="enable TF op determinism")
    train.add_argument("--out", type=_writable_dir, default="tf-dlthesis-out")
    train.add_argument("--save", type=_keras_file, default=None, metavar="PATH.keras",
                       help="also save the trained model as a .keras file (loads after `import tf_dlthesis`)")
    return parser, subs


def _fail(message: str) -> int:
    print(f"tf-dlthesis: error: {message}", file=sys.stderr)
    return 2


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _check_names(args, sub_parser) -> None:
    """Checks the names only the library knows; `sub_parser.error` (exit 2) for a bad one."""
    import tensorflow as tf

    from tf_dlthesis import augment, data, experiments, models

    try:
        if args.command in ("reproduce", "table", "figure"):
            if args.dataset is not None:
                data.info(args.dataset, data_dir=args.data_dir)
                data.load(args.dataset, "test", data_dir=args.data_dir)  # its files are here (before any output)
            if args.command == "reproduce":
                if args.only is not None:
                    experiments.registry.select(args.only)
            else:
                exp = experiments.get(args.id, kind=args.command)
                if exp.kind != args.command:
                    raise ValueError(f"{args.id!r} is a {exp.kind}, not a {args.command}: "
                                     f"use `tf-dlthesis {exp.kind} {args.id}`")
        elif args.command == "train":
            info = data.info(args.dataset, data_dir=args.data_dir)
            if args.mixing is not None and args.mixing not in augment.METHODS:
                close = difflib.get_close_matches(args.mixing, augment.METHODS, n=2)
                hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"Unknown mixing method {args.mixing!r}.{hint} Known: {', '.join(augment.METHODS)}")
            args.spec = experiments.TrainSpec(
                dataset=args.dataset, model=args.model, norm=args.norm, recipe=args.recipe,
                mixing=None if args.mixing is None else {"method": args.mixing}, epochs=args.epochs,
                batch_size=args.batch_size, learning_rate=args.lr, train_examples=args.train_examples,
                image_size=args.image_size, augment=not args.no_augment)
            shape = data.info(args.dataset, data_dir=args.data_dir, image_size=args.image_size).image_shape
            models.build(args.model, shape, info.num_classes, norm=args.norm)  # a bad model or norm raises here
            with experiments.training.data_dir(args.data_dir):  # missing files, a subset or batch too big
                args.data = experiments.load_data(args.spec)
    except (ValueError, TypeError, KeyError, FileNotFoundError, ImportError, MemoryError) as err:
        sub_parser.error(_one_line(err))
    except tf.errors.ResourceExhaustedError as err:  # e.g. --image-size 100000: the resized set does not fit
        oom = err.message[err.message.find("OOM"):].split(" on /")[0] if "OOM" in err.message else "OOM"
        sub_parser.error(f"out of memory preparing the data ({oom}); try a smaller --image-size or --train-examples")


def main(argv=None) -> int:
    """Entry point of `tf-dlthesis` and `python -m tf_dlthesis`.

    Example:

    >>> from tf_dlthesis import cli
    >>> # cli.main(["train", "--epochs", "5", "--save", "cnn.keras"])   # returns the exit status

    Args:
        argv: The arguments (default: `sys.argv[1:]`).

    Returns:
        The exit status: 0 on success, 1 when an experiment failed (see the
        report), 2 for bad arguments.
    """
    parser, subs = _parser()
    args = parser.parse_args(argv)
    if args.verbose:
        os.environ["TF_DLTHESIS_VERBOSE"] = "1"
    import tf_dlthesis

    tf_dlthesis._register_all()  # quiet TensorFlow import, every serializable class registered
    from tf_dlthesis import experiments, runtime

    if args.command == "list":
        for exp in experiments.registry.select():
            print(f"{exp.id:10s} ch.{exp.chapter!s:3s} ~{exp.quick_minutes:4.1f} min (quick)  {exp.title}")
        return 0

    _check_names(args, subs[args.command])

    if args.command == "train":
        os.makedirs(args.out, exist_ok=True)
        runtime.configure(seed=args.seed, deterministic=args.deterministic)
        try:
            store = experiments.ResultsStore(os.path.join(args.out, "results.sqlite"))
            with experiments.training.data_dir(args.data_dir):
                [run] = experiments.train(args.spec, args.seed, store=store, verbose=1,
                                          keep_weights=args.save is not None, data=args.data)
        except (ValueError, TypeError) as err:
            return _fail(_one_line(err))
        if args.save is not None:
            try:
                model = run.model
            except RuntimeError:  # read back from an earlier run's store, which kept no weights
                return _fail(f"{store.path} already holds this run without its weights (it was trained without "
                             f"--save), so there is no model to save: give another --out to train it again")
            os.makedirs(os.path.dirname(os.path.abspath(args.save)), exist_ok=True)
            model.save(args.save)
        m = run.metrics
        print(f"test accuracy {100 * m['test_accuracy']:.2f}%  test loss {m['test_loss']:.4f}  "
              f"train accuracy {100 * m['train_accuracy']:.2f}%  -> {store.path}")
        if args.save is not None:
            print(f"model: {os.path.abspath(args.save)}")
        return 0

    # reproduce / table / figure
    only = args.only if args.command == "reproduce" else [experiments.get(args.id, kind=args.command).id]
    os.makedirs(args.out, exist_ok=True)
    try:  # an unreadable results file is the user's to fix: one line, before any work
        experiments.ResultsStore(os.path.join(args.out, "results.sqlite"))
    except ValueError as err:
        return _fail(_one_line(err))
    try:
        path, failed = experiments.reproduce(
            scale=args.scale,
            dataset=args.dataset,
            data_dir=args.data_dir,
            out_dir=args.out,
            only=only,
            tensorboard=args.tensorboard,
            progress=not args.no_progress,
            archive=getattr(args, "archive", None),  # reproduce only
            jobs=getattr(args, "jobs", 1),  # reproduce only; `table`/`figure` run one item
        )
    except ValueError as err:  # another `reproduce` on this --out, an --archive file it cannot read or write
        return _fail(_one_line(err))
    except KeyboardInterrupt:
        kept = os.path.abspath(os.path.join(args.out, "results.sqlite"))
        if getattr(args, "archive", None):
            kept += f" and {os.path.abspath(args.archive)}"
        print(f"tf-dlthesis: stopped. Finished runs and their compute time are kept in {kept}; "
              f"run the same command again to resume.", file=sys.stderr)
        return 130
    print(f"report: {os.path.abspath(path)}")
    print(f"figures: {os.path.abspath(os.path.join(args.out, 'figures'))}")
    print(f"results: {os.path.abspath(os.path.join(args.out, 'results.sqlite'))}")
    if failed:
        print(f"tf-dlthesis: {failed} experiment(s) failed; see the report", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
