"""Command line: `python3 -m tuckerize analyze|compress|candidates|run`.

Exit codes (exits.py): 0 ok; 2 bad input, never worth retrying; 1 a bug (traceback on stderr). On
1 and 2 the last stdout line is the error event (errors.error_event) and stderr ends with the same
complaint on one line for people. Files are written atomically (atomic.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Optional, Sequence

from .atomic import atomic_write_bytes, atomic_write_json
from .errors import EngineInputError, error_event, input_errors, one_line
from .exits import EXIT_CRASH, EXIT_INPUT, EXIT_OK
from .options import plan_kwargs
from .ranks import parse_target
from .run import run_job


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse prints usage and exits on its own; route its complaints through the one-line error path."""

    def error(self, message: str):  # type: ignore[override]
        command = " ".join(self.prog.split()[1:])
        raise _UsageError(f"{message} (see python3 -m tuckerize {command + ' ' if command else ''}--help)")


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")


def _input_shape(text: str):
    from .onnx_graph import parse_input_shape
    try:
        return parse_input_shape(text)
    except EngineInputError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def _add_rule_arguments(parser: argparse.ArgumentParser, default_rule: str) -> None:
    parser.add_argument("--input-shape", type=_input_shape, metavar="N,C,H,W",
                        help="input size for shapes and MACs (default: the model's, dynamic dims 1 and 224)")
    parser.add_argument("--rule", choices=["vbmf", "ratio", "budget", "latency"], default=default_rule,
                        help="rank rule (default %(default)s)")
    parser.add_argument("--ratio", type=_fraction, help="rule ratio: every rank = ceil(ratio*dim), in (0, 1]")
    parser.add_argument("--strength", type=_fraction,
                        help="weakened EVBMF ranks r = r_full - w*(r_full - r_evbmf), w in (0, 1]")
    parser.add_argument("--target-macs", type=_fraction, help="rule budget: fraction of the MACs to keep")
    parser.add_argument("--target-params", type=_fraction, help="rule budget: fraction of the params to keep")
    parser.add_argument("--target-latency", type=_fraction,
                        help="rule latency: the compressed/original latency to aim at (recorded beside the "
                             "predicted ratio; the worker adjusts --target-macs towards it)")
    parser.add_argument("--latency-table", metavar="latency-table.json",
                        help="rule latency: per-layer timings the worker measured on `candidates` output")
    parser.add_argument("--round-to", type=int, metavar="K", help="round ranks up to multiples of K (overrides --target)")
    parser.add_argument("--target", type=parse_target, metavar="CPU",
                        help="deployment CPU whose ONNX Runtime channel block the ranks are rounded to: host "
                             "(default: this machine), avx512 (16), avx2 (8), generic (4), or a number (1: no rounding)")
    parser.add_argument("--force", action="store_true",
                        help="rewrite layers even when that does not shrink them (exactness checks)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tuckerize", description="Tucker/EVBMF compression of ONNX CNNs (Kim et al. 2016)")
    commands = parser.add_subparsers(dest="command", metavar="{analyze,compress,candidates,run}",
                                     parser_class=_Parser)
    commands.required = True

    analyze = commands.add_parser("analyze", help="per-layer EVBMF ranks, shapes, params and MACs")
    analyze.add_argument("model", help="input .onnx")
    _add_rule_arguments(analyze, "vbmf")
    analyze.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    analyze.set_defaults(func=_analyze)

    compress = commands.add_parser("compress", help="rewrite the model with Tucker-2/Tucker-1/SVD factors")
    compress.add_argument("model", help="input .onnx")
    compress.add_argument("-o", "--output", required=True, help="output .onnx")
    _add_rule_arguments(compress, "vbmf")
    compress.add_argument("--plan-out", metavar="PLAN.json", help="also write the plan")
    compress.add_argument("--hooi-iters", type=int, default=2, help="HOOI sweeps after HOSVD (default 2)")
    compress.add_argument("--profile", action="store_true",
                          help="print where the time went (SVDs, σ² searches, HOOI, graph writing) as JSON")
    compress.set_defaults(func=_compress)

    candidates = commands.add_parser(
        "candidates", help="per rewritten layer: the original node and its replacement as standalone models "
                           "(for timing in onnxruntime), plus candidates.json")
    candidates.add_argument("model", help="input .onnx")
    candidates.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    _add_rule_arguments(candidates, "vbmf")
    candidates.add_argument("--hooi-iters", type=int, default=2, help="HOOI sweeps after HOSVD (default 2)")
    candidates.set_defaults(func=_candidates)

    run = commands.add_parser("run", help="run a job.json (the worker's entry point; JSON lines on stdout)")
    run.add_argument("job", help="job.json")
    run.set_defaults(func=_run)
    return parser


