"""What the GPU compiler makes of vizattn's Triton kernels, on a machine without a GPU.

Compiles the kernels of one op, as its launchers would launch them for the given shape, for an NVIDIA target (sm_90,
the H100 / H200, by default) with Triton's bundled ptxas, and reports per kernel: registers, spill stack, shared
memory, SASS instructions in total and per loop, the opcode mix of the largest loop (``--ops``), and the global
loads by width. Nothing runs: the launches are
replaced by compilations, so it needs neither a GPU nor the CUDA driver, only Triton's NVIDIA backend.

Why: the speed of these kernels hangs on facts a CPU test cannot see. Whether a load of q, k or v is one 16-byte
vector instruction or eight 2-byte ones depends on what Triton can prove about strides; with DiT's head dim of 72 it
once proved nothing, and the CLEAR kernels ran 1.7x slower for it (docs/benchmarks.md, 2026-12-02). A device
session is short; this shows such things before one. The loop's opcode mix shows where a step's instructions go: on
2026-12-02 it showed the CLEAR forward spending about 8 of its 20 instructions per (query, key) pair on the circle's
integer mask, which then became one small MMA.

Usage:
    python tools/kernel_report.py clear --head-dim 72 --grid 32 --radius 8
    python tools/kernel_report.py na2d --head-dim 32 --grid 56 --kernel-size 7 --rpb
    python tools/kernel_report.py routed --grid 14 --channels 256 --heads 8 --topk 16
    python tools/kernel_report.py clear --head-dim 72 --passes bwd --ops 10   # and each loop's 10 top opcodes
    python tools/kernel_report.py clear --head-dim 72 --passes fwd --no-align --json   # the kernels without the
                                                                                     # alignment they declare

Run it without ``TRITON_INTERPRET`` (the interpreter replaces the kernels it compiles). The layout of q, k, v is the
models': views of one projection output (``(B, H, W, 3, heads, D)`` for CLEAR and NA, channel slices for routed).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

OPS = ("clear", "na2d", "routed")
PASSES = ("fwd", "bwd")
_OPCODE = re.compile(r"^\s*/\*[0-9a-f]+\*/\s*(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", re.M)
_LABEL = re.compile(r"^\s*(\.L_x_\d+):\s*$")
_BRANCH = re.compile(r"BRA\s+`?\(?(\.L_x_\d+)")
# Global loads that move less than 4 bytes per thread: in these kernels, a sign that Triton found no vector width.
_NARROW_LOADS = ("LDG.E.U8", "LDG.E.S8", "LDG.E.U16", "LDG.E.S16")


def _require_compiler() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("kernel_report: TRITON_INTERPRET is set; the interpreter runs kernels instead of compiling "
                         "them. Run without it: env -u TRITON_INTERPRET python tools/kernel_report.py ...")


class _CompileOnlyDriver:
    """Stands in for Triton's CUDA driver: names the target and device 0, and nothing else (no launch reaches it)."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self._target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self._target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


@contextmanager
def compile_only(arch: int = 90):
    """Within it, every Triton launch compiles its kernel for ``sm_<arch>`` and launches nothing; yields the list the
    compiled kernels are appended to, as ``(kernel name, CompiledKernel)``."""
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    compiled: list = []
    real_run = JITFunction.run
    previous = driver._active  # None until a driver was first asked for; reset_active() would create the CUDA one

    def run(self, *args, grid, warmup, **kwargs):
        compiled.append((self.__name__, real_run(self, *args, grid=grid, warmup=True, **kwargs)))

    driver.set_active(_CompileOnlyDriver(arch))
    JITFunction.run = run
    try:
        yield compiled
    finally:
        JITFunction.run = real_run
        driver.set_active(previous)


def _nvidia_tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _loop_opcodes(lines: list[str]) -> list[list[str]]:
    """The opcodes of each SASS loop: from each backward branch's target label to the branch (the trailing
    self-branch that pads a kernel is no loop)."""
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := _LABEL.match(line))}
    loops = []
    for i, line in enumerate(lines):
        m = _BRANCH.search(line)
        if m and labels.get(m.group(1), i) < i:
            loops.append(_OPCODE.findall("\n".join(lines[labels[m.group(1)]:i + 1])))
    return [ops for ops in loops if len(ops) > 1]


