"""Where a compression's time goes, and how it grows with the weight count (issue 5, item 5).

Runs `python3 -m tuckerize compress`'s pipeline (load → EVBMF plan → rewrite → check → serialise →
write) on torchvision networks with random weights and reports each stage's wall and CPU time, plus
the CLI end to end in a child process. CPU time (process-wide, all threads) is the number to compare
on a shared machine: wall time there includes waiting for the cores.

  /usr/bin/python3 benchmarks/compress_speed.py              # full table → BENCHMARKS.md (its section)
  /usr/bin/python3 benchmarks/compress_speed.py --quick      # resnet18 at 64×64, prints JSON only
  /usr/bin/python3 benchmarks/compress_speed.py --engine DIR # measure another engine tree (before/after)

Rules measured: `vbmf` (plain EVBMF; random weights have no structure, so it keeps most layers:
this is the analysis cost) and `budget` at the paper's MACs reduction (VGG-16: 4.93×, ResNets: 2×),
which runs EVBMF on every layer and rewrites all of them, FC layers included.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_CACHE = REPO / ".cache" / "zoo-bench"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
BEGIN, END = "<!-- compress-speed:begin -->", "<!-- compress-speed:end -->"

# (network, input size, budget target MACs fraction)
FULL_CASES = [("vgg16", 224, 1 / 4.93), ("resnet18", 224, 0.5), ("resnet34", 224, 0.5),
              ("resnet50", 224, 0.5), ("resnet101", 224, 0.5), ("resnet152", 224, 0.5)]
QUICK_CASES = [("resnet18", 64, 0.5)]
ZOO_NAMES = {"alexnet", "vgg16", "googlenet", "resnet18", "resnet50", "mobilenet_v2", "vggs"}


def model_path(name: str, input_size: int) -> Path:
    """An ONNX export of `name` (random weights): the tests' zoo cache, or .cache/zoo-bench for the
    ResNets that tuckerize.zoo does not build."""
    if name in ZOO_NAMES:
        for entry in (REPO / "engine", REPO / "engine" / "tests"):
            if str(entry) not in sys.path:
                sys.path.insert(0, str(entry))
        from zoo_cache import zoo_path
        return zoo_path(name, 13, input_size)
    path = BENCH_CACHE / f"{name}-opset13-{input_size}.onnx"
    if path.is_file():
        return path
    import torch
    import torchvision

    BENCH_CACHE.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with torch.no_grad():
        torch.onnx.export(net, (torch.zeros(1, 3, input_size, input_size),), str(tmp), opset_version=13,
                          input_names=["input"], output_names=["output"], do_constant_folding=True)
    os.replace(tmp, path)
    return path


class Clock:
    """Wall and CPU seconds per named stage; nested stages are also counted in their parent."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu

    def timed(self, name: str, fn):
        def wrapper(*args, **kwargs):
            with self.stage(name):
                return fn(*args, **kwargs)
        return wrapper


def measure_stages(path: Path, rule: str, target_macs: float | None, output: Path) -> dict:
    """One compression in this process, stage by stage (the same calls as cli._compress)."""
    import onnx

    from tuckerize import plan as plan_module
    from tuckerize import surgery
    from tuckerize.atomic import atomic_write_bytes
    from tuckerize.onnx_graph import load_model

    clock = Clock()
    # The decompositions and EVBMF are timed where surgery/plan call them: instrumentation only.
    plan_module.evbmf = clock.timed("evbmf", plan_module.evbmf)
    surgery.tucker2 = clock.timed("tucker2", surgery.tucker2)
    surgery.tucker1 = clock.timed("tucker1", surgery.tucker1)
    surgery.svd_factors = clock.timed("svd_factors", surgery.svd_factors)
    with clock.stage("total"):
        with clock.stage("load"):
            model = load_model(path)
        with clock.stage("plan"):
            plan = plan_module.make_plan(model, rule=rule, target_macs=target_macs)
        with clock.stage("rewrite"):
            result = surgery.rewrite(model, plan)
        with clock.stage("check"):
            onnx.checker.check_model(result.model, full_check=True)
        with clock.stage("serialize"):
            data = result.model.SerializeToString()
        with clock.stage("write"):
            atomic_write_bytes(str(output), data)
    decompositions = [k for k in ("tucker2", "tucker1", "svd_factors") if k in clock.cpu]
    for kind in (clock.wall, clock.cpu):
        kind["plan_other"] = kind["plan"] - kind.get("evbmf", 0.0)
        kind["graph"] = kind["rewrite"] - sum(kind[k] for k in decompositions)
    weights = sum(_numel(t) for t in model.graph.initializer)
    return {"weights": weights, "layers": len(plan.layers), "rewritten": len(plan.rewritten()),
            "macs_ratio": plan.totals["macs"]["ratio"], "params_ratio": plan.totals["params"]["ratio"],
            "wall": clock.wall, "cpu": clock.cpu, "output_bytes": len(data)}


