"""Runs a command and records its wall time and peak resident memory (the benchmark's compression columns).

Usage: /usr/bin/python3 peak_rss.py RESULT.json -- COMMAND [ARGS...]
Writes {"exitCode", "wallSeconds", "peakRssBytes"} to RESULT.json and exits with the command's code.
ru_maxrss of RUSAGE_CHILDREN is the largest peak RSS among waited-for descendants (KiB on Linux).
"""
import json
import resource
import subprocess
import sys
import time


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.stderr.write("usage: peak_rss.py RESULT.json -- COMMAND [ARGS...]\n")
        return 2
    result_path, command = sys.argv[1], sys.argv[3:]
    start = time.perf_counter()
    completed = subprocess.run(command)
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(result_path, "w") as out:
        json.dump({"exitCode": completed.returncode, "wallSeconds": wall, "peakRssBytes": peak_kib * 1024}, out)
    return completed.returncode


if __name__ == "__main__":
    sys.exit(main())
