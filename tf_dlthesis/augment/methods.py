"""The 17 mixing methods of Thesis Sec. 2.3 as plans over the one mask abstraction.

Each method is a small function ``plan(seed, x1, x2, params) -> MixPlan`` (see
`_masks.py`): it only decides the per-element weight of x1, the label weight and,
for BC+ and the region methods, a scale or a re-indexing of x2. The BC+ family
(``center=True``) gets the zero-meaned inputs and their per-image statistics
(`mix.PairStats`, computed once per image) as a fifth argument. Mixing itself, the
batch/pair/dataset/layer front ends and validation are shared.

Per-element randomness (Random Rows/Columns/Pixels/Elements, Noisy Mixup, Random 2x2 cells) comes
from `_masks.random_words`: a Philox key per pair and a fused integer hash per
element, far cheaper on CPU than one Philox draw per element.

Reference: Thesis Sec. 2.3 (Eqs. 2.2-2.7); C. Summers and M. J. Dinneen, "Improved
Mixed-Example Data Augmentation", WACV 2019, https://arxiv.org/abs/1805.11272.
"""

from __future__ import annotations

import difflib
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Callable

import tensorflow as tf

from tf_dlthesis.augment import _masks as M
from tf_dlthesis.augment._beta import sample_beta

METHODS = (
    "mixup", "bc", "bc_plus", "vertical_concat", "horizontal_concat", "mixed_concat",
    "random_2x2", "vh_mixup", "vh_bc_plus", "random_square", "random_column_interval",
    "random_row_interval", "random_rows", "random_columns", "random_pixels",
    "random_elements", "noisy_mixup",
)

#: Names used in the thesis's tables (Tables 2.1-2.3) and Figure 2.2.
DISPLAY_NAMES = {
    "baseline": "Baseline (no mixing)", "mixup": "mixup", "bc": "BC", "bc_plus": "BC+",
    "vertical_concat": "Vert. Concat.", "horizontal_concat": "Horiz. Concat.",
    "mixed_concat": "Mixed Concat.", "random_2x2": "Rand. 2x2", "vh_mixup": "VH-Mixup",
    "vh_bc_plus": "VH-BC+", "random_square": "Rand. Square",
    "random_column_interval": "Rand. Col. Int.", "random_row_interval": "Rand. Row Int.",
    "random_rows": "Rand. Rows", "random_columns": "Rand. Cols",
    "random_pixels": "Rand. Pixels", "random_elements": "Rand. Elems.",
    "noisy_mixup": "Noisy Mixup",
}

_ALIASES = {"bcplus": "bc_plus", "bc+": "bc_plus", "vh_bcplus": "vh_bc_plus",
            "vh_bc+": "vh_bc_plus", "random_cols": "random_columns", "rand_2x2": "random_2x2",
            "vert_concat": "vertical_concat", "horiz_concat": "horizontal_concat",
            "random_elems": "random_elements"}


