"""SeedPlan, bit change, stochastic-layer re-seeding, hashes, bit-identical runs (Thesis Sec. 5.3-5.4)."""

import dataclasses

import keras
import numpy as np
import pytest

from tf_dlthesis.variability import SeedPlan, bit_change, order_hash, parse_source, reseed_stochastic_layers, weights_hash

FIELDS = ("init", "shuffle", "augment", "stochastic")


def _values(plan):
    return {f: getattr(plan, f) for f in FIELDS + ("deterministic_ops", "bit_change")}


@pytest.mark.parametrize("source", FIELDS)
def test_vary_changes_only_that_source(source):
    base = SeedPlan(init=1, shuffle=1, augment=1, stochastic=1)
    plans = [base.vary(source, r) for r in range(5)]
    for plan in plans:
        changed = {k for k, v in _values(plan).items() if v != _values(base)[k]}
        assert changed == {source}
    assert len({getattr(p, source) for p in plans}) == 5  # distinct per run
    assert base.vary(source, 3) == plans[3]  # reproducible


def test_combinations_ops_and_bit_change():
    base = SeedPlan()
    ops = base.vary("ops", 0)
    assert ops.deterministic_ops is False and _values(ops)["init"] == base.init
    combo = base.vary("shuffle+augment+ops", 2)
    assert combo.shuffle != base.shuffle and combo.augment != base.augment and not combo.deterministic_ops
    assert combo.init == base.init
    every = base.vary("all", 1)
    assert all(getattr(every, f) != getattr(base, f) for f in FIELDS) and every.bit_change is None
    bit = base.vary("bit_change", 4)
    assert bit.bit_change is not None and {k for k, v in _values(bit).items() if v != _values(base)[k]} == {"bit_change"}
    assert parse_source("all") == ("init", "shuffle", "augment", "stochastic", "ops")


def test_onset_epoch_keeps_base_seeds_before_onset():
    base = SeedPlan(shuffle=7)
    plan = base.vary("shuffle", 1, onset_epoch=3)
    assert [plan.epoch_seed("shuffle", e) == 7 for e in range(5)] == [True, True, True, False, False]
    assert plan.epoch_seed("augment", 0) == base.augment


def test_seed_plan_bad_input():
    with pytest.raises(ValueError, match="Unknown nondeterminism source 'cudnn'"):
        SeedPlan().vary("cudnn", 0)
    with pytest.raises(ValueError, match="run"):
        SeedPlan().vary("init", -1)
    with pytest.raises(ValueError, match="onset_epoch"):
        SeedPlan().vary("init", 0, onset_epoch=2)
    with pytest.raises(TypeError, match=r"`init` must be an int >= 0\. Received: init=1\.5"):
        SeedPlan(init=1.5)
    with pytest.raises(ValueError, match=r"`bit_change` must be an int >= 0\. Received: bit_change=-2"):
        SeedPlan(bit_change=-2)
    with pytest.raises(TypeError, match=r"`run` must be an int >= 0\. Received: run='2'"):
        SeedPlan().vary("init", "2")
    assert SeedPlan(init=np.int64(4), run=np.int32(1)).to_config()["init"] == 4  # NumPy ints stored as Python ints
    with pytest.raises(TypeError, match="source"):
        SeedPlan().vary(3, 0)


def _model(seed=0):
    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, kernel_initializer=init, name="first"),
            keras.layers.Dropout(0.5, seed=1, name="drop"),
            keras.layers.Dense(3, kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1), name="second"),
        ]
    )


def test_bit_change_moves_exactly_one_element_by_one_ulp():
    model = _model()
    before = [w.numpy().copy() for w in model.weights]
    change = bit_change(model, seed=11)
    after = [w.numpy() for w in model.weights]
    kernel_before, kernel_after = before[0], after[0]
    diff = np.argwhere(kernel_before != kernel_after)
    assert diff.shape == (1, 2) and tuple(diff[0]) == change.index
    assert change.layer == "first" and change.variable.endswith("kernel")
    ulps = abs(int(kernel_after.view(np.int32)[change.index]) - int(kernel_before.view(np.int32)[change.index]))
    assert ulps == 1  # adjacent float32 (same sign: one step of the integer representation)
    assert np.float32(change.new) == np.nextafter(np.float32(change.old), np.float32(np.inf * change.direction))
    for b, a in zip(before[1:], after[1:]):
        np.testing.assert_array_equal(a, b)
    other = _model()
    assert bit_change(other, seed=11).index == change.index  # seeded choice
    assert weights_hash(model) != weights_hash(_model())


