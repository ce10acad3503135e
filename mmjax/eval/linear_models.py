"""Linear classifiers on frozen features: L2 logistic regression (L-BFGS) and closed-form ridge."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

FEWSHOT_BIAS = 100.0   # ridge's constant bias feature: large, so its weight is barely penalised
STD_EPS = 1e-5         # added to a feature's std before dividing by it

# Full float32 matmuls: the TPU / GPU defaults (bf16 passes, TF32) are too coarse for solvers.
_matmul = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


def standardiser(x):
    """(mean [d], std [d]) of features x [n, d], numpy, std + STD_EPS."""
    x = np.asarray(x, np.float64)
    return np.float32(x.mean(0)), np.float32(x.std(0) + STD_EPS)


def topk_accuracy(scores, labels, k=1) -> float:
    """Fraction of rows whose label is among the k highest of scores [n, classes]."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    top = np.argsort(-scores, axis=-1)[:, :k]
    return float(np.mean((top == labels[:, None]).any(axis=1)))


# --- Logistic regression --------------------------------------------------------------------

def logistic_logits(params, x):
    """[n, classes] logits x [n, d] @ w [d, classes] + b [classes]."""
    return _matmul(x, params["w"]) + params["b"]


def logistic_objective(params, x, labels, weights, l2):
    """Weighted mean cross-entropy + l2 / 2 * ||w||^2 (the bias is not penalised).

    Matches scikit-learn's LogisticRegression(C=1 / (n * l2)) on n unit-weight rows, whose
    objective C * sum(cross-entropy) + ||w||^2 / 2 is this one times C * n."""
    log_probs = jax.nn.log_softmax(logistic_logits(params, x))
    nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]
    return jnp.sum(weights * nll) / jnp.sum(weights) + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iter"))
def fit_logistic(x, labels, weights, l2, *, num_classes, max_iter=300, tol=1e-5):
    """{w [d, classes], b [classes]} minimising `logistic_objective` with full-batch L-BFGS
    (zoom line search) from zeros: at most max_iter steps, fewer once ||grad|| <= tol.

    x [n, d] float32, labels [n] int, weights [n] (0 drops a row: one compiled solver serves
    every subset of the same rows)."""
    objective = functools.partial(logistic_objective, x=x, labels=labels, weights=weights, l2=l2)
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)
    params = {"w": jnp.zeros((x.shape[1], num_classes), x.dtype),
              "b": jnp.zeros((num_classes,), x.dtype)}

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                       value_fn=objective)
        return optax.apply_updates(params, updates), state

    def running(carry):
        _, state = carry
        count, grad = otu.tree_get(state, "count"), otu.tree_get(state, "grad")
        return (count == 0) | ((count < max_iter) & (otu.tree_norm(grad) > tol))

    params, _ = jax.lax.while_loop(running, step, (params, solver.init(params)))
    return params


def row_keys(ids, seed) -> np.ndarray:
    """[n] uint64 pseudo-random keys of example ids [n] (splitmix64 of the id and the seed: an
    int or a tuple of ints): a row's key depends on its id and the seed alone, not on where
    the row sits or which other rows are there, so draws ranked by it neither."""
    base = np.random.SeedSequence(seed).generate_state(1, np.uint64)[0]
    with np.errstate(over="ignore"):
        x = np.asarray(ids).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + base
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def held_out_mask(n, fraction, seed, ids=None):
    """[n] bool: a seeded random `fraction` of n rows (at least one, at most n - 1): those
    with the smallest `row_keys` of their example ids (default: 0 .. n-1)."""
    count = min(max(int(round(fraction * n)), 1), n - 1)
    mask = np.zeros(n, bool)
    keys = row_keys(np.arange(n) if ids is None else ids, seed)
    mask[np.argsort(keys, kind="stable")[:count]] = True
    return mask


