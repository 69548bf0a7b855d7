import json
import math

import pytest
import torch

import loralab
from loralab.adapters.state import lora_layers
from loralab.analysis.deltas import make_delta
from loralab.analysis.intruders import (WeightSlice, adapter_intruders, check_intruder_settings, intruder_indices,
                                        intruders_of, max_cosine_to_base, reduce_intruders, scale_model_intruders)
from loralab.cli.main import main
from loralab.errors import LoraLabError
from loralab.testing import tiny_model

D = 32


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@pytest.fixture(scope="module")
def base():
    """W0 = U0·diag(σ)·V0ᵀ with known singular vectors and σ from 10 down to 1."""
    U0, V0 = _orthogonal(D, 1), _orthogonal(D, 2)
    sigma = torch.linspace(10, 1, D, dtype=torch.float64)
    return U0, sigma, V0, U0 @ torch.diag(sigma) @ V0.T


def _spread_delta(U0, V0, s: float) -> torch.Tensor:
    """s·u·vᵀ with u, v spread evenly over W0's bottom 16 singular vectors: orthogonal to W0's top 16, and
    |cos| = 1/4 with each of the bottom 16."""
    u, v = U0[:, 16:].sum(dim=1) / 4, V0[:, 16:].sum(dim=1) / 4
    return s * torch.outer(u, v)


def test_spread_direction_with_large_singular_value_is_one_intruder(base):
    U0, sigma, V0, W0 = base
    dW = _spread_delta(U0, V0, 100.0)
    assert intruder_indices(W0, W0 + dW) == [0]
    result = intruders_of("layer", dW, W0)
    assert (result.count, result.indices, result.k, result.threshold) == (1, [1], 10, 0.5)
    assert result.max_cosine[0] == pytest.approx(0.25, abs=0.01)
    assert result.max_cosine[1:] == pytest.approx([1.0] * 9)     # W0's own top 9 directions, untouched
    # uᵀ(W0 + ΔW)v = 100 + mean of W0's bottom 16 σ; the top singular value is at least that, and close to it
    assert result.singular_values[0] == pytest.approx(100.0 + float(sigma[16:].mean()), rel=0.01)


def test_update_inside_the_top_subspace_has_no_intruder(base):
    U0, _, V0, W0 = base
    along = 5.0 * torch.outer(U0[:, 0], V0[:, 0])
    mixed = 3.0 * torch.outer((U0[:, 0] + U0[:, 1]) / math.sqrt(2), (V0[:, 0] + V0[:, 1]) / math.sqrt(2))
    assert intruders_of("along", along, W0).count == 0
    assert intruders_of("mixed", mixed, W0).count == 0


def test_small_spread_update_stays_outside_the_top_k(base):
    U0, _, V0, W0 = base
    assert intruders_of("small", _spread_delta(U0, V0, 1.0), W0).count == 0


def test_threshold_is_strict_at_the_boundary(base):
    U0, _, V0, W0 = base
    W_ft = W0 + _spread_delta(U0, V0, 100.0)
    c = float(max_cosine_to_base(W0, W_ft)[0][0])
    assert intruder_indices(W0, W_ft, threshold=c) == []
    assert intruder_indices(W0, W_ft, threshold=math.nextafter(c, 1.0)) == [0]


def test_k_limits_which_singular_vectors_count(base):
    U0, _, V0, W0 = base
    dW = _spread_delta(U0, V0, 5.0)       # σ ≈ 8: the 7th singular value of W0 + ΔW (W0's are 10, 9.7, …)
    rank = intruder_indices(W0, W0 + dW, k=D)[0]
    assert rank == 6
    assert intruder_indices(W0, W0 + dW, k=rank) == []
    assert intruder_indices(W0, W0 + dW, k=rank + 1) == [rank]


def test_low_rank_delta_and_dense_agree_and_fused_rows_are_used(base):
    U0, _, V0, W0 = base
    dW = _spread_delta(U0, V0, 100.0)
    u, s, vh = torch.linalg.svd(dW)
    delta = make_delta("layer", vh[:1], u[:, :1] * s[0])
    assert intruders_of("layer", delta, W0).indices == [1]
    sliced = make_delta("fused[1]", vh[:1], u[:, :1] * s[0], module="fused", rows=(D, 2 * D))
    stacked = {"fused": torch.cat([torch.eye(D, dtype=torch.float64), W0])}
    assert [m.count for m in adapter_intruders([sliced], stacked)] == [1]
    with pytest.raises(LoraLabError, match=r"^no base weight for other; pass the base model"):
        adapter_intruders([make_delta("other", vh[:1], u[:, :1])], stacked)


