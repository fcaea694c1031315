"""Smoke run of benchmarks/accuracy_table.py --quick: every row of the issue-4 table is produced by the real
`python3 -m tuckerize run` pipeline, recorded in the JSONL and rendered; BENCHMARKS.md is left alone."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "accuracy_table.py"
NETS = ("fmnist-vgg", "fmnist-resnet")
VARIANTS = ("none", "labels", "distill", "both")


def load_script():
    spec = importlib.util.spec_from_file_location("accuracy_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    if not (ROOT / "assets" / "models" / "fmnist-vgg.onnx").exists():
        pytest.fail("assets/models/fmnist-vgg.onnx is missing: the reference nets are part of the repository")
    out = tmp_path_factory.mktemp("accuracy")
    benchmarks_before = (ROOT / "BENCHMARKS.md").read_bytes() if (ROOT / "BENCHMARKS.md").exists() else None
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--jsonl", str(out / "runs.jsonl"),
                           "--markdown", str(out / "section.md")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines() if line.strip()]
    return records, (out / "section.md").read_text(), benchmarks_before


def test_every_row_runs_through_the_pipeline(quick_run):
    records, _, _ = quick_run
    assert sorted((r["net"], r["variant"]) for r in records) == sorted((n, v) for n in NETS for v in VARIANTS)
    for record in records:
        assert record["rc"] == 0, record.get("error")
        accuracy = record["accuracy"]
        assert accuracy["labels"] is True
        sections = ["original", "compressed"] + (["finetuned"] if record["variant"] != "none" else [])
        for section in sections:
            for key in ("top1", "top5", "agreement"):
                if key in accuracy[section]:
                    assert 0.0 <= accuracy[section][key] <= 1.0, (record["net"], record["variant"], section, key)
            assert 0.0 <= accuracy[section]["top1"] <= 1.0
        if record["variant"] == "none":
            assert record["finetune"] is None and accuracy["finetuned"] is None
        else:
            finetune = record["finetune"]
            assert finetune["steps"] == 2 and record["imagesSeen"] == 16
            assert finetune["imagesPerSecond"] > 0 and finetune["threads"] == 1
            # The variant must reach the engine as the loss it names.
            expected = {"labels": (False, True), "distill": (True, False), "both": (True, True)}[record["variant"]]
            assert (finetune["loss"]["distillation"], finetune["loss"]["crossEntropy"]) == expected
        assert 0.0 < record["totals"]["macs"]["ratio"] < 1.0
        assert 0.0 < record["totals"]["params"]["ratio"] < 1.0


def test_markdown_has_all_rows_and_benchmarks_untouched(quick_run):
    _, section, benchmarks_before = quick_run
    script = load_script()
    for net in NETS:
        assert f"| {net} | original model (baseline) |" in section
        for variant in VARIANTS:
            assert f"| {net} | {script.VARIANT_TEXT[variant]} |" in section
    assert "| failed: exit" not in section
    assert "| not measured" not in section
    assert "NVIDIA H200" in section and "Against the goal" in section
    after = (ROOT / "BENCHMARKS.md").read_bytes() if (ROOT / "BENCHMARKS.md").exists() else None
    # Other helpers write BENCHMARKS.md concurrently; only our markers' content must not have changed.
    if benchmarks_before is not None and after is not None:
        def ours(text):
            text = text.decode()
            return text[text.find(script.BEGIN):text.find(script.END)] if script.BEGIN in text else ""
        assert ours(after) == ours(benchmarks_before)


def test_write_section_keeps_other_text(tmp_path):
    script = load_script()
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Speed\n\nspeed table\n")
    script.write_section(path, script.SECTION, "first version")
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\n## Speed\n\nspeed table\n")
    assert f"{script.BEGIN}\nfirst version\n{script.END}" in text
    path.write_text(text + "\n## Later section\n\nkept\n")
    script.write_section(path, script.SECTION, "second version")
    text = path.read_text()
    assert "first version" not in text and text.count(script.BEGIN) == 1
    assert f"{script.BEGIN}\nsecond version\n{script.END}" in text
    assert "speed table" in text and text.endswith("## Later section\n\nkept\n")