def test_bit_change_layer_selection_and_errors():
    model = _model()
    assert bit_change(model, seed=0, layer="second").layer == "second"
    with pytest.raises(ValueError, match="No layer named"):
        bit_change(model, seed=0, layer="nope")
    with pytest.raises(TypeError, match="seed"):
        bit_change(model, seed=1.0)
    with pytest.raises(ValueError, match="seed=-1"):
        bit_change(model, seed=-1)
    empty = keras.Sequential([keras.Input((3,)), keras.layers.Flatten()])
    with pytest.raises(ValueError, match="no layer with trainable weights"):
        bit_change(empty, seed=0)


def test_bit_change_takes_bfloat16_weights_and_keeps_the_largest_float_finite():
    layer = keras.layers.Dense(2, dtype="bfloat16")
    model = keras.Sequential([keras.Input((3,)), layer])
    before = np.asarray(layer.kernel.numpy())
    change = bit_change(model, seed=0)
    after = np.asarray(layer.kernel.numpy())
    assert after.dtype == before.dtype and int((after != before).sum()) == 1
    assert after[change.index] == np.nextafter(before[change.index], np.array(np.inf * change.direction, before.dtype))
    biggest = np.finfo(np.float32).max
    for seed in range(12):  # half the seeds draw the upward direction, where the adjacent float is inf
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, kernel_initializer="zeros")])
        model.layers[0].kernel.assign(np.full((1, 1), biggest, np.float32))
        change = bit_change(model, seed=seed)
        assert change.direction == -1 and change.new == float(np.nextafter(biggest, np.float32(0)))
        assert np.isfinite(model.layers[0].kernel.numpy()).all()


def test_seed_none_draws_fresh_entropy_in_bit_change_weight_noise_and_reseeding():
    # `seed=None` means fresh entropy here as everywhere (README, "One vocabulary")
    from tf_dlthesis.variability import WeightNoise

    # 12 draws of (element, direction) among the first kernel's 30 x 2: all alike by chance with probability
    # 60**-11 ~ 3e-20 (6 draws: 60**-5 ~ 1.3e-9, too likely for a CI run)
    changes = set()
    for _ in range(12):
        model = _model()
        before = model.get_weights()
        change = bit_change(model, seed=None)
        changes.add((change.layer, change.index, change.direction))
        moved = [not np.array_equal(a, b) for a, b in zip(model.get_weights(), before)]
        assert sum(moved) == 1  # still exactly one weight moved, and the record names it
        np.testing.assert_array_equal(
            model.get_layer(change.layer).trainable_weights[0].numpy()[change.index], np.float32(change.new))
    assert len(changes) > 1
    assert len({WeightNoise(0.1, seed=None).seed for _ in range(4)}) > 1
    x = np.ones((64, 6), np.float32)
    outs = set()
    for _ in range(4):
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dropout(0.5)])
        assert reseed_stochastic_layers(model, None) == 1
        outs.add(np.asarray(model(x, training=True)).tobytes())
    assert len(outs) > 1


def test_reseed_stochastic_layers_controls_dropout():
    x = np.ones((4, 6), np.float32)

    def masks(seed):
        model = _model()
        assert reseed_stochastic_layers(model, seed) == 1
        return np.asarray(model(x, training=True))

    np.testing.assert_array_equal(masks(5), masks(5))
    assert not np.array_equal(masks(5), masks(6))
    # Dropout state is not part of the initial-weight hash.
    a, b = _model(), _model()
    reseed_stochastic_layers(b, 99)
    assert weights_hash(a) == weights_hash(b)


@keras.saving.register_keras_serializable(package="tests")
class _Block(keras.layers.Layer):  # a custom layer whose dropout is an attribute, not in `.layers`
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.drop = keras.layers.Dropout(0.5, seed=1)

    def call(self, x, training=None):
        return self.drop(x, training=training)


