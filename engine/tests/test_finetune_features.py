"""Fine-tuning options added for issue 10: feature distillation at the rewritten layers, held-out checks
inside an epoch."""
from __future__ import annotations

import numpy as np
import torch

from onnx_builders import tiny_cnn
from test_finetune import teacher_labels, write_npz
from tuckerize.finetune import feature_loss, rewritten_outputs, run_finetune_stage
from tuckerize.plan import make_plan
from tuckerize.surgery import rewrite


def test_feature_loss_is_relative_and_zero_on_equal_features():
    t = [torch.ones(2, 3), 2 * torch.ones(4)]
    assert float(feature_loss(t, t)) == 0.0
    assert float(feature_loss([2 * torch.ones(2, 3)], [torch.ones(2, 3)])) == 1.0   # ‖s − t‖²/‖t‖²


def test_feature_distillation_and_quarter_checks_in_a_short_run(tmp_path):
    original = tiny_cnn(np.random.default_rng(2), size=16)
    plan = make_plan(original, [1, 1, 16, 16], rule="ratio", ratio=0.5)
    compressed = rewrite(original, plan).model
    features = rewritten_outputs(original, compressed)
    # Every rewritten layer's output except the graph's own output (the logits are distilled already).
    assert sorted(features) == sorted(n.output[0] for n in original.graph.node if n.name in
                                      {e.name for e in plan.rewritten()} and n.output[0] != "output")
    assert features
    images = np.random.default_rng(3).uniform(0, 1, (160, 1, 16, 16)).astype(np.float32)
    dataset = write_npz(tmp_path / "data.npz", images, teacher_labels(original, images))
    job = {"jobId": "features", "dataset": dataset, "workDir": str(tmp_path / "work"), "threads": 1, "seed": 0,
           "options": {"finetune": {"epochs": 1, "batchSize": 16, "featureWeight": 1.0, "evalEvery": 0.25,
                                    "lr": 0.001}}}
    trained, sections = run_finetune_stage(job, original, compressed, lambda event: None)
    report = sections["finetune"]
    assert report["loss"]["featureWeight"] == 1.0
    # 144 training images / 16 = 9 steps; checks at steps 2, 4, 6, 8 and the epoch's end.
    assert [h["step"] for h in report["history"]] == [2, 4, 6, 8, 9]
    # The trained model keeps the compressed graph's outputs (the feature taps are not written back).
    assert [o.name for o in trained.graph.output] == [o.name for o in compressed.graph.output]
