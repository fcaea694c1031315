"""FC factorisations at high rank: the exact eigensolver against randomised subspace iteration (issue 11).

The budget rule factorises VGG-16's fc7 (and fc6, through its 4096×4096 Gram matrix) at ranks near a
quarter of 4096; the exact route is scipy's ssyevr for the top r eigenvectors of the Gram matrix G. The
candidate replacement: randomised subspace iteration on G (Halko, Martinsson & Tropp 2011, alg. 4.4)
with q power steps, oversampling p and Cholesky-QR orthonormalisation, then the small eigenproblem of
QᵀGQ. On a random Gaussian matrix (a flat spectrum: the hardest case for randomised methods, and what the
benchmarks' random-weight networks have) it reports the CPU time of the eigen step and the relative
difference of ‖W − Ŵ‖ from the exact truncated SVD's.

Usage: python3 benchmarks/compress_speed_fc.py [--m 4096] [--n 4096] [--r 1024] [--out BENCHMARKS.md | --no-write]
Run with OMP_NUM_THREADS=1 on a shared machine: CPU time is then least inflated by spinning threads.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "engine"))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402

from markdown_section import add_output_arguments, cpu_name, publish  # noqa: E402
from tuckerize.tucker import _top_eigenpairs  # noqa: E402
from tuckerize.vbmf import gram_matrix, squared_norm  # noqa: E402

VARIANTS = [(1, 0.5), (1, 1.0), (2, 0.125), (2, 0.5), (3, 0.125), (3, 0.25), (4, 0.125)]


def _cholqr(Y: torch.Tensor) -> torch.Tensor:
    for _ in range(2):                                   # CholQR2: twice for orthogonality to working precision
        R = torch.linalg.cholesky((Y.T @ Y).double(), upper=True).to(Y.dtype)
        Y = torch.linalg.solve_triangular(R, Y, upper=True, left=False)
    return Y


def randomized_top_eigenvectors(G: torch.Tensor, r: int, q: int, p: int, seed: int = 0) -> torch.Tensor:
    m = G.shape[0]
    k = min(m, r + p)
    Q = _cholqr(G @ torch.randn(m, k, generator=torch.Generator().manual_seed(seed), dtype=G.dtype))
    for _ in range(q):
        Q = _cholqr(G @ Q)
    B = Q.T @ (G @ Q)
    _, V = torch.linalg.eigh(0.5 * (B + B.T))
    return Q @ V.flip(1)[:, :r]


def measure(m: int, n: int, r: int) -> list[dict]:
    torch.manual_seed(0)
    A = torch.randn(m, n)
    G = gram_matrix(A)
    norm2 = squared_norm(A)

    def error(U: torch.Tensor) -> float:
        return math.sqrt(max(norm2 - squared_norm(U.T @ A), 0.0) / norm2)

    start = time.process_time()
    _, U = _top_eigenpairs(G, r)
    rows = [{"method": "exact (ssyevr, top r)", "cpu": time.process_time() - start, "error": error(U)}]
    exact = rows[0]["error"]
    for q, frac in VARIANTS:
        start = time.process_time()
        U = randomized_top_eigenvectors(G, r, q, int(frac * r))
        cpu = time.process_time() - start
        rows.append({"method": f"randomised, q = {q}, p = {frac:g}·r", "cpu": cpu, "error": error(U)})
        print(f"[fc] q={q} p={frac}r: {cpu:.2f} CPU-s, error {rows[-1]['error']:.6f} "
              f"({(rows[-1]['error'] - exact) / exact:+.2%})", file=sys.stderr)
    for row in rows:
        row["gap"] = (row["error"] - exact) / exact
    return rows


def render(rows: list[dict], m: int, n: int, r: int, command: str, load) -> str:
    lines = [
        "## FC factorisations at high rank: exact against randomised (issue 11)",
        "",
        f"Measured — command `{command}`; a seeded {m}×{n} Gaussian matrix (flat spectrum, like the benchmarks' "
        f"random-weight FC layers) at rank {r}; {cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__} "
        f"with {torch.get_num_threads()} thread(s); {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC; load average "
        f"{'/'.join(f'{v:.1f}' for v in load)} at start. CPU = process CPU seconds of the eigen step (the Gram "
        "matrix and the projection Uᵀ·W are the same for both); gap = relative difference of ‖W − Ŵ‖ from the "
        "exact truncated SVD's (the goal allows 1 %).",
        "",
        "| method | CPU (s) | ‖W − Ŵ‖/‖W‖ | gap |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['method']} | {row['cpu']:.2f} | {row['error']:.5f} | {100 * row['gap']:.2f} % |")
    exact = rows[0]["cpu"]
    ok = [row for row in rows[1:] if row["gap"] <= 0.01]
    best = min(ok, key=lambda row: row["cpu"]) if ok else None
    lines.append("")
    if best is None or best["cpu"] >= 0.8 * exact:
        found = f"best: {best['method']}, {best['cpu']:.2f} s against {exact:.2f} s" if best else "none meets it"
        lines.append(f"Within the 1 % bound no randomised variant here is clearly cheaper than the exact eigensolver "
                     f"({found}): "
                     "on a flat spectrum subspace iteration needs q ≥ 2–3 steps of an m×m×(r+p) product plus "
                     "orthonormalisation, as much work as the tridiagonalisation it replaces. The engine keeps the "
                     "exact route at these ranks (tucker.svd_factors); its block Krylov route serves ranks up to a "
                     "sixth of min(out, in), where it is cheaper.")
    else:
        lines.append(f"Cheapest within the bound: {best['method']}, {best['cpu']:.2f} s against {exact:.2f} s exact.")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=4096)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--r", type=int, default=1024)
    add_output_arguments(parser, REPO / "BENCHMARKS.md")
    args = parser.parse_args()
    load = os.getloadavg()
    rows = measure(args.m, args.n, args.r)
    command = "OMP_NUM_THREADS=1 python3 benchmarks/compress_speed_fc.py" + (
        "" if (args.m, args.n, args.r) == (4096, 4096, 1024) else f" --m {args.m} --n {args.n} --r {args.r}")
    section = render(rows, args.m, args.n, args.r, command, load)
    publish(args, "fc-eig", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
