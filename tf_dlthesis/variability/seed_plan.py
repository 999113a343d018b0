"""Per-source seed control for the nondeterminism protocol (Thesis Sec. 5.3.1).

The protocol gives each source of nondeterminism its own seed S_i and varies one
source (or a set of sources) over R runs while every other seed stays constant:

========== ==========================================================
source     what it seeds / switches
========== ==========================================================
init       parameter initialization (every initializer of the model)
shuffle    the per-epoch order of the training data
augment    data augmentation (per example and epoch)
stochastic stochastic ops inside the model (dropout, noise layers)
ops        low-level op nondeterminism (cuDNN / TF kernels): cannot be
           seeded, only switched off (``deterministic_ops=True``, the
           "deterministic value") or on
bit_change one first-layer weight moved to the adjacent float32 after
           initialization (Sec. 5.4.1): the instability probe
========== ==========================================================

``"all"`` varies init, shuffle, augment, stochastic and ops together ("All
Nondeterminism Sources"); combinations are joined with ``+``
(``"shuffle+augment+ops"``). ``onset_epoch`` (Fig. 5.2) keeps the base seeds of the
varied per-epoch sources for the first ``onset_epoch`` epochs, so runs train
identically until then.

Reference: Thesis Ch. 5, Sec. 5.3.1 and 5.3.4; arXiv:2103.04514.
"""

from __future__ import annotations

import dataclasses
import hashlib
import operator
from typing import Iterable

import numpy as np

from tf_dlthesis._checks import check_bool, check_int
from tf_dlthesis._seeds import check_int_seed, fresh_seed

SOURCES = ("init", "shuffle", "augment", "stochastic", "ops", "bit_change")
SEEDED_SOURCES = ("init", "shuffle", "augment", "stochastic")
ALL_SOURCES = ("init", "shuffle", "augment", "stochastic", "ops")
_PER_EPOCH_SOURCES = ("shuffle", "augment", "stochastic")


def parse_source(source: str) -> tuple[str, ...]:
    """Splits a source name (``"init"``, ``"shuffle+ops"``, ``"all"``) into sources.

    Raises:
        TypeError: if `source` is not a string.
        ValueError: for an unknown or empty source name.
    """
    if not isinstance(source, str):
        raise TypeError(f"`source` must be a string such as 'init' or 'shuffle+ops'. Received: {source!r}")
    parts = [p.strip() for p in source.split("+")]
    out: list[str] = []
    for part in parts:
        if part == "all":
            out.extend(ALL_SOURCES)
        elif part in SOURCES:
            out.append(part)
        else:
            raise ValueError(
                f"Unknown nondeterminism source {part!r} in source={source!r}. "
                f"Expected one of {SOURCES + ('all',)} or a '+'-joined combination."
            )
    return tuple(dict.fromkeys(out))