def test_reduce_intruders_scale_one_leaves_delta_unchanged(base):
    U0, _, V0, W0 = base
    dW = _spread_delta(U0, V0, 100.0)
    assert torch.equal(reduce_intruders(dW, W0, 1.0), dW)
    inside = 5.0 * torch.outer(U0[:, 0], V0[:, 0])
    assert torch.equal(reduce_intruders(inside, W0, 0.0), inside)     # no intruder: nothing to scale


def test_reduce_intruders_drops_the_count(base):
    U0, _, V0, W0 = base
    dW = _spread_delta(U0, V0, 100.0)
    assert intruders_of("l", dW, W0).count == 1
    removed = reduce_intruders(dW, W0, 0.0)
    assert intruders_of("l", removed, W0).count == 0
    assert float(torch.linalg.matrix_norm(removed)) < 0.05 * float(torch.linalg.matrix_norm(dW))
    shrunk = reduce_intruders(dW, W0, 0.01)          # σ ≈ 1: below W0's 10th singular value
    assert intruders_of("l", shrunk, W0).count == 0
    half = reduce_intruders(dW, W0, 0.5)             # still the top direction, at half the singular value
    result = intruders_of("l", half, W0)
    assert result.count == 1
    assert result.singular_values[0] == pytest.approx(0.5 * intruders_of("l", dW, W0).singular_values[0])


@pytest.mark.parametrize("k, threshold, message", [
    (0, 0.5, "--intruder-k must be an integer ≥ 1, got 0"),
    (2.5, 0.5, "--intruder-k must be an integer ≥ 1, got 2.5"),
    (10, 0.0, "--intruder-threshold must be a cosine similarity in (0, 1], got 0.0"),
    (10, 1.5, "--intruder-threshold must be a cosine similarity in (0, 1], got 1.5"),
    (10, float("nan"), "--intruder-threshold must be a cosine similarity in (0, 1], got nan"),
])
def test_bad_settings_are_refused(k, threshold, message):
    with pytest.raises(LoraLabError) as info:
        check_intruder_settings(k, threshold)
    assert str(info.value) == message


def test_bad_scale_and_shapes_are_refused(base):
    _, _, _, W0 = base
    with pytest.raises(LoraLabError, match=r"^intruder scale must be in \[0, 1\]"):
        reduce_intruders(W0, W0, 1.5)
    with pytest.raises(LoraLabError, match=r"^base weight \(32, 32\) and fine-tuned weight \(32, 31\)"):
        max_cosine_to_base(W0, W0[:, :31])


# ------------------------------------------------------------------------------------------------
# `loralab analyze --intruders` on a tiny adapter
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("intruders")
    tiny_model("bert").save_pretrained(root / "base")
    model = tiny_model("bert")
    loralab.inject(model, loralab.LoraConfig(r=4, alpha=8))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            f = layer.lora_adapters["default"]
            f.A.copy_(torch.randn(f.A.shape, generator=g))
            f.B.copy_(torch.randn(f.B.shape, generator=g) * 3.0)    # large: the update dominates W0
    loralab.save_adapter(model, root / "adapter")
    return root, {name: layer for name, layer in lora_layers(model)}