def _numel(tensor) -> int:
    n = 1
    for d in tensor.dims:
        n *= d
    return n


def child_env(engine: Path, blas_threads: int | None) -> dict:
    """The children's environment: the engine to measure and, unless None (the libraries' default:
    one thread per core), the BLAS/OpenMP thread count."""
    env = dict(os.environ, PYTHONPATH=str(engine))
    if blas_threads is not None:
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(blas_threads)
    return env


def measure_cli(path: Path, rule: str, target_macs: float | None, output: Path, env: dict) -> dict:
    """`python3 -m tuckerize compress` end to end in a child: wall, CPU (user + sys), exit code."""
    command = [sys.executable, "-m", "tuckerize", "compress", str(path), "-o", str(output), "--rule", rule]
    if target_macs is not None:
        command += ["--target-macs", f"{target_macs:.6f}"]
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)      # this child's own CPU time and peak memory
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        lines = stderr.read().decode(errors="replace").strip().splitlines()
    cpu = usage.ru_utime + usage.ru_stime
    error = (lines or ["(no message)"])[-1] if proc.returncode else None
    return {"command": " ".join(["python3"] + command[1:5] + ["-o", "OUT.onnx"] + command[7:]),
            "exit": proc.returncode, "wall": wall, "cpu": cpu, "error": error,
            "max_rss_mib": usage.ru_maxrss / 1024}


def run_case(name: str, size: int, rule: str, target: float | None, engine: Path, workdir: Path,
             blas_threads: int | None = None) -> dict:
    """Both measurements of one case, each in a fresh child process (no shared caches or heap)."""
    env = child_env(engine, blas_threads)
    path = model_path(name, size)
    target_macs = target if rule == "budget" else None
    output = workdir / f"{name}-{size}-{rule}.onnx"
    child = [sys.executable, __file__, "--stages", str(path), rule, json.dumps(target_macs), str(output)]
    proc = subprocess.run(child, env=env, capture_output=True, text=True)
    if proc.returncode == 0:
        stages = json.loads(proc.stdout.strip().splitlines()[-1])
    else:
        stages = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    cli = measure_cli(path, rule, target_macs, output, env)
    for leftover in (output,):
        if leftover.exists():
            leftover.unlink()
    return {"network": name, "input": size, "rule": rule, "target_macs": target_macs,
            "stages": stages, "cli": cli}


def environment(threads_note: str) -> dict:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "threads_note": threads_note,
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load": os.getloadavg()}


