"""The one training path: TrainSpec, train(), the mixing stage inside training_dataset, the run log."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tf_dlthesis import augment, data
from tf_dlthesis.experiments import Output, ResultsStore, TrainSpec, stats, train
from tf_dlthesis.experiments import registry
from tf_dlthesis.experiments.training import load_data, stratified_indices
from tf_dlthesis.variability import SeedPlan

_SMALL = dict(dataset="digits", model="cnn", model_kwargs={"filters": [8, 16]}, epochs=2, train_examples=400,
              test_examples=200)


class _LabelPairs:
    """A stand-in mixing stage that returns the two labels of each pair, to read the pairing."""

    mode = "pair"

    def pairs(self, x1, y1, x2, y2, epoch, index):
        return x1, tf.stack([y1, y2], axis=1)


def test_pair_mode_pairs_each_example_once_per_pass_with_fresh_pairings():
    n, epochs = 10, 3
    x = np.zeros((n, 2, 2, 1), np.float32)
    ds = data.training_dataset(x, np.arange(n), batch_size=4, shuffle_seed=0, epochs=epochs, mix=_LabelPairs())
    pairs = np.concatenate([b[1].numpy() for b in ds])
    assert len(pairs) == epochs * n            # N pairs per epoch: the set is read twice
    per_epoch = pairs.reshape(epochs, 2, n // 2, 2)
    pairings = []
    for e in range(epochs):
        for p in range(2):                     # each pass: every example in exactly one pair
            assert sorted(per_epoch[e, p].reshape(-1).tolist()) == list(range(n))
        pairings.append({frozenset(pr) for pr in per_epoch[e].reshape(-1, 2).tolist()})
        np.testing.assert_array_equal(per_epoch[e].reshape(-1, 2), data.epoch_pairs(n, 0, e))
    assert pairings[0] != pairings[1] != pairings[2]  # fresh pairings every epoch


def test_training_dataset_mix_gives_soft_labels_and_the_thesis_epoch_length():
    x, y = data.load_arrays("digits", "train")
    stage = augment.MixStage("vh_mixup", num_classes=10, seed=3)
    ds = data.training_dataset(x, y, batch_size=100, shuffle_seed=0, augment_seed=1, pad=1, epochs=1,
                               mix=stage, drop_remainder=True)
    batches = list(ds)
    assert len(batches) == data.steps_per_epoch_of(len(x), 100, drop_remainder=True, mix=stage) == 14
    xb, yb = batches[0]
    assert xb.shape == (100, 8, 8, 1) and yb.shape == (100, 10)
    np.testing.assert_allclose(yb.numpy().sum(1), 1.0, atol=1e-5)
    again = next(iter(data.training_dataset(x, y, batch_size=100, shuffle_seed=0, augment_seed=1, pad=1, epochs=1,
                                            mix=stage, drop_remainder=True)))
    np.testing.assert_array_equal(again[0].numpy(), xb.numpy())
    with pytest.raises(TypeError, match="MixStage"):
        data.training_dataset(x, y, batch_size=8, shuffle_seed=0, mix="vh_mixup")


def test_epoch_seeds_switch_the_order_at_the_onset():
    x = np.zeros((12, 2, 2, 1), np.float32)
    y = np.arange(12)

    def order(seed):
        return np.concatenate([b[1].numpy() for b in data.training_dataset(x, y, batch_size=12, shuffle_seed=seed,
                                                                           epochs=3)])

    switched = order(data.EpochSeeds([5, 5, 9]))
    np.testing.assert_array_equal(switched[:24], order(5)[:24])
    np.testing.assert_array_equal(switched[24:], order(9)[24:])
    with pytest.raises(ValueError, match="per-epoch"):
        data.training_dataset(x, y, batch_size=4, shuffle_seed=data.EpochSeeds([1]), epochs=3)
    with pytest.raises(ValueError, match="EpochSeeds"):
        data.EpochSeeds([1, -2])


def test_train_refuses_an_onset_on_the_stochastic_source_it_cannot_delay():
    from tf_dlthesis.experiments.training import as_plan

    spec = TrainSpec(dataset="digits", model="mlp", epochs=2, train_examples=64)
    late = as_plan(0).vary("stochastic", 1, onset_epoch=1)
    # before: dropout was seeded with the varied seed from epoch 0, the onset silently ignored
    with pytest.raises(ValueError, match=r"cannot delay the 'stochastic' source .* onset_epoch=1"):
        train(spec, [late])


def test_stratified_indices_are_proportional_and_rng_free():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_indices(labels, 10)
    assert np.bincount(labels[idx]).tolist() == [5, 3, 2]
    assert idx.tolist() == [0, 1, 2, 3, 4, 50, 51, 52, 80, 81]
    tail = stratified_indices(labels, 10, from_end=True)
    assert set(tail) & set(idx) == set() and np.bincount(labels[tail]).tolist() == [5, 3, 2]
    with pytest.raises(ValueError, match="Cannot take"):
        stratified_indices(labels, 101)


def test_spec_is_json_able_hashable_and_validated():
    spec = TrainSpec(**_SMALL, mixing="vh_mixup", norm="ghost:16", norm_kwargs={"momentum": 0.9})
    config = spec.to_config()
    assert json.loads(json.dumps(config)) == config
    assert TrainSpec.from_config(config) == spec and hash(TrainSpec.from_config(config)) == hash(spec)
    assert spec.mixing == {"method": "vh_mixup"} and spec.key() != spec.replace(epochs=3).key()
    assert "vh_mixup" in spec.describe()
    for bad, match in (({"epochs": 0}, "epochs"), ({"model_kwargs": [1]}, "model_kwargs"),
                       ({"recipe": "nope"}, "recipe"), ({"optimizer": "rmsprop"}, "optimizer"),
                       ({"mixing": {"alpha": 1}}, "method"), ({"norm": 3}, "norm"),
                       ({"model_kwargs": {"f": object()}}, "JSON")):
        with pytest.raises((TypeError, ValueError), match=match):
            TrainSpec(**{**_SMALL, **bad})


def test_train_resumes_from_the_store_and_keeps_weights(tmp_path):
    store = ResultsStore(tmp_path / "runs.sqlite")
    spec = TrainSpec(**_SMALL)
    calls = []

    def evaluate(ctx):
        calls.append(1)
        return {"n_test": len(ctx.data.test[1])}

    first = train(spec, [0, 1], store=store, evaluate=evaluate, evaluation="count", keep_weights=True)
    assert len(calls) == 2 and not first[0].from_store
    assert first[0].metrics["num_train"] == 400 and first[0].test_correct.shape == (200,)
    assert first[0].metrics["test_accuracy"] == pytest.approx(first[0].test_correct.mean())
    assert first[0].metrics["test_accuracy"] != first[1].metrics["test_accuracy"] or \
        first[0].info["init_hash"] != first[1].info["init_hash"]
    again = train(spec, [0, 1], store=store, evaluate=evaluate, evaluation="count")
    assert len(calls) == 2 and all(r.from_store for r in again)
    assert again[0].metrics == first[0].metrics and again[0].evaluation == {"n_test": 200}
    # each stored run names the machine that trained it (bit-exact on one machine only)
    from tf_dlthesis import runtime

    assert first[0].info["machine"] == again[0].info["machine"] == runtime.machine()["id"]
    logits = again[0].model.predict(load_data(spec).test[0], verbose=0)
    np.testing.assert_array_equal(logits.argmax(1), first[0].test_pred)
    # a new evaluation of a stored run reuses the stored weights: no retraining
    other = train(spec, 0, store=store, evaluate=lambda ctx: {"ok": 1}, evaluation="other")
    assert other[0].from_store and other[0].evaluation == {"ok": 1}
    with pytest.raises(ValueError, match="evaluation"):
        train(spec, 0, store=store, evaluate=evaluate)
    with pytest.raises(ValueError, match="empty"):
        train(spec, [], store=store)
    with pytest.raises(TypeError, match="seeds"):
        train(spec, 1.5)


def test_the_same_seed_trains_bit_identical_models_and_a_plan_varies_one_source():
    spec = TrainSpec(**_SMALL, mixing={"method": "mixup"})
    a, b = train(spec, [0, 0])
    np.testing.assert_array_equal(a.test_pred, b.test_pred)
    assert a.info["order_hash"] == b.info["order_hash"] and a.info["init_hash"] == b.info["init_hash"]
    base = SeedPlan(init=0, shuffle=0, augment=1, stochastic=2)
    shuffled = train(spec, base.vary("shuffle", 1))[0]
    assert shuffled.info["init_hash"] == a.info["init_hash"] and shuffled.info["order_hash"] != a.info["order_hash"]
    changed = train(spec.replace(mixing=None), base.vary("bit_change", 0))[0]
    assert changed.info["bit_change"] is not None


def test_experiment_reports_collapsed_models(tmp_path):
    spec = TrainSpec(**{**_SMALL, "epochs": 1}, learning_rate=50.0)  # diverges: one class everywhere

    def item(scale, dataset, store, *, out=None):
        runs = train(spec, 0, store=store)
        effect = stats.proportion(runs[0].test_correct)
        return Output(findings=[registry.Finding.test("accuracy above chance", effect, above=10.0)])

    exp = registry.Experiment("T.collapse", "collapse test", "T", item, 0.1)
    out = exp("quick", "digits", ResultsStore(tmp_path / "s.sqlite"))
    [check] = out.checks
    if check.passed:  # the model did not collapse after all: the check must then say so
        assert "no collapsed model" in check.name
    else:
        assert check.name == "model not collapsed" and "predicts" in check.detail


def test_items_do_not_depend_on_what_ran_before(tmp_path):
    """Two items give the same numbers whichever runs first (no global random state)."""
    from tf_dlthesis import runtime

    def make(spec):
        def item(scale, dataset, store, *, out=None):
            run = train(spec, 0)[0]
            return Output(notes=[repr((run.metrics["test_loss"], run.test_pred.tolist()))])
        return registry.Experiment("T", "t", "T", item, 0.1)

    first = make(TrainSpec(**_SMALL))
    second = make(TrainSpec(**{**_SMALL, "model": "mlp", "model_kwargs": {"hidden": 32, "dropout": 0.2}}))

    def run(order):
        notes = []
        for exp in order:
            runtime.configure(seed=0, deterministic=True)
            notes.append(exp("quick", "digits", None).notes[0])
        return notes

    a1, b1 = run([first, second])
    b2, a2 = run([second, first])
    assert a1 == a2 and b1 == b2


def test_stop_epoch_trains_the_first_epochs_of_the_full_schedule():
    spec = TrainSpec(**_SMALL)  # 2 epochs
    full = train(spec, 0)[0]
    part = train(spec.replace(stop_epoch=1), 0)[0]
    assert len(part.history["loss"]) == 1 and len(full.history["loss"]) == 2
    assert part.history["loss"][0] == full.history["loss"][0]
    with pytest.raises(ValueError, match="stop_epoch"):
        spec.replace(stop_epoch=3)


def test_failed_regime_checks_make_the_items_findings_not_comparable():
    effect = stats.Effect(2.0, 1.0, 3.0, "paired difference")

    def item(passed):
        def fn(scale, dataset, store, *, out=None):
            return Output(findings=[registry.Finding.test("A beats B", effect, above=0, evidence="A 90%, B 88%")],
                          checks=[registry.Check("baseline overfits", passed, "train 98%", regime=True),
                                  registry.Check("a health check", False, "not a regime")])
        return registry.Experiment("T.r", "regime", "T", fn, 0.1)

    [kept] = item(True)("quick", "digits", None).findings
    assert kept.verdict == "reproduced"
    [gated] = item(False)("quick", "digits", None).findings
    assert gated.verdict == "not comparable at this scale" and gated.effect == effect
    assert "regime was not reached (baseline overfits: train 98%)" in gated.evidence and "A 90%" in gated.evidence


def test_store_keys_of_existing_specs_are_unchanged_by_the_b4_fields():
    """Keys recorded before `momentum`, `gradient_clip_norm`, `swa` and `weight_noise` existed (issue 16)."""
    from tf_dlthesis.experiments.chapter5 import SETTINGS
    from tf_dlthesis.experiments.training import ADDED_FIELDS

    assert TrainSpec().key() == "225879f2e12df633"
    assert SETTINGS["quick"].spec.key() == "d1cb518d32546819"
    assert SETTINGS["standard"].spec.key() == "475136d75112d0cd"
    # epochs 5, not 3: 5 cycles need a multiple of 5 epochs (refused since 2026-12-05; the key was computed
    # with the code before the B.4 fields, as the others)
    spec = TrainSpec(dataset="digits", model="preact_resnet6", optimizer="adam", learning_rate=0.01, epochs=5,
                     mixing="mixup", snapshots=5)
    assert spec.key() == "da1e4f44c352e8d5"
    assert not set(ADDED_FIELDS) & set(spec.to_config())
    changed = spec.replace(snapshots=0, swa={"mode": "swa", "start_epoch": 2}, momentum=0.0)
    config = changed.to_config()
    assert config["swa"] == {"mode": "swa", "start_epoch": 2, "swa_lr": None} and config["momentum"] == 0.0
    assert json.loads(json.dumps(config)) == config and TrainSpec.from_config(config) == changed
    assert changed.key() != spec.replace(snapshots=0).key()


def test_weight_decay_mode_keys_l2_runs_apart_and_keeps_every_stored_key():
    """Runs stored before `weight_decay_mode` trained with Keras's decoupled decay: their keys must not move, and
    a thesis recipe's L2 run (the thesis's convention) must not read them back."""
    from tf_dlthesis import recipes
    from tf_dlthesis.experiments import chapter3, chapter5
    from tf_dlthesis.experiments.results_store import config_hash
    from tf_dlthesis.experiments.training import _optimizer

    assert SETTINGS_KEYS == {"standard_5": chapter5.SETTINGS["standard"].spec.key(),
                             "standard_5.6": chapter5.ARCHITECTURES["standard"].base.key(),
                             "standard_3": chapter3._standard().base.key()}
    l2 = TrainSpec(recipe="ch3_cifar", epochs=4)
    assert l2.weight_decay_mode is None and l2.resolved_weight_decay_mode == "l2"
    assert l2.to_config()["weight_decay_mode"] == "l2"
    legacy = {k: v for k, v in l2.to_config().items() if k != "weight_decay_mode"}  # how it was keyed before
    decoupled = l2.replace(weight_decay_mode="decoupled")
    assert decoupled.key() == config_hash(legacy) != l2.key()
    for spec in (l2, decoupled):  # the config round trip keeps the mode
        assert TrainSpec.from_config(json.loads(json.dumps(spec.to_config()))) == spec
    assert TrainSpec.from_config(legacy).resolved_weight_decay_mode == "decoupled"
    assert TrainSpec(recipe="ch3_cifar", epochs=4, weight_decay_mode="l2") == l2  # None resolves to the recipe's
    # the mode follows the recipe through replace, and no decay (or Adam) is one key whatever the mode says
    assert TrainSpec(epochs=4).replace(recipe="ch3_cifar") == l2
    assert l2.replace(weight_decay=0.0) == decoupled.replace(weight_decay=0.0)
    assert "weight_decay_mode" not in l2.replace(weight_decay=0.0).to_config()
    assert l2.replace(optimizer="adam").resolved_weight_decay_mode == "decoupled"
    assert isinstance(_optimizer(l2, 10), recipes.CoupledSGD) and _optimizer(l2, 10).l2 == 2e-4
    assert not isinstance(_optimizer(decoupled, 10), recipes.CoupledSGD) and _optimizer(decoupled, 10).weight_decay == 2e-4
    assert "decoupled" in decoupled.describe() and "decoupled" not in l2.describe()
    with pytest.raises(ValueError, match=r"`weight_decay_mode` must be one of \('l2', 'decoupled'\) or None. "
                                         r"Received: weight_decay_mode='L2'"):
        TrainSpec(weight_decay_mode="L2")
    with pytest.raises(ValueError, match="Adam takes Keras's decoupled weight decay"):
        TrainSpec(recipe="ch3_cifar", optimizer="adam", weight_decay_mode="l2")


#: The keys of the standard report's stored Chapter 3 / 5 bases (trained with decoupled decay), read before the mode existed.
SETTINGS_KEYS = {"standard_5": "475136d75112d0cd", "standard_5.6": "4bd29cd2647213a3", "standard_3": "e74dc98b383f34a4"}


@pytest.mark.parametrize("extra", [{}, {"mixing": {"method": "mixup"}},
                                   {"defense": {"defense": "label_smoothing", "smoothing": 0.1}}])
def test_train_creates_no_variable_inside_a_traced_function(extra):
    """`train` builds the optimizer's slot variables before `fit`. Keras (no distribution
    strategy) would create them inside the first trace of the train step, and a variable
    created while tracing makes TF trace the whole step a second time (the quick scale's
    Table 2.1 took 202 s instead of 159 s)."""
    created = []

    def creator(next_creator, **kwargs):
        created.append((kwargs.get("name"), tf.inside_function()))
        return next_creator(**kwargs)

    with tf.variable_creator_scope(creator):
        train(TrainSpec(**{**_SMALL, "epochs": 1}, **extra), [0])
    assert any(name and "momentum" in name for name, _ in created)  # the slots were made here...
    assert [name for name, inside in created if inside] == []  # ...and none while tracing


def test_equal_specs_have_one_key_and_hash_and_numpy_numbers_are_json_able():
    a, b = TrainSpec(learning_rate=1), TrainSpec(learning_rate=1.0)
    assert a == b and hash(a) == hash(b) and a.key() == b.key() and len({a, b}) == 1
    spec = TrainSpec(batch_size=np.int64(32), epochs=np.int32(3), learning_rate=np.float32(0.5), weight_decay=0,
                     norm_weight_decay=(np.float64(1e-4), 1), flip=np.bool_(False))
    config = spec.to_config()
    assert json.loads(json.dumps(config)) == config and TrainSpec.from_config(config) == spec
    assert type(spec.batch_size) is int and type(spec.epochs) is int and type(spec.flip) is bool
    assert type(spec.learning_rate) is float and type(spec.weight_decay) is float
    assert spec == TrainSpec(batch_size=32, epochs=3, learning_rate=0.5, weight_decay=0.0,
                             norm_weight_decay=(1e-4, 1.0), flip=False)
    # equality is the store key's: specs the store would keep apart are not equal
    mixup = TrainSpec(mixing={"method": "mixup", "alpha": 1})
    assert mixup != mixup.replace(mixing={"method": "mixup", "alpha": 1.0}) and mixup != "not a spec"


@pytest.mark.parametrize("bad, error, match", [
    ({"weight_decay": "x"}, ValueError, "`weight_decay` must be a number >= 0 or None. Received: weight_decay='x'"),
    ({"weight_decay": -1e-4}, ValueError, "Received: weight_decay=-0.0001"),
    ({"learning_rate": "0.1"}, ValueError, "`learning_rate` must be a number > 0 or None"),
    ({"flip": "no"}, TypeError, "`flip` must be a bool or None. Received: flip='no'"),
    ({"augment": "no"}, TypeError, "`augment` must be a bool. Received: augment='no'"),
    ({"augment": None}, TypeError, "Received: augment=None"),
    ({"norm_weight_decay": ("a", "b")}, ValueError, r"`norm_weight_decay` must be a pair .* norm_weight_decay=\('a'"),
    ({"norm_weight_decay": 3}, ValueError, "`norm_weight_decay` must be a pair .* Received: norm_weight_decay=3"),
    ({"norm_weight_decay": "ab"}, ValueError, "Received: norm_weight_decay='ab'"),
    ({"norm_weight_decay": (-1e-4, 0.0)}, ValueError, "rate >= 0"),
    ({"recipe": 3}, TypeError, "`recipe` must be a recipe name"),
])
def test_spec_rejects_bad_values_at_construction_naming_the_field(bad, error, match):
    with pytest.raises(error, match=match):
        TrainSpec(**{**_SMALL, **bad})


def test_a_recipe_object_is_stored_by_its_name_and_a_custom_one_is_refused():
    import dataclasses

    from tf_dlthesis import recipes

    spec = TrainSpec(recipe=recipes.get("ch3_cifar"))
    assert spec.recipe == "ch3_cifar" and spec.key() == TrainSpec(recipe="ch3_cifar").key()
    custom = dataclasses.replace(recipes.get("cosine"), learning_rate=0.2)
    with pytest.raises(TypeError, match="`recipe` must be a registered recipe .* Received: recipe='cosine'"):
        TrainSpec(recipe=custom)


@pytest.mark.parametrize("seed", [2**63, 2**63 - 2, 2**64 + 5])
def test_train_refuses_seeds_beyond_int64_naming_seeds(seed):
    # seed s also seeds s + 1 and s + 2 (TF int64 seeds); 2**63 - 2 overflowed silently in a NumPy cast
    with pytest.raises(ValueError, match=rf"`seeds` must be ints in \[0, 2\*\*63 - 3\]. Received: seeds={seed}"):
        train(TrainSpec(**_SMALL), seeds=[0, seed])


def test_load_data_refuses_a_mixing_batch_larger_than_the_training_set():
    spec = TrainSpec(**{**_SMALL, "train_examples": 101}, mixing="mixup", batch_size=101)  # pair mode: 100 per epoch
    with pytest.raises(ValueError, match=r"`batch_size` must be <= the 101 training examples with `mixing` .*"
                                         r"100 per epoch\). Received: batch_size=101"):
        load_data(spec)
    assert len(load_data(spec.replace(batch_size=100)).train[1]) == 101
    assert len(load_data(spec.replace(mixing=None)).train[1]) == 101  # unmixed: one partial batch per epoch


def test_a_runs_data_dir_serves_the_datasets_it_holds_and_leaves_the_others_to_their_default(tmp_path, monkeypatch):
    """`--data-dir` with MNIST in DIR/mnist/ (Table 5.6's MNIST row) must not take Fashion-MNIST's rows with it."""
    from tf_dlthesis.data import _registry
    from tf_dlthesis.experiments.training import _data_dir_of, data_dir

    rng = np.random.default_rng(0)
    (tmp_path / "mnist").mkdir()
    np.savez(tmp_path / "mnist" / "mnist.npz", x_train=rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
             y_train=np.array([1, 2, 3, 4], np.uint8), x_test=rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
             y_test=np.array([5, 6], np.uint8))
    spec = TrainSpec(**{**_SMALL, "dataset": "mnist", "train_examples": None, "test_examples": None})
    with data_dir(str(tmp_path)):
        assert _data_dir_of("mnist") == str(tmp_path)
        assert load_data(spec).test[1].tolist() == [5, 6]
        assert _data_dir_of("digits") is None  # no files, found in scikit-learn
        if all(n in _registry._debian_package_files("dataset-fashion-mnist") for n in _registry._IDX_FILES):
            assert _data_dir_of("fashion_mnist") is None  # the Debian package's set, as without --data-dir
        monkeypatch.setattr(_registry, "_debian_package_files", lambda package: {})
        monkeypatch.setattr(_registry, "_keras_cache_dir", lambda: str(tmp_path / "no_cache"))
        assert _data_dir_of("fashion_mnist") == str(tmp_path)  # in neither: the error will name the run's folder
        with pytest.raises(data.DatasetNotFoundError, match="`data_dir` does not hold Fashion-MNIST"):
            load_data(spec.replace(dataset="fashion_mnist"))
    assert _data_dir_of("mnist") is None


def test_snapshots_cannot_stop_before_the_schedule_ends():
    # the snapshot cycles span `epochs`: stopping at epoch 5 of 10 took 3 of 5 snapshots at 85% of the peak rate
    with pytest.raises(ValueError, match="snapshots.*stop_epoch"):
        TrainSpec(epochs=10, snapshots=5, stop_epoch=5)
    assert TrainSpec(epochs=10, snapshots=5, stop_epoch=10).snapshots == 5
    assert TrainSpec(epochs=10, stop_epoch=5).stop_epoch == 5


# --------------------------------------------------------------------------- review of the training path (2026-12-05)
def _module_level_norm(name=None):
    import keras

    return keras.layers.LayerNormalization(name=name)


def test_norm_callables_that_a_name_cannot_identify_are_refused():
    """Closures, lambdas and callable objects were keyed by their shared qualname (or a repr with an address), so
    ghost(2) and ghost(32) closures shared one stored run."""
    import functools

    import keras

    def ghost(size):
        return lambda name=None: keras.layers.BatchNormalization(name=name)

    class Factory:
        def __call__(self, name=None):
            return keras.layers.LayerNormalization(name=name)

    for norm in (ghost(2), lambda name=None: None, Factory(), functools.partial(lambda name, k: None, k=1)):
        with pytest.raises(TypeError, match="a lambda, a closure or a callable object would share the key"):
            TrainSpec(norm=norm)
    by_function = TrainSpec(norm=_module_level_norm)
    assert by_function.to_config()["norm"] == {"callable": f"{__name__}._module_level_norm"}
    assert TrainSpec(norm=functools.partial(_module_level_norm, name="x")) != by_function
    assert TrainSpec(norm=keras.layers.LayerNormalization).to_config()["norm"]["callable"].endswith("LayerNormalization")


def test_callbacks_with_a_store_and_data_of_another_spec_are_refused(tmp_path):
    """A callback that stopped a run early had its run stored under the spec's key (a later plain call read back a
    1-epoch run as the 3-epoch spec's); a DataBundle of other data trained under the spec's key."""
    import keras

    from tf_dlthesis.experiments import DataBundle, load_data

    spec = TrainSpec(**{**_SMALL, "epochs": 1})
    store = ResultsStore(tmp_path / "s.sqlite")
    with pytest.raises(ValueError, match="`callbacks` cannot be combined with `store`"):
        train(spec, 0, store=store, callbacks=[keras.callbacks.TerminateOnNaN()])
    other = load_data(spec.replace(train_examples=300))
    with pytest.raises(ValueError, match=r"`data` was loaded for .*'train_examples': 300.* asks for .*400"):
        train(spec, 0, data=other)
    handmade = DataBundle(other.train, None, other.test, other.num_classes)
    with pytest.raises(ValueError, match="must come from `load_data\\(spec\\)` when `store` is given"):
        train(spec, 0, data=handmade, store=store)
    with pytest.raises(TypeError, match="`data` must be a DataBundle"):
        train(spec, 0, data=(other.train, other.test))
    assert len(store) == 0


def test_non_iid_batches_are_augmented_when_the_spec_says_so():
    """The non-i.i.d. stream ignored `augment`/`pad`/`flip` (Table 4.1's i.i.d. comparator was augmented, the
    non-i.i.d. runs not); its batches are augmented now, under a key apart from the earlier unaugmented runs."""
    from tf_dlthesis.experiments.results_store import config_hash
    from tf_dlthesis.experiments.training import _stream, as_plan, load_data

    spec = TrainSpec(**{**_SMALL, "epochs": 1}, non_iid_classes=2, pad=2)
    bundle = load_data(spec)
    raw = {bytes(np.asarray(im, np.float32).tobytes()) for im in bundle.train[0]}

    def first_batch(s):
        ds, _ = _stream(s, bundle, as_plan(0), None)
        return next(iter(ds))

    images, labels = first_batch(spec)
    plain_images, plain_labels = first_batch(spec.replace(augment=False))
    np.testing.assert_array_equal(labels, plain_labels)  # the same examples, in the same order
    assert all(bytes(im.tobytes()) in raw for im in np.asarray(plain_images))
    moved = [bytes(im.tobytes()) not in raw for im in np.asarray(images)]
    assert sum(moved) > len(moved) // 2  # most crops move the image (pad 2: 24 of 25 offsets)
    np.testing.assert_array_equal(images, first_batch(spec)[0])  # seeded: the same stream again
    legacy = {k: v for k, v in spec.to_config().items() if k != "non_iid_augmented"}
    assert spec.key() != config_hash(legacy) and spec.to_config()["non_iid_augmented"] is True
    assert "non_iid_augmented" not in spec.replace(augment=False).to_config()
    assert TrainSpec.from_config(json.loads(json.dumps(spec.to_config()))) == spec


def test_non_iid_batches_take_an_augment_seed():
    x = np.random.default_rng(0).random((40, 6, 6, 1)).astype(np.float32)
    y = np.arange(40) % 4
    plain = list(data.non_iid_batches((x, y), batch_size=8, classes_per_batch=2, seed=3, num_batches=2))
    aug = list(data.non_iid_batches((x, y), batch_size=8, classes_per_batch=2, seed=3, num_batches=2, augment_seed=5,
                                    pad=1, flip=False))
    for b, ((xp, yp), (xa, ya)) in enumerate(zip(plain, aug)):
        np.testing.assert_array_equal(yp, ya)
        seed = tf.random.experimental.stateless_fold_in(tf.constant([5, 0], tf.int64), tf.constant(b, tf.int64))
        np.testing.assert_array_equal(xa, data.standard_augment(xp, seed=seed, pad=1, flip=False))
        assert not np.array_equal(xa, xp)


def test_snapshot_and_swa_settings_that_cannot_work_are_refused_at_the_spec():
    with pytest.raises(ValueError, match="`epochs` must be a multiple of `snapshots`.*epochs=10, snapshots=3"):
        TrainSpec(epochs=10, snapshots=3)
    with pytest.raises(ValueError, match=r"`swa\['start_epoch'\]` must be < `stop_epoch`"):
        TrainSpec(epochs=10, stop_epoch=5, swa={"mode": "swa", "start_epoch": 8})
    assert TrainSpec(epochs=10, snapshots=5).snapshots == 5


def test_a_run_retrained_to_evaluate_returns_the_retrained_metrics(tmp_path):
    """A run stored without weights is trained again for a new evaluation and replaces its row; the returned Run
    carried the old row's metrics next to an evaluation of the new model."""
    spec = TrainSpec(**{**_SMALL, "epochs": 1})
    store = ResultsStore(tmp_path / "s.sqlite")
    [first] = train(spec, 0, store=store)
    config = {"spec": spec.to_config(), "plan": first.plan.to_config()}
    stale = store.get("runs", config, 0)
    stale["metrics"]["test_accuracy"] = 0.123  # as if stored by another machine's run
    store.record("runs", config, 0, stale)
    [again] = train(spec, 0, store=store, evaluate=lambda ctx: {"n": len(ctx.data.test[1])}, evaluation="probe")
    assert again.metrics["test_accuracy"] == first.metrics["test_accuracy"] != 0.123
    assert store.get("runs", config, 0)["metrics"]["test_accuracy"] == first.metrics["test_accuracy"]
