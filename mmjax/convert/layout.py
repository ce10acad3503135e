"""Mapping tables between mmjax's flat parameter names and a reference's, and the layer layout.

A table is a list of `Rule`s: one mmjax name <-> one or more reference tensors, with a numpy
function each way. Tables are written for the canonical mmjax layout (unrolled
`encoder/layers_{i}`, fused `attn/qkv_*`); `canonical` / `model_layout` convert from / to
the layout a config asks for (`model.scan` stacks layers, `model.fused_qkv=False` splits q/k/v).
"""

from typing import Callable, NamedTuple

import numpy as np

_LAYER = "/encoder/layers/"


class Rule(NamedTuple):
    mm: str                         # flat mmjax name, e.g. "text/encoder/layers_0/ln1/scale"
    ref: tuple                      # the reference's tensor names
    to_ref: Callable                # mmjax array -> tuple of reference arrays (one per name)
    to_mm: Callable                 # reference arrays (one per name) -> mmjax array


def same(mm, ref):
    return Rule(mm, (ref,), lambda x: (x,), lambda x: x)


def linear(mm, ref, bias=True):
    """Dense kernel [in, out] <-> torch Linear weight [out, in] (+ bias)."""
    rules = [Rule(f"{mm}/kernel", (f"{ref}.weight",), lambda x: (x.T,), lambda w: w.T)]
    return rules + [same(f"{mm}/bias", f"{ref}.bias")] if bias else rules


def norm(mm, ref):
    """flax LayerNorm scale/bias <-> torch LayerNorm weight/bias."""
    return [same(f"{mm}/scale", f"{ref}.weight"), same(f"{mm}/bias", f"{ref}.bias")]


def attention_out(mm, ref, heads):
    """out_kernel [h, d, e] / out_bias <-> torch Linear [e, (h d)] / bias."""
    def to_mm(w):
        return w.T.reshape(heads, -1, w.shape[0])
    return [Rule(f"{mm}/out_kernel", (f"{ref}.weight",), lambda x: (x.reshape(-1, x.shape[-1]).T,), to_mm),
            same(f"{mm}/out_bias", f"{ref}.bias")]


def flatten(tree, prefix=""):
    """{'a/b/c': array} of a nested dict of arrays."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {k: v for key, sub in tree.items()
            for k, v in flatten(sub, f"{prefix}/{key}" if prefix else key).items()}


def unflatten(flat):
    tree = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def canonical(flat):
    """Unrolled layers (`layers_{i}`) and fused q/k/v, whatever layout `flat` has."""
    out = {}
    for name, x in flat.items():
        if _LAYER in name:
            head, tail = name.split(_LAYER)
            for i in range(x.shape[0]):
                out[f"{head}/encoder/layers_{i}/{tail}"] = x[i]
        else:
            out[name] = x
    # self-attention only: cross-attention's k / v read a context of its own width (cross_attn/{q,k,v}_*)
    for name in [n for n in out if n.endswith(("/attn/q_kernel", "/attn/q_bias"))]:
        base, kind = name.rsplit("/", 1)[0] + "/", name.rsplit("_", 1)[1]
        parts = [out.pop(f"{base}{t}_{kind}") for t in "qkv"]
        out[f"{base}qkv_{kind}"] = np.stack(parts, axis=1 if kind == "kernel" else 0)
    return out


def model_layout(flat, model_config):
    """The layout `model_config` builds (`scan`, `fused_qkv`) of canonical `flat` params."""
    out = dict(flat)
    if not model_config.fused_qkv:
        for name in [n for n in out if n.endswith("attn/qkv_kernel") or n.endswith("attn/qkv_bias")]:
            base, kind = name.rsplit("/", 1)[0] + "/", name.rsplit("_", 1)[1]
            x = out.pop(name)
            for i, t in enumerate("qkv"):
                out[f"{base}{t}_{kind}"] = x[:, i] if kind == "kernel" else x[i]
    if model_config.scan:
        stacked = {}
        for name in sorted(out):
            if "/encoder/layers_" in name:
                head, rest = name.split("/encoder/layers_")
                index, tail = rest.split("/", 1)
                stacked.setdefault(f"{head}{_LAYER}{tail}", {})[int(index)] = out.pop(name)
        for name, layers in stacked.items():
            out[name] = np.stack([layers[i] for i in range(len(layers))])
    return out


def to_reference(rules, flat):
    """Reference tensors from canonical mmjax params; every mmjax name must have a rule."""
    unmapped = sorted(set(flat) - {r.mm for r in rules})
    if unmapped:
        raise ValueError(f"no mapping for mmjax parameters: {', '.join(unmapped)}")
    out = {}
    for rule in rules:
        out.update(zip(rule.ref, rule.to_ref(np.asarray(flat[rule.mm]))))
    return out


def from_reference(rules, tensors, ignored=()):
    """(canonical mmjax params, names of rules whose tensors are absent) from reference tensors.

    A tensor that no rule reads and that is not in `ignored` is an error: it would be dropped."""
    used = {name for rule in rules for name in rule.ref}
    unknown = sorted(set(tensors) - used - set(ignored))
    if unknown:
        raise ValueError(f"reference tensors with no mmjax counterpart: {', '.join(unknown)}")
    out, missing = {}, []
    for rule in rules:
        if all(name in tensors for name in rule.ref):
            out[rule.mm] = rule.to_mm(*(np.asarray(tensors[name]) for name in rule.ref))
        else:
            missing.append(rule.mm)
    return out, missing


def check_shapes(flat, expected):
    """Raises naming every parameter whose shape differs from `expected` (name -> shape)."""
    bad = [f"{n}: {tuple(np.shape(flat[n]))} vs {tuple(expected[n])} expected"
           for n in sorted(flat) if n in expected and tuple(np.shape(flat[n])) != tuple(expected[n])]
    if bad:
        raise ValueError("converted parameters do not fit the model: " + "; ".join(bad))


def qkv_fused(mm, ref, heads):
    """qkv_kernel [e, 3, h, d] / qkv_bias [3, h, d] <-> torch MultiheadAttention
    in_proj_weight [(3 h d), e] / in_proj_bias [(3 h d)]."""
    def kernel_to_mm(w):
        return w.reshape(3, heads, -1, w.shape[-1]).transpose(3, 0, 1, 2)
    return [Rule(f"{mm}/qkv_kernel", (f"{ref}_weight",),
                 lambda x: (x.transpose(1, 2, 3, 0).reshape(-1, x.shape[0]),), kernel_to_mm),
            Rule(f"{mm}/qkv_bias", (f"{ref}_bias",), lambda x: (x.reshape(-1),),
                 lambda b: b.reshape(3, heads, -1))]


def qkv_separate(mm, refs, heads):
    """qkv_kernel [e, 3, h, d] / qkv_bias [3, h, d] <-> three torch Linear layers `refs` (q, k, v)."""
    def kernel_to_mm(*ws):
        return np.stack([w.T.reshape(w.shape[1], heads, -1) for w in ws], axis=1)
    return [Rule(f"{mm}/qkv_kernel", tuple(f"{r}.weight" for r in refs),
                 lambda x: tuple(x[:, i].reshape(x.shape[0], -1).T for i in range(3)), kernel_to_mm),
            Rule(f"{mm}/qkv_bias", tuple(f"{r}.bias" for r in refs),
                 lambda x: tuple(x[i].reshape(-1) for i in range(3)),
                 lambda *bs: np.stack([b.reshape(heads, -1) for b in bs]))]


def contiguous(tensors):
    """{name: C-contiguous array} (file writers need it; 0-d arrays stay 0-d)."""
    return {k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in tensors.items()}
