"""scripts/gpu_check.sh, the one call a GPU machine gets: its CPU dry run runs every step that does
not need a GPU (the Triton kernels interpreted, the layer benchmark, a bf16-mixed fit, a 2-process
DDP fit with gloo) and must end in a summary where each of them is ok."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.multiprocess  # its fits, and a 2-process DDP fit


def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    env = dict(os.environ, PLIFNET_CHECK_DEVICE="cpu", PLIFNET_CHECK_LOGS=str(tmp_path / "logs"), PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", ROOT / "scripts" / "gpu_check.sh"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    summary = result.stdout[result.stdout.index("== gpu_check summary") :]
    assert result.returncode == 0, summary + result.stderr[-2000:]
    for step in ("triton_vs_reference", "benchmarks", "fit_bf16_mixed", "fit_ddp_2_processes"):
        assert any(line.startswith(step) and " ok " in line for line in summary.splitlines()), summary
    assert "triton kernels match the reference" in summary and "PLIF layer [8, 16, 128, 28, 28]" in summary
    assert "failed steps: 0" in summary
    # the bf16 fit trained under bf16-mixed, and both DDP processes took part
    assert "bfloat16 Automatic Mixed Precision" in (tmp_path / "logs" / "fit_bf16_mixed.log").read_text()
    assert "distributed_backend=gloo" in (tmp_path / "logs" / "fit_ddp_2_processes.log").read_text()
