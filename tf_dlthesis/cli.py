"""The `tf-dlthesis` command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported


def _writable_dir(path: str) -> str:
    """argparse type: an output folder that can be created and written to.

    Probes by creating the folder and a file in it, then removes whatever the probe
    created, so a command that fails later (a bad model name, ...) leaves nothing
    behind; `main` creates the folder once the command is known to be valid.
    """
    created = []
    target = os.path.abspath(path)
    try:
        missing = target
        while not os.path.exists(missing):
            created.append(missing)
            missing = os.path.dirname(missing)
        os.makedirs(target, exist_ok=True)
        probe = os.path.join(target, ".tf-dlthesis-write-test")
        with open(probe, "w") as fh:
            fh.write("ok")
        os.remove(probe)
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot write to output folder {path!r}: {err.strerror or err}")
    finally:
        for folder in created:  # deepest first
            try:
                os.rmdir(folder)
            except OSError:
                pass
    return path


def _positive(kind):
    """argparse type: a number of `kind` (int or float) that is > 0."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def _seed(text: str) -> int:
    """argparse type: an int seed >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int seed >= 0, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tf-dlthesis",
        description="Reproduce 'Understanding and Improving Deep Learning' (Summers, 2021) with Keras 3.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common_run(p):
        p.add_argument("--scale", choices=("quick", "standard", "full"), default="quick",
                       help="quick: digits, minutes on a CPU; standard: Fashion-MNIST in the thesis's regimes, "
                            "hours on a CPU; full: the thesis's settings (GPU)")
        p.add_argument("--dataset", default=None,
                       help="override the scale's dataset (quick: digits, standard: fashion_mnist, full: each "
                            "table's thesis dataset)")
        p.add_argument("--data-dir", default=None, help="folder with the dataset's files (IDX files, mnist.npz or a "
                                                         "prepared tensorflow-datasets directory)")
        p.add_argument("--out", type=_writable_dir, default="tf-dlthesis-out", help="output folder (report.md, figures/, results.sqlite)")
        p.add_argument("--tensorboard", type=_writable_dir, default=None, metavar="DIR", help="write every training run's curves here")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    rep = sub.add_parser("reproduce", help="rerun the thesis's tables and figures and write a report")
    common_run(rep)
    rep.add_argument("--only", default=None, help="comma-separated ids, e.g. 2.1,4.1,fig2.2")

    for kind in ("table", "figure"):
        one = sub.add_parser(kind, help=f"reproduce one {kind} (e.g. `{kind} {'2.1' if kind == 'table' else '4.1'}`)")
        one.add_argument("id")
        common_run(one)

    sub.add_parser("list", help="list the registered tables and figures")

    train = sub.add_parser("train", help="train and evaluate one model (a TrainSpec), recording the result")
    train.add_argument("--dataset", default="digits", help="digits, fashion_mnist, mnist or a tfds name")
    train.add_argument("--data-dir", default=None)
    train.add_argument("--model", default="cnn", help="linear, mlp, conv1, cnn, preact_resnet6|8|10|14|18")
    train.add_argument("--norm", default="batch", help="batch, none, group:G, ghost:B, batch_group:G:B, ...")
    train.add_argument("--mixing", default=None, help="a Chapter 2 mixing method, e.g. vh_mixup (pair mode)")
    train.add_argument("--recipe", default="cosine", help="a tf_dlthesis.recipes name")
    train.add_argument("--epochs", type=_positive(int), default=20)
    train.add_argument("--batch-size", type=_positive(int), default=64)
    train.add_argument("--lr", type=_positive(float), default=None, help="peak learning rate (default: the recipe's)")
    train.add_argument("--train-examples", type=_positive(int), default=None, help="train on a stratified subset")
    train.add_argument("--seed", type=_seed, default=0)
    train.add_argument("--image-size", type=_positive(int), default=None, help="resize images (e.g. 32)")
    train.add_argument("--no-augment", action="store_true")
    train.add_argument("--deterministic", action="store_true", help="enable TF op determinism")
    train.add_argument("--out", type=_writable_dir, default="tf-dlthesis-out")
    return parser


@contextlib.contextmanager
def _quiet_native_stderr():
    """Hides the C++ start-up banner TensorFlow prints on import (absl ignores
    TF_CPP_MIN_LOG_LEVEL for it). Python exceptions still surface after the block."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (embedded use): nothing to hide
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _fail(message: str) -> int:
    print(f"tf-dlthesis: error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    """Entry point of `tf-dlthesis`."""
    args = _parser().parse_args(argv)
    with _quiet_native_stderr():
        import tensorflow  # noqa: F401  (imported here, quietly, before the subpackages)

    from tf_dlthesis import data, experiments, models, runtime

    if args.command == "list":
        for exp in experiments.registry.select():
            print(f"{exp.id:10s} ch.{exp.chapter!s:3s} ~{exp.quick_minutes:4.1f} min (quick)  {exp.title}")
        return 0

    if args.command == "train":
        try:
            data.info(args.dataset, data_dir=args.data_dir)
            spec = experiments.TrainSpec(
                dataset=args.dataset, model=args.model, norm=args.norm, recipe=args.recipe,
                mixing=None if args.mixing is None else {"method": args.mixing}, epochs=args.epochs,
                batch_size=args.batch_size, learning_rate=args.lr, train_examples=args.train_examples,
                image_size=args.image_size, augment=not args.no_augment)
            models.build(args.model, data.info(args.dataset, image_size=args.image_size).image_shape, 10,
                         norm=args.norm)  # raises the helpful error for a bad model or norm
        except (ValueError, TypeError) as err:
            return _fail(str(err))
        os.makedirs(args.out, exist_ok=True)
        runtime.configure(seed=args.seed, deterministic=args.deterministic)
        store = experiments.ResultsStore(os.path.join(args.out, "results.sqlite"))
        try:
            with experiments.training.data_dir(args.data_dir):
                [run] = experiments.train(spec, args.seed, store=store, verbose=1)
        except (ValueError, TypeError) as err:
            return _fail(str(err))
        m = run.metrics
        print(f"test accuracy {100 * m['test_accuracy']:.2f}%  test loss {m['test_loss']:.4f}  "
              f"train accuracy {100 * m['train_accuracy']:.2f}%  -> {store.path}")
        return 0

    # reproduce / table / figure
    if args.dataset is not None:
        try:
            data.info(args.dataset, data_dir=args.data_dir)
        except (ValueError, TypeError) as err:
            return _fail(str(err))
    try:
        if args.command == "reproduce":
            only = None if args.only is None else [s.strip() for s in args.only.split(",") if s.strip()]
            if only is not None and not only:
                return _fail(f"--only must name at least one table or figure id. Received: --only {args.only!r}")
            if only is not None:
                experiments.registry.select(only)
        else:
            exp = experiments.get(args.id)
            if exp.kind != args.command:
                return _fail(f"{args.id!r} is a {exp.kind}, not a {args.command}: use `tf-dlthesis {exp.kind} {args.id}`")
            only = [exp.id]
    except ValueError as err:
        return _fail(str(err))
    os.makedirs(args.out, exist_ok=True)
    path, failed = experiments.reproduce(
        scale=args.scale,
        dataset=args.dataset,
        data_dir=args.data_dir,
        out_dir=args.out,
        only=only,
        tensorboard=args.tensorboard,
        progress=not args.no_progress,
    )
    print(f"report: {os.path.abspath(path)}")
    print(f"figures: {os.path.abspath(os.path.join(args.out, 'figures'))}")
    print(f"results: {os.path.abspath(os.path.join(args.out, 'results.sqlite'))}")
    if failed:
        print(f"tf-dlthesis: {failed} experiment(s) failed; see the report", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