def test_cli_intruders_table_in_json(tiny_adapter, tmp_path, capsys):
    root, layers = tiny_adapter
    out = tmp_path / "report"
    assert main(["analyze", str(root / "adapter"), "--base", str(root / "base"), "--intruders",
                 "--intruder-k", "5", "--intruder-threshold", "0.6", "--trials", "1", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "intruder dimension(s) among the top 5 singular vectors at ε = 0.6" in printed
    data = json.loads((out / "analysis.json").read_text())
    assert (data["settings"]["intruder_k"], data["settings"]["intruder_threshold"]) == (5, 0.6)
    rows = {m["name"]: m for m in data["adapters"][0]["intruders"]}
    assert set(rows) == set(layers)
    name, layer = sorted(layers.items())[0]
    W0 = layer.base_layer.weight.detach().double()
    dW = layer.lora_adapters["default"].delta_weight().detach().double()
    expected = intruders_of(name, dW, W0, k=5, threshold=0.6)
    assert rows[name]["indices"] == expected.indices and rows[name]["k"] == 5
    assert rows[name]["max_cosine"] == pytest.approx(expected.max_cosine, abs=1e-4)   # saved in float32
    assert sum(m["count"] for m in rows.values()) > 0
    assert (out / "intruders.csv").read_text().startswith("adapter,name,module,d_out,d_in,k,threshold,intruders,")
    assert "<h2>Intruder dimensions</h2>" in (out / "report.html").read_text()


def test_cli_without_intruders_has_no_table(tiny_adapter, tmp_path):
    root, _ = tiny_adapter
    out = tmp_path / "plain"
    assert main(["analyze", str(root / "adapter"), "--base", str(root / "base"), "--trials", "1",
                 "--output", str(out)]) == 0
    assert json.loads((out / "analysis.json").read_text())["adapters"][0]["intruders"] is None
    assert not (out / "intruders.csv").exists()


@pytest.mark.parametrize("extra, message", [
    (["--intruder-k", "0"], "--intruder-k must be an integer ≥ 1, got 0"),
    (["--intruder-threshold", "2"], "--intruder-threshold must be a cosine similarity in (0, 1], got 2.0"),
    (["--no-base"], "--intruders compares W0 + ΔW with the base weights W0; pass --base MODEL"),
])
def test_cli_bad_values_exit_2_with_one_line(tiny_adapter, tmp_path, capsys, extra, message):
    root, _ = tiny_adapter
    out = tmp_path / "bad"
    base = [] if extra == ["--no-base"] else ["--base", str(root / "base")]
    extra = [] if extra == ["--no-base"] else extra
    assert main(["analyze", str(root / "adapter"), *base, "--intruders", *extra, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"loralab analyze: error: {message}"]
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# `loralab merge --reduce-intruders SCALE` on a tiny adapter
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed_adapter(tmp_path_factory):
    """A tiny BERT adapter (Wq, Wv) whose first query update is large (intruders) and whose others are tiny
    (W0 + ΔW keeps W0's singular vectors: no intruder), saved with its base."""
    root = tmp_path_factory.mktemp("merge-intruders")
    tiny_model("bert").save_pretrained(root / "base")
    model = tiny_model("bert")
    loralab.inject(model, loralab.LoraConfig(r=4, alpha=8))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, (_, layer) in enumerate(sorted(lora_layers(model))):
            f = layer.lora_adapters["default"]
            f.A.copy_(torch.randn(f.A.shape, generator=g))
            f.B.copy_(torch.randn(f.B.shape, generator=g) * (3.0 if n == 0 else 1e-4))
    loralab.save_adapter(model, root / "adapter")
    return root, dict(lora_layers(model))


def _merge(root, out, *extra) -> int:
    return main(["merge", str(root / "base"), str(root / "adapter"), "-o", str(out), *extra])


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_merge_reduce_intruders_scales_only_the_intruder_components(mixed_adapter, tmp_path, capsys):
    root, layers = mixed_adapter
    assert _merge(root, tmp_path / "plain") == 0
    assert _merge(root, tmp_path / "one", "--reduce-intruders", "1") == 0
    capsys.readouterr()
    assert _merge(root, tmp_path / "half", "--reduce-intruders", "0.5") == 0
    printed = capsys.readouterr().out
    assert _merge(root, tmp_path / "zero", "--reduce-intruders", "0") == 0
    plain, one, half, zero = (_weights(tmp_path / n) for n in ("plain", "one", "half", "zero"))
    # SCALE = 1 is the plain merge, bit for bit
    assert plain.keys() == one.keys() and all(torch.equal(plain[k], one[k]) for k in plain)
    base = _weights(root / "base")
    key_of = {name: name + ".weight" for name in layers}       # the same class saved: the same names
    assert set(key_of.values()) <= set(plain)
    expected = {name: intruders_of(name, plain[key].double() - base[key].double(), base[key].double())
                for name, key in key_of.items()}
    with_intruders = [name for name, m in expected.items() if m.count]
    assert len(with_intruders) == 1 and len(expected) == 4          # the large update only
    total = sum(m.count for m in expected.values())
    assert printed.splitlines()[-2] == (f"intruder dimensions (top 10 singular vectors of W0 + ΔW, max |cos| to "
                                        f"W0's < 0.5): {total} in 1 of 4 merged weights, scaled by 0.5")
    for name, key in key_of.items():
        if name not in with_intruders:      # weights without intruders: untouched
            assert torch.equal(half[key], plain[key]) and torch.equal(zero[key], plain[key])
    untouched = set(plain) - {key_of[name] for name in with_intruders}
    assert all(torch.equal(half[k], plain[k]) for k in untouched)   # biases, embeddings, norms, other weights
    key = key_of[with_intruders[0]]
    W = plain[key].double()
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    picked = torch.tensor([j - 1 for j in expected[with_intruders[0]].indices])
    rest = torch.tensor([j for j in range(S.numel()) if j not in picked.tolist()])
    for scaled, factor in ((half[key].double(), 0.5), (zero[key].double(), 0.0)):
        inside = U.T @ scaled @ Vh.T                    # the merged weight in W's singular basis
        assert torch.diagonal(inside)[picked] == pytest.approx((factor * S[picked]).tolist(), abs=1e-5)
        assert torch.diagonal(inside)[rest] == pytest.approx(S[rest].tolist(), abs=1e-5)
        off = inside - torch.diag(torch.diagonal(inside))
        assert off.abs().max() < 1e-5
        assert (scaled - W).norm() == pytest.approx((1 - factor) * S[picked].norm().item(), rel=1e-5)


def test_scale_model_intruders_on_fused_slices_uses_each_slice_rows():
    U0, V0 = _orthogonal(3 * D, 3)[:, :D], _orthogonal(D, 4)
    W0 = U0 @ torch.diag(torch.linspace(10, 1, D, dtype=torch.float64)) @ V0.T      # (3D, D): [q; k; v]
    layer = torch.nn.Linear(D, 3 * D, bias=False, dtype=torch.float64)
    model = torch.nn.Sequential(layer)
    dv = _spread_delta(_orthogonal(D, 5), V0, 40.0)       # a large new direction in the v rows only
    with torch.no_grad():
        layer.weight.copy_(W0)
        layer.weight[2 * D:] += dv
    before = layer.weight.detach().clone()
    slices = [WeightSlice("0[0]", "0", (0, D)), WeightSlice("0[2]", "0", (2 * D, 3 * D))]
    found = scale_model_intruders(model, {"0": W0}, 0.0, slices=slices)
    assert [(m.name, m.count) for m in found] == [("0[0]", 0), ("0[2]", intruders_of("v", dv, W0[2 * D:]).count)]
    assert found[1].count >= 1 and (found[1].d_out, found[1].d_in) == (D, D)
    assert torch.equal(layer.weight[:2 * D], before[:2 * D])            # q and k rows untouched
    assert not torch.equal(layer.weight[2 * D:], before[2 * D:])
    expected = W0[2 * D:] + reduce_intruders(dv, W0[2 * D:], 0.0)
    assert torch.allclose(layer.weight[2 * D:], expected, atol=1e-9)


@pytest.mark.parametrize("extra, message", [
    (["--reduce-intruders", "1.5"], "--reduce-intruders must be in [0, 1] (0 removes the intruder directions, 1 keeps "
                                    "them), got 1.5"),
    (["--reduce-intruders", "nan"], "--reduce-intruders must be in [0, 1] (0 removes the intruder directions, 1 keeps "
                                    "them), got nan"),
    (["--reduce-intruders", "0.5", "--intruder-k", "0"], "--intruder-k must be an integer ≥ 1, got 0"),
    (["--reduce-intruders", "0.5", "--intruder-threshold", "0"],
     "--intruder-threshold must be a cosine similarity in (0, 1], got 0.0"),
    (["--intruder-k", "5"], "--intruder-k sets how --reduce-intruders SCALE finds intruders: add --reduce-intruders "
                            "SCALE, or drop it"),
    (["--reduce-intruders", "0.5", "--quantize", "int8"],
     "--reduce-intruders scales the weights of a full-precision merged folder; drop --quantize"),
])
def test_merge_bad_intruder_values_exit_2_with_one_line(mixed_adapter, tmp_path, capsys, extra, message):
    root, _ = mixed_adapter
    out = tmp_path / "merged"
    assert _merge(root, out, *extra) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"loralab merge: error: {message}"]
    assert not out.exists()
