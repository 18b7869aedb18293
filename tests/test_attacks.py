"""Attacks: the default poisoning share, DMBA replay, update crafting, Neurotoxin masks, the user tutorial."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from flowerbed.clients.attack import Attack, poison_count
from flowerbed.clients.attacks.dmba import DMBA
from flowerbed.clients.attacks.model_replacement import total_norm
from flowerbed.clients.attacks.neurotoxin import MEMORY_PREFIX
from flowerbed.clients.triggers.base import Backdoor
from flowerbed.clients.triggers.dmba import DMBATrigger
from flowerbed.clients.triggers.patch import PatchTrigger
from flowerbed.platform.registry import ATTACKS, TRIGGERS

SHAPE = (3, 32, 32)
ATTACK_NAMES = ATTACKS.names()  # the shared checks below run on every registered attack
# Optional per-attack params for the shared poisoning check (an attack not listed runs with its defaults):
# DMBA without replay, which would also stamp its colluders' triggers.
POISON_PARAMS = {"dmba": {"replay": "none"}}
REPO = Path(__file__).resolve().parents[1]


def batch(size: int = 40, label: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mid-range images (no trigger is hidden by clamping) with a non-target label."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((size, *SHAPE), generator=g) * 0.6 + 0.2, torch.full((size,), label)


def make_attack(name: str, params=None, *, fraction: float = 0.25, target: int = 7, colluders=()) -> Attack:
    attack_class = ATTACKS.get(name)
    trigger = TRIGGERS.get(attack_class.default_trigger)(index=0, count=3, image_shape=SHAPE, seed=0)
    backdoor = Backdoor(f"{attack_class.default_trigger}-0", trigger, target)
    return attack_class(params, backdoor=backdoor, colluders=list(colluders), poison_fraction=fraction)


def changed_rows(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    return (before != after).flatten(1).any(dim=1)


def test_attacks_are_registered_and_the_tables_name_only_registered_ones():
    assert ATTACK_NAMES, "no attack is registered"
    stale = sorted(set(POISON_PARAMS) - set(ATTACK_NAMES))
    assert not stale, f"POISON_PARAMS in tests/test_attacks.py lists {stale}, which no attack is registered as"


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_is_registered_with_a_registered_default_trigger(name):
    attack_class = ATTACKS.get(name)
    assert issubclass(attack_class, Attack) and attack_class.name == name
    assert attack_class.default_trigger in TRIGGERS


@pytest.mark.parametrize("name", ATTACK_NAMES)
@pytest.mark.parametrize("fraction, size", [(0.25, 40), (0.1, 64), (0.5, 7), (0.0, 10), (1.0, 12)])
def test_poison_changes_exactly_the_expected_share(name, fraction, size):
    params = POISON_PARAMS.get(name)
    attack = make_attack(name, params, fraction=fraction)
    x, y = batch(size)
    x_before, y_before = x.clone(), y.clone()
    poisoned_x, poisoned_y = attack.poison(x, y, torch.Generator().manual_seed(3))
    assert torch.equal(x, x_before) and torch.equal(y, y_before), "poison must not modify its input"
    rows = changed_rows(x, poisoned_x)
    expected = math.floor(fraction * size + 0.5)
    assert int(rows.sum()) == expected
    assert torch.equal(poisoned_y != y, rows)
    assert (poisoned_y[rows] == 7).all()
    assert torch.equal(poisoned_x[rows], attack.backdoor.trigger.apply(x[rows]))
    again = attack.poison(x, y, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], poisoned_x), "the generator decides which rows are poisoned"


def test_poison_count_rounds_half_up_and_fraction_is_validated():
    assert [poison_count(10, f) for f in (0.0, 0.04, 0.05, 0.15, 0.25, 1.0)] == [0, 0, 1, 2, 3, 10]
    with pytest.raises(ValueError, match="poison_fraction"):
        make_attack("badnets", fraction=1.5)
    with pytest.raises(ValueError, match=r"^attack\.badnets\.poison-epochs: .*greater than or equal to 1 \(got 0\)"):
        make_attack("badnets", {"poison-epochs": 0})
    with pytest.raises(TypeError, match=r"^attack\.badnets: expected"):
        make_attack("badnets", 3)


def test_train_overrides():
    assert make_attack("badnets").train_overrides() == {}
    assert make_attack("dba", {"poison-epochs": 6, "attacker-lr": 0.05}).train_overrides() == {"local-epochs": 6, "lr": 0.05}
    assert make_attack("dmba", {"attacker-lr": 0.02}).train_overrides() == {"lr": 0.02}


def test_default_hooks_are_harmless_and_backdoors_lists_own():
    attack = make_attack("badnets")
    update = {"w": torch.randn(3)}
    assert attack.craft(update, {}) is update
    assert attack.backdoors == [attack.backdoor]
    description = attack.describe()
    assert description["attack"] == "badnets" and description["backdoors"][0]["target"] == 7


# --- DMBA replay -------------------------------------------------------------------------


def dmba_collusion(count: int = 3, params=None, fraction: float = 0.5) -> tuple[DMBA, list[Backdoor]]:
    backdoors = [
        Backdoor(f"dmba-{i}", DMBATrigger(index=i, count=count, image_shape=SHAPE), target)
        for i, target in zip(range(count), (2, 5, 8), strict=False)
    ]
    attack = DMBA(params, backdoor=backdoors[0], colluders=backdoors[1:], poison_fraction=fraction)
    return attack, backdoors


def which_backdoor(x: torch.Tensor, poisoned: torch.Tensor, backdoors: list[Backdoor]) -> list[int]:
    """For each row: index of the backdoor whose trigger reproduces it, -1 if clean."""
    labels = torch.full((len(x),), -1)
    for i, backdoor in enumerate(backdoors):
        labels[(backdoor.trigger.apply(x) == poisoned).flatten(1).all(dim=1)] = i
    labels[~changed_rows(x, poisoned)] = -1
    return labels.tolist()


def test_dmba_replay_puts_colluders_triggers_and_targets_in_the_batch():
    attack, backdoors = dmba_collusion()
    x, y = batch(60, label=0)
    poisoned_x, poisoned_y = attack.poison(x, y, torch.Generator().manual_seed(1))
    owner = torch.tensor(which_backdoor(x, poisoned_x, backdoors))
    # 30 poisoned rows, default replay ratio 2/3: 10 own, 10 per colluder.
    assert [(owner == i).sum().item() for i in (-1, 0, 1, 2)] == [30, 10, 10, 10]
    for i, backdoor in enumerate(backdoors):
        assert (poisoned_y[owner == i] == backdoor.target).all()
    assert (poisoned_y[owner == -1] == 0).all()
    assert attack.backdoors == [backdoors[0]]


def test_dmba_replay_ratio_and_no_replay():
    attack, backdoors = dmba_collusion(params={"replay-ratio": 0.2})
    x, y = batch(40, label=0)
    owner = torch.tensor(which_backdoor(x, attack.poison(x, y, torch.Generator().manual_seed(2))[0], backdoors))
    assert (owner == 0).sum() == 16 and ((owner == 1) | (owner == 2)).sum() == 4
    assert (owner == 1).sum() == 2 and (owner == 2).sum() == 2
    alone, _ = dmba_collusion(params={"replay": "none"})
    owner = torch.tensor(which_backdoor(x, alone.poison(x, y, torch.Generator().manual_seed(2))[0], backdoors))
    assert (owner == 0).sum() == 20 and ((owner == 1) | (owner == 2)).sum() == 0
    assert alone.replay_ratio == 0.0
    solo = DMBA(backdoor=backdoors[0], colluders=[], poison_fraction=0.5)  # no colluders: nothing to replay
    assert solo.replay_ratio == 0.0
    owner = torch.tensor(which_backdoor(x, solo.poison(x, y, torch.Generator().manual_seed(2))[0], backdoors))
    assert (owner == 0).sum() == 20


def test_dmba_bounded_scaling_boosts_learned_weights_only_and_caps_the_norm():
    update = {
        "0.weight": torch.randn(4, 3),
        "1.bias": torch.randn(4),
        "1.running_mean": torch.randn(4),
        "1.running_var": torch.rand(4),
    }
    plain, _ = dmba_collusion()
    assert plain.craft(update, {}) is update  # default: no scaling
    boosted, _ = dmba_collusion(params={"boost": 3.0})
    crafted = boosted.craft(update, {})
    for name in ("0.weight", "1.bias"):
        assert torch.allclose(crafted[name], 3.0 * update[name])
    for name in ("1.running_mean", "1.running_var"):  # statistics are measured, not learned: sent as trained
        assert torch.equal(crafted[name], update[name])
    learned = {name: update[name] for name in ("0.weight", "1.bias")}
    cap = 0.5 * float(total_norm(learned))
    capped, _ = dmba_collusion(params={"boost": 3.0, "max-norm": cap})
    crafted = capped.craft(update, {})
    assert float(total_norm({name: crafted[name] for name in learned})) == pytest.approx(cap, rel=1e-5)
    assert torch.allclose(crafted["0.weight"] / update["0.weight"], torch.tensor(0.5), atol=1e-5)
    loose, _ = dmba_collusion(params={"max-norm": 1e6})  # a bound that is not hit changes nothing
    assert all(torch.allclose(loose.craft(update, {})[name], update[name]) for name in update)
    with pytest.raises(Exception, match="boost"):
        dmba_collusion(params={"boost": 0.5})


# --- model replacement --------------------------------------------------------------------


def test_model_replacement_scales_the_update():
    update = {"a": torch.randn(4, 3), "b": torch.randn(5)}
    attack = make_attack("model-replacement", {"boost": 5.0})
    crafted = attack.craft(update, {})
    for name in update:
        assert torch.allclose(crafted[name], 5.0 * update[name])
    assert make_attack("model-replacement").params.boost == 10.0


def test_model_replacement_bounded_variant_clips_to_max_norm():
    update = {"a": torch.randn(4, 3), "b": torch.randn(5)}
    norm = total_norm(update).item()
    bounded = make_attack("model-replacement", {"boost": 10.0, "max-norm": 3 * norm}).craft(update, {})
    assert total_norm(bounded).item() == pytest.approx(3 * norm, rel=1e-5)
    assert torch.allclose(bounded["a"] / update["a"], torch.tensor(3.0), rtol=1e-4)  # direction kept
    loose = make_attack("model-replacement", {"boost": 2.0, "max-norm": 100 * norm}).craft(update, {})
    assert torch.allclose(loose["b"], 2.0 * update["b"])


def test_model_replacement_bounds_the_learned_weights_norm_and_scales_statistics_alike():
    # BatchNorm statistics move far more than the weights; the bound, like every defence's
    # norm, is on the learned weights only, and the statistics are scaled by the same factor.
    update = {"0.weight": torch.randn(4, 3), "1.running_var": 100 * torch.randn(4), "1.running_mean": torch.randn(4)}
    learned_norm = total_norm({"0.weight": update["0.weight"]}).item()
    bounded = make_attack("model-replacement", {"boost": 10.0, "max-norm": 2 * learned_norm}).craft(update, {})
    assert total_norm({"0.weight": bounded["0.weight"]}).item() == pytest.approx(2 * learned_norm, rel=1e-5)
    for name in update:
        assert torch.allclose(bounded[name], 2.0 * update[name], rtol=1e-4)


# --- Neurotoxin -----------------------------------------------------------------------------


def test_neurotoxin_masks_top_k_coordinates_of_the_last_global_update():
    torch.manual_seed(0)
    model = nn.Linear(10, 2)  # 22 parameters
    attack = make_attack("neurotoxin", {"mask-ratio": 0.25})
    memory: dict[str, torch.Tensor] = {}
    previous = {k: v.clone() for k, v in model.state_dict().items()}
    # First active round: no previous global model, so the mask comes from the benign reference
    # update the platform hands in (tests/test_neurotoxin.py); it used to be no mask at all.
    assert attack.wants_benign_update(memory)
    attack.on_benign_update({"weight": torch.ones(2, 10), "bias": torch.zeros(2)}, memory)
    attack.on_train_start(model, previous, memory)
    assert attack.masks is not None
    assert set(memory) == {MEMORY_PREFIX + "weight", MEMORY_PREFIX + "bias"}
    assert not attack.wants_benign_update(memory)

    change = {"weight": torch.zeros(2, 10), "bias": torch.zeros(2)}
    change["weight"][0, :4] = torch.tensor([5.0, -4.0, 3.0, -2.5])
    change["bias"][1] = -6.0
    change["weight"][1, 9] = 2.0
    change["weight"][1, 8] = 0.1  # small change: stays trainable
    now = {k: previous[k] + change[k] for k in previous}
    model.load_state_dict(now)
    attack.on_train_start(model, now, memory)
    masked = round(0.25 * 22)  # 6 largest |change|: 6, 5, 4, 3, 2.5, 2
    expected_weight = torch.ones(2, 10)
    expected_weight[0, :4] = 0.0
    expected_weight[1, 9] = 0.0
    assert torch.equal(attack.masks["weight"], expected_weight)
    assert torch.equal(attack.masks["bias"], torch.tensor([1.0, 0.0]))
    assert int(sum((1 - m).sum() for m in attack.masks.values())) == masked
    assert torch.equal(memory[MEMORY_PREFIX + "weight"], now["weight"])

    # One SGD step of the training loop: masked coordinates do not move, the others do.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 10), torch.randint(0, 2, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    attack.after_backward(model)
    optimizer.step()
    moved = model.weight.detach() != now["weight"]
    assert not moved[expected_weight == 0].any() and moved[expected_weight == 1].all()
    assert model.bias.detach()[1] == now["bias"][1] and model.bias.detach()[0] != now["bias"][0]


# --- the tutorial's user-written attack ------------------------------------------------------


def test_custom_attacker_tutorial_example_is_verbatim_and_works(isolated_plugins):
    source = (REPO / "docs" / "examples" / "my_attacks.py").read_text()
    assert source.strip() in (REPO / "docs" / "custom-attacker.md").read_text()
    spec = importlib.util.spec_from_file_location("my_attacks", REPO / "docs" / "examples" / "my_attacks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    trigger = PatchTrigger(image_shape=SHAPE)
    attack = module.MyAttack({"source-class": 3, "boost": 4.0}, backdoor=Backdoor("patch-0", trigger, 9), poison_fraction=0.5)
    assert isinstance(attack, Attack) and attack.default_trigger in TRIGGERS
    x, _ = batch(20)
    y = torch.tensor([3, 4] * 10)
    poisoned_x, poisoned_y = attack.poison(x, y, torch.Generator().manual_seed(0))
    rows = changed_rows(x, poisoned_x)
    assert int(rows.sum()) == 5 and (y[rows] == 3).all() and (poisoned_y[rows] == 9).all()
    assert torch.equal(poisoned_y[~rows], y[~rows])
    memory: dict[str, torch.Tensor] = {}
    crafted = attack.craft({"w": torch.ones(3)}, memory)
    attack.craft({"w": torch.ones(3)}, memory)
    assert torch.equal(crafted["w"], torch.full((3,), 4.0)) and int(memory["rounds"]) == 2
    with pytest.raises(Exception, match="source-class"):
        module.MyAttack({"source-class": -1}, backdoor=Backdoor("patch-0", trigger, 9), poison_fraction=0.5)


def test_blended_blends_the_papers_noise_pattern_at_alpha_0_2_into_the_poisoned_rows():
    """Chen et al. 2017: poisoned inputs are (1 - alpha) x + alpha pattern, alpha = 0.2, relabelled."""
    attack = make_attack("blended", fraction=0.5, target=3)
    assert attack.backdoor.trigger.params.alpha == pytest.approx(0.2) and attack.backdoor.trigger.params.pattern == "noise"
    x, y = batch(20)
    poisoned_x, poisoned_y = attack.poison(x, y, torch.Generator().manual_seed(0))
    rows = changed_rows(x, poisoned_x)
    assert int(rows.sum()) == 10 and (poisoned_y[rows] == 3).all() and (poisoned_y[~rows] == 1).all()
    pattern = attack.backdoor.trigger.pattern
    assert torch.allclose(poisoned_x[rows], (0.8 * x[rows] + 0.2 * pattern).clamp(0, 1), atol=1e-6)


def test_ftrojan_changes_only_the_chroma_of_the_poisoned_rows():
    """Wang et al. 2022: the frequency trigger edits DCT coefficients of the YUV chroma channels only."""
    from flowerbed.clients.triggers.helpers.colour import rgb_to_ycbcr

    attack = make_attack("ftrojan", fraction=0.5, target=3)
    x, y = batch(20)
    poisoned_x, poisoned_y = attack.poison(x, y, torch.Generator().manual_seed(0))
    rows = changed_rows(x, poisoned_x)
    assert int(rows.sum()) == 10 and (poisoned_y[rows] == 3).all()
    before, after = rgb_to_ycbcr(x[rows]), rgb_to_ycbcr(poisoned_x[rows])
    luma_change = (after[:, 0] - before[:, 0]).abs().max()
    chroma_change = (after[:, 1:] - before[:, 1:]).abs().max()
    assert chroma_change > 20 * luma_change, (luma_change, chroma_change)
