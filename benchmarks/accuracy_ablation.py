"""Issue 10's ablation: what each accuracy improvement adds, on both reference nets, full test split.

Rows (each at EVBMF ranks, rule `vbmf`, >= 4x fewer MACs):
  paper      method 'paper': every eligible layer rewritten at EVBMF's ranks (Kim et al. 2016), no
             calibration, the fine-tuning recipe the engine had before issue 10
  select     + layer selection and the rank floor (plan.py, method 'improved')
  calibrate  + data-aware calibration (calibrate.py, 1,024 training images, no labels)
  recipe     + the fine-tuning recipe chosen by measurement (the engine's defaults now)
and recipe candidates (`--configs`) for choosing those defaults. Each run: plan → rewrite → calibrate →
fine-tune for one epoch with the engine's own functions (the stages run.py chains), evaluated on all
10,000 Fashion-MNIST test images before fine-tuning, after 1/4 epoch and after the epoch. Every finished
run is appended to a JSONL at once; a rerun skips (net, config, seed) already there.

    /usr/bin/python3 benchmarks/accuracy_ablation.py run [--nets ...] [--configs ...] [--seeds 0 1] [--jsonl F]
    /usr/bin/python3 benchmarks/accuracy_ablation.py write [--jsonl F]    (the BENCHMARKS.md section)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "engine"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from markdown_section import write_section  # noqa: E402
from run_log import append_jsonl, read_jsonl, utc_now  # noqa: E402

NETS = ("fmnist-vgg", "fmnist-resnet")
DATASET = "builtin:fashion-mnist"
SECTION = "accuracy-ablation"
# Hand-written notes under the table (what limited the runs, measurements made outside this driver).
NOTES = ROOT / "benchmarks" / "accuracy_ablation_notes.md"
SCREEN_NOTES = ROOT / "benchmarks" / "accuracy_screen_notes.md"
# The fine-tuning recipe before issue 10, spelled out so the rows stay what they were when defaults move.
OLD_RECIPE = {"optimizer": "sgd", "lr": 0.01, "temperature": 4.0, "featureWeight": 0.0}
CONFIGS = {
    "paper": {"method": "paper", "calibration": 0, "finetune": OLD_RECIPE},
    "select": {"method": "improved", "calibration": 0, "finetune": OLD_RECIPE},
    "calibrate": {"method": "improved", "calibration": 1024, "finetune": OLD_RECIPE},
    "recipe": {"method": "improved", "calibration": 1024, "finetune": {}},
    # recipe candidates (measured on both nets; the best becomes the engine's default)
    "cal-lr0.003": {"method": "improved", "calibration": 1024, "finetune": dict(OLD_RECIPE, lr=0.003)},
    "cal-feat1": {"method": "improved", "calibration": 1024, "finetune": dict(OLD_RECIPE, featureWeight=1.0)},
    "cal-T2": {"method": "improved", "calibration": 1024, "finetune": dict(OLD_RECIPE, temperature=2.0)},
    "cal-adamw": {"method": "improved", "calibration": 1024,
                  "finetune": dict(OLD_RECIPE, optimizer="adamw", lr=3e-4)},
    "cal-lr0.02": {"method": "improved", "calibration": 1024, "finetune": dict(OLD_RECIPE, lr=0.02)},
    "cal-alpha0.5": {"method": "improved", "calibration": 1024, "finetune": dict(OLD_RECIPE, alpha=0.5)},
    # What limits the rows above: the same pipeline at exactly 4x fewer MACs (budget rule) instead of EVBMF's ~5x.
    "budget4x": {"method": "improved", "calibration": 1024, "finetune": {}, "rule": "budget", "targetMacs": 0.25},
    # What a service job with {"rule": "vbmf"} gets: ranks aligned to this CPU's channel block within EVBMF's MACs.
    "aligned": {"method": "improved", "calibration": 1024, "finetune": {}, "target": "host"},
    "cal-feat1-lr0.02": {"method": "improved", "calibration": 1024,
                         "finetune": dict(OLD_RECIPE, featureWeight=1.0, lr=0.02)},
    # Second round of candidates (screened on a GPU, the promising ones repeated on the CPU): what one epoch
    # can still gain from more calibration images, other batch sizes and loss settings; "epochs" rows show
    # how far more training would go (beyond the goal's one epoch: what limits it).
    "cal4096": {"method": "improved", "calibration": 4096, "finetune": {}},
    "bs32": {"method": "improved", "calibration": 1024, "finetune": {"batchSize": 32}},
    "bs32-lr0.005": {"method": "improved", "calibration": 1024, "finetune": {"batchSize": 32, "lr": 0.005}},
    "bs128-lr0.02": {"method": "improved", "calibration": 1024, "finetune": {"batchSize": 128, "lr": 0.02}},
    "alpha1": {"method": "improved", "calibration": 1024, "finetune": {"alpha": 1.0}},
    "wd0": {"method": "improved", "calibration": 1024, "finetune": {"weightDecay": 0.0}},
    "warmup0": {"method": "improved", "calibration": 1024, "finetune": {"warmupSteps": 0}},
    "clip1": {"method": "improved", "calibration": 1024, "finetune": {"clipGradNorm": 1.0}},
    "T8": {"method": "improved", "calibration": 1024, "finetune": {"temperature": 8.0}},
    "epochs2": {"method": "improved", "calibration": 1024, "finetune": {}, "epochs": 2},
    "epochs4": {"method": "improved", "calibration": 1024, "finetune": {}, "epochs": 4},
    "budget4x-cal4096": {"method": "improved", "calibration": 4096, "finetune": {}, "rule": "budget",
                         "targetMacs": 0.25},
    "cal4096-bs32": {"method": "improved", "calibration": 4096, "finetune": {"batchSize": 32}},
    "budget4x-wd0": {"method": "improved", "calibration": 1024, "finetune": {"weightDecay": 0.0}, "rule": "budget",
                     "targetMacs": 0.25},
    "budget4x-epochs4": {"method": "improved", "calibration": 1024, "finetune": {}, "rule": "budget",
                         "targetMacs": 0.25, "epochs": 4},
    # Ranks re-allocated by the layers' response energy on the calibration images (tuckerize/allocate.py), at
    # the base plan's MACs and at exactly 4x fewer.
    "energy": {"method": "improved", "calibration": 1024, "finetune": {}, "allocation": "energy"},
    "energy4x": {"method": "improved", "calibration": 1024, "finetune": {}, "allocation": "energy",
                 "allocationMacs": 0.25},
    # The first version: the MACs budget alone (weights may grow), measured before the weights budget.
    "energy-macs-only": {"method": "improved", "calibration": 1024, "finetune": {}, "allocation": "energy",
                         "weightsBudget": False},
    "energy4x-macs-only": {"method": "improved", "calibration": 1024, "finetune": {}, "allocation": "energy",
                           "allocationMacs": 0.25, "weightsBudget": False},
    "wd0-bs32": {"method": "improved", "calibration": 1024, "finetune": {"weightDecay": 0.0, "batchSize": 32}},
    # Third round, on the re-allocated plan: it starts ~1.5 points higher than EVBMF's ranks and the default
    # learning rate's first quarter epoch dips below that start (93.76 % -> 93.66 %): a lower peak rate.
    "energy-lr0.005": {"method": "improved", "calibration": 1024, "finetune": {"lr": 0.005}, "allocation": "energy"},
    "energy-wd0": {"method": "improved", "calibration": 1024, "finetune": {"weightDecay": 0.0}, "allocation": "energy"},
}
LABELS = {
    "energy": "+ all of it, ranks re-allocated by response energy within EVBMF's MACs and weights (what a job with images now does)",
    "energy-lr0.005": "re-allocated within EVBMF's MACs and weights, fine-tuning at a peak learning rate of 0.005 (default 0.01)",
    "energy-wd0": "re-allocated within EVBMF's MACs and weights, fine-tuning without weight decay",
    "energy4x": "ranks re-allocated by response energy at exactly 4× fewer MACs, weights within the base plan's (the engine's allocation)",
    "energy-macs-only": "+ all of it, ranks re-allocated by response energy within EVBMF's MACs only (weights may grow)",
    "energy4x-macs-only": "ranks re-allocated by response energy at exactly 4× fewer MACs, MACs budget only (first version)",
    "budget4x": "the same at exactly 4× fewer MACs (`{\"rule\": \"budget\", \"targetMacs\": 0.25}`), engine defaults",
    "aligned": "+ all of it, ranks aligned to the host's channel block (a service job's default)",
    "paper": "paper's method (every layer at EVBMF's ranks), old recipe",
    "select": "+ layer selection and rank floor, old recipe",
    "calibrate": "+ layer selection, rank floor and calibration (1,024 images), the fine-tuning defaults (no candidate beat them)",
    "recipe": "+ all of it and the recipe (engine defaults)",
}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo and the core count, for the table's caption."""
    try:
        with open("/proc/cpuinfo") as handle:
            name = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "unknown CPU")
    except OSError:
        name = "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


