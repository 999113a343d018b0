"""White-box / black-box evaluation, logit statistics and an attack sanity report (thesis Ch. 3)."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from tf_dlthesis._checks import check_int
from tf_dlthesis._seeds import check_int_seed, fresh_seed
from tf_dlthesis.data._arrays import check_labels, read_labelled

from . import attacks as _attacks

#: Columns of thesis Tables 3.1/3.3/3.5.
WHITE_BOX_ATTACKS = ("natural", "fgsm", "pgd5", "pgd10", "pgd20")
#: Columns of thesis Table 3.6.
STRONG_ATTACKS = ("pgd20", "pgd1000", "spsa")
_EVAL_EXPERIMENT = "robustness/per_example"
#: Machine epsilon of the low-precision output dtypes (``sanity_report``'s probability-output check).
_LOW_PRECISION_EPS = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}


def _columns(attacks):
    """``{column name: spec}`` (an attack name, :class:`~.attacks.Attack` or user function) from any ``attacks``."""
    if isinstance(attacks, (str, _attacks.Attack)):
        attacks = (attacks,)
    if isinstance(attacks, dict):
        return dict(attacks)
    try:
        attacks = list(attacks)
    except TypeError:
        raise TypeError("`attacks` must be an attack name, an Attack, or a list or dict of them. "
                        f"Received: attacks={attacks!r}") from None
    columns = {}
    for a in attacks:
        if not isinstance(a, (str, _attacks.Attack)):
            raise TypeError("`attacks` given as a list must hold attack names or Attack objects (pass user "
                            f"functions in a dict {{column: fn}}). Received: {a!r}")
        name = a.name if isinstance(a, _attacks.Attack) else a
        if name in columns and columns[name] != a:  # one would silently replace the other's column
            raise ValueError(f"`attacks` holds two different attacks named {name!r} ({columns[name]!r} and {a!r}); "
                             "each would fill the same column. Pass a dict {column name: attack} with distinct "
                             f"names. Received: attacks={attacks!r}")
        columns[name] = a
    return columns


def _build(spec, epsilon, step_size, clip_range, spsa_params):
    """The attack of one column: ``spec`` itself if callable, else ``make_attack`` with the settings its kind uses.

    The step size goes to PGD only and ``spsa_params`` to SPSA only (an
    Attack refuses settings its kind does not use); the column's store key
    (`_store_config`) still holds this call's shared settings, as before.
    """
    if callable(spec):  # an Attack (reused as is) or a user function fn(model, x, y, seed)
        return spec
    return _attacks.make_attack(spec, epsilon=epsilon, step_size=step_size if _attacks._is_pgd_name(spec) else None,
                                clip_range=clip_range, spsa_params=spsa_params if spec == "spsa" else None)


def _check_step_size(step_size):
    """The shared PGD step size of the named columns: ``None`` or a finite number >= 0, checked whatever the columns."""
    if step_size is not None:
        _attacks._check_float("step_size", step_size, minimum=0.0)


def _resolve_attacks(attacks, epsilon, step_size, clip_range, spsa_params):
    """``{column name: attack callable}`` from names, :class:`~.attacks.Attack` objects or a dict of either."""
    _check_step_size(step_size)
    return {name: _build(spec, epsilon, step_size, clip_range, spsa_params) for name, spec in _columns(attacks).items()}


def _store_config(column, spec, n, epsilon, step_size, clip_range, spsa_params):
    """The store key of one column: the attack's full settings, never the column's name.

    An attack name is keyed by the name and this call's settings, an
    :class:`~.attacks.Attack` by its own; a user function by its
    ``get_config()`` (without one its results cannot be told apart from
    another function's, so storing them is refused).
    """
    if isinstance(spec, str):  # built from this call's settings
        step = None if step_size is None else float(step_size)  # None: FGSM / natural columns need no step
        return {"attack": spec, "epsilon": float(epsilon), "step_size": step,
                "clip_range": list(clip_range) if clip_range else None, "sample": n,
                "spsa": dict(spsa_params or {}) if spec == "spsa" else None}
    if isinstance(spec, _attacks.Attack):
        cfg = {"attack": spec.name, "epsilon": spec.epsilon, "step_size": spec.step_size,
               "clip_range": list(spec.clip_range) if spec.clip_range else None, "sample": n,
               "spsa": dict(spec.spsa_params) if spec.kind == "spsa" else None}
        if spec.kind == "pgd" and not spec.random_start:
            cfg["random_start"] = False
        return cfg
    if not callable(getattr(spec, "get_config", None)):
        raise ValueError(f"With `store`, a user attack function needs a `get_config()` returning its settings (the "
                         f"store key of its results), or use an Attack from make_attack. Received: {column!r}: {spec!r}")
    return {"attack": "custom", "config": spec.get_config(), "sample": n}


def _check_batch_size(batch_size):
    return check_int("batch_size", batch_size, 1)


def _model_width(model, x):
    """The model's number of logits: from Keras's output shape, else one forward pass on one example."""
    width = _attacks._num_classes(model)
    if width is None:
        width = int(np.asarray(_attacks.inference_fn(model)(tf.constant(x[:1]))).shape[-1])
    return width


def _check_label_range(model, x, y, width=None):
    """Raise if any label is outside ``[0, C - 1]`` (or one-hot labels are not ``C`` wide), ``C`` the model's logits."""
    check_labels(y, _model_width(model, x), width)


def _checked_data(model, dataset, max_examples, batch_size):
    """``(x, y)`` arrays, checked once at the API boundary: non-empty, labels within the model's logits."""
    _check_model(model, "model")
    batch_size = _check_batch_size(batch_size)
    x, y, width = read_labelled(dataset, max_examples)
    _check_label_range(model, x, y, width)
    return x, y, width, batch_size


def _check_model(model, what):
    if not callable(model):
        raise TypeError(f"`{what}` must be a Keras model (a callable returning logits). "
                        f"Received: {what} of type {type(model).__name__}")


def _check_models(models, what):
    if not isinstance(models, dict) or not models:
        raise TypeError(f"`{what}` must be a non-empty dict {{name: model}}. Received: {what}={models!r:.200}")
    for name, model in models.items():
        _check_model(model, f"{what}[{name!r}]")


def _base_seed(seed):
    """An int base seed: ``seed`` itself, or fresh entropy drawn once when it is ``None``."""
    seed = check_int_seed(seed, "seed")
    return fresh_seed() if seed is None else seed


def _predict(model, x, batch_size):
    fn = _attacks.inference_fn(model)
    return np.concatenate([np.asarray(fn(tf.constant(x[i:i + batch_size]))) for i in range(0, len(x), batch_size)])


def per_example_correct(model, x, y, attack, *, batch_size=128, seed=0, store=None, store_key=None,
                        store_config=None, progress=None):
    """Per-example correctness (bool array) of ``model`` on ``attack(model, x, y, seed)``.

    Batch ``b`` is attacked with the stateless seed ``[seed, b]``; ``seed=None``
    draws a fresh base seed once per call.  ``x`` and ``y`` take the forms of
    :func:`tf_dlthesis.data.as_arrays` (labels sparse ``(N,)``, a ``(N, 1)``
    column or one-hot ``(N, K)``, compared with the predictions as class ids).
    With ``store`` (a ``ResultsStore``) each batch's result is recorded under
    ``("robustness/per_example", {model: store_key, **store_config}, batch_index)``
    and batches already recorded are skipped, so an interrupted long evaluation
    (PGD-1000, SPSA) resumes where it stopped.  Without ``store_config`` the key
    holds the attack's own settings (an :class:`~.attacks.Attack`'s, or a user
    function's ``get_config()``), so two attacks never share stored results.

    Raises:
        TypeError / ValueError: a seed that is not an int >= 0 or None, ``batch_size < 1``,
            an ``attack`` that is not callable, labels outside the model's logits,
            ``store`` without ``store_key``, or ``store`` without ``store_config``
            for a user function that has no ``get_config()``.
    """
    out = []
    seed = _base_seed(seed)
    batch_size = _check_batch_size(batch_size)
    if not callable(attack):
        raise TypeError(f"`attack` must be callable as attack(model, x, y, seed) (e.g. from make_attack). "
                        f"Received: attack={attack!r}")
    if store is not None and not store_key:
        raise ValueError(f"`store_key` (a name for the model) is required with `store`. Received: store_key={store_key!r}")
    if len(x) == 0:
        return np.zeros([0], bool)
    x, y, width = read_labelled((x, y))  # sparse int64 labels: `pred == y` is per example for any label form
    _check_label_range(model, x, y, width)
    if store is not None and store_config is None:
        store_config = _store_config("attack", attack, int(len(x)), None, None, None, None)
    for b, i in enumerate(range(0, len(x), batch_size)):
        cfg = None
        if store is not None:
            cfg = {"model": store_key, "n": int(len(x)), "batch_size": int(batch_size), "seed": seed,
                   **(store_config or {})}
            hit = store.get(_EVAL_EXPERIMENT, cfg, b)
            if hit is not None:
                out.append(np.asarray(hit["correct"], bool))
                continue
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        adv = attack(model, tf.constant(xb), tf.constant(yb), tf.constant([seed, b], tf.int64))
        pred = np.asarray(_attacks.inference_fn(model)(adv)).argmax(-1)
        correct = pred == yb
        if store is not None:
            store.record(_EVAL_EXPERIMENT, cfg, b, {"correct": correct.astype(np.int8)})
        out.append(correct)
        if progress is not None:
            progress(b)
    return np.concatenate(out) if out else np.zeros([0], bool)


def evaluate_white_box(model, dataset, attacks=WHITE_BOX_ATTACKS, *, epsilon: float = 0.03,
                       step_size: float = 0.0078, clip_range=(0.0, 1.0), batch_size: int = 128, seed: int = 0,
                       max_examples: int | None = None, sample: dict | None = None, spsa_params: dict | None = None,
                       store=None, store_key: str | None = None, return_details: bool = False):
    """White-box accuracy of ``model`` under each attack (a row of thesis Tables 3.1/3.3/3.5/3.6).

    Example:
        >>> evaluate_white_box(model, (x_test, y_test), ["natural", "fgsm", "pgd10"], epsilon=0.03)
        {'natural': 0.87, 'fgsm': 0.06, 'pgd10': 0.0}

    Args:
        model: Keras model returning logits (or ``RobustModel``).
        dataset: ``(x, y)`` arrays or a ``tf.data.Dataset`` of ``(image, label)``.
        attacks: names from ``ATTACK_NAMES`` / ``"pgd<N>"``, :class:`Attack`
            objects (from ``make_attack``; their own settings are used), or a
            dict column name -> name, ``Attack`` or ``fn(model, x, y, seed)``.
            The compiled attack functions live on ``model``, so repeated calls
            on the same model and input shape do not retrace.
        epsilon, step_size, clip_range: attack settings for named attacks
            (thesis: 0.03, 0.0078); each named attack gets those it uses
            (the step size goes to PGD columns only).
        batch_size: attack batch size.
        seed: base seed (batch b uses ``[seed, b]``); ``None`` draws fresh
            entropy once per call.
        max_examples: evaluate the first N examples only.
        sample: ``{attack_name: n}`` evaluates that attack on a fixed random
            subsample of n examples (SPSA on 1,000 images in the thesis).
        spsa_params: passed to :func:`tf_dlthesis.robustness.spsa` for the
            columns named ``"spsa"`` (refused when there is none).
        store, store_key: record per-example results (resumable); ``store_key``
            names the model and is required with ``store``.  Each column's
            results are keyed by its attack's settings (an ``Attack``'s own, a
            name's with this call's settings, a user function's
            ``get_config()``), never by the column's name.
        return_details: also return per-example correctness arrays.

    Returns:
        ``{attack: accuracy in [0, 1]}`` (and ``{attack: bool array}`` if
        ``return_details``).

    Raises:
        ValueError: unknown attack, ``store`` without ``store_key``, an empty
            ``dataset``, labels outside the model's logits (checked once, up
            front, on the arrays read from ``dataset``), ``batch_size < 1``,
            ``sample`` sizes < 1, images outside an attack's clip range, a user
            attack function without ``get_config()`` when ``store`` is given,
            a ``step_size`` that is not a finite number >= 0 (or None),
            ``spsa_params`` without an ``"spsa"`` column.

    Reference:
        Thesis Sec. 3.5, Tables 3.1, 3.3, 3.5, 3.6.
    """
    if store is not None and not store_key:
        raise ValueError(f"`store_key` (a name for the model) is required with `store`. Received: store_key={store_key!r}")
    seed = _base_seed(seed)
    x, y, _, batch_size = _checked_data(model, dataset, max_examples, batch_size)
    specs = _columns(attacks)
    if spsa_params is not None and not any(isinstance(spec, str) and spec == "spsa" for spec in specs.values()):
        raise ValueError(f"`spsa_params` are the settings of the named 'spsa' attack, and `attacks` has no 'spsa' "
                         f"column (an Attack column keeps its own settings). Received: spsa_params={spsa_params!r}, "
                         f"attacks={list(specs.values())!r}")
    fns = _resolve_attacks(specs, epsilon, step_size, clip_range, spsa_params)
    sample = dict(sample or {})
    unknown = set(sample) - set(fns)
    if unknown:
        raise ValueError(f"`sample` names attacks not evaluated: {sorted(unknown)}")
    for name, n in sample.items():
        check_int(f"sample[{name!r}]", n, 1, why="an empty sample has no accuracy")
    sizes = {name: min(int(sample.get(name, len(x))), len(x)) for name in fns}
    configs = {name: _store_config(name, specs[name], sizes[name], epsilon, step_size, clip_range, spsa_params)
               for name in fns} if store is not None else {}
    acc, details = {}, {}
    for name, fn in fns.items():
        xs, ys = x, y
        if sizes[name] < len(x):
            idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:sizes[name]])
            xs, ys = x[idx], y[idx]
        cfg = configs.get(name)
        correct = per_example_correct(model, xs, ys, fn, batch_size=batch_size, seed=seed, store=store,
                                      store_key=store_key, store_config=cfg)
        acc[name] = float(correct.mean()) if len(correct) else float("nan")
        details[name] = correct
    return (acc, details) if return_details else acc