def test_reseed_stochastic_layers_reaches_dropout_inside_custom_layers_and_rnn_cells():
    from tf_dlthesis.variability.seed_plan import derive_seed

    x = np.ones((4, 5, 6), np.float32)

    def model():
        return keras.Sequential([keras.Input((5, 6)), keras.layers.Dropout(0.5, seed=1), _Block(),
                                 keras.layers.LSTM(3, dropout=0.5, return_sequences=True, seed=1,
                                                   kernel_initializer=keras.initializers.GlorotUniform(0),
                                                   recurrent_initializer=keras.initializers.Orthogonal(seed=0))])

    def out(seed):
        m = model()
        assert reseed_stochastic_layers(m, seed) == 3  # before: 1 (the custom layer's and the cell's were missed)
        return m, np.asarray(m(x, training=True))

    (_, a), (_, b), (_, c) = out(5), out(5), out(6)
    np.testing.assert_array_equal(a, b)
    # every generator moves with the stochastic seed (before: the block's and the cell's masks kept their build seed)
    inner = [keras.Sequential([keras.Input((5, 6)), keras.layers.Dropout(0.5, seed=1), _Block()]) for _ in range(2)]
    for m, s in zip(inner, (5, 6)):
        reseed_stochastic_layers(m, s)
    assert not np.array_equal(*(np.asarray(m(x, training=True)) for m in inner))
    assert not np.array_equal(a, c)
    # the generators the first walk finds keep the seeds they had (stored runs stay reproducible)
    fresh = model()
    reseed_stochastic_layers(fresh, 5)
    assert fresh.layers[0].seed_generator.state.numpy().tolist() == [derive_seed(5, 0, 0), 0]


def test_order_hash():
    assert order_hash([0, 1, 2]) == order_hash(np.array([0, 1, 2]))
    assert order_hash([0, 1, 2]) != order_hash([0, 2, 1])


def test_same_plan_is_bit_identical_through_the_training_path():
    from tf_dlthesis.experiments import TrainSpec
    from tf_dlthesis.experiments.chapter5 import protocol_run

    spec = TrainSpec(dataset="digits", model="mlp", model_kwargs={"hidden": 16}, norm="none", epochs=2, batch_size=128)
    plan = dataclasses.replace(SeedPlan().vary("all", 0), deterministic_ops=True)
    first, second = protocol_run(plan, spec=spec), protocol_run(plan, spec=spec)
    np.testing.assert_array_equal(first["logits"], second["logits"])
    assert first["init_hash"] == second["init_hash"] and first["order_hash"] == second["order_hash"]
    assert first["weights_hash"] == second["weights_hash"]
    base, shuffled = protocol_run(SeedPlan(), spec=spec), protocol_run(SeedPlan().vary("shuffle", 0), spec=spec)
    assert shuffled["init_hash"] == base["init_hash"] != first["init_hash"]  # "all" varies init, "shuffle" does not
    assert shuffled["order_hash"] == first["order_hash"] != base["order_hash"]  # both derive the same shuffle seed


def test_redraw_bit_change():
    plan = SeedPlan(init=3).vary("bit_change", 2)
    seeds = [plan.redraw_bit_change(a).bit_change for a in range(4)]
    assert seeds[0] == plan.bit_change and len(set(seeds)) == 4
    assert plan.redraw_bit_change(2) == plan.redraw_bit_change(2)  # derived, reproducible
    assert {k: v for k, v in _values(plan.redraw_bit_change(3)).items() if k != "bit_change"} == \
        {k: v for k, v in _values(plan).items() if k != "bit_change"}
    with pytest.raises(ValueError, match="attempt"):
        plan.redraw_bit_change(-1)
    with pytest.raises(ValueError, match="bit change"):
        SeedPlan().vary("init", 0).redraw_bit_change(1)


def test_seed_plans_from_numpy_seeds_stay_json_able():
    # before: SeedPlan(init=np.int64(3)).to_config() held an np.int64 (json.dumps: "not JSON serializable")
    # and deterministic_ops=np.bool_(False) was refused
    import json

    plan = SeedPlan(init=np.int64(3), shuffle=np.uint32(4), deterministic_ops=np.bool_(False))
    assert json.loads(json.dumps(plan.to_config()))["init"] == 3 and type(plan.init) is int
    assert plan.deterministic_ops is False and plan == SeedPlan(init=3, shuffle=4, deterministic_ops=False)
    assert plan.vary("init", np.int64(1)).run == 1 and type(plan.vary("init", np.int64(1)).run) is int


def test_derive_seed_refuses_fractional_and_negative_parts():
    # before: derive_seed(1.5) silently equalled derive_seed(1);
    # derive_seed(-1) raised NumPy's "expected non-negative integer"
    from tf_dlthesis.variability import derive_seed

    assert derive_seed(np.int64(3), 1) == derive_seed(3, 1)
    with pytest.raises(TypeError, match=r"`derive_seed` takes int seeds. Received: part 1 = 1.5"):
        derive_seed(0, 1.5)
    with pytest.raises(ValueError, match=r"`derive_seed` takes int seeds >= 0. Received: part 0 = -1"):
        derive_seed(-1)
