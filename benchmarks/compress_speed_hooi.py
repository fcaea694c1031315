"""HOOI sweeps against error and time: how many sweeps after HOSVD the Tucker-2 default should run.

For every Tucker-2 layer of a plan (VGG-16's `budget` plan by default), tucker2() at 0, 1, 2, 3, 5 and 10
sweeps: the weight error ‖W − Ŵ‖/‖W‖ and the CPU time. "Gap" is how far the error stays above the
20-sweep result (taken as converged), relative to it. Writes a markdown section (between
<!-- hooi:begin --> and <!-- hooi:end -->) into BENCHMARKS.md, or prints it with --no-write.

Usage: PYTHONPATH=engine python3 benchmarks/compress_speed_hooi.py [--model M.onnx] [--plan P.json] [--no-write]
  Without --plan, the plan is made with `--rule budget --target-macs 0.2028` (default target).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "engine"))
sys.path.insert(0, str(REPO / "engine" / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from markdown_section import add_output_arguments, cpu_name, publish  # noqa: E402
from tuckerize.onnx_graph import constant_tensors, load_model  # noqa: E402
from tuckerize.plan import Plan, make_plan  # noqa: E402
from tuckerize.ranks import TARGET_HOST  # noqa: E402
from tuckerize.tucker import tucker2  # noqa: E402

SWEEPS = (0, 1, 2, 3, 5, 10)
CONVERGED = 20


def measure(model_path: str, plan_path: str | None) -> tuple[list[dict], str]:
    model = load_model(model_path)
    if plan_path:
        plan = Plan.from_json(Path(plan_path).read_text())
        source = f"plan {Path(plan_path).name}"
    else:
        plan = make_plan(model, rule="budget", target_macs=0.2028, target=TARGET_HOST)
        source = "plan: budget, targetMacs 0.2028, default target (this CPU's block)"
    constants = constant_tensors(model)
    rows = []
    for entry in plan.layers:
        if entry.kind != "tucker2":
            continue
        W = torch.from_numpy(numpy_helper.to_array(constants[entry.weight]).copy())
        r_out, r_in = entry.ranks
        converged = tucker2(W, r_out, r_in, n_iter=CONVERGED).rel_error
        row = {"layer": entry.name, "shape": list(W.shape), "ranks": entry.ranks, "converged": converged, "sweeps": {}}
        for n in SWEEPS:
            start = time.process_time()
            err = tucker2(W, r_out, r_in, n_iter=n).rel_error
            row["sweeps"][n] = {"error": err, "cpu": time.process_time() - start}
        rows.append(row)
        print(f"[hooi] {entry.name}: " + ", ".join(f"{n}: {v['error']:.5f} ({v['cpu']:.2f}s)" for n, v in row["sweeps"].items()),
              file=sys.stderr)
    return rows, source


def render(rows: list[dict], source: str, command: str, load: tuple[float, float, float]) -> str:
    cpu = cpu_name()
    lines = [
        "## HOOI sweeps: error and time (issue 11)",
        "",
        f"Measured — command `{command}`; {source}; {cpu} ({os.cpu_count()} cores), torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads); {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC; load average "
        f"{'/'.join(f'{v:.1f}' for v in load)} at start. Error = ‖W − Ŵ‖/‖W‖ of the Tucker-2 factors; gap = how much "
        f"higher than after {CONVERGED} sweeps (taken as converged), relative to it; CPU = process CPU seconds "
        "(all threads), summed over the layers.",
        "",
        "| sweeps after HOSVD | Σ CPU (s) | mean gap | worst gap | worst layer |",
        "|---:|---:|---:|---:|---|",
    ]
    for n in SWEEPS:
        gaps = [(r["sweeps"][n]["error"] - r["converged"]) / r["converged"] for r in rows]
        worst = max(range(len(rows)), key=lambda i: gaps[i])
        cpu_total = sum(r["sweeps"][n]["cpu"] for r in rows)
        lines.append(f"| {n} | {cpu_total:.2f} | {100 * sum(gaps) / len(gaps):.3f} % | {100 * gaps[worst]:.3f} % | "
                     f"{rows[worst]['layer']} |")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="ONNX model (default: the zoo's VGG-16 at 224)")
    parser.add_argument("--plan", help="plan.json to take the ranks from")
    add_output_arguments(parser, REPO / "BENCHMARKS.md")
    args = parser.parse_args()
    model = args.model
    if model is None:
        from zoo_cache import zoo_path
        model = str(zoo_path("vgg16", 13, 224))
    load = os.getloadavg()
    rows, source = measure(model, args.plan)
    command = "python3 benchmarks/compress_speed_hooi.py" + (f" --plan {Path(args.plan).name}" if args.plan else "")
    section = render(rows, source, command, load)
    publish(args, "hooi", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
