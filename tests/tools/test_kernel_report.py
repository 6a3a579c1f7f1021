"""tools/kernel_report.py: sm_90 compiles of the kernels on a machine without a GPU, and what they show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "kernel_report.py"


def _report(*args: str, interpret: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)


def _kernels(*args: str) -> dict[str, dict]:
    done = _report(*args, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    return {r["kernel"]: r for r in json.loads(done.stdout.strip().splitlines()[-1])}


def test_clear_forward_reads_q_k_v_with_vector_loads_at_dit_head_dim():
    """DiT's head dim of 72 is a multiple of 8 but not of 16, which Triton specialises on: the halo kernels declare
    the alignment (ALIGN_LOG2), so the CLEAR forward compiles its loads of q, k and v (views of one packed projection)
    to 16-byte vector loads and no narrow ones; without the declaration they are two-byte loads."""
    shape = ("clear", "--head-dim", "72", "--heads", "2", "--grid", "16", "--passes", "fwd")
    declared = _kernels(*shape)["_halo_fwd_kernel"]
    undeclared = _kernels(*shape, "--no-align")["_halo_fwd_kernel"]
    vector = sum(n for op, n in declared["global_loads"].items() if op.endswith(".128"))
    assert declared["narrow_global_loads"] == 0 and vector >= 8, declared
    assert undeclared["narrow_global_loads"] > 0, undeclared
    assert declared["loop_instructions"] and declared["loop_instructions"][0] < undeclared["loop_instructions"][0]
    assert declared["registers"] <= 255 and declared["shared_bytes"] <= 227 * 1024  # fits an sm_90 SM
    # the opcode mix of the largest loop: all of its instructions, the tensor-core MMAs (wgmma) among them
    mix = declared["largest_loop_opcodes"]
    assert sum(mix.values()) == max(declared["loop_instructions"]) and mix.get("HGMMA", 0) >= 3, mix


def test_refuses_to_run_under_the_interpreter():
    done = _report("clear", "--passes", "fwd", interpret=True)
    assert done.returncode != 0 and "TRITON_INTERPRET" in done.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["clear", "--passes", "fwd,sideways"], "--passes takes fwd, bwd"),
        (["na2d", "--grid", "12", "--kernel-size", "7", "--dilation", "2"], "--grid >= kernel size x dilation = 14"),
        (["routed", "--grid", "15"], "divisible by --n-win 7"),
        (["clear", "--head-dim", "0"], "--head-dim must be >= 1"),
        (["clear", "--ops", "-1"], "--ops must be >= 0"),
    ],
)
def test_bad_arguments_are_named(args, message, capsys):
    sys.path.insert(0, str(TOOL.parent))
    try:
        import kernel_report
    finally:
        sys.path.remove(str(TOOL.parent))
    with pytest.raises(SystemExit) as exit_info:
        kernel_report.parse_args(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
