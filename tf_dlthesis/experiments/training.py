"""One training routine for the CLI and the experiments: seeded, resumable data, SGD."""

from __future__ import annotations

import keras
import numpy as np

from tf_dlthesis import data, models, runtime
from tf_dlthesis.experiments.registry import fit_callbacks


def default_pad(image_shape) -> int:
    """Crop padding: the thesis's 4 px for 32 px images, scaled (1 px for 8x8 digits)."""
    return max(1, int(image_shape[0]) // 8)


def train_classifier(
    model_name: str,
    dataset: str = "digits",
    *,
    norm="batch",
    epochs: int = 20,
    batch_size: int = 64,
    learning_rate: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    augment: bool = True,
    flip: bool | None = None,
    image_size: int | None = None,
    data_dir: str | None = None,
    run_name: str | None = None,
    verbose: int | str = 0,
    model_kwargs: dict | None = None,
    arrays=None,
):
    """Trains a `models.build` model with SGD + momentum and a cosine schedule.

    Data order and augmentation come from `data.training_dataset` with seeds
    derived from `seed`, so runs are reproducible. Weight decay is Keras's
    decoupled `weight_decay` on the optimizer.

    Args:
        model_name: a `models.build` name.
        dataset: a `data.load` name.
        norm: the `norm=` of `models.build`.
        epochs, batch_size, learning_rate, momentum, weight_decay: optimisation.
        seed: seeds the initialization, data order and augmentation.
        augment: pad-crop (and flip) augmentation.
        flip: horizontal flips; default off for digits, on otherwise.
        image_size: resize images (e.g. 32 for CIFAR-style models on digits).
        run_name: TensorBoard run name (see `fit_callbacks`).
        verbose: Keras `fit` verbosity (1 shows the progress bar).
        model_kwargs: extra `models.build` options.
        arrays: optional `((x_train, y_train), (x_test, y_test))` to skip loading.

    Returns:
        `(model, metrics)` where metrics has `test_accuracy`, `test_loss`,
        `train_loss` (last epoch) and `epochs`.
    """
    if arrays is None:
        train = data.load_arrays(dataset, "train", image_size=image_size, data_dir=data_dir)
        test = data.load_arrays(dataset, "test", image_size=image_size, data_dir=data_dir)
    else:
        train, test = arrays
    (x, y), (xt, yt) = train, test
    num_classes = int(max(y.max(), yt.max()) + 1)
    model = models.build(model_name, x.shape[1:], num_classes, norm=norm, seed=seed, **(model_kwargs or {}))
    steps = data.steps_per_epoch(len(x), batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, epochs * steps))
    model.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=momentum, nesterov=True, weight_decay=weight_decay or None),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=runtime.jit_compile(),
    )
    if flip is None:
        flip = dataset != "digits"
    ds = data.training_dataset(
        x,
        y,
        batch_size=batch_size,
        shuffle_seed=seed,
        augment_seed=(seed + 1) if augment else None,
        epochs=epochs,
        pad=default_pad(x.shape[1:]),
        flip=flip,
    )
    history = model.fit(
        ds,
        epochs=epochs,
        steps_per_epoch=steps,
        shuffle=False,  # the stream is already shuffled, reproducibly
        verbose=verbose,
        callbacks=fit_callbacks(run_name or f"{dataset}-{model_name}-{seed}"),
    )
    loss, acc = model.evaluate(xt, yt, batch_size=512, verbose=0)
    return model, {
        "test_accuracy": float(acc),
        "test_loss": float(loss),
        "train_loss": float(history.history["loss"][-1]),
        "epochs": int(epochs),
        "num_test": int(len(yt)),
    }


def predict_logits(model, x, batch_size: int = 512) -> np.ndarray:
    """Logits of `model` on `x` in inference mode, as float32 NumPy."""
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32)
