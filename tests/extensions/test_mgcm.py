"""MGCM extension: module partition, gradient surgery, memory, wait-k decoding, AL, the workload."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from flowerbed.extensions.mgcm import (
    GradientSurgery,
    MGCMParams,
    MGCMWorkload,
    ModulePartition,
    conflict_report,
    measure_peak_allocation,
    mitigate,
    project_model_level,
)
from flowerbed.extensions.mgcm.corpus import FIRST_WORD, PAD, SyntheticLanguage, build_corpus
from flowerbed.extensions.mgcm.metrics import average_lagging
from flowerbed.extensions.mgcm.model import SimulSTTransformer
from flowerbed.extensions.mgcm.streaming import SpeechStream, wait_k_decode
from flowerbed.extensions.mgcm.tasks import task_losses
from flowerbed.platform.registry import WORKLOADS
from flowerbed.platform.workload import TrainContext

TINY = {
    "d-model": 32, "num-heads": 2, "encoder-layers": 1, "decoder-layers": 1, "ffn-dim": 64,
    "num-words": 10, "num-particles": 2, "frame-dim": 8, "min-source-len": 3, "max-source-len": 5,
    "frame-noise": 0.3, "train-size": 480, "test-size": 40, "eval-wait-ks": "1,3",
}


def three_module_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))


def grads_like(params, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=g) for p in params]


def clone(grads):
    return [g.clone() for g in grads]


def flat(grads) -> np.ndarray:
    return torch.cat([g.reshape(-1) for g in grads]).double().numpy()


# ----------------------------------------------------------------- partition
def test_default_partition_isolates_layernorm_attention_ffn_embeddings_and_outputs():
    model = SimulSTTransformer(frame_dim=4, source_vocab=9, target_vocab=11, d_model=16, heads=2, encoder_layers=1, decoder_layers=1, ffn_dim=8)
    partition = ModulePartition.from_model(model)
    names = partition.names
    for expected in (
        "acoustic_frontend", "source_embedding", "target_embedding", "ctc_head", "output_projection",
        "encoder_layers.0.self_attn", "encoder_layers.0.self_attn_norm", "encoder_layers.0.ffn",
        "decoder_layers.0.cross_attn", "decoder_layers.0.cross_attn_norm", "decoder_layers.0.ffn",
        "encoder_norm", "decoder_norm",
    ):
        assert expected in names
    assert "decoder_layers.0.ffn.inner" not in names  # an FFN is one module, not two linears
    assert sorted(partition.parameter_names) == sorted(n for n, _ in model.named_parameters())
    assert int(partition.group_sizes().sum()) == sum(p.numel() for p in model.parameters())


def test_partition_handles_torch_transformer_layers_and_overrides():
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16)
    names = ModulePartition.from_model(layer).names
    assert sorted(names) == ["ffn", "norm1", "norm2", "self_attn"]
    coarse = ModulePartition.from_model(layer, unit_rule=lambda name, module: False)
    assert sorted(coarse.names) == ["ffn", "norm1", "norm2", "self_attn", "self_attn.out_proj"]  # per direct owner
    explicit = ModulePartition.from_names(three_module_net(), {"all": ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]})
    assert len(explicit) == 1
    with pytest.raises(ValueError, match="2.bias"):
        ModulePartition.from_names(three_module_net(), {"a": ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight"]})


# ------------------------------------------------------------ gradient surgery
def test_mgcm_projects_only_conflicting_modules_and_makes_them_orthogonal():
    net = three_module_net()
    partition = ModulePartition.from_model(net)
    assert partition.names == ["0", "1", "2"]
    primary = grads_like(partition.parameters, 1)
    noise = grads_like(partition.parameters, 2)
    # module 0: conflicting (mostly -primary); modules 1, 2: agreeing (mostly +primary)
    auxiliary = [(-1.0 if i in partition.group_ranges[0] else 1.0) * p + 0.3 * n for i, (p, n) in enumerate(zip(primary, noise))]
    original_primary, original_auxiliary = clone(primary), clone(auxiliary)
    out = [torch.zeros_like(p) for p in partition.parameters]

    mitigate("mgcm", primary, [auxiliary], [1.0], partition, out)

    assert all(torch.equal(a, b) for a, b in zip(primary, original_primary))  # primary never changes
    in_module = lambda grads, m: torch.cat([grads[i].reshape(-1) for i in partition.group_ranges[m]])  # noqa: E731
    assert float(in_module(original_auxiliary, 0) @ in_module(primary, 0)) < 0
    assert abs(float(in_module(auxiliary, 0) @ in_module(primary, 0))) < 1e-4  # orthogonal after projection
    assert not torch.allclose(in_module(auxiliary, 0), in_module(original_auxiliary, 0))
    for m in (1, 2):  # non-conflicting modules untouched, bit for bit
        assert torch.equal(in_module(auxiliary, m), in_module(original_auxiliary, m))
    for o, p, a in zip(out, primary, auxiliary):
        torch.testing.assert_close(o, p + a)


@pytest.mark.parametrize("flatten", [True, False])
def test_model_level_projection_matches_numpy_pcgrad_reference(flatten):
    params = list(three_module_net().parameters())
    primary = grads_like(params, 3)
    conflicting = [-0.7 * p + 0.2 * n for p, n in zip(primary, grads_like(params, 4))]
    agreeing = [0.5 * p + 0.2 * n for p, n in zip(primary, grads_like(params, 5))]

    def reference(g_p, g_a):
        p, a = flat(g_p), flat(g_a)
        return a - (a @ p) / (p @ p) * p if a @ p < 0 else a

    expected = [reference(primary, conflicting), reference(primary, agreeing)]
    auxiliaries = [clone(conflicting), clone(agreeing)]
    projected = project_model_level(primary, auxiliaries, flatten=flatten)
    assert projected.tolist() == [True, False]
    for got, want in zip(auxiliaries, expected):
        np.testing.assert_allclose(flat(got), want, rtol=1e-5, atol=1e-6)
    assert flat(auxiliaries[0]) @ flat(primary) == pytest.approx(0.0, abs=1e-4)


def test_conflict_masked_at_model_level_is_caught_by_mgcm_only():
    net = three_module_net()
    partition = ModulePartition.from_model(net)
    primary = grads_like(partition.parameters, 6)
    # a small conflict in the LayerNorm (module 1), strong agreement everywhere else
    auxiliary = [(-0.2 if i in partition.group_ranges[1] else 2.0) * p for i, p in enumerate(primary)]
    report = conflict_report(primary, [auxiliary], partition)
    assert report.module_conflicts[0].tolist() == [False, True, False]
    assert not bool(report.model_conflicts[0]) and bool(report.masked[0])

    for mitigation, changed in (("mgcm", True), ("model-level", False), ("none", False)):
        aux = clone(auxiliary)
        mitigate(mitigation, primary, [aux], [1.0], partition, [torch.zeros_like(p) for p in primary])
        layer_norm_changed = any(not torch.equal(aux[i], auxiliary[i]) for i in partition.group_ranges[1])
        assert layer_norm_changed is changed, mitigation
        if mitigation == "mgcm":  # the resolved LayerNorm gradient no longer opposes the primary
            assert all(float(torch.vdot(aux[i].reshape(-1), primary[i].reshape(-1))) == pytest.approx(0.0, abs=1e-6) for i in partition.group_ranges[1])


def test_gradient_surgery_without_mitigation_equals_backward_of_weighted_sum():
    torch.manual_seed(0)
    net = three_module_net()
    x = torch.randn(5, 4)
    losses = lambda: (net(x).pow(2).mean(), net(x)[:, 0].sum(), net(x)[:, 1].exp().mean())  # noqa: E731
    primary, aux1, aux2 = losses()
    (primary + 0.5 * aux1 + 2.0 * aux2).backward()
    expected = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    surgery = GradientSurgery(ModulePartition.from_model(net), "none", (0.5, 2.0))
    primary, aux1, aux2 = losses()
    report = surgery.backward(primary, [aux1, aux2])
    for p, want in zip(net.parameters(), expected):
        torch.testing.assert_close(p.grad, want)
    assert report.module_cosine.shape == (2, 3)
    with pytest.raises(ValueError, match="mitigation"):
        GradientSurgery(surgery.partition, "pcgrad")


def test_mgcm_peak_extra_memory_is_a_small_fraction_of_model_level():
    """Measured with the CPU allocator profiler: model-level holds two flattened gradient
    copies at once; MGCM only per-parameter scalars."""
    model = SimulSTTransformer(frame_dim=8, source_vocab=20, target_vocab=24, d_model=64, heads=4, encoder_layers=2, decoder_layers=2, ffn_dim=128)
    partition = ModulePartition.from_model(model)
    primary = grads_like(partition.parameters, 7)
    auxiliaries = [[-p + 0.1 * n for p, n in zip(primary, grads_like(partition.parameters, 8 + k))] for k in range(2)]
    out = [torch.zeros_like(p) for p in partition.parameters]
    param_bytes = sum(p.numel() * p.element_size() for p in partition.parameters)

    def peak(mitigation):
        aux = [clone(a) for a in auxiliaries]
        return measure_peak_allocation(lambda: mitigate(mitigation, primary, aux, [1.0, 1.0], partition, out))[1]

    model_level, module_level, none = peak("model-level"), peak("mgcm"), peak("none")
    assert model_level >= 2 * param_bytes
    assert module_level < 0.05 * model_level
    assert none <= module_level


# ------------------------------------------------------------------- corpus
def test_translation_rule_reorders_maps_and_adds_particles():
    language = SyntheticLanguage(
        num_words=4, num_particles=1,
        target_word=torch.tensor([2, 0, 3, 1]), compound=torch.tensor([False, False, True, False]),
        particle=torch.zeros(4, dtype=torch.long), modifier=torch.tensor([True, False, False, False]),
        acoustics=torch.eye(4),
    )
    source = torch.tensor([[0, 1, 2, 3], [3, 0, 0, 0]]) + FIRST_WORD
    source[1, 1:] = PAD
    target, lengths = language.translate(source, torch.tensor([4, 1]))
    # (0 1) swap -> 1 0 2 3 -> 0 2 3 <particle 4> 1
    assert (target[0] - FIRST_WORD).tolist() == [0, 2, 3, 4, 1] and lengths.tolist() == [5, 1]
    assert target[1].tolist()[:2] == [1 + FIRST_WORD, PAD]
    frames, frame_lengths = language.speak(source, torch.tensor([4, 1]), 2, 2, 0.0, torch.Generator().manual_seed(0))
    assert frame_lengths.tolist() == [8, 2]
    assert torch.equal(frames[0, 2], torch.eye(4)[1]) and torch.equal(frames[1, 2], torch.zeros(4))


# ------------------------------------------------------------ wait-k and AL
def test_wait_k_decoding_never_reads_beyond_k_plus_t_chunks():
    language = SyntheticLanguage.build(10, 2, 8, seed=0)
    corpus = build_corpus(language, 6, 3, 5, 2, 4, 0.3, seed=1)
    torch.manual_seed(0)
    model = SimulSTTransformer(8, language.source_vocab_size, language.target_vocab_size, d_model=32, heads=2, encoder_layers=1, decoder_layers=1, ffn_dim=32).eval()
    k, chunk, steps = 2, 3, 6
    stream = SpeechStream(corpus.frames, corpus.frame_lengths, chunk)
    result = wait_k_decode(model, stream, k, steps)
    assert len(stream.reads) == result.tokens.shape[1]
    for t, chunks in enumerate(stream.reads):  # the probe: what the policy asked for
        assert bool((chunks <= k + t).all()) and bool((chunks <= stream.num_chunks).all())
    # a leak probe: garbage beyond chunk k+t cannot change step t; a change within it does
    for t in range(3):
        allowed = (k + t) * chunk
        future, past = corpus.frames.clone(), corpus.frames.clone()
        future[:, allowed:] = torch.randn_like(future[:, allowed:]) * 100
        past[:, allowed - 1] += 5.0
        scores = lambda frames: wait_k_decode(model, SpeechStream(frames, corpus.frame_lengths, chunk), k, t + 1).scores[:, t]  # noqa: E731
        torch.testing.assert_close(scores(future), result.scores[:, t])
        assert not torch.allclose(scores(past), result.scores[:, t])


def test_average_lagging_matches_hand_computed_examples():
    # 10 frames, chunks of 2, wait-2: token t read min(2 + t - 1, 5) chunks -> 4, 6, 8, 10 frames
    # gamma = 4/10, tau = 4: AL = ((4-0) + (6-2.5) + (8-5) + (10-7.5)) / 4 = 3.25
    # hypothesis that stops early: delays 2, 4 of 10 frames, gamma = 0.2, tau = 2: ((2-0) + (4-5)) / 2 = 0.5
    delays = torch.tensor([[4, 6, 8, 10, 10], [2, 4, 6, 0, 0]])
    al = average_lagging(delays, torch.tensor([4, 2]), torch.tensor([10, 10]))
    torch.testing.assert_close(al, torch.tensor([3.25, 0.5], dtype=torch.float64))


# ----------------------------------------------------------------- workload
def tiny_workload(**overrides) -> MGCMWorkload:
    return MGCMWorkload(None, MGCMParams(**{**TINY, **overrides}))


def context(round_: int, partition_id: int = 0, num_partitions: int = 1, epochs: int = 1) -> TrainContext:
    return TrainContext(
        server_round=round_, partition_id=partition_id, num_partitions=num_partitions, local_epochs=epochs,
        lr=3e-3, batch_size=32, generator=torch.Generator().manual_seed(100 * round_ + partition_id),
    )


def test_local_training_improves_bleu():
    assert WORKLOADS.get("mgcm") is MGCMWorkload
    workload = tiny_workload()
    torch.manual_seed(0)
    model = workload.build_model()
    before = workload.evaluate(model)
    dataset = workload.client_dataset(0, 1)
    assert len(dataset) == 480
    metrics = workload.train(model, dataset, context(1, epochs=6))
    after = workload.evaluate(model)
    assert metrics["num-examples"] == 480 and 0 <= metrics["conflict_rate"] <= 1
    assert after["bleu"] > before["bleu"] + 10
    assert {"bleu_k1", "al_k1", "bleu_k3", "al_k3", "bleu_offline", "al_offline", "test_loss"} <= set(after)
    assert after["al_k1"] < after["al_k3"] < after["al_offline"]
    assert workload.headline_metric() == ("bleu", "max")


def test_federated_fedavg_rounds_improve_bleu():
    workload = tiny_workload(mitigation="model-level")
    torch.manual_seed(0)
    global_model = workload.build_model()
    before = workload.evaluate(global_model)["bleu"]
    clients = [workload.client_dataset(pid, 3) for pid in range(3)]
    assert sum(len(c) for c in clients) == 480
    for round_ in range(1, 4):
        states, sizes = [], []
        for pid, dataset in enumerate(clients):
            local = workload.build_model()
            local.load_state_dict(global_model.state_dict())
            sizes.append(workload.train(local, dataset, context(round_, pid, 3, epochs=2))["num-examples"])
            states.append(local.state_dict())
        weights = torch.tensor(sizes, dtype=torch.float32) / sum(sizes)
        global_model.load_state_dict({
            key: torch.einsum("c,c...->...", weights, torch.stack([s[key] for s in states])) for key in states[0]
        })
    assert workload.evaluate(global_model)["bleu"] > before + 5


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"mitigation": "pcgrad"}, "mitigation"),
        ({"wait-k": 0}, "wait-k"),
        ({"eval-wait-ks": "1,x"}, "eval-wait-ks"),
        ({"eval-wait-ks": "0"}, "eval-wait-ks"),
        ({"d-model": 30, "num-heads": 4}, "d-model"),
        ({"min-frames": 5, "max-frames": 2}, "min-frames"),
        ({"asr-weight": -1}, "asr-weight"),
        ({"wiat-k": 2}, "wiat-k"),
    ],
)
def test_bad_params_name_the_key(overrides, key):
    with pytest.raises(ValidationError, match=key):
        MGCMParams(**overrides)


def test_bad_partition_request_is_rejected():
    with pytest.raises(ValueError, match="partition_id"):
        tiny_workload().client_dataset(3, 3)


def test_task_losses_share_the_encoder_and_decoder():
    workload = tiny_workload()
    torch.manual_seed(0)
    model = workload.build_model()
    losses = task_losses(model, workload.test_corpus, wait_k=2, chunk_frames=3)
    used = {
        name: {n for n, p in model.named_parameters() if torch.autograd.grad(loss, p, retain_graph=True, allow_unused=True)[0] is not None}
        for name, loss in losses.items()
    }
    shared_encoder = {n for n in used["st"] if n.startswith("encoder_layers")}
    assert shared_encoder and shared_encoder <= used["asr"] and shared_encoder <= used["mt"]
    assert "ctc_head.weight" in used["asr"] and "ctc_head.weight" not in used["st"]
    assert "decoder_layers.0.ffn.inner.weight" in used["mt"] and "acoustic_frontend.weight" not in used["mt"]
