"""Calibration (calibrate.py): least-squares refit of each rewritten layer's last factor, BN re-estimation."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from onnx_builders import make_model, tiny_cnn, to_float64, value
from tuckerize.calibrate import (calibrate, calibration_data, find_targets, output_error, reestimate_batchnorm,
                                 residual, solve_factor, tap_model)
from tuckerize.interpret import OnnxModule
from tuckerize.plan import make_plan
from tuckerize.surgery import rewrite


def _images(n: int = 96, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 1, size, size)))


def _compressed(model, **plan_options):
    plan = make_plan(model, [1, 1, 16, 16], **plan_options)
    return plan, rewrite(model, plan).model


def _initializer(model, name):
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


def _set(model, name, array):
    for init in model.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(array, name))


def test_solver_recovers_an_exact_linear_map_and_never_beats_it():
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.standard_normal((500, 6)))
    x_true = torch.from_numpy(rng.standard_normal((6, 4)))
    y = a @ x_true
    gram, cross, energy = a.T @ a, a.T @ y, float((y * y).sum())
    x = solve_factor(gram, cross)
    assert torch.allclose(x, x_true, atol=1e-6)
    assert residual(gram, cross, energy, x) < 1e-9 * energy
    assert residual(gram, cross, energy, x_true + 0.1) > residual(gram, cross, energy, x)


def test_exactly_representable_layers_are_recovered_after_their_last_factor_is_damaged():
    original = to_float64(tiny_cnn(np.random.default_rng(0), structured=False))
    # Full ranks: the rewrite is exact, so the original outputs are reachable by the last factors.
    plan, compressed = _compressed(original, rule="ratio", ratio=1.0, method="paper", force=True)
    rewritten = [e.name for e in plan.rewritten()]
    targets = [t for t in find_targets(original, compressed, rewritten) if t.kind == "factor"]
    assert {t.layer for t in targets} == set(rewritten)
    rng = np.random.default_rng(2)
    for target in targets:  # damage every last factor and its bias
        _set(compressed, target.weight, _initializer(compressed, target.weight) * (1 + 0.3 * rng.standard_normal(
            _initializer(compressed, target.weight).shape)))
        if target.bias:
            _set(compressed, target.bias, _initializer(compressed, target.bias) + 0.5)
    x = _images()
    damaged = output_error(original, compressed, x)
    assert damaged > 0.05
    calibrated, report = calibrate(original, compressed, rewritten, x)
    # Up to the solver's ridge term (1e-6 of ZᵀZ's scale), the damage is gone.
    assert output_error(original, calibrated, x) < 1e-4 * damaged
    assert output_error(original, calibrated, _images(seed=9)) < 1e-4 * damaged  # the weights, not the images
    assert all(layer["refit"] for layer in report["layers"])


def test_calibration_never_increases_any_layer_error_and_lowers_the_network_error():
    original = tiny_cnn(np.random.default_rng(3), structured=False)
    plan, compressed = _compressed(original, rule="ratio", ratio=0.25, method="paper")
    x = _images(seed=4).float()
    calibrated, report = calibrate(original, compressed, [e.name for e in plan.rewritten()], x)
    for layer in report["layers"]:
        assert layer["relErrorAfter"] <= layer["relErrorBefore"] + 1e-12
    assert output_error(original, calibrated, x) < output_error(original, compressed, x)
    # The input graph is left as it was.
    assert onnx.helper.printable_graph(compressed.graph) == onnx.helper.printable_graph(
        _compressed(original, rule="ratio", ratio=0.25, method="paper")[1].graph)


def test_tap_model_computes_only_what_an_inner_tensor_needs():
    original = tiny_cnn(np.random.default_rng(5))
    tapped = tap_model(original, ["s_relu"])
    assert [n.name for n in tapped.graph.node] == ["stem", "stem_relu"]
    assert {i.name for i in tapped.graph.initializer} == {"stem.w", "stem.b"}
    out = OnnxModule(tapped).eval()(_images(4).float())
    assert out.shape == (4, 16, 16, 16) and bool((out >= 0).all())


def _bn_model(scale, bias, mean, var, w):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn", epsilon=1e-5)]
    inits = [numpy_helper.from_array(a, n) for n, a in (("w", w), ("g", scale), ("b", bias), ("m", mean), ("v", var))]
    return make_model(nodes, [value("x", ["N", 1, 8, 8])], [value("y", ["N", 4, 8, 8])], inits)


def test_batchnorm_statistics_follow_the_compressed_activations_and_stay_put_when_exact():
    rng = np.random.default_rng(6)
    stats = (rng.uniform(0.5, 1.5, 4), rng.normal(0, 0.1, 4), rng.normal(0, 0.2, 4), rng.uniform(0.5, 1.5, 4))
    w = rng.standard_normal((4, 1, 3, 3))
    original = _bn_model(*stats, w)
    x = _images(64, 8, seed=7)
    # Exact: the compressed graph equals the original, so nothing may move.
    same = onnx.ModelProto()
    same.CopyFrom(original)
    target = next(t for t in find_targets(original, same, []) if t.kind == "batchnorm")
    reestimate_batchnorm(original, same, target, x)
    assert np.allclose(_initializer(same, "m"), stats[2]) and np.allclose(_initializer(same, "v"), stats[3])
    # Shifted and scaled conv outputs: re-estimation restores the original BN output moments per channel.
    shifted = _bn_model(*stats, w * 1.7)
    reestimate_batchnorm(original, shifted, target, x)
    a = OnnxModule(original).eval()(x)
    b = OnnxModule(shifted).eval()(x)
    assert torch.allclose(a.mean(dim=(0, 2, 3)), b.mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(a.std(dim=(0, 2, 3)), b.std(dim=(0, 2, 3)), atol=1e-6)


def test_a_damaged_core_is_refit_with_the_last_factor_through_its_strided_geometry():
    """conv2 (3×3, stride 2, pads 1) at full Tucker-2 rank: the original is reachable, and only a refit of the
    k×k core itself can undo damage to it; the last factor alone cannot."""
    original = to_float64(tiny_cnn(np.random.default_rng(6), structured=False))
    plan, compressed = _compressed(original, rule="ratio", ratio=1.0, method="paper", force=True)
    (target,) = [t for t in find_targets(original, compressed, ["conv2"]) if t.kind == "factor"]
    core = compressed.graph.node[target.core]
    assert core.name == "conv2__tucker_core"
    rng = np.random.default_rng(7)
    weight = _initializer(compressed, core.input[1])
    _set(compressed, core.input[1], weight * (1 + 0.3 * rng.standard_normal(weight.shape)))
    x = _images()
    damaged = output_error(original, compressed, x)
    calibrated, report = calibrate(original, compressed, ["conv2"], x)
    (layer,) = report["layers"]
    assert layer["core"] is True and layer["relErrorAfter"] < 1e-5 < layer["relErrorBefore"]
    assert output_error(original, calibrated, _images(seed=8)) < 1e-4 * damaged


def test_a_jobs_calibration_images_come_from_the_training_part_it_fine_tunes_on(tmp_path):
    """One load gives the allocation, the calibration and the held-out check their data: the images are drawn
    (seeded) from the training part the job's own fine-tuning options leave, never from the held-out split."""
    from test_finetune import write_npz
    from tuckerize.finetune import parse_options, training_data

    pixels = np.arange(200, dtype=np.float32).reshape(200, 1, 1, 1).repeat(4, axis=2).repeat(4, axis=3)
    dataset = write_npz(tmp_path / "data.npz", pixels, np.arange(200) % 3)
    job = {"dataset": dataset, "seed": 5, "options": {"finetune": {"maxSamples": 40, "evalSamples": 10}}}
    images, heldout = calibration_data(job, [1, 1, 4, 4], 16)
    train_set, expected_heldout = training_data(dataset, [1, 1, 4, 4], 5, parse_options({"maxSamples": 40,
                                                                                          "evalSamples": 10}))
    ids = set(images[:, 0, 0, 0].tolist())
    assert len(ids) == 16 and ids <= set(train_set.x[:, 0, 0, 0].tolist())
    assert not ids & set(heldout.x[:, 0, 0, 0].tolist())
    assert torch.equal(heldout.x, expected_heldout.x) and len(heldout) == 10
    again, _ = calibration_data(job, [1, 1, 4, 4], 16)
    assert torch.equal(images, again), "the draw is seeded"