def logistic_probe(train_x, train_labels, test_x, *, num_classes, l2_grid, val_fraction=0.2,
                   seed=0, max_iter=300, train_ids=None):
    """(test logits [m, classes], chosen l2, {l2: held-out top-1}) of logistic regression.

    Features are standardised with the mean / std of all train_x [n, d]. Each l2 of l2_grid is
    fitted on the train rows outside a seeded held-out `val_fraction` (drawn by the rows'
    example ids `train_ids`, default 0 .. n-1) and scored on it; the best (ties: the
    stronger l2) is refitted on every train row and applied to test_x [m, d]."""
    mean, std = standardiser(train_x)
    x = jnp.asarray((np.asarray(train_x, np.float32) - mean) / std)
    labels = jnp.asarray(train_labels, jnp.int32)
    held = held_out_mask(len(train_labels), val_fraction, seed, train_ids)
    fit = functools.partial(fit_logistic, x, labels, num_classes=num_classes, max_iter=max_iter)
    val_top1 = {}
    for l2 in sorted(l2_grid, reverse=True):
        params = fit(jnp.asarray(~held, jnp.float32), jnp.float32(l2))
        val_top1[l2] = topk_accuracy(logistic_logits(params, x[held]), train_labels[held])
    best = max(val_top1, key=val_top1.get)   # first of the ties: the strongest l2
    params = fit(jnp.ones(len(train_labels), jnp.float32), jnp.float32(best))
    test_x = jnp.asarray((np.asarray(test_x, np.float32) - mean) / std)
    return np.asarray(logistic_logits(params, test_x)), best, val_top1


# --- Ridge regression and few-shot ----------------------------------------------------------

def ridge_fit(x, targets, l2):
    """w [d, c] = argmin ||x w - targets||^2 + l2 ||w||^2 in closed form, x [n, d],
    targets [n, c]: (x^T x + l2 I)^-1 x^T targets, or x^T (x x^T + l2 I)^-1 targets when n < d."""
    n, d = x.shape
    if n >= d:
        gram = _matmul(x.T, x) + l2 * jnp.eye(d, dtype=x.dtype)
        return jax.scipy.linalg.solve(gram, _matmul(x.T, targets), assume_a="pos")
    gram = _matmul(x, x.T) + l2 * jnp.eye(n, dtype=x.dtype)
    return _matmul(x.T, jax.scipy.linalg.solve(gram, targets, assume_a="pos"))


@functools.partial(jax.jit, static_argnames=("num_classes",))
def ridge_classifier_top1(train_x, train_labels, test_x, test_labels, l2, *, num_classes):
    """Top-1 on test_x [m, d] of ridge regression from train_x [n, d] to one-hot targets in
    {-1, 1}, big_vision's few-shot protocol: features standardised with the train rows'
    mean / std, plus a constant feature FEWSHOT_BIAS standing in for an unpenalised bias."""
    mean, std = train_x.mean(0), train_x.std(0) + STD_EPS

    def features(x):
        x = (x - mean) / std
        return jnp.pad(x, ((0, 0), (0, 1)), constant_values=FEWSHOT_BIAS)

    targets = 2.0 * jax.nn.one_hot(train_labels, num_classes) - 1.0
    w = ridge_fit(features(train_x), targets, l2)
    predicted = jnp.argmax(_matmul(features(test_x), w), axis=-1)
    return jnp.mean(predicted == test_labels)


def fewshot_indices(labels, shots, seed, ids=None):
    """Indices of `shots` rows per class of labels [n] (all of a class with fewer): a class's
    rows with the smallest `row_keys` of their example ids (default 0 .. n-1) and `seed`, so
    the same seed gives nested samples for growing shots and the same examples in any row
    order. Classes ascending; a class's rows in key order."""
    labels = np.asarray(labels)
    keys = row_keys(np.arange(len(labels)) if ids is None else ids, seed)
    picks = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        picks.append(rows[np.argsort(keys[rows], kind="stable")[:shots]])
    return np.concatenate(picks)


def fewshot_top1(train_x, train_labels, test_x, test_labels, *, shots, seeds, l2, num_classes,
                 train_ids=None):
    """{k: top-1 of few-shot ridge on test_x averaged over seeds} for each k of shots; each
    seed of `seeds` (ints or tuples of ints) samples its own k per class (`fewshot_indices`
    by the train rows' example ids `train_ids`, default 0 .. n-1)."""
    solve = jax.vmap(functools.partial(ridge_classifier_top1, num_classes=num_classes),
                     in_axes=(0, 0, None, None, None))
    train_x, train_labels = np.asarray(train_x, np.float32), np.asarray(train_labels)
    test_x, test_labels = jnp.asarray(test_x, jnp.float32), jnp.asarray(test_labels, jnp.int32)
    out = {}
    for k in shots:
        picks = np.stack([fewshot_indices(train_labels, k, seed, train_ids)
                          for seed in seeds])   # [S, k*C]
        accuracies = solve(jnp.asarray(train_x[picks]), jnp.asarray(train_labels[picks], jnp.int32),
                           test_x, test_labels, jnp.float32(l2))
        out[k] = float(np.mean(accuracies))
    return out