def _opcode_mix(ops: list[str]) -> dict[str, int]:
    """How many of each base opcode (``FFMA``, ``HGMMA``, ``LDG``... without modifiers), most frequent first."""
    return dict(collections.Counter(op.split(".")[0] for op in ops).most_common())


def report(name: str, kernel) -> dict:
    """One compiled kernel's registers, spill stack, shared memory, instruction counts and global load mix."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        sass = subprocess.run([_nvidia_tool("nvdisasm"), "-c", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
        usage = subprocess.run([_nvidia_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True,
                               check=True).stdout
    regs = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    ops = _OPCODE.findall(sass)
    loads = collections.Counter(op for op in ops if op.startswith("LDG") and op != "LDGDEPBAR")
    loops = _loop_opcodes(sass.splitlines())
    return dict(
        kernel=name,
        registers=int(regs.group(1)) if regs else None,
        spill_stack_bytes=int(stack.group(1)) if stack else None,
        shared_bytes=kernel.metadata.shared,
        num_warps=kernel.metadata.num_warps,
        num_stages=kernel.metadata.num_stages,
        instructions=len(ops),
        loop_instructions=[len(loop) for loop in loops],
        # where a kernel's time goes per step: the opcode mix of its largest loop
        largest_loop_opcodes=_opcode_mix(max(loops, key=len)) if loops else {},
        global_loads=dict(sorted(loads.items())),
        narrow_global_loads=sum(n for op, n in loads.items() if op in _NARROW_LOADS),
    )


def _launch(args: argparse.Namespace) -> None:
    """Calls the op's launchers the way its autograd function would, on CPU tensors of the requested shape."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    b, n = args.batch, args.grid
    if args.op in ("clear", "na2d"):
        q, k, v = torch.zeros(b, n, n, 3, args.heads, args.head_dim, dtype=dtype).unbind(3)
        scale = args.head_dim ** -0.5
        if args.op == "clear":
            from vizattn.kernels.clear.triton import clear_bwd, clear_fwd

            extra = [torch.zeros(b, args.extra_tokens, args.heads, args.head_dim, dtype=dtype) for _ in range(2)]
            ek, ev = extra if args.extra_tokens else (None, None)
            if "fwd" in args.passes:
                clear_fwd(q, k, v, ek, ev, args.radius, scale)
            if "bwd" in args.passes:
                out, lse = torch.zeros_like(q), torch.zeros(q.shape[:-1])
                clear_bwd(out, q, k, v, ek, ev, out, lse, args.radius, scale)
        else:
            from vizattn.kernels.na2d.triton import na2d_bwd, na2d_fwd

            rpb = torch.zeros(args.heads, 2 * args.kernel_size - 1, 2 * args.kernel_size - 1) if args.rpb else None
            if "fwd" in args.passes:
                na2d_fwd(q, k, v, rpb, args.kernel_size, args.dilation, scale)
            if "bwd" in args.passes:
                out, lse = torch.zeros_like(q), torch.zeros(q.shape[:-1])
                na2d_bwd(out, q, k, v, rpb, out, lse, args.kernel_size, args.dilation, scale)
    else:
        from vizattn.kernels.routed.triton import routed_attention_bwd, routed_attention_fwd

        c = args.channels
        q, k, v = torch.zeros(b, n, n, 3 * c, dtype=dtype).split(c, -1)
        regions = args.n_win ** 2
        if not 1 <= args.topk <= regions:
            raise SystemExit(f"kernel_report: --topk must be in 1..{regions} (n_win {args.n_win}), got {args.topk}.")
        r_idx = (torch.arange(regions)[:, None] + torch.arange(args.topk)[None, :]) % regions
        r_idx = r_idx.expand(b, -1, -1).contiguous()
        scale = (c // args.heads) ** -0.5
        if "fwd" in args.passes:
            routed_attention_fwd(q, k, v, r_idx, args.n_win, args.heads, scale, distinct=True)
        if "bwd" in args.passes:
            out, lse = torch.zeros(b, n, n, c, dtype=dtype), torch.zeros(b, args.heads, n * n)
            routed_attention_bwd(out, q, k, v, out, lse, r_idx, args.n_win, args.heads, scale, distinct=True)


def kernel_reports(args: argparse.Namespace) -> list[dict]:
    """The report of every kernel the op's launchers compile for ``args``."""
    _require_compiler()
    import vizattn.kernels._halo2d.triton as halo

    real_align = halo._align_log2
    if args.no_align:
        halo._align_log2 = lambda *maps: 0
    try:
        with compile_only(args.arch) as compiled:
            _launch(args)
    finally:
        halo._align_log2 = real_align
    return [report(name, kernel) for name, kernel in compiled]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("op", choices=OPS)
    p.add_argument("--passes", default="fwd,bwd", help="fwd, bwd or both (comma-separated; default both)")
    p.add_argument("--arch", type=int, default=90, help="compute capability as major*10+minor (default 90: sm_90)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--grid", type=int, default=32, help="map side in tokens (default 32)")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=32, help="clear / na2d head dim (default 32)")
    p.add_argument("--radius", type=int, default=8, help="clear: disc radius (default 8)")
    p.add_argument("--extra-tokens", type=int, default=0, help="clear: extra tokens every query sees (default 0)")
    p.add_argument("--kernel-size", type=int, default=7, help="na2d: window side (default 7)")
    p.add_argument("--dilation", type=int, default=1, help="na2d: dilation (default 1)")
    p.add_argument("--rpb", action="store_true", help="na2d: with relative position bias")
    p.add_argument("--channels", type=int, default=64, help="routed: channels C of q, k, v (default 64)")
    p.add_argument("--n-win", type=int, default=7, help="routed: regions per side (default 7)")
    p.add_argument("--topk", type=int, default=4, help="routed: regions per routing list (default 4)")
    p.add_argument("--no-align", action="store_true",
                   help="compile the halo kernels without the stride alignment they declare (ALIGN_LOG2)")
    p.add_argument("--ops", type=int, default=0, metavar="N",
                   help="also print the N most frequent opcodes of each kernel's largest loop")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of the table")
    args = p.parse_args(argv)
    args.passes = [s for s in args.passes.split(",") if s]
    bad = [s for s in args.passes if s not in PASSES]
    if bad or not args.passes:
        p.error(f"--passes takes {', '.join(PASSES)} (comma-separated), got {','.join(args.passes) or 'nothing'}")
    if args.ops < 0:
        p.error(f"--ops must be >= 0, got {args.ops}")
    for name in ("batch", "grid", "heads", "head_dim", "radius", "kernel_size", "dilation", "channels", "n_win"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.op == "na2d" and args.grid < args.kernel_size * args.dilation:
        p.error(f"na2d needs --grid >= kernel size x dilation = {args.kernel_size * args.dilation}, got {args.grid}")
    if args.op == "routed" and args.grid % args.n_win:
        p.error(f"routed needs --grid divisible by --n-win {args.n_win}, got {args.grid}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = kernel_reports(args)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{args.op}, sm_{args.arch}, {args.dtype}:")
    for r in rows:
        print(f"  {r['kernel']}: {r['registers']} registers, {r['spill_stack_bytes']} B stack, {r['shared_bytes']} B "
              f"shared, {r['num_warps']} warps x {r['num_stages']} stages; {r['instructions']} instructions, loops "
              f"{r['loop_instructions']}; global loads {r['global_loads']} ({r['narrow_global_loads']} narrow)")
        if args.ops and r["largest_loop_opcodes"]:
            mix = list(r["largest_loop_opcodes"].items())[:args.ops]
            print("    largest loop: " + ", ".join(f"{op} {n}" for op, n in mix))


if __name__ == "__main__":
    main()
