"""benchmarks/compress_speed.py --quick: the stage breakdown and the CLI run of a real compression
(resnet18 at 64×64). Timings are recorded, never asserted."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("compress_speed", REPO / "benchmarks" / "compress_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("speed") / "quick.json"
    assert bench.main(["--quick", "--json-out", str(out)]) == 0
    return json.loads(out.read_text())


def test_quick_run_measures_every_stage_of_both_rules(quick):
    results = {r["rule"]: r for r in quick["results"]}
    assert set(results) == {"vbmf", "budget"}
    for result in results.values():
        assert result["network"] == "resnet18" and result["input"] == 64
        assert result["cli"]["exit"] == 0, result["cli"]["error"]
        stages = result["stages"]
        assert "error" not in stages, stages.get("error")
        assert stages["weights"] == 11_684_712                     # torchvision resnet18 with BN folded
        for clock in ("wall", "cpu"):
            for stage in ("load", "plan", "evbmf", "rewrite", "check", "serialize", "write", "total"):
                assert stages[clock][stage] >= 0.0
            assert stages[clock]["total"] >= stages[clock]["plan"] + stages[clock]["rewrite"] - 1e-6
    budget = results["budget"]["stages"]
    # The budget rule rewrites every decomposable layer (ResNet-18: 20 convs and the FC) near 2×.
    assert budget["rewritten"] == budget["layers"] == 21
    assert budget["macs_ratio"] == pytest.approx(0.5, abs=0.01)
    assert {"tucker2", "tucker1", "svd_factors"} <= set(budget["cpu"])
    assert budget["output_bytes"] < results["vbmf"]["stages"]["output_bytes"]


def test_table_and_section_edit_only_between_the_markers(bench, quick, tmp_path, monkeypatch):
    text = bench.markdown(quick["results"], quick["environment"], "Quick", "cmd --quick")
    rows = [line for line in text.splitlines() if line.startswith("| resnet18")]
    assert len(rows) == 2
    assert all(row.count("|") == text.splitlines()[4].count("|") for row in rows)
    target = tmp_path / "BENCHMARKS.md"
    target.write_text("# Benchmarks\n\nother helper's table\n")
    monkeypatch.setattr(bench, "BENCHMARKS_MD", target)
    bench.write_section("first\n")
    bench.write_section(text)
    written = target.read_text()
    assert written.startswith("# Benchmarks\n\nother helper's table\n")
    assert written.count(bench.BEGIN) == written.count(bench.END) == 1
    assert "first" not in written and text in written