def _real(v):
    """`v` as a Python float when it is a real number (NumPy scalars included, bools
    excluded), else None."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    return float(v)


def _check_alpha(v):
    f = _real(v)
    if f is None or not 0.0 < f < float("inf"):
        raise ValueError(f"`alpha` (Beta(alpha, alpha) concentration) must be a positive "
                         f"finite number. Received: alpha={v!r}")
    return f


def _check_std_floor(v, name="std_floor"):
    f = _real(v)
    if f is None or not 0.0 < f < float("inf"):
        raise ValueError(f"`{name}` (BC+ / VH-BC+: constant added to each per-image standard "
                         f"deviation sigma, so sigma = 0 cannot divide by zero) must be a finite "
                         f"number > 0. Received: {name}={v!r}")
    return f


def _check_epsilon(v):
    """Deprecated spelling of `std_floor` (validated the same way; `resolve` renames it)."""
    return _check_std_floor(v, "epsilon")


def _check_p(v):
    f = _real(v)
    if f is None or not 0.0 < f <= 1.0:
        raise ValueError(f"`p` (Random 2x2: fraction of each axis the grid lines may fall in) "
                         f"must be in (0, 1]. Received: p={v!r}")
    return f


def _check_size(v):
    # NumPy scalars are accepted as Python ints / floats (an int is pixels, a float a fraction).
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        v = int(v)
    elif _real(v) is not None:
        v = float(v)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 or (
            isinstance(v, float) and v > 1.0):
        raise ValueError(f"`size` (Random Square side) must be an int number of pixels >= 1 or "
                         f"a float fraction of min(H, W) in (0, 1]. Received: size={v!r}")
    return v


def _check_source(v):
    if v not in ("random", "same"):
        raise ValueError(f"`source` must be 'same' (x2's region at the same position as the "
                         f"replaced region of x1) or 'random' (x2's region drawn at a random "
                         f"position). Received: source={v!r}")
    return v


def _check_noise_std(v):
    f = _real(v)
    if f is None or not 0.0 <= f < float("inf"):
        raise ValueError(f"`noise_std` must be a finite number >= 0. Received: noise_std={v!r}")
    return f


def _check_noisy_label(v):
    if v not in ("lambda", "realised"):
        raise ValueError(f"`noisy_label` must be 'lambda' or 'realised'. "
                         f"Received: noisy_label={v!r}")
    return v


_PARAM_CHECKS = {"alpha": _check_alpha, "std_floor": _check_std_floor, "p": _check_p,
                 "size": _check_size, "source": _check_source, "noise_std": _check_noise_std,
                 "noisy_label": _check_noisy_label,
                 "epsilon": _check_epsilon}    # deprecated alias of std_floor (one release)
#: Deprecated parameter name -> current name.
_RENAMED_PARAMS = {"epsilon": "std_floor"}


@dataclass(frozen=True)
class _Method:
    name: str
    plan: Callable
    defaults: dict = field(default_factory=dict)
    # Zero-mean each input image first (BC+ family); the plan is then called as
    # plan(seed, x1 - mean1, x2 - mean2, params, stats) with `mix.PairStats`.
    center: bool = False
    row_col: bool = False         # needs PairStats.row_col (VH-BC+)


_REGISTRY: dict[str, _Method] = {}


def _register(name, defaults, center=False, row_col=False):
    def wrap(fn):
        _REGISTRY[name] = _Method(name, fn, dict(defaults), center, row_col)
        return fn
    return wrap


def _dims(x):
    shape = tf.shape(x)
    static = x.shape
    return tuple(static[i] if static[i] is not None else shape[i] for i in range(4))


def _split(seed, n):
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=n, alg="philox"), num=n)


def _beta(seed, b, alpha):
    return sample_beta(seed, [b], alpha)


def _cut(lam, n):
    """floor(lam * n) as int32 in [0, n] (Eq. 2.5/2.6)."""
    return tf.minimum(tf.cast(tf.floor(lam * M.as_float(n)), tf.int32), tf.cast(n, tf.int32))


def _frac(mask):
    """Mean of a (B, H, 1, 1) row or (B, 1, W, 1) column mask: the label of a mask
    built from row/column factors follows from these (exactly the realised fraction)
    without reducing the full (B, H, W, 1) weight."""
    return M.mean_per_pair(mask)


def _vertical(seed, b, h, alpha):
    return M.cut_mask(_cut(_beta(seed, b, alpha), h), h)          # (B, H)


def _horizontal(seed, b, w, alpha):
    return M.cut_mask(_cut(_beta(seed, b, alpha), w), w)          # (B, W)


def _bc_plus_p(lam, sigma1, sigma2):
    """Eq. 2.4: p = 1 / (1 + sigma1/sigma2 * (1 - lam)/lam), written without division by lam."""
    num = lam * sigma2
    return num / (num + (1.0 - lam) * sigma1)


def _bc_scale(p):
    return tf.math.rsqrt(p * p + (1.0 - p) * (1.0 - p))


# --- linearity-based methods (Sec. 2.3.2) -----------------------------------------

@_register("mixup", {"alpha": 1.0})
def _mixup(seed, x1, x2, params):
    b = _dims(x1)[0]
    lam = _beta(seed, b, params["alpha"])
    return M.MixPlan(weight=M.per_pair(lam), label=lam)


_register("bc", {"alpha": 1.0})(_mixup)


@_register("bc_plus", {"alpha": 1.0, "std_floor": 1e-3}, center=True)
def _bc_plus(seed, x1, x2, params, stats):
    b = _dims(x1)[0]
    lam = _beta(seed, b, params["alpha"])
    floor = params["std_floor"]
    # sigma of the (centred) inputs = the per-image std computed once in `mix_pairs`, plus
    # the additive guard `std_floor` (sigma1 = sigma2 = 0 would make Eq. 2.4 0/0).
    p = _bc_plus_p(lam, stats.std1 + floor, stats.std2 + floor)
    return M.MixPlan(weight=M.per_pair(p), label=lam, scale=_bc_scale(p))


# --- non-linear methods (Sec. 2.3.3) -----------------------------------------------

@_register("vertical_concat", {"alpha": 1.0})
def _vertical_concat(seed, x1, x2, params):
    b, h, _, _ = _dims(x1)
    return M.MixPlan(weight=M.rows(_vertical(seed, b, h, params["alpha"])))


@_register("horizontal_concat", {"alpha": 1.0})
def _horizontal_concat(seed, x1, x2, params):
    b, _, w, _ = _dims(x1)
    return M.MixPlan(weight=M.cols(_horizontal(seed, b, w, params["alpha"])))


@_register("mixed_concat", {"alpha": 1.0})
def _mixed_concat(seed, x1, x2, params):
    b, h, w, _ = _dims(x1)
    s1, s2 = _split(seed, 2)
    top = M.rows(_vertical(s1, b, h, params["alpha"]))
    left = M.cols(_horizontal(s2, b, w, params["alpha"]))
    # top-left and bottom-right from x1.
    fa, fc = _frac(top), _frac(left)
    return M.MixPlan(weight=top * left + (1.0 - top) * (1.0 - left),
                     label=fa * fc + (1.0 - fa) * (1.0 - fc))


@_register("random_2x2", {"alpha": 1.0, "p": 0.5})
def _random_2x2(seed, x1, x2, params):
    b, h, w, _ = _dims(x1)
    s1, s2, s3, s4 = _split(seed, 4)
    p, alpha = params["p"], params["alpha"]

    def constrained_cut(s, n):
        # Sec. 2.3.3: the grid lines fall in the middle p of the axis: a line after row
        # (column) k for k in [lo, n - lo], lo = round((1 - p) / 2 * n), both ends included,
        # so the range is symmetric under flipping the image (k <-> n - k).
        lo = tf.cast(tf.round((1.0 - p) / 2.0 * M.as_float(n)), tf.int32)
        last = tf.maximum(tf.cast(n, tf.int32) - 2 * lo, 0)  # k - lo runs over 0..last
        return lo + tf.minimum(_cut(_beta(s, b, alpha), last + 1), last)

    top = M.rows(M.cut_mask(constrained_cut(s1, h), h))
    left = M.cols(M.cut_mask(constrained_cut(s2, w), w))
    q = _beta(s3, b, alpha)                           # per-pair P(cell from x1)
    cells = M.bernoulli(s4, tf.stack([b, 4]), q)      # TL, TR, BL, BR
    c = [M.per_pair(cells[:, k]) for k in range(4)]
    weight = (c[0] * top * left + c[1] * top * (1.0 - left)
              + c[2] * (1.0 - top) * left + c[3] * (1.0 - top) * (1.0 - left))
    fa, fc = _frac(top), _frac(left)
    label = (cells[:, 0] * fa * fc + cells[:, 1] * fa * (1.0 - fc)
             + cells[:, 2] * (1.0 - fa) * fc + cells[:, 3] * (1.0 - fa) * (1.0 - fc))
    return M.MixPlan(weight=weight, label=label)


@_register("vh_mixup", {"alpha": 1.0})
def _vh_mixup(seed, x1, x2, params):
    b, h, w, _ = _dims(x1)
    s1, s2, s3 = _split(seed, 3)
    top = M.rows(_vertical(s1, b, h, params["alpha"]))
    left = M.cols(_horizontal(s2, b, w, params["alpha"]))
    lam3 = _beta(s3, b, params["alpha"])
    # Eq. 2.7: mixup (weight lam3) of Vertical Concat. and Horizontal Concat.
    return M.MixPlan(weight=M.per_pair(lam3) * top + M.per_pair(1.0 - lam3) * left,
                     label=lam3 * _frac(top) + (1.0 - lam3) * _frac(left))


@_register("vh_bc_plus", {"alpha": 1.0, "std_floor": 1e-3}, center=True, row_col=True)
def _vh_bc_plus(seed, x1, x2, params, stats):
    # x1, x2 arrive zero-meaned: the thesis centres *before* concatenating.
    b, h, w, c = _dims(x1)
    s1, s2, s3 = _split(seed, 3)
    top = _vertical(s1, b, h, params["alpha"])            # (B, H)
    left = _horizontal(s2, b, w, params["alpha"])         # (B, W)
    lam3 = _beta(s3, b, params["alpha"])
    # sigma of Vertical Concat.(x1, x2) and Horizontal Concat.(x1, x2): every row
    # (column) of the concatenation is a row (column) of x1 or of x2, so its sums of
    # values and squares are the selected inputs' row (column) sums; the inputs'
    # sums are computed once per image (`PairStats.row_col`) instead of materializing
    # both concatenations.
    (r1, rq1, c1, cq1), (r2, rq2, c2, cq2) = stats.row_col
    n = M.as_float(h * w * c)
    floor = params["std_floor"]

    def concat_std(mask, s1_, q1_, s2_, q2_):
        total = tf.reduce_sum(mask * s1_ + (1.0 - mask) * s2_, axis=1) / n
        total_sq = tf.reduce_sum(mask * q1_ + (1.0 - mask) * q2_, axis=1) / n
        return tf.sqrt(tf.maximum(total_sq - tf.square(total), 0.0)) + floor

    p = _bc_plus_p(lam3, concat_std(top, r1, rq1, r2, rq2), concat_std(left, c1, cq1, c2, cq2))
    pp = M.per_pair(p)
    top, left = M.rows(top), M.cols(left)
    label = lam3 * _frac(top) + (1.0 - lam3) * _frac(left)
    return M.MixPlan(weight=pp * top + (1.0 - pp) * left, label=label, scale=_bc_scale(p))


def _source_start(seed, n, length, source):
    if source == "same":
        return None
    return M.uniform_int(seed, tf.zeros_like(length), tf.cast(n, tf.int32) - length)


@_register("random_square", {"size": 0.5, "source": "random"})
def _random_square(seed, x1, x2, params):
    b, h, w, _ = _dims(x1)
    s_r, s_c, s_sr, s_sc = _split(seed, 4)
    size = params["size"]
    if isinstance(size, float):
        side = tf.maximum(tf.cast(tf.round(size * M.as_float(tf.minimum(h, w))), tf.int32), 1)
    else:
        side = tf.constant(size, tf.int32)
    zeros = tf.zeros(tf.stack([b]), tf.int32)

    def span(s, n):
        centre = M.uniform_int(s, zeros, tf.cast(n, tf.int32) - 1)
        start = centre - side // 2
        return tf.maximum(start, 0), tf.minimum(start + side, tf.cast(n, tf.int32))

    r1, r2 = span(s_r, h)
    c1, c2 = span(s_c, w)
    in_rows, in_cols = M.rows(M.interval_mask(r1, r2, h)), M.cols(M.interval_mask(c1, c2, w))
    plan = M.MixPlan(weight=1.0 - in_rows * in_cols, label=1.0 - _frac(in_rows) * _frac(in_cols))
    sr = _source_start(s_sr, h, r2 - r1, params["source"])
    if sr is not None:
        sc = _source_start(s_sc, w, c2 - c1, params["source"])
        plan = plan._replace(source_rows=M.shifted_source(r1, r2, h, sr),
                             source_cols=M.shifted_source(c1, c2, w, sc))
    return plan


def _interval(seed, b, n, source):
    s1, s2, s3 = _split(seed, 3)
    zeros = tf.zeros(tf.stack([b]), tf.int32)
    n = tf.cast(n, tf.int32)
    low = M.uniform_int(s1, zeros, n - 1)                  # lower bound uniform
    high = M.uniform_int(s2, low + 1, n + zeros)           # upper bound uniform over the rest
    mask = 1.0 - M.interval_mask(low, high, n)
    start = _source_start(s3, n, high - low, source)
    index = None if start is None else M.shifted_source(low, high, n, start)
    return mask, index


# Random Row/Column Interval (Sec. 2.3.3) are presented as generalizations of the
# vertical/horizontal concatenations, where x2's rows/columns stay in place; the thesis
# states a randomly placed x2 region only for Random Square.  So the interval methods
# default to the same-position region (source="same"); source="random" takes x2's
# interval of the same length from a uniformly random position instead.
@_register("random_column_interval", {"source": "same"})
def _random_column_interval(seed, x1, x2, params):
    b, _, w, _ = _dims(x1)
    mask, index = _interval(seed, b, w, params["source"])
    return M.MixPlan(weight=M.cols(mask), source_cols=index)


@_register("random_row_interval", {"source": "same"})
def _random_row_interval(seed, x1, x2, params):
    b, h, _, _ = _dims(x1)
    mask, index = _interval(seed, b, h, params["source"])
    return M.MixPlan(weight=M.rows(mask), source_rows=index)


def _random_mask(seed, x1, alpha, which):
    b, h, w, c = _dims(x1)
    s1, s2 = _split(seed, 2)
    q = _beta(s1, b, alpha)
    shape = {"rows": [b, h, 1, 1], "columns": [b, 1, w, 1], "pixels": [b, h, w, 1],
             "elements": [b, h, w, c]}[which]
    return M.MixPlan(weight=M.bernoulli(s2, tf.stack(shape), q))


@_register("random_rows", {"alpha": 1.0})
def _random_rows(seed, x1, x2, params):
    return _random_mask(seed, x1, params["alpha"], "rows")


@_register("random_columns", {"alpha": 1.0})
def _random_columns(seed, x1, x2, params):
    return _random_mask(seed, x1, params["alpha"], "columns")


@_register("random_pixels", {"alpha": 1.0})
def _random_pixels(seed, x1, x2, params):
    return _random_mask(seed, x1, params["alpha"], "pixels")


@_register("random_elements", {"alpha": 1.0})
def _random_elements(seed, x1, x2, params):
    return _random_mask(seed, x1, params["alpha"], "elements")


@_register("noisy_mixup", {"alpha": 1.0, "noise_std": 0.025, "noisy_label": "lambda"})
def _noisy_mixup(seed, x1, x2, params):
    b, h, w, _ = _dims(x1)
    s1, s2 = _split(seed, 2)
    lam = _beta(s1, b, params["alpha"])
    noise = M.word_normal(s2, tf.stack([b, h, w, 1]))    # N(0, 1) per pixel
    weight = tf.clip_by_value(M.per_pair(lam) + params["noise_std"] * noise, 0.0, 1.0)
    label = lam if params["noisy_label"] == "lambda" else None
    return M.MixPlan(weight=weight, label=label)


def canonical_name(name) -> str:
    """Normalise a method name ('VH-Mixup' -> 'vh_mixup'); ValueError with a suggestion."""
    if not isinstance(name, str):
        raise TypeError(f"A mixing method must be a string, one of {METHODS}. "
                        f"Received: method={name!r} of type {type(name).__name__}")
    key = name.strip().lower().replace("-", "_").replace(" ", "_").replace("×", "x")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, METHODS, n=1, cutoff=0.4)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown mixing method {name!r}.{hint} Known methods: {METHODS}")
    return key


def resolve(method, params: dict):
    """Validate `method` (name or list of names) and `params`.

    The deprecated parameter name `epsilon` (BC+'s guard on sigma) is accepted for one
    release as `std_floor`, with a `DeprecationWarning`.

    Returns:
        (names tuple, {name: full params dict}) with each method's defaults filled in.
    """
    if isinstance(method, (list, tuple)):
        if not method:
            raise ValueError("`method` list is empty; give at least one of " f"{METHODS}.")
        names = tuple(canonical_name(m) for m in method)
    else:
        names = (canonical_name(method),)
    # A hyperparameter of any method is accepted (and ignored by methods without it), so
    # one call can loop over methods; a name no method knows is a TypeError.
    unknown = sorted(set(params) - set(_PARAM_CHECKS))
    if unknown:
        raise TypeError(f"Unexpected parameter(s) {unknown} for method(s) {list(names)}; "
                        f"accepted: {sorted(set(_PARAM_CHECKS) - set(_RENAMED_PARAMS))}.")
    checked = {k: _PARAM_CHECKS[k](v) for k, v in params.items()}
    for old, new in _RENAMED_PARAMS.items():
        if old in checked:
            value = checked.pop(old)
            warnings.warn(f"`{old}` is deprecated and will be removed in the next release; use `{new}` "
                          f"instead (it is the BC+ guard on sigma, not an attack radius). "
                          f"Received: {old}={value!r}", DeprecationWarning, stacklevel=3)
            if new in checked and checked[new] != value:
                raise ValueError(f"Pass either `{new}` or the deprecated `{old}`, not both. "
                                 f"Received: {new}={checked[new]!r}, {old}={value!r}")
            checked[new] = value
    full = {n: {k: checked.get(k, d) for k, d in _REGISTRY[n].defaults.items()} for n in names}
    return names, full


def default_params(method: str) -> dict:
    """The default hyperparameters of one method (a copy).

    The thesis's, except where it leaves one open: Noisy Mixup's ``noise_std=0.025``
    is the authors' released code's (the text's "sigma^2 ... sqrt(0.025)" is
    ambiguous), and the interval methods' ``source="same"`` is this library's
    reading (the released code takes x2's rows / columns from a random position:
    ``source="random"``).
    """
    return dict(_REGISTRY[canonical_name(method)].defaults)


def get_method(name: str) -> _Method:
    return _REGISTRY[canonical_name(name)]
