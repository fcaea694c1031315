"""Measures what the API's pre-queue job estimate (src/api/job-limits.ts) needs: training throughput in
multiply-accumulates per second and activation memory per sample, on the reference networks.

Usage: PYTHONPATH=engine OMP_NUM_THREADS=2 /usr/bin/python3 benchmarks/job_cost.py [--threads 2] [--steps 6]
For each reference model and batch size it runs fine-tuning steps the way engine/tuckerize/finetune.py does
(student forward + backward + SGD step, teacher forward without gradients) in a fresh process, and prints one
JSON line: model, input, batch, median seconds per step, MACs per second (4 x MACs x batch per step: forward,
backward ~2x forward, teacher forward), the peak RSS growth per sample between batch 8 and 64 as a multiple of
the sample's input bytes, and the same for an evaluation forward pass without gradients (batch 16 vs 256).
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

EVAL_CHILD = r'''
import json, resource, sys
import onnx, torch
from tuckerize.interpret import OnnxModule
path, batch, h, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
teacher = OnnxModule(onnx.load(path)).eval()
x = torch.rand(batch, 1, h, h)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    teacher(x)
print(json.dumps({"baseKiB": base, "peakKiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
'''

CHILD = r'''
import json, resource, sys, time, statistics
import onnx, torch
import torch.nn.functional as F
from tuckerize.interpret import OnnxModule
path, batch, h, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
model = onnx.load(path)
teacher = OnnxModule(model).eval()
student = OnnxModule(model).train()
opt = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)
def first(out):
    return out[0] if isinstance(out, (list, tuple)) else out
x = torch.rand(batch, 1, h, h)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(steps):
    t0 = time.perf_counter()
    with torch.no_grad():
        t = first(teacher(x))
    s = first(student(x))
    loss = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True)
    opt.zero_grad(); loss.backward(); opt.step()
    times.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
# Evaluation as finetune.predict does it (no gradients), after training so it starts from the training peak:
# only what it adds beyond that peak shows, so it is measured in its own process (mode "eval").
print(json.dumps({"stepSeconds": statistics.median(times[1:]), "baseKiB": base, "peakKiB": peak}))
'''

MODELS = {"fmnist-vgg": ("assets/models/fmnist-vgg.onnx", 66256640), "fmnist-resnet": ("assets/models/fmnist-resnet.onnx", None)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    for name, (path, macs) in MODELS.items():
        if macs is None:
            macs = json.load(open(path.replace(".onnx", ".json")))["macs"]
        results = {}
        for batch in (8, 64):
            out = subprocess.run([sys.executable, "-c", CHILD, path, str(batch), "28", str(args.steps), str(args.threads)],
                                 capture_output=True, text=True, check=True).stdout
            results[batch] = json.loads(out)
        evals = {}
        for batch in (16, 256):
            out = subprocess.run([sys.executable, "-c", EVAL_CHILD, path, str(batch), "28", str(args.threads)],
                                 capture_output=True, text=True, check=True).stdout
            evals[batch] = json.loads(out)
        eval_per_sample = (evals[256]["peakKiB"] - evals[16]["peakKiB"]) * 1024 / (256 - 16)
        small, large = results[8], results[64]
        per_sample_bytes = (large["peakKiB"] - small["peakKiB"]) * 1024 / (64 - 8)
        input_bytes = 28 * 28 * 4
        for batch, r in results.items():
            print(json.dumps({"model": name, "input": [batch, 1, 28, 28], "batch": batch, "threads": args.threads,
                              "stepSeconds": round(r["stepSeconds"], 5),
                              "macsPerSecond": round(4 * macs * batch / r["stepSeconds"]),
                              "activationBytesPerSample": round(per_sample_bytes),
                              "activationPerInputByte": round(per_sample_bytes / input_bytes, 1),
                              "evalBytesPerSample": round(eval_per_sample),
                              "evalPerInputByte": round(eval_per_sample / input_bytes, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
