"""combine_adapters' methods against PEFT's add_weighted_adapter: the same adapters (loaded from PEFT's files), the
same weights, density, sign method and torch seed give the same ΔW per layer; the registry adds a method."""
import pytest
import torch

import loralab
from loralab import LoraLabError
from loralab.adapters.merging import MERGE_METHODS, MergeMethod, linear, register_merge_method
from loralab.adapters.state import lora_layers
from loralab.testing import tiny_model

peft = pytest.importorskip("peft")

# PEFT's add_weighted_adapter combination types, all of them registered here.
PEFT_METHODS = ("cat", "linear", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
                "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
FAMILIES = {"bert": ["query", "value"], "gpt2": ["c_attn", "c_fc"]}      # gpt2: Conv1D stores Wᵀ (fan_in_fan_out)
WEIGHTS = {"x": 0.7, "y": -0.4, "z": 1.3}


def _peft_adapters(family, tmp_path, ranks=(4, 4, 4)):
    """A PEFT model with adapters x, y, z (random factors) and the same base with loralab's copies of them."""
    targets = FAMILIES[family]
    peft_model = peft.get_peft_model(tiny_model(family), peft.LoraConfig(r=ranks[0], lora_alpha=8,
                                                                        target_modules=targets), adapter_name="x")
    for name, r in zip("yz", ranks[1:]):
        peft_model.add_adapter(name, peft.LoraConfig(r=r, lora_alpha=2 * r + 2, target_modules=targets))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    ours = tiny_model(family)
    for name in "xyz":
        loralab.load_adapter(ours, tmp_path / "peft" / name, adapter=name)
    return peft_model, ours


def _their_deltas(peft_model, name):
    """{module name: ΔW in the layer's storage layout} of PEFT's adapter `name`."""
    out = {}
    for key, module in peft_model.base_model.model.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer) and name in module.lora_A:
            out[key] = module.get_delta_weight(name).detach()
    return out


def _our_deltas(model, name):
    return {key: layer.kind.to_weight_layout(layer.base_layer, layer.lora_adapters[name].delta_weight().detach())
            for key, layer in lora_layers(model) if name in layer.lora_adapters}


CASES = [(family, method, sign) for family in FAMILIES for method in PEFT_METHODS
         for sign in (("total", "frequency") if "ties" in method else ("total",))]


@pytest.mark.parametrize("family, method, sign", CASES)
def test_each_method_gives_peft_s_delta_w_on_every_layer(family, method, sign, tmp_path):
    peft_model, ours = _peft_adapters(family, tmp_path)
    options = dict(density=0.6, majority_sign_method=sign) if method not in ("cat", "linear", "svd") else {}
    torch.manual_seed(123)
    peft_model.add_weighted_adapter(list(WEIGHTS), list(WEIGHTS.values()), "m", combination_type=method, **options)
    loralab.combine_adapters(ours, WEIGHTS, "m", method=method, seed=123, **options)
    theirs, mine = _their_deltas(peft_model, "m"), _our_deltas(ours, "m")
    assert theirs.keys() == mine.keys() and len(mine) == 4
    for key in theirs:
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=1e-6, msg=key)
    if method.startswith("dare"):       # the masks are random: another seed gives another ΔW
        loralab.combine_adapters(ours, WEIGHTS, "m2", method=method, seed=124, **options)
        assert any(not torch.allclose(_our_deltas(ours, "m2")[k], mine[k]) for k in mine)


def test_dare_without_a_seed_draws_from_torch_s_global_generator_as_peft_does(tmp_path):
    peft_model, ours = _peft_adapters("bert", tmp_path)
    torch.manual_seed(5)
    peft_model.add_weighted_adapter(list(WEIGHTS), list(WEIGHTS.values()), "m", combination_type="dare_ties",
                                    density=0.5)
    torch.manual_seed(5)
    loralab.combine_adapters(ours, WEIGHTS, "m", method="dare_ties", density=0.5)
    theirs = _their_deltas(peft_model, "m")
    for key, delta in _our_deltas(ours, "m").items():
        torch.testing.assert_close(delta, theirs[key], rtol=0, atol=1e-6)


def test_a_seed_leaves_torch_s_global_generator_where_it_was(tmp_path):
    _, ours = _peft_adapters("bert", tmp_path)
    torch.manual_seed(9)
    expected = torch.rand(3)
    torch.manual_seed(9)
    loralab.combine_adapters(ours, WEIGHTS, "m", method="dare_linear", density=0.5, seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_svd_rank_and_clamp_as_peft(tmp_path):
    peft_model, ours = _peft_adapters("bert", tmp_path, ranks=(4, 2, 3))
    peft_model.add_weighted_adapter(list(WEIGHTS), list(WEIGHTS.values()), "m", combination_type="ties_svd",
                                    density=0.7, svd_rank=2, svd_clamp=0.9)
    loralab.combine_adapters(ours, WEIGHTS, "m", method="ties_svd", density=0.7, svd_rank=2, svd_clamp=0.9)
    theirs = _their_deltas(peft_model, "m")
    for key, delta in _our_deltas(ours, "m").items():
        torch.testing.assert_close(delta, theirs[key], rtol=0, atol=1e-6)
    assert {layer.lora_adapters["m"].r for _, layer in lora_layers(ours)} == {2}


def test_methods_merging_factors_need_one_rank_and_pruning_needs_a_density(tmp_path):
    _, ours = _peft_adapters("bert", tmp_path, ranks=(4, 2, 4))
    with pytest.raises(LoraLabError, match=r"^bert.encoder.layer.0.attention.self.query: combine method 'ties' merges "
                                           r"A and B entry by entry and needs adapters of one rank, got ranks \[2, 4\]; "
                                           r"use 'cat' \(exact\) or an '_svd' method$"):
        loralab.combine_adapters(ours, WEIGHTS, "m", method="ties", density=0.5)
    with pytest.raises(LoraLabError, match=r"^combine method 'dare_ties' needs density, the fraction of entries kept, "
                                           r"in \[0, 1\]; got None$"):
        loralab.combine_adapters(ours, WEIGHTS, "m", method="dare_ties")
    with pytest.raises(LoraLabError, match=r"^unknown majority_sign_method 'count'"):
        loralab.combine_adapters(ours, WEIGHTS, "m", method="ties_svd", density=0.5, majority_sign_method="count")
    with pytest.raises(LoraLabError, match=r"^unknown combine method 'dare'"):
        loralab.combine_adapters(ours, WEIGHTS, "m", method="dare")
    assert "m" not in loralab.list_adapters(ours)


def test_a_method_is_added_by_registration(tmp_path):
    _, ours = _peft_adapters("bert", tmp_path)
    with MERGE_METHODS.scoped():
        register_merge_method(MergeMethod("double_linear", "factors",
                                          lambda tensors, weights, options: 2 * linear(tensors, weights, options)))
        loralab.combine_adapters(ours, {"x": 1.0}, "two", method="double_linear")     # one adapter: linear, as PEFT
        loralab.combine_adapters(ours, {"x": 0.5, "y": 0.5}, "m", method="double_linear")
    assert "double_linear" not in MERGE_METHODS
    a = _our_deltas(ours, "x")
    for key, delta in _our_deltas(ours, "two").items():
        torch.testing.assert_close(delta, a[key], rtol=0, atol=1e-6)