def _device_name() -> str:
    """What fine-tuning ran on (the engine takes the first CUDA device when there is one)."""
    from tuckerize.device import device_name
    return device_name()


def run_one(net: str, config: str, seed: int, threads: int, epochs: float, scratch: Path) -> dict:
    """One row's run; epochs 0 stops before fine-tuning (the model is only evaluated)."""
    import onnx
    import torch

    from tuckerize.calibrate import calibrate, calibration_images
    from tuckerize.finetune import run_finetune_stage
    from tuckerize.plan import make_plan
    from tuckerize.surgery import rewrite

    settings = CONFIGS[config]
    epochs = settings.get("epochs", epochs)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    original = onnx.load(str(ROOT / "assets" / "models" / f"{net}.onnx"))
    load_start = os.getloadavg()
    # Ranks exactly as EVBMF gives them (no channel-block rounding), so rows differ only by the method.
    plan = make_plan(original, [1, 1, 28, 28], rule=settings.get("rule", "vbmf"), method=settings["method"],
                     target=settings.get("target", {"block": 1}), target_macs=settings.get("targetMacs"))
    images = calibration_images(DATASET, [1, 1, 28, 28], settings["calibration"], seed) \
        if settings["calibration"] else None
    if settings.get("allocation") == "energy":
        # What a job with images does (run._allocate), here without channel-block rounding; allocationMacs
        # moves the budget from the plan's own MACs to that share of the original's.
        from tuckerize.allocate import allocate_by_energy
        if settings.get("allocationMacs"):
            macs = dict(plan.totals["macs"], after=int(settings["allocationMacs"] * plan.totals["macs"]["before"]))
            plan.totals = dict(plan.totals, macs=macs)
        plan = allocate_by_energy(original, plan, images, weights_budget=settings.get("weightsBudget", True))
    compressed = rewrite(original, plan).model
    calibration = None
    if settings["calibration"]:
        started = time.perf_counter()
        compressed, report = calibrate(original, compressed, [e.name for e in plan.rewritten()], images)
        calibration = {"samples": report["samples"], "seconds": round(time.perf_counter() - started, 2),
                       "layers": report["layers"]}
    if epochs == 0:
        from tuckerize.finetune import evaluate_stage
        job = {"jobId": f"ablation-{net}-{config}", "dataset": DATASET, "threads": threads, "seed": seed,
               "options": {"rule": "vbmf", "finetune": {"evalSamples": 10000}}}
        accuracy = evaluate_stage(job, original, compressed, lambda event: None)
        return {"net": net, "config": config, "seed": seed, "date": utc_now(), "cpu": cpu_model(), "device": _device_name(), "threads": threads,
                "epochs": 0,
                "settings": settings, "loadAverage": {"start": load_start, "end": os.getloadavg()},
                "macs": plan.totals["macs"], "params": plan.totals["params"],
                "kept": [e.name for e in plan.layers if e.kind == "keep" and e.reason], "calibration": calibration,
                "original": accuracy["original"], "beforeFinetune": accuracy["compressed"]}
    work = scratch / f"{net}-{config}-s{seed}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    finetune = dict(settings["finetune"], evalSamples=10000, evalEvery=0.25)
    if epochs >= 1:
        finetune["epochs"] = int(epochs)
    else:
        finetune["steps"] = int(epochs * (60000 // 64))
    job = {"jobId": f"ablation-{net}-{config}", "dataset": DATASET, "workDir": str(work), "outputDir": str(work),
           "threads": threads, "seed": seed, "options": {"rule": "vbmf", "finetune": finetune}}
    _, sections = run_finetune_stage(job, original, compressed, lambda event: None)
    shutil.rmtree(work, ignore_errors=True)
    accuracy, ft = sections["accuracy"], sections["finetune"]
    quarter = next((h["heldout"] for h in ft["history"] if abs(h["epoch"] - 0.25) < 0.01), None)
    return {
        "net": net, "config": config, "seed": seed, "date": utc_now(), "cpu": cpu_model(), "device": _device_name(),
        "threads": threads, "epochs": epochs,
        "settings": settings, "loadAverage": {"start": load_start, "end": os.getloadavg()},
        "macs": plan.totals["macs"], "params": plan.totals["params"],
        "kept": [e.name for e in plan.layers if e.kind == "keep" and e.reason],
        "calibration": calibration,
        "original": accuracy["original"], "beforeFinetune": accuracy["compressed"], "quarter": quarter,
        "finetuned": accuracy["finetuned"],
        "finetune": {k: ft.get(k) for k in ("steps", "batchSize", "wallSeconds", "imagesPerSecond", "loss", "options")},
        "curve": [{"epoch": h["epoch"], "top1": h["heldout"]["top1"]} for h in ft["history"] if h.get("heldout")],
    }


# --- rendering -------------------------------------------------------------------------------------------

def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.2f} %"
    return f"{100 * mean:.2f} % ± {100 * statistics.stdev(values):.2f}"


# Runs from before calibration refit the k×k cores (their layer reports carry no "core" key) are their own rows.
LAST_FACTOR_ONLY = ":last-factor"


def _row_config(record: dict) -> str:
    calibration = record.get("calibration")
    if calibration and not any("core" in layer for layer in calibration["layers"]):
        return record["config"] + LAST_FACTOR_ONLY
    return record["config"]


def _group(records: list[dict]) -> dict:
    groups: dict = {}
    for record in records:
        groups.setdefault((record["net"], _row_config(record)), []).append(record)
    return groups


def _label(config: str) -> str:
    base = config.removesuffix(LAST_FACTOR_ONLY)
    label = LABELS.get(base, f"candidate `{base}`: {json.dumps(CONFIGS[base]['finetune'])}")
    return label + (" — calibration of the last factors only (before the core refit)" if base != config else "")


def render(records: list[dict], command: str) -> str:
    groups = _group(records)
    configs = [c + suffix for c in CONFIGS for suffix in (LAST_FACTOR_ONLY, "")
               if any(key[1] == c + suffix for key in groups)]
    loads = [v[0] for r in records for v in r["loadAverage"].values()]
    threads = " or ".join(str(t) for t in sorted({r["threads"] for r in records}))
    lines = [
        "## Accuracy at ≥ 4× fewer MACs: ablation (issue 10)",
        "",
        f"Written by `{command}` from the runs that `/usr/bin/python3 benchmarks/accuracy_ablation.py run` appends to "
        "that JSONL. Each run: `vbmf` ranks without channel-block rounding (`target: {\"block\": 1}`; the `aligned` "
        "row: the host's block, as a service job), the method's "
        "plan, optional calibration, then one epoch (937 steps × 64 images) of fine-tuning on CPU with the engine's "
        "own stage functions; top-1 on all 10,000 Fashion-MNIST test images before fine-tuning, after ¼ epoch (the "
        "same run's held-out check at step 234, so the learning rate is not yet annealed) and after the epoch. "
        "Mean ± sample standard deviation over the seeds shown (seed = data order, calibration subset). "
        f"CPU: {'; '.join(sorted({r['cpu'] for r in records if 'cpu' in r}) or ['not recorded'])} (1-minute load average "
        f"{min(loads):.1f}–{max(loads):.1f} at run starts/ends), torch with {threads} thread(s) (each run's count is in its record); runs "
        f"from {min(r['date'] for r in records)} to {max(r['date'] for r in records)}. FT time and images/s count "
        "the training steps only; at load averages above 2 they measure the machine's other work as well.",
        "",
        "| net | row | seeds | MACs (× fewer) | top-1 before FT | after ¼ epoch | after 1 epoch | Δ vs original (points) "
        "| FT time (s) | images/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for net in NETS:
        original = next((r["original"]["top1"] for r in records if r["net"] == net), None)
        if original is None:
            continue
        lines.append(f"| {net} | original | — | 1.00× | {100 * original:.2f} % | — | — | — | — | — |")
        for config in configs:
            runs = groups.get((net, config))
            if not runs:
                continue
            # Runs stopped before fine-tuning (epochs 0) add to the "before" column only, and only where no
            # fine-tuned run of the row exists (a seed's two runs would count its start twice).
            tuned = [r for r in runs if r.get("finetuned")]
            before = [r["beforeFinetune"]["top1"] for r in (tuned or runs)]
            quarter = [r["quarter"]["top1"] for r in tuned if r.get("quarter")]
            after = [r["finetuned"]["top1"] for r in tuned]
            label = _label(config)
            seeds = sorted({r["seed"] for r in runs})
            if tuned:
                drop = [100 * (a - original) for a in after]
                wall = statistics.median(r["finetune"]["wallSeconds"] for r in tuned)
                rate = statistics.median(r["finetune"]["imagesPerSecond"] for r in tuned)
                drop_text = f"{statistics.fmean(drop):+.2f}" + (f" (worst {min(drop):+.2f})" if len(drop) > 1 else "")
                tail = (f"{_spread(quarter) if quarter else '—'} | {_spread(after)} | {drop_text} | {wall:.0f} "
                        f"| {rate:.0f}")
            else:
                tail = "not measured | not measured | — | — | —"
            lines.append(f"| {net} | {label} | {', '.join(map(str, seeds))} | {1 / runs[0]['macs']['ratio']:.2f}× "
                         f"| {_spread(before)} | {tail} |")
    return "\n".join(lines) + "\n"


def render_screen(records: list[dict], command: str) -> str:
    """The second round of candidates, screened on a GPU: one row per (net, config), mean over the seeds."""
    groups = _group(records)
    devices = sorted({r.get("device", "cpu") for r in records})
    lines = [
        "### Second round: candidates screened on a GPU",
        "",
        f"Rows written by `{command}`. Same driver and pipeline as the table above (plan and calibration on the CPU, "
        f"then fine-tuning and evaluation on {', '.join(devices)}: a {len(records)}-run screen that fits a few "
        "minutes of a lent GPU; the CPU rows above stay the measured figures). The GPU's own run-to-run spread at "
        "one configuration (`recipe`, seeds 0–2) is shown, and seeds at one setting differ by up to 0.36 points. Curves: "
        "top-1 on all 10,000 test images; rows with `epochs` train longer than the goal's one epoch, to show what "
        "more training would reach.",
        "",
        "| net | row | settings | seeds | MACs (× fewer) | top-1 before FT (first seed) | at the end (each seed) "
        "| mean Δ vs original (points) | after each epoch (first seed) |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for net in NETS:
        original = next((r["original"]["top1"] for r in records if r["net"] == net), None)
        for (group_net, config), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], list(CONFIGS).index(kv[0][1]))):
            if group_net != net:
                continue
            runs = sorted(runs, key=lambda r: r["seed"])
            settings = {k: v for k, v in CONFIGS[config].items() if k != "method"}
            after = [r["finetuned"]["top1"] for r in runs]
            mean_drop = 100 * (statistics.fmean(after) - original)
            epochs = [f"{100 * point['top1']:.2f}" for point in runs[0].get("curve", []) if float(point["epoch"]).is_integer()]
            lines.append(
                f"| {net} | {config} | `{json.dumps(settings)}` | {', '.join(str(r['seed']) for r in runs)} "
                f"| {1 / runs[0]['macs']['ratio']:.2f}× | {100 * runs[0]['beforeFinetune']['top1']:.2f} % "
                f"| {', '.join(f'{100 * a:.2f}' for a in after)} % | {mean_drop:+.2f} | {' → '.join(epochs)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "write"])
    parser.add_argument("--nets", nargs="+", default=list(NETS))
    parser.add_argument("--configs", nargs="+", default=["recipe", "paper", "select", "calibrate"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--jsonl", type=Path, nargs="+", default=[ROOT / ".cache" / "accuracy-ablation.jsonl"],
                        help="run: the first file is appended to; write: every file is read")
    parser.add_argument("--benchmarks", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--screen", type=Path, default=None,
                        help="write: also render this JSONL of GPU-screened candidates, after the notes")
    args = parser.parse_args(argv)
    if args.action == "run":
        scratch = Path(tempfile.mkdtemp(prefix="tz-ablation-"))
        for seed in args.seeds:
            for config in args.configs:
                for net in args.nets:
                    done = {(r["net"], _row_config(r), r["seed"]) for r in read_jsonl(args.jsonl[0])}
                    if (net, config, seed) in done:
                        continue
                    started = time.perf_counter()
                    record = run_one(net, config, seed, args.threads, args.epochs, scratch)
                    record["processSeconds"] = round(time.perf_counter() - started, 1)
                    append_jsonl(args.jsonl[0], record)
                    print(f"{net} {config} seed {seed}: before {record['beforeFinetune']['top1']:.4f} "
                          f"quarter {(record.get('quarter') or {}).get('top1')} "
                          f"after {(record.get('finetuned') or {}).get('top1')} ({record['processSeconds']} s)", flush=True)
        return 0
    records = [r for path in args.jsonl for r in read_jsonl(path)]
    if not records:
        raise SystemExit(f"{args.jsonl} holds no runs")
    shown = " ".join(os.path.relpath(path, ROOT) for path in args.jsonl)
    section = render(records, f"/usr/bin/python3 benchmarks/accuracy_ablation.py write --jsonl {shown}")
    if NOTES.exists():
        section += "\n" + NOTES.read_text()
    if args.screen:
        screen_command = (f"/usr/bin/python3 benchmarks/accuracy_ablation.py write --jsonl {shown} "
                          f"--screen {os.path.relpath(args.screen, ROOT)}")
        section += "\n" + render_screen(read_jsonl(args.screen), screen_command)
        if SCREEN_NOTES.exists():
            section += "\n" + SCREEN_NOTES.read_text()
    write_section(args.benchmarks, SECTION, section, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
