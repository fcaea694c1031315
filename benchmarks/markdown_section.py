"""One benchmark's section of BENCHMARKS.md: the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->`.

Each benchmark script owns its section and rewrites only that (appending it, markers included, where it is
missing), so scripts run at different times keep each other's text. The file is replaced atomically.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_section(path: Path, name: str, body: str) -> None:
    begin, end = markers(name)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text and text.index(begin) < text.index(end):
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".benchmarks-", suffix=".md")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_section(benchmarks: Path, name: str, body: str, markdown: Path | None = None) -> None:
    """Into section `name` of `benchmarks`; with `markdown`, that whole file instead (to read before publishing)."""
    if markdown is not None:
        markdown.write_text(body)
    else:
        replace_section(benchmarks, name, body)


def add_output_arguments(parser: argparse.ArgumentParser, default: Path) -> None:
    """--out FILE (the section goes there) and --no-write (print it instead)."""
    parser.add_argument("--out", default=str(default))
    parser.add_argument("--no-write", action="store_true")


def publish(args: argparse.Namespace, name: str, body: str) -> None:
    """Where add_output_arguments' options say: printed with --no-write, else into section `name` of --out."""
    if args.no_write:
        print(body)
    else:
        replace_section(Path(args.out), name, body)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
