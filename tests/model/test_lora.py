"""LoRA on hand-computed values: the update, the per-row switch, peft's key names, strict loading; and the head's
contiguous input (a frozen head must not copy its weight for a sliced hidden state)."""
import pytest
import torch
from torch import nn

from conftest import make_tiny_lm
from npdemo.model.lora import KEY_PREFIX, LoRAConfig, LoRALinear, LoRASwitch, add_lora, load_lora_state, lora_state_dict
from npdemo.model.policy import contiguous_input

CFG = LoRAConfig(lora_r=2, lora_alpha=4, lora_dropout=0.0, lora_targets="proj")


def layer() -> LoRALinear:
    base = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    lora = LoRALinear(base, CFG, LoRASwitch())
    with torch.no_grad():
        lora.lora_A.weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]))
        lora.lora_B.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    return lora


def test_update_is_scaled_low_rank_and_starts_at_zero():
    fresh = LoRALinear(nn.Linear(3, 2), CFG, LoRASwitch())
    x = torch.randn(4, 3)
    torch.testing.assert_close(fresh(x), fresh.base_layer(x))  # B = 0 at init: the base model
    lora, x = layer(), torch.tensor([[1.0, 2.0, 3.0]])
    # base: (1, 2); A x = (6, 3); B A x = (6, -3); scale alpha / r = 2 -> (1 + 12, 2 - 6)
    torch.testing.assert_close(lora(x), torch.tensor([[13.0, -4.0]]))


def test_switch_turns_rows_off_exactly():
    lora = layer()
    x = torch.tensor([[[1.0, 2.0, 3.0]], [[1.0, 2.0, 3.0]]])  # (B, T, D)
    with lora.switch.set(False):
        assert torch.equal(lora(x), lora.base_layer(x))
    with lora.switch.set(True, torch.tensor([1.0, 0.0])[:, None, None]):
        out = lora(x)
    torch.testing.assert_close(out[0], torch.tensor([[13.0, -4.0]]))
    assert torch.equal(out[1], lora.base_layer(x)[1])  # a base row is the base layer's output to the bit
    assert lora.switch.on and lora.switch.rows is None  # restored after each block


def test_add_lora_freezes_the_base_and_keeps_peft_key_names():
    model = make_tiny_lm().model
    add_lora(model, LoRAConfig(lora_r=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    keys = lora_state_dict(model)
    assert f"{KEY_PREFIX}model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert len(keys) == 2 * 2 * model.config.num_hidden_layers  # A and B of q_proj and v_proj per layer
    with pytest.raises(ValueError, match="no module"):
        add_lora(make_tiny_lm().model, LoRAConfig(lora_targets="nothing_here"))


def test_state_round_trip_and_strict_load():
    source, target = make_tiny_lm().model, make_tiny_lm().model
    add_lora(source, LoRAConfig(lora_r=4))
    add_lora(target, LoRAConfig(lora_r=4))
    state = {k: torch.randn_like(v) for k, v in lora_state_dict(source).items()}
    load_lora_state(target, state)
    assert all(torch.equal(v, state[k]) for k, v in lora_state_dict(target).items())
    missing = dict(list(state.items())[1:])
    with pytest.raises(ValueError, match="missing"):
        load_lora_state(target, missing)
    with pytest.raises(ValueError, match="unexpected"):
        load_lora_state(target, {**state, KEY_PREFIX + "model.layers.0.mlp.up_proj.lora_A.weight": torch.zeros(1)})


def test_head_input_gets_standard_strides():
    hidden = torch.randn(1, 5, 4)[:, -1:, :]  # what generate hands the head: the last position of one row
    assert hidden.is_contiguous() and hidden.stride() != (4, 4, 1)  # "contiguous" by torch, but not foldable
    (out,) = contiguous_input(nn.Identity(), (hidden,))
    assert out.stride() == (4, 4, 1) and torch.equal(out, hidden)


def test_a_second_policy_on_one_model_gets_fresh_adapters_not_nested_ones():
    model = make_tiny_lm().model
    add_lora(model, LoRAConfig(lora_r=4))
    first = model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        first.lora_B.weight.fill_(1.0)
    switch = add_lora(model, LoRAConfig(lora_r=4))
    second = model.model.layers[0].self_attn.q_proj
    assert second is not first and second.base_layer is first.base_layer and second.switch is switch
    assert not second.lora_B.weight.any()
    assert len(lora_state_dict(model)) == 2 * 2 * model.config.num_hidden_layers  # not nested: A and B, q and v