def _options_from_args(args) -> dict:
    """The flags as job options (camelCase, as in job.json), absent ones left out."""
    values = {"rule": args.rule, "ratio": args.ratio, "strength": args.strength, "targetMacs": args.target_macs,
              "targetParams": args.target_params, "targetLatency": args.target_latency, "roundTo": args.round_to,
              "target": args.target,
              "force": args.force or None, "inputShape": args.input_shape, "latencyTable": args.latency_table}
    return {key: value for key, value in values.items() if value is not None}


def _load(path: str):
    from .onnx_graph import load_model
    with input_errors("invalid_model"):
        return load_model(path)


def _plan_from_args(model, args, **extra):
    from .plan import make_plan
    with input_errors("invalid_option"):
        return make_plan(model, args.input_shape, **plan_kwargs(_options_from_args(args)), **extra)


def _candidates(args) -> int:
    from .candidates import CANDIDATES_FILE, write_candidates
    model = _load(args.model)
    plan = _plan_from_args(model, args)
    with input_errors("invalid_model"):
        manifest = write_candidates(model, plan, args.output, hooi_iters=args.hooi_iters)
    print(json.dumps({"candidates": os.path.join(args.output, CANDIDATES_FILE), "layers": len(manifest["layers"]),
                      "kept": len(manifest["kept"]), "macsRatio": plan.totals["macs"]["ratio"]}))
    return EXIT_OK


def _analyze(args) -> int:
    model = _load(args.model)
    plan = _plan_from_args(model, args, with_evbmf=True)
    if args.json:
        print(plan.to_json())
    else:
        print(format_plan_table(plan))
    return EXIT_OK