def black_box_matrix(models: dict, dataset, attack: str = "pgd10", *, targets: dict | None = None,
                     epsilon: float = 0.03, step_size: float = 0.0078, clip_range=(0.0, 1.0),
                     batch_size: int = 128, seed: int = 0, max_examples: int | None = None):
    """Black-box transfer accuracy: adversarial examples from each source, evaluated on each target.

    Example:
        >>> black_box_matrix({"pgd": m1, "alp": m2}, (x, y), targets={"pgd": t1, "alp": t2})

    Args:
        models: ``{name: source model}``.
        dataset: ``(x, y)`` or ``tf.data.Dataset``.
        attack: attack name (or :class:`Attack`) used on the sources (thesis: PGD-10).
        targets: ``{name: target model}``; defaults to ``models`` (the thesis
            uses independently trained targets, see Table 3.2).
        epsilon, step_size, clip_range, batch_size, seed, max_examples: as in
            :func:`evaluate_white_box`.

    Returns:
        ``{target: {source: accuracy}}`` (rows = targets, columns = sources, as
        in thesis Tables 3.2/3.4).

    Raises:
        TypeError: ``models`` or ``targets`` not a non-empty dict of models.
        ValueError: an unknown attack, an empty ``dataset``, labels outside the
            logits of any source or target model, ``batch_size < 1``.
    """
    _check_models(models, "models")
    targets = models if targets is None else targets
    _check_models(targets, "targets")
    seed = _base_seed(seed)
    x, y, width, batch_size = _checked_data(next(iter(models.values())), dataset, max_examples, batch_size)
    for model in (*models.values(), *targets.values()):  # every source and target, not just the first
        _check_label_range(model, x, y, width)
    fn = next(iter(_resolve_attacks((attack,), epsilon, step_size, clip_range, None).values()))
    table = {t: {} for t in targets}
    for s_name, source in models.items():
        advs = [np.asarray(fn(source, tf.constant(x[i:i + batch_size]), tf.constant(y[i:i + batch_size]),
                              tf.constant([seed, b], tf.int64)))
                for b, i in enumerate(range(0, len(x), batch_size))]
        adv = np.concatenate(advs)
        for t_name, target in targets.items():
            table[t_name][s_name] = float((_predict(target, adv, batch_size).argmax(-1) == y).mean())
    return table


