"""Experiment (issue 4 follow-up): fmnist-vgg with EVBMF ranks but the 1-channel stem conv kept, then one epoch
of distillation + labels with the engine defaults, scored like benchmarks/accuracy_table.py (first 2,000 test images).

Run: /usr/bin/python3 benchmarks/stem_experiment.py
"""
import json
import os
import sys
import tempfile
import time
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "engine"))
import onnx, torch
from tuckerize.plan import make_plan
from tuckerize.surgery import rewrite
from tuckerize.finetune import run_finetune_stage
torch.set_num_threads(2); torch.manual_seed(0)
orig = onnx.load(os.path.join(os.path.dirname(__file__), "..", "assets", "models", "fmnist-vgg.onnx"))
plan = make_plan(orig, [1, 1, 28, 28], rule="vbmf")
for e in plan.layers:
    if e.kind == "tucker1":
        print("keeping", e.name, e.ranks); e.kind = "keep"; e.ranks = []; e.reason = "experiment: stem kept"
comp = rewrite(orig, plan).model
work = tempfile.mkdtemp()
job = {"jobId": "exp", "dataset": "builtin:fashion-mnist", "workDir": work, "outputDir": work, "threads": 2, "seed": 0,
       "options": {"rule": "vbmf", "finetune": {"epochs": 1, "evalSamples": 2000}}}
t = time.time()

model, sections = run_finetune_stage(job, orig, comp, lambda o: None)
acc = sections["accuracy"]
print(json.dumps({k: acc[k] for k in ("original", "compressed", "finetuned")}), round(time.time() - t, 1), "s")