def derive_seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from a tuple of non-negative ints (NumPy SeedSequence).

    Raises:
        TypeError: for a part that is not an integer (a float such as 1.5 would
            silently stand for another seed).
        ValueError: for a negative part.
    """
    ints = []
    for i, p in enumerate(parts):
        try:
            value = operator.index(p)
        except TypeError:
            raise TypeError(f"`derive_seed` takes int seeds. Received: part {i} = {p!r}") from None
        if value < 0:
            raise ValueError(f"`derive_seed` takes int seeds >= 0. Received: part {i} = {p!r}")
        ints.append(value)
    return int(np.random.SeedSequence(ints).generate_state(1, np.uint32)[0] & 0x7FFFFFFF)


@dataclasses.dataclass(frozen=True)
class SeedPlan:
    """One seed per source of nondeterminism for one training run.

    Example:

    >>> base = SeedPlan(init=1, shuffle=1, augment=1, stochastic=1)
    >>> plan = base.vary("init", run=3)
    >>> plan.shuffle == base.shuffle and plan.init != base.init
    True

    Attributes:
        init: Seed of parameter initialization.
        shuffle: Seed of the per-epoch data order.
        augment: Seed of data augmentation.
        stochastic: Seed of stochastic layers (dropout).
        deterministic_ops: Whether op determinism is on (the "deterministic
            value" of the unseedable low-level source).
        bit_change: `None`, or the seed choosing which first-layer weight moves
            by one ULP and in which direction (`bit_change`).
        onset_epoch: Epoch from which the varied per-epoch seeds take effect
            (Fig. 5.2); before it `base`'s seeds are used.
        base: The unvaried plan (set by `vary`), or `None`.
        source: Name of the varied source (`"none"` for a base plan).
        run: Run index within the source.
    """

    init: int = 0
    shuffle: int = 0
    augment: int = 0
    stochastic: int = 0
    deterministic_ops: bool = True
    bit_change: int | None = None
    onset_epoch: int = 0
    base: "SeedPlan | None" = None
    source: str = "none"
    run: int = 0

    def __post_init__(self):
        # NumPy ints / bools are stored as Python ones, so `to_config` stays JSON-able
        for name in SEEDED_SOURCES:
            object.__setattr__(self, name, check_int_seed(getattr(self, name), name, allow_none=False))
        object.__setattr__(self, "deterministic_ops", check_bool("deterministic_ops", self.deterministic_ops))
        if self.bit_change is not None:
            object.__setattr__(self, "bit_change", check_int_seed(self.bit_change, "bit_change", allow_none=False))
        object.__setattr__(self, "onset_epoch", check_int("onset_epoch", self.onset_epoch, 0))
        object.__setattr__(self, "run", check_int("run", self.run, 0))

    def vary(self, source: str, run: int, *, onset_epoch: int = 0) -> "SeedPlan":
        """The plan of run `run` when varying `source` (all other seeds fixed).

        Varied seeds are derived from (this plan's seed, source, run), so run r of
        one source never reuses the base seed or another run's seed.

        Args:
            source: A source name, `"all"`, or a `+`-joined combination.
            run: Run index, >= 0.
            onset_epoch: First epoch at which the per-epoch sources differ
                (Fig. 5.2). Only valid when every varied source is per-epoch
                (shuffle, augment, stochastic).

        Raises:
            ValueError: for an unknown source, a negative run, or an onset on a
                source that acts before training (init, bit_change, ops).
        """
        names = parse_source(source)
        run = check_int("run", run, 0)
        onset_epoch = check_int("onset_epoch", onset_epoch, 0)
        if onset_epoch and any(n not in _PER_EPOCH_SOURCES for n in names):
            raise ValueError(
                f"`onset_epoch` applies only to per-epoch sources {_PER_EPOCH_SOURCES}. "
                f"Received: source={source!r}, onset_epoch={onset_epoch}"
            )
        changes: dict = {}
        for name in names:
            if name in SEEDED_SOURCES:
                changes[name] = derive_seed(getattr(self, name), SOURCES.index(name), run)
            elif name == "ops":
                changes["deterministic_ops"] = False
            elif name == "bit_change":
                changes["bit_change"] = derive_seed(self.init, SOURCES.index("bit_change"), run)
        return dataclasses.replace(self, **changes, onset_epoch=onset_epoch, base=self, source=source, run=run)

    def redraw_bit_change(self, attempt: int) -> "SeedPlan":
        """The plan with another bit position: draw `attempt` of this run's bit change.

        Draw 0 is the bit change `vary("bit_change", run)` gives; draw k > 0 uses a
        seed derived from (init seed, source, run, k), so a bit change that had no
        effect (the run stayed bit-identical to the unperturbed control) is replaced
        by a fresh, recorded position (`run_protocol` does this).

        Raises:
            ValueError: if the plan has no bit change or `attempt` < 0.
        """
        if self.bit_change is None:
            raise ValueError(f"Only a plan with a bit change can redraw it. Received a plan of source {self.source!r}.")
        attempt = check_int("attempt", attempt, 0)
        init = self.init if self.base is None else self.base.init
        parts = (init, SOURCES.index("bit_change"), self.run) + ((attempt,) if attempt else ())
        return dataclasses.replace(self, bit_change=derive_seed(*parts))

    def epoch_seed(self, source: str, epoch: int) -> int:
        """The seed of a per-epoch source in force at `epoch` (honours `onset_epoch`)."""
        if source not in _PER_EPOCH_SOURCES:
            raise ValueError(f"`source` must be one of {_PER_EPOCH_SOURCES}. Received: source={source!r}")
        epoch = check_int("epoch", epoch, 0)
        if self.base is not None and epoch < self.onset_epoch:
            return getattr(self.base, source)
        return getattr(self, source)

    def to_config(self) -> dict:
        """A JSON-able description (the base plan flattened to its seeds)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "base"}
        if self.base is not None:
            out["base"] = {n: getattr(self.base, n) for n in SEEDED_SOURCES}
        return out


def weights_hash(weights: Iterable) -> str:
    """SHA-256 of a model's weights (a `keras.Model` or a list of arrays), in order.

    Used by the protocol to verify that unvaried sources stayed fixed: runs that
    do not vary `init` (or `bit_change`) must share the hash of their initial
    weights.
    """
    if hasattr(weights, "weights"):
        weights = [w.numpy() if hasattr(w, "numpy") else w for w in weights.weights]
    h = hashlib.sha256()
    for w in weights:
        arr = np.ascontiguousarray(np.asarray(w))
        h.update(str((arr.dtype.str, arr.shape)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def order_hash(indices) -> str:
    """SHA-256 of a data order (e.g. the concatenated per-epoch permutations)."""
    arr = np.ascontiguousarray(np.asarray(indices, dtype=np.int64))
    return hashlib.sha256(arr.tobytes()).hexdigest()


def reseed_stochastic_layers(model, seed: int) -> int:
    """Re-seeds every Keras `SeedGenerator` held by the model's layers (dropout, noise), nested ones included.

    `tf_dlthesis.models.build(seed=...)` derives initializer and dropout seeds from
    one seed; this decouples the "stochastic" source from "init". `seed=None` draws
    fresh entropy.

    Returns:
        The number of seed generators re-seeded.
    """
    import keras

    seed = check_int_seed(seed, "seed")
    if seed is None:  # fresh entropy, as everywhere
        seed = fresh_seed()
    layers = _all_layers(model)
    # then the sublayers Keras tracks outside `.layers` (an LSTM's cell, a custom layer's attributes),
    # numbered after the others so the seeds of models without them stay as they were
    known = {id(layer) for layer in layers}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if id(layer) not in known:
            known.add(id(layer))
            layers.append(layer)
    count = 0
    for i, layer in enumerate(layers):
        for attr in sorted(vars(layer)):
            gen = getattr(layer, attr, None)
            if isinstance(gen, keras.random.SeedGenerator):
                gen.state.assign(np.asarray([derive_seed(seed, i, count), 0], dtype=gen.state.dtype))
                count += 1
    return count


def _all_layers(model):
    out = []
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        out.append(layer)
        stack[:0] = list(getattr(layer, "layers", []) or [])
    return out