def _s(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def markdown(results: list[dict], env: dict, label: str, command: str) -> str:
    lines = [f"### {label}", "",
             f"Command `{command}`; {env['cpu']} ({env['cores']} cores), torch {env['torch']} "
             f"({env['torch_threads']} intra-op thread(s); {env['threads_note']}), {env['date']}, load average "
             f"{'/'.join(f'{x:.1f}' for x in env['load'])} at start. CPU = user + system seconds of all threads.",
             "",
             "| network | rule | weights (M) | layers rewritten | MACs ratio | CLI exit | CLI wall (s) | CLI CPU (s) "
             "| CPU s per M weights | load | EVBMF | plan other | Tucker-2/1 | FC/1×1 SVD | graph | check | serialize + write "
             "| peak RSS (MiB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        st, cli = r["stages"], r["cli"]
        rule = r["rule"] if r["target_macs"] is None else f"budget 1/{1 / r['target_macs']:.3g}"
        if "error" in st:
            lines.append(f"| {r['network']} | {rule} | | | | {cli['exit']} | {_s(cli['wall'])} | {_s(cli['cpu'])} "
                         f"| | failed: {st['error'][:150]} |||||||| {cli['max_rss_mib']:.0f} |")
            continue
        cpu = st["cpu"]
        weights_m = st["weights"] / 1e6
        per_m = cli["cpu"] / weights_m if cli["exit"] == 0 else None
        tucker = cpu.get("tucker2", 0.0) + cpu.get("tucker1", 0.0)
        lines.append(
            f"| {r['network']} ({r['input']}) | {rule} | {weights_m:.1f} | {st['rewritten']}/{st['layers']} "
            f"| {st['macs_ratio']:.3f} | {cli['exit']} | {_s(cli['wall'])} | {_s(cli['cpu'])} | {_s(per_m)} "
            f"| {_s(cpu['load'])} | {_s(cpu.get('evbmf', 0.0))} | {_s(cpu['plan_other'])} | {_s(tucker)} "
            f"| {_s(cpu.get('svd_factors', 0.0))} | {_s(cpu['graph'])} | {_s(cpu['check'])} "
            f"| {_s(cpu['serialize'] + cpu['write'])} | {cli['max_rss_mib']:.0f} |")
    failed = [r for r in results if r["cli"]["exit"] != 0]
    for r in failed:
        lines.append(f"\n{r['network']} {r['rule']}: CLI exit {r['cli']['exit']}: `{(r['cli']['error'] or '')[:300]}`")
    lines.append("\nStage columns are CPU seconds measured in-process (a separate run from the CLI's); "
                 "\"plan other\" is shape inference, metrics and the rank rule; \"graph\" builds the new "
                 "nodes and initializers.")
    return "\n".join(lines) + "\n"


def comparison(after: dict, before: dict, before_label: str) -> str:
    """Before/after CLI CPU time per case, from two runs' JSON (same machine, same cases)."""
    def key(r):
        return r["network"], r["input"], r["rule"]

    earlier = {key(r): r for r in before["results"]}
    lines = [f"### Before and after ({after['environment']['threads_note']})", "",
             f"Before = {before_label}, measured {before['environment']['date']} (load average "
             f"{'/'.join(f'{x:.1f}' for x in before['environment']['load'])} at start); after measured "
             f"{after['environment']['date']} (load average "
             f"{'/'.join(f'{x:.1f}' for x in after['environment']['load'])}). Commands: `{before.get('command', '?')}`, "
             f"`{after.get('command', '?')}`.", "",
             "| network | rule | weights (M) | before: exit | before: CLI CPU (s) | after: exit | after: CLI CPU (s) "
             "| CPU after ÷ before | before: CLI wall (s) | after: CLI wall (s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in after["results"]:
        b = earlier.get(key(r))
        if b is None:
            continue
        rule = r["rule"] if r["target_macs"] is None else f"budget 1/{1 / r['target_macs']:.3g}"
        weights = r["stages"].get("weights")
        ratio = r["cli"]["cpu"] / b["cli"]["cpu"] if r["cli"]["exit"] == b["cli"]["exit"] == 0 else None
        lines.append(f"| {r['network']} ({r['input']}) | {rule} | {'' if weights is None else f'{weights / 1e6:.1f}'} "
                     f"| {b['cli']['exit']} | {_s(b['cli']['cpu'])} | {r['cli']['exit']} | {_s(r['cli']['cpu'])} "
                     f"| {_s(ratio)} | {_s(b['cli']['wall'])} | {_s(r['cli']['wall'])} |")
    for b in before["results"]:
        if b["cli"]["exit"] != 0:
            lines.append(f"\nBefore, {b['network']} {b['rule']}: exit {b['cli']['exit']}: `{(b['cli']['error'] or '')[:300]}`")
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    """Replace only the text between this script's markers (other benchmarks own the rest)."""
    current = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        updated = head + block + tail
    else:
        updated = current.rstrip("\n") + "\n\n" + block + "\n"
    tmp = BENCHMARKS_MD.with_suffix(".md.tmp")
    tmp.write_text(updated)
    os.replace(tmp, BENCHMARKS_MD)


def render(payload: dict, args) -> str:
    text = args.preamble.read_text().rstrip("\n") + "\n\n" if args.preamble else ""
    text += markdown(payload["results"], payload["environment"], args.label,
                     payload.get("command", "/usr/bin/python3 benchmarks/compress_speed.py"))
    if args.compare:
        before, after = (json.loads(path.read_text()) for path in args.compare)
        text += "\n" + comparison(after, before, args.compare_label)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet18 at 64×64 only; print JSON, touch no file")
    parser.add_argument("--engine", type=Path, default=REPO / "engine", help="engine tree to measure (PYTHONPATH)")
    parser.add_argument("--label", default="Compression time", help="heading of the table")
    parser.add_argument("--json-out", type=Path, help="also write the raw results here")
    parser.add_argument("--no-write", action="store_true", help="do not edit BENCHMARKS.md")
    parser.add_argument("--networks", help="comma-separated subset of the full cases")
    parser.add_argument("--blas-threads", type=int,
                        help="OPENBLAS/OMP/MKL_NUM_THREADS for the measured processes: 1 gives CPU times that "
                             "a loaded machine inflates least (no spinning threads waiting for a core)")
    parser.add_argument("--from-json", type=Path, help="render a saved run (--json-out) instead of measuring")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE.json", "AFTER.json"),
                        help="two saved runs (--json-out) of the engine before and after a change, measured "
                             "alike: adds a before/after table")
    parser.add_argument("--compare-label", default="the engine before the change", help="what --compare measured")
    parser.add_argument("--preamble", type=Path, help="markdown placed above the tables (e.g. the stage analysis)")
    parser.add_argument("--stages", nargs=4, metavar=("MODEL", "RULE", "TARGET", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.stages:  # child mode: one in-process measurement, JSON on stdout
        path, rule, target, out = args.stages
        print(json.dumps(measure_stages(Path(path), rule, json.loads(target), Path(out))))
        return 0

    if args.from_json:
        payload = json.loads(args.from_json.read_text())
        text = render(payload, args)
        print(text)
        if not args.no_write:
            write_section(text)
        return 0

    cases = QUICK_CASES if args.quick else FULL_CASES
    if args.networks:
        wanted = set(args.networks.split(","))
        cases = [c for c in cases if c[0] in wanted]
    env = environment("OpenBLAS: default threads (one per core)" if args.blas_threads is None
                      else f"BLAS/OpenMP threads limited to {args.blas_threads}")
    results = []
    with tempfile.TemporaryDirectory(prefix="compress-speed-") as tmp:
        for name, size, target in cases:
            for rule in ("vbmf", "budget"):
                result = run_case(name, size, rule, target, args.engine.resolve(), Path(tmp), args.blas_threads)
                results.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
    payload = {"environment": env, "engine": str(args.engine), "results": results}
    if args.quick:
        if args.json_out:
            args.json_out.write_text(json.dumps(payload, indent=1))
        print(json.dumps(payload))
        return 0
    payload["command"] = "/usr/bin/python3 benchmarks/compress_speed.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    if args.json_out:
        args.json_out.write_text(json.dumps(payload, indent=1))
    text = render(payload, args)
    print(text)
    if not args.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