def _compress(args) -> int:
    from .onnx_graph import check_structure
    from .surgery import rewrite

    profile = {}
    start = time.perf_counter()
    model = _load(args.model)
    profile["load"] = time.perf_counter() - start
    start = time.perf_counter()
    plan_timings: dict = {}
    # The per-layer timing mode re-runs a norm and a σ² search per layer: only when asked for.
    plan = _plan_from_args(model, args, timings=plan_timings if args.profile else None)
    profile["plan"] = time.perf_counter() - start
    with input_errors("invalid_model"):
        result = rewrite(model, plan, hooi_iters=args.hooi_iters)
    for entry in plan.layers:
        entry.rel_error = result.rel_errors.get(entry.name, entry.rel_error)
    start = time.perf_counter()
    with input_errors("invalid_model"):
        check_structure(result.model)
    profile["check"] = time.perf_counter() - start
    start = time.perf_counter()
    atomic_write_bytes(args.output, result.model.SerializeToString())
    if args.plan_out:
        atomic_write_json(args.plan_out, plan.to_dict())
    profile["write"] = time.perf_counter() - start
    totals = plan.totals
    rewritten = len(plan.rewritten())
    print(f"{args.output}: {rewritten} of {len(plan.layers)} layers rewritten; "
          f"params {_count(totals['params']['before'])} -> {_count(totals['params']['after'])} "
          f"(x{totals['params']['ratio']:.3f}), MACs {_count(totals['macs']['before'])} -> "
          f"{_count(totals['macs']['after'])} (x{totals['macs']['ratio']:.3f})")
    if args.profile:
        # svd: EVBMF spectra; sigma2: EVBMF noise searches; plan_other: shape inference, metrics and the
        # rank rule; hooi: Tucker-2 HOSVD+HOOI and Tucker-1; factor_svd: truncated SVDs of FC/1×1 layers;
        # graph: building the new graph; check: onnx.checker; peak_rss_mib: the process's peak memory.
        import resource
        breakdown = {
            "svd": plan_timings.get("svd", 0.0), "sigma2": plan_timings.get("sigma2", 0.0),
            "plan_other": max(profile["plan"] - plan_timings.get("svd", 0.0) - plan_timings.get("sigma2", 0.0), 0.0),
            "hooi": result.timings.get("tucker2", 0.0) + result.timings.get("tucker1", 0.0),
            "factor_svd": result.timings.get("svd", 0.0), "graph": result.timings["graph"],
            "check": profile["check"], "write": profile["write"], "load": profile["load"],
        }
        breakdown["total"] = profile["load"] + profile["plan"] + sum(result.timings.values()) + \
            profile["check"] + profile["write"]
        breakdown["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB
        print(json.dumps({"profile": {k: round(v, 3) for k, v in breakdown.items()}}))
    return EXIT_OK


def _run(args) -> int:
    return run_job(args.job)


def _count(value) -> str:
    if value is None:
        return "?"
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return str(value)


def format_plan_table(plan) -> str:
    """The per-layer table of `analyze`: shapes, EVBMF ranks and σ² of both unfoldings, costs."""
    header = ["layer", "op", "weight", "output", "EVBMF r_out/r_in (σ²)", "plan", "params", "MACs", "note"]
    rows = []
    for entry in plan.layers:
        evbmf = ""
        if entry.evbmf:
            parts = []
            for key in ("out", "in", "matrix"):
                if key in entry.evbmf:
                    info = entry.evbmf[key]
                    parts.append(f"{info['rank']}/{info['dim']} ({info['sigma2']:.2e})")
            evbmf = " | ".join(parts)
        ranks = f"{entry.kind}{entry.ranks}" if entry.kind != "keep" else "keep"
        rows.append([
            entry.name, entry.op, "x".join(map(str, entry.weight_shape or [])) or "-",
            "x".join("?" if d is None else str(d) for d in entry.output_shape or []) or "-",
            evbmf or "-", ranks,
            f"{_count(entry.params_before)}->{_count(entry.params_after)}",
            f"{_count(entry.macs_before)}->{_count(entry.macs_after)}",
            entry.reason or "",
        ])
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header) - 1)]
    lines = []
    for row in [header] + rows:
        cells = [str(cell).ljust(width) for cell, width in zip(row[:-1], widths)] + [str(row[-1])]
        lines.append("  ".join(cells).rstrip())
    totals = plan.totals
    lines.append("")
    lines.append(f"input {plan.input_shape}, rule {plan.rule}: {len(plan.rewritten())} of {len(plan.layers)} "
                 f"layers rewritten")
    for key in ("params", "macs"):
        t = totals[key]
        lines.append(f"{key}: {_count(t['before'])} -> {_count(t['after'])} (x{t['ratio']:.3f})")
    if "target" in totals:
        lines.append(f"target {totals['target']['metric']} {totals['target']['ratio']}: achieved "
                     f"{totals['target']['achieved']:.4f}")
    latency = totals.get("latency")
    if latency and latency.get("predictedRatio") is not None:
        target = f" (target {latency['targetRatio']})" if latency.get("targetRatio") is not None else ""
        lines.append(f"latency (onnxruntime, {latency['basis']}): predicted x{latency['predictedRatio']:.3f}{target}; "
                     f"{len(latency['keptSlow'])} layer(s) kept as not {latency['minSpeedup']}x faster")
    return "\n".join(lines)


def _fail(exc: BaseException, exit_code: int) -> int:
    """The error event on stdout for the worker, the same complaint on stderr for people."""
    print(json.dumps(error_event(exc)), flush=True)
    if exit_code == EXIT_INPUT:
        print(f"tuckerize: error: {one_line(exc)}", file=sys.stderr)
    else:
        traceback.print_exception(exc)
    return exit_code


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        return _fail(EngineInputError(str(exc), code="usage"), EXIT_INPUT)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        return args.func(args)
    except EngineInputError as exc:
        return _fail(exc, EXIT_INPUT)
    except BrokenPipeError:
        return EXIT_CRASH
    except Exception as exc:
        return _fail(exc, EXIT_CRASH)
