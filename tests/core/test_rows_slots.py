"""Per-layer adapter slots (loralab.core.rows.SlotStack): mixed batches equal each row run alone with its
adapter (fp32, 1e-5) after loads, evictions and reloads into freed slots, with ranks and alphas that differ in
one batch; zero-padded rank rows add exact zeros; decoding steps write and allocate nothing (counted through
SLOT_HOOKS); the stacks grow by doubling up to the reserved count and their bytes are what row_slot_bytes says."""
import pytest
import torch
from torch import nn

import loralab
from loralab import LoraConfig
from loralab.adapters.per_row import reserve_row_slots, row_slot_bytes, write_row_slots
from loralab.core.rows import GATHERED, MASKED, SLOT_HOOKS, slots_of
from loralab.formats.peft import insert_adapter, read_adapter
from loralab.testing import fill_adapter, one_thread, tiny_inputs, tiny_model
from tests.core.test_rows import TOL, alone, layer_with_adapters, mixed

RANKS = {"a": (2, 4.0), "b": (8, 3.0), "c": (4, 32.0), "d": (1, 1.0), "e": (6, 12.0)}


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture
def events():
    heard: list[tuple[str, str | None]] = []

    def hook(event, layer, name):
        heard.append((event, name))
    SLOT_HOOKS.append(hook)
    yield heard
    SLOT_HOOKS.remove(hook)


def saved_adapters(tmp_path, names) -> dict[str, object]:
    """Adapter folders of a tiny Llama, one per name, ranks and alphas from RANKS, random factors."""
    model = tiny_model("llama")
    folders = {}
    for i, name in enumerate(names):
        r, alpha = RANKS[name]
        loralab.inject(model, LoraConfig(r=r, alpha=alpha, targets=["q_proj", "v_proj"]), adapter=name)
        fill_adapter(model, name, seed=i + 1)
        folders[name] = tmp_path / name
        loralab.save_adapter(model, folders[name], adapter=name)
    return folders


def reference(model, ids, names) -> torch.Tensor:
    """Each row's logits with its adapter alone (None: the base)."""
    outs = []
    for i, name in enumerate(names):
        if name is None:
            with loralab.disabled(model):
                outs.append(model(input_ids=ids[i:i + 1]).logits)
        else:
            loralab.set_adapter(model, name)
            outs.append(model(input_ids=ids[i:i + 1]).logits)
    return torch.cat(outs)


def served(model, ids, names, strategy) -> torch.Tensor:
    with loralab.per_row_adapters(model, names, strategy=strategy):
        return model(input_ids=ids).logits


@pytest.mark.parametrize("strategy", [MASKED, GATHERED])
def test_mixed_batches_equal_each_adapter_after_loads_evictions_and_reloads(tmp_path, strategy, events):
    folders = saved_adapters(tmp_path, list(RANKS))
    model = tiny_model("llama")
    reserve_row_slots(model, 3)
    files = {name: read_adapter(folder) for name, folder in folders.items()}

    def load(name):
        insert_adapter(model, files[name], adapter=name)
        write_row_slots(model, [name])

    ids = tiny_inputs(model, batch=6, seq=5)["input_ids"]
    with torch.no_grad():
        for name in ("a", "b", "c"):
            load(name)
        names = ["a", "b", None, "c", "b", "a"]
        torch.testing.assert_close(served(model, ids, names, strategy), reference(model, ids, names), **TOL)
        q = next(layer for n, layer in loralab.lora_layers(model) if n.endswith("q_proj"))
        stack = slots_of(q)
        assert stack.capacity == 4 and stack.r_max == 8          # 3 reserved + the base's slot 0; b's rank
        first = dict(stack.slot_of)
        assert sorted(first.values()) == [1, 2, 3]
        names = ["c", "a", None, "a", "c", "c"]                  # slots 1 and 3: not consecutive, gathered
        torch.testing.assert_close(served(model, ids, names, strategy), reference(model, ids, names), **TOL)

        loralab.delete_adapter(model, "b")                       # an eviction: b's slot zeroed and freed
        assert "b" not in stack.slot_of
        assert stack.A[first["b"]].abs().sum() == 0 and stack.B[first["b"]].abs().sum() == 0
        load("d")                                                # rank 1 into b's old slot
        assert stack.slot_of["d"] == first["b"]
        assert stack.A[first["b"], 1:].abs().sum() == 0          # padded rank rows stay zeros
        names = ["d", "a", "c", None, "d", "c"]
        torch.testing.assert_close(served(model, ids, names, strategy), reference(model, ids, names), **TOL)

        loralab.delete_adapter(model, "a")
        load("b")                                                # reloaded into a reused slot
        assert stack.slot_of["b"] == first["a"]
        names = ["b", "d", "c", "b", None, "d"]
        torch.testing.assert_close(served(model, ids, names, strategy), reference(model, ids, names), **TOL)

        builds = sum(1 for e, _ in events if e == "build")
        assert builds == 2 * len(list(loralab.lora_layers(model)))   # one allocation per layer, one growth to r = 8
        steps_before = len(events)
        for _ in range(3):                                       # decoding steps: no writes, no allocations
            served(model, ids, names, strategy)
        assert len(events) == steps_before


def test_zero_padded_rank_rows_add_exact_zeros():
    layer = layer_with_adapters(nn.Linear(16, 12), {"small": dict(r=1, alpha=2.0), "big": dict(r=7, alpha=3.0)})
    x, names = torch.randn(4, 3, 16), ["small", "big", None, "small"]
    with torch.no_grad():
        out = mixed(layer, x, names, MASKED)
        stack = slots_of(layer)
        assert stack.r_max == 7 and stack.A[stack.slot_of["small"], 1:].abs().sum() == 0
        # small's padded a-columns are 0 exactly, so its rows equal the unpadded rank-1 update to rounding
        torch.testing.assert_close(out, alone(layer, x, names), **TOL)
        torch.testing.assert_close(mixed(layer, x, names, GATHERED), out, rtol=0, atol=1e-6)


def test_slots_grow_by_doubling_up_to_the_reserved_count_and_count_their_bytes(events):
    layer = layer_with_adapters(nn.Linear(8, 6), {f"a{i}": dict(r=2, alpha=2.0) for i in range(20)})
    stack = slots_of(layer)
    stack.reserved = 20
    with torch.no_grad():
        names = list(layer.lora_adapters)
        for n in range(1, 21):
            mixed(layer, torch.randn(n + 1, 1, 8), names[:n] + [None], MASKED)
            assert stack.capacity == 1 + min(20, max(8, 1 << (n - 1).bit_length()))
    assert [e for e, _ in events].count("build") == 3                    # 9, 17, 21 slots
    assert [e for e, _ in events].count("write") == 20                   # each adapter written once
    model = tiny_model("llama")
    loralab.inject(model, LoraConfig(r=4, targets=["q_proj"]), adapter="x")
    assert row_slot_bytes(model) == 0                                     # nothing allocated before a write
    write_row_slots(model, ["x"])
    layers = list(loralab.lora_layers(model))
    d = k = model.config.hidden_size
    assert row_slot_bytes(model) == len(layers) * 9 * 4 * (k + d) * 4     # 9 slots × r 4 × (k + d) × fp32