def logit_statistics(model, dataset, *, bins: int = 60, value_range=None, attack: str | None = None,
                     epsilon: float = 0.03, step_size: float = 0.0078, clip_range=(0.0, 1.0),
                     batch_size: int = 256, seed: int = 0, max_examples: int | None = None):
    """Statistics of the logits on a test set (thesis Figs. 3.1 left, 3.2 right).

    Args:
        model: model returning logits.
        dataset: ``(x, y)`` or ``tf.data.Dataset``.
        bins, value_range: histogram settings (``value_range`` defaults to the data range).
        attack: optional attack name (or :class:`Attack`); statistics are then on
            adversarial examples (Fig. 3.2 bottom right uses PGD).
        epsilon, step_size, clip_range, batch_size, seed, max_examples: attack / data
            settings (``seed=None``: fresh entropy once per call).

    Returns:
        dict with ``variance`` (of all N*C logits; thesis: 8.31 PGD vs 4.02 ALP),
        ``mean``, ``std``, ``dynamic_range`` (max - min logit; thesis: ~20 vs ~1.2
        with label smoothing 0.75), ``central_range`` (99.5th - 0.5th percentile),
        ``histogram`` (counts) and ``bin_edges``, ``logits`` (N, C).

    Raises:
        ValueError: ``bins < 1``, a ``value_range`` that is not ``(min, max)``
            with ``min < max``, an empty ``dataset``, labels outside the
            model's logits (with ``attack``), ``batch_size < 1``.
    """
    check_int("bins", bins, 1, why="the number of histogram bins")
    if value_range is not None:
        try:
            lo, hi = (float(v) for v in value_range)
        except (TypeError, ValueError):
            raise ValueError(f"`value_range` must be None or a pair (min, max). "
                             f"Received: value_range={value_range!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"`value_range` must satisfy min < max (finite). Received: value_range={value_range!r}")
    x, y, _, batch_size = _checked_data(model, dataset, max_examples, batch_size)
    if attack is not None and attack != "natural":
        seed = _base_seed(seed)
        fn = next(iter(_resolve_attacks((attack,), epsilon, step_size, clip_range, None).values()))
        x = np.concatenate([np.asarray(fn(model, tf.constant(x[i:i + batch_size]), tf.constant(y[i:i + batch_size]),
                                          tf.constant([seed, b], tf.int64)))
                            for b, i in enumerate(range(0, len(x), batch_size))])
    logits = _predict(model, x, batch_size)
    flat = logits.reshape(-1).astype(np.float64)
    counts, edges = np.histogram(flat, bins=bins, range=value_range)
    lo, hi = np.percentile(flat, [0.5, 99.5])
    return {"variance": float(flat.var()), "mean": float(flat.mean()), "std": float(flat.std()),
            "dynamic_range": float(flat.max() - flat.min()), "central_range": float(hi - lo),
            "histogram": counts, "bin_edges": edges, "logits": logits}


@dataclasses.dataclass
class SanityCheck:
    """One check of :func:`sanity_report`."""

    name: str
    passed: bool
    detail: str


@dataclasses.dataclass
class SanityReport:
    """Result of :func:`sanity_report`: the checks, the accuracies they used and other details.

    ``details`` holds ``distinct_predicted_classes`` (how many classes the
    model's argmax predictions on the clean evaluated examples cover),
    ``num_classes`` (logit width) and ``classes_in_labels`` (distinct true
    labels among the evaluated examples).
    """

    checks: list
    accuracies: dict
    details: dict = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def distinct_predicted_classes(self):
        """Number of distinct argmax predictions on the clean evaluated examples (``None`` if not computed)."""
        return self.details.get("distinct_predicted_classes")

    def __str__(self):
        lines = [f"[{'ok' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


def sanity_report(model, dataset, *, epsilon: float = 0.03, step_size: float = 0.0078, clip_range=(0.0, 1.0),
                  epsilons=None, large_epsilon: float | None = None, large_epsilon_max_accuracy: float = 0.05,
                  transfer_source=None, spsa_params: dict | None = None, tolerance: float = 0.02,
                  max_examples: int = 256, batch_size: int = 128, seed: int = 0) -> SanityReport:
    """Sanity checks on an attack evaluation, in the spirit of Carlini et al. 2019.

    Checks: the model outputs logits, not probabilities; the model has not
    collapsed (``"not_collapsed"``: its argmax predictions on the clean evaluated
    examples cover at least half of the classes, counting the classes present
    among their labels when those are fewer than the logits; a model that
    predicts one class for every input sits at chance accuracy and makes every
    robustness number meaningless); iterative PGD-10 is at
    least as strong as FGSM; more PGD steps are never weaker (5 -> 10 -> 20);
    PGD success grows with epsilon and reaches ~100% (accuracy <=
    ``large_epsilon_max_accuracy``) at a large epsilon (default: half the
    clip range); the gradient-free SPSA attack (if ``spsa_params`` is given) and a
    transfer attack from ``transfer_source`` (if given) are not stronger than
    white-box PGD.  Each comparison allows ``tolerance`` (accuracy units).

    Example:
        >>> report = sanity_report(model, (x_test, y_test), epsilon=0.03, step_size=0.0078)
        >>> print(report); report.distinct_predicted_classes

    Args:
        model: Keras model returning logits.
        dataset: ``(x, y)`` arrays or a ``tf.data.Dataset``.
        epsilon, step_size, clip_range: the evaluated attack's settings
            (``epsilon > 0``; ``clip_range=None`` needs ``large_epsilon``).
        epsilons: the epsilon sweep (default ``epsilon * [1/2, 1, 2, 4]``), run and
            checked in increasing order whatever order it is given in.
        large_epsilon, large_epsilon_max_accuracy: the full-success check.
        transfer_source: optional source model for the transfer check.
        spsa_params: run the SPSA check with these :func:`spsa` settings.
        tolerance: slack of each comparison (accuracy units).
        max_examples, batch_size: evaluated examples and attack batch size.
        seed: base seed (``None``: fresh entropy once per call).

    Returns:
        :class:`SanityReport` (``report.passed``, ``str(report)``,
        ``report.details["distinct_predicted_classes"]``).

    Raises:
        ValueError: ``epsilon`` not > 0 (the sweep and step sizes are
            multiples of it), an invalid ``clip_range``, ``clip_range=None``
            without ``large_epsilon`` (its default is half the clip range),
            and the errors of :func:`evaluate_white_box`.
        TypeError: a non-numeric ``epsilon`` or a ``clip_range`` that is not a pair.

    Reference:
        Carlini et al., "On Evaluating Adversarial Robustness", https://arxiv.org/abs/1902.06705.
    """
    if _attacks._check_float("epsilon", epsilon, minimum=0.0) == 0:
        raise ValueError("`epsilon` must be > 0: the epsilon sweep and the step sizes are multiples of it. "
                         f"Received: epsilon={epsilon!r}")
    _attacks._check_float("step_size", step_size, minimum=0.0)  # the PGD step (min(step, eps) below)
    _attacks._check_clip_range(clip_range)
    if large_epsilon is None:
        if clip_range is None:
            raise ValueError("`large_epsilon` is required with clip_range=None (its default is half the clip "
                             "range). Received: clip_range=None, large_epsilon=None")
        lo, hi = clip_range
        large_epsilon = (hi - lo) / 2
    seed = _base_seed(seed)
    x, y, _, batch_size = _checked_data(model, dataset, max_examples, batch_size)
    if epsilons is None:
        epsilons = [epsilon / 2, epsilon, 2 * epsilon, 4 * epsilon]
    # checked in increasing order, whatever order they are given in
    epsilons = sorted(_attacks._check_float("epsilons", e, minimum=0.0) for e in epsilons)
    checks = []
    logits = _predict(model, x, batch_size)
    probs = logits[:batch_size].astype(np.float64)
    # rows of float16 / bfloat16 probabilities (a softmax head under mixed precision) sum to 1 only
    # within their rounding (bfloat16 rows are off by up to ~0.004, beyond the 1e-3 that suits float32)
    atol = max(1e-3, 2 * _LOW_PRECISION_EPS.get(logits.dtype.name, 0.0))
    is_prob = bool(np.all(probs >= 0) and np.all(probs <= 1) and np.allclose(probs.sum(-1), 1.0, atol=atol))
    checks.append(SanityCheck("outputs_logits", not is_prob,
                              "model outputs probabilities (rows in [0,1] summing to 1): return logits, softmax "
                              "saturation masks gradients" if is_prob else "outputs are not a probability simplex"))
    num_classes = int(logits.shape[-1])
    in_labels = int(len(np.unique(y)))
    distinct = int(len(np.unique(logits.argmax(-1)))) if len(logits) else 0
    reference = min(num_classes, in_labels) if in_labels else num_classes
    details = {"distinct_predicted_classes": distinct, "num_classes": num_classes, "classes_in_labels": in_labels}
    collapsed = distinct < reference / 2
    checks.append(SanityCheck(
        "not_collapsed", not collapsed,
        f"predictions cover {distinct} of {reference} classes"
        + (" (fewer than half: the model has collapsed; its accuracies are not evidence of robustness)"
           if collapsed else "")))

    def acc(name, eps=epsilon, step=step_size, model_=model, params=None):
        res = evaluate_white_box(model_, (x, y), (name,), epsilon=eps, step_size=min(step, eps),
                                 clip_range=clip_range, batch_size=batch_size, seed=seed, spsa_params=params)
        return res[name]

    a = {n: acc(n) for n in ("natural", "fgsm", "pgd5", "pgd10", "pgd20")}
    checks.append(SanityCheck("iterative_beats_single_step", a["pgd10"] <= a["fgsm"] + tolerance,
                              f"PGD-10 {a['pgd10']:.3f} vs FGSM {a['fgsm']:.3f}"))
    checks.append(SanityCheck("more_steps_not_weaker",
                              a["pgd10"] <= a["pgd5"] + tolerance and a["pgd20"] <= a["pgd10"] + tolerance,
                              f"PGD-5/10/20 {a['pgd5']:.3f}/{a['pgd10']:.3f}/{a['pgd20']:.3f}"))
    sweep = [acc("pgd10", e, max(step_size * e / epsilon, e / 4)) for e in epsilons]
    mono = all(b <= c + tolerance for c, b in zip(sweep, sweep[1:]))
    checks.append(SanityCheck("success_grows_with_epsilon", mono,
                              "PGD-10 accuracy at eps " + ", ".join(f"{e:.3g}: {v:.3f}" for e, v in zip(epsilons, sweep))))
    big = acc("pgd20", large_epsilon, large_epsilon / 8)
    a[f"pgd20@{large_epsilon:.3g}"] = big
    checks.append(SanityCheck("large_epsilon_reaches_full_success", big <= large_epsilon_max_accuracy,
                              f"PGD-20 accuracy {big:.3f} at eps {large_epsilon:.3g} (want <= {large_epsilon_max_accuracy})"))
    if spsa_params is not None:
        a["spsa"] = acc("spsa", params=spsa_params)
        checks.append(SanityCheck("gradient_free_not_stronger", a["spsa"] >= a["pgd20"] - tolerance,
                                  f"SPSA {a['spsa']:.3f} vs PGD-20 {a['pgd20']:.3f} (lower SPSA suggests gradient masking)"))
    if transfer_source is not None:
        t = black_box_matrix({"source": transfer_source}, (x, y), "pgd10", targets={"target": model},
                             epsilon=epsilon, step_size=step_size, clip_range=clip_range, batch_size=batch_size,
                             seed=seed)["target"]["source"]
        a["transfer_pgd10"] = t
        checks.append(SanityCheck("transfer_not_stronger", t >= a["pgd10"] - tolerance,
                                  f"transfer PGD-10 {t:.3f} vs white-box PGD-10 {a['pgd10']:.3f}"))
    for e, v in zip(epsilons, sweep):
        a[f"pgd10@{e:.3g}"] = v
    return SanityReport(checks, a, details)

