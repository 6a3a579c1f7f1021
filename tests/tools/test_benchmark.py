"""tools/benchmark.py without a GPU: its smoke mode takes every group's code path (checks, timing, JSON, tables) at
tiny shapes, and its anchors compute the op they stand in for."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from trainkit import load_tool

from vizattn.kernels.na2d.reference import na2d_reference

bench = load_tool("benchmark")

GROUPS = ("na2d", "dwconv", "layers", "routed", "clear", "dit", "models", "hires")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke run of every group on the CPU: (exit status, JSON result, printed text, tables file text)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        # the fused LKA op's channels_last row takes the code path of its NCHW row (tests/kernels covers the layout)
        rc = bench.main(["--device", "cpu", "--smoke", "--models", "van_b0", "--img-size", "32", "--dit", "--hires",
                         "--hires-model", "biformer_t", "--dw-impls",
                         "vizattn,vizattn-nhwc,vizattn-fused,torch-nchw,torch-nhwc", "--out", str(out)])
    return rc, json.loads(out.read_text()), stdout.getvalue(), out.with_suffix(".txt").read_text()


def _optional(row: dict) -> bool:
    """A row of the fused LKA op, which vizattn.kernels.dwconv may not have (or may be growing) while this runs: its
    failures are recorded by the benchmark but are not this test's subject (tests/kernels covers the op)."""
    return row["impl"].startswith("vizattn-fused") and not row.get("check_ok")


def test_smoke_run_fills_every_group(smoke_run):
    rc, result, printed, tables = smoke_run
    optional_failures = [r for r in result["dwconv"] if _optional(r) and "check_error" in r]
    assert rc == (1 if optional_failures else 0), printed
    for group in GROUPS:
        assert result[group], f"no rows for {group}"
        assert group in result["group_seconds"]
    assert result["environment"]["smoke"] is True

    impls = {g: {r["impl"] for r in result[g]} for g in ("na2d", "dwconv", "layers", "routed", "clear")}
    assert impls["na2d"] == {"vizattn", "torch", "sdpa", "flex"}
    assert impls["layers"] == {"vizattn", "torch"}
    assert {r["op"] for r in result["layers"]} == {"layer_norm", "scaled_add"}
    assert {"vizattn", "vizattn-nhwc", "vizattn-fused", "torch-nchw", "torch-nhwc"} <= impls["dwconv"]
    assert impls["routed"] == {"vizattn", "reference", "gather+matmul", "gather+sdpa", "flex"}
    assert impls["clear"] == {"vizattn", "sdpa", "flex"}

    for group in ("na2d", "dwconv", "layers", "routed", "clear"):
        for r in result[group]:
            if _optional(r):
                assert r["error"], r  # recorded, and the run went on
                continue
            if r["impl"] == "flex":
                # CPU flex: uncompiled forward only (no CPU backward), the failure recorded, not raised
                assert r["fwd_ms"] > 0 and "backward on CPU" in r["error"], r
                continue
            assert "error" not in r, r
            assert r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0 and r["floor_fwd_ms"] > 0, r
            if r["impl"].startswith("vizattn"):
                assert r["check_ok"] and r["check_finite"], r
                assert r["check_out_rel_err"] < bench.CHECK_TOL and r["check_grad_rel_err"] < bench.CHECK_TOL, r
                assert ("target_fb_over_f_ok" in r) == (group != "layers")  # the layers have no issue targets
                if group != "layers":  # issue 3 asks 3x of routed attention, the others 4x
                    assert r["target_fb_over_f"] == (3.0 if group == "routed" else 4.0), r
    rpb_rows = [r for r in result["na2d"] if r["rpb"] and r["impl"] in ("vizattn", "sdpa")]
    assert rpb_rows and all(r["fwdbwd_grads"] == "q,k,v,rpb" for r in rpb_rows)
    layouts = {r["impl"]: (r["input_layout"], r["out_layout"]) for r in result["dwconv"] if "out_layout" in r}
    assert layouts["vizattn"] == ("nchw", "nchw") and layouts["torch-nhwc"] == ("nhwc", "nhwc")

    teacher, student = result["dit"]
    assert teacher["impl"] == "teacher (sdpa)" and student["impl"] == "clear-r2"
    assert teacher["ms"] > 0 and student["ms"] > 0 and student["speedup"] > 0
    assert teacher["check_finite"] and student["check_finite"] and 0 < student["rel_diff_vs_teacher"] < 1
    (model,) = result["models"]
    assert model["model"] == "van_b0" and model["infer_img_s"] > 0 and model["train_img_s"] > 0
    assert model["train_kern_ms"] is None and model["infer_kern_ms"] is None  # the profiler's GPU time: CUDA only
    (hires,) = result["hires"]
    assert hires["fwdbwd_s"] > 0, hires

    for title in ("neighborhood attention", "depthwise convolution", "generic layers", "routed attention",
                  "CLEAR attention", "DiT sampling step", "models (bf16 autocast", "hires biformer_t"):
        assert title in printed and title in tables, title
    checked = [r for g in ("na2d", "dwconv", "layers", "routed", "clear") for r in result[g]
               if r["impl"].startswith("vizattn") and ("check_ok" in r or "check_error" in r)]
    passed = sum(bool(r.get("check_ok")) for r in checked)
    assert passed == len(checked) - len(optional_failures)
    assert f"vizattn checks: {passed} of {len(checked)} passed" in tables


@pytest.mark.parametrize("dilation, with_rpb", [(1, True), (2, False), (2, True)], ids=["d1-rpb", "d2", "d2-rpb"])
def test_na_anchors_compute_neighborhood_attention(dilation, with_rpb):
    """The dense-SDPA and flex anchors are the op they are timed against (flex forward, uncompiled, on the CPU)."""
    torch.manual_seed(0)
    hh, ww, heads, k = 7, 9, 2, 3
    q, k_, v = torch.randn(3, 2, hh, ww, heads, 8).unbind(0)
    rpb = torch.randn(heads, 2 * k - 1, 2 * k - 1) if with_rpb else None
    ref = na2d_reference(q, k_, v, k, dilation, rpb, 0.3)
    dev = torch.device("cpu")
    sdpa = bench.make_na_sdpa(hh, ww, k, dilation, dev)(q, k_, v, rpb, 0.3)
    flex = bench.make_na_flex(hh, ww, k, dilation, rpb, dev)(q, k_, v, rpb, 0.3)
    torch.testing.assert_close(sdpa, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(flex, ref, rtol=1e-4, atol=1e-5)


def test_budget_skips_and_still_writes(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = bench.main(["--device", "cpu", "--smoke", "--budget-s", "1e-9", "--dit", "--models", "van_b0", "--hires",
                     "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    for group in GROUPS:
        assert result[group] and all(r["error"] == bench.SKIPPED for r in result[group]), group
    assert "vizattn checks: 0 of 0 passed" in capsys.readouterr().out


def test_empty_lists_skip_groups_and_bad_names_stop_early(tmp_path, capsys):
    out = tmp_path / "e.json"
    rc = bench.main(["--device", "cpu", "--smoke", "--na-shapes", "", "--dw-shapes", "", "--layer-shapes", "",
                     "--shapes", "", "--clear-shapes", "", "--dit", "--dit-sizes", "", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert not any(result[g] for g in GROUPS) and result["group_seconds"] == {}
    with pytest.raises(SystemExit) as exc:
        bench.main(["--device", "cpu", "--smoke", "--na-shapes", "56x56-h2"])
    assert exc.value.code == 2
    assert "--na-shapes: unknown shape(s) 56x56-h2; valid: 6x6-h2-k3-rpb" in capsys.readouterr().err


@pytest.mark.parametrize("extra,why", [(["--device", "cpu"], "--device cpu"), (["--compile"], "with --compile")])
def test_cuda_graph_refuses_cpu_and_compile(capsys, extra, why):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--smoke", "--models", "van_b0", "--cuda-graph", *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--cuda-graph captures eager models on a CUDA device; got --device" in err and why in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_needs_a_gpu_without_smoke(capsys):
    assert bench.main(["--models", ""]) == 2
    assert bench.main(["--device", "cpu"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


_NO_GROUPS = ["--device", "cpu", "--smoke", "--na-shapes", "", "--dw-shapes", "", "--layer-shapes", "", "--shapes",
              "", "--clear-shapes", ""]


def test_set_switches_a_kernel_option_and_records_it(tmp_path, monkeypatch):
    import vizattn.kernels._halo2d.triton as halo
    import vizattn.kernels.routed.triton as routed

    monkeypatch.setattr(routed, "FUSED_QUERY_ROWS", False)  # restored after the test
    monkeypatch.setattr(halo, "_FWD_TABLE_HALF", False)
    out = tmp_path / "s.json"
    rc = bench.main([*_NO_GROUPS, "--set", "routed.triton.FUSED_QUERY_ROWS=True",
                     "--set", "vizattn.kernels._halo2d.triton._FWD_TABLE_HALF = True", "--out", str(out)])
    assert rc == 0
    assert routed.FUSED_QUERY_ROWS is True and halo._FWD_TABLE_HALF is True
    assert json.loads(out.read_text())["environment"]["settings"] == {
        "vizattn.kernels.routed.triton.FUSED_QUERY_ROWS": True, "vizattn.kernels._halo2d.triton._FWD_TABLE_HALF": True}


@pytest.mark.parametrize("item,why", [
    ("routed.triton.FUSED_QUERY_ROWS", "expected MODULE.NAME=VALUE"),
    ("routed.triton.NO_SUCH=True", "vizattn.kernels.routed.triton has no switch NO_SUCH; its switches: "),
    ("no_such.triton.X=1", "no module vizattn.kernels.no_such.triton"),
    ("routed.triton.FUSED_QUERY_ROWS=yes", "'yes' is not a Python literal"),
    ("routed.triton.FUSED_QUERY_ROWS=1", "vizattn.kernels.routed.triton.FUSED_QUERY_ROWS is a bool (False), got int 1"),
])
def test_set_refuses_what_it_cannot_apply(item, why, capsys, monkeypatch):
    import vizattn.kernels.routed.triton as routed

    monkeypatch.setattr(routed, "FUSED_QUERY_ROWS", False)
    for flag in ("--set", "--ab"):
        with pytest.raises(SystemExit) as exc:
            bench.main([*_NO_GROUPS, flag, item])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"{flag} {item!r}: " in err and why in err
        assert routed.FUSED_QUERY_ROWS is False


def test_ab_times_vizattn_rows_with_and_without_a_switch(tmp_path, monkeypatch, capsys):
    """--ab: each vizattn row is timed with the switches as they are and with the variant's, in interleaved rounds
    (the kernel sees both values), the switch is put back after each round, and the JSON rows get the variant's times,
    their change and how far its results are from the shipped switches'."""
    import vizattn.kernels.routed.triton as routed

    seen = []
    real = routed._routed_bwd_fused_kernel

    class _Recorded:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append(kwargs["QUERY_ROWS"])
                return real[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(routed, "_routed_bwd_fused_kernel", _Recorded())
    monkeypatch.setattr(routed, "FUSED_QUERY_ROWS", False)
    out = tmp_path / "ab.json"
    only_routed = ["--device", "cpu", "--smoke", "--na-shapes", "", "--dw-shapes", "", "--layer-shapes", "",
                   "--clear-shapes", "", "--impls", "vizattn"]
    rc = bench.main([*only_routed, "--ab", "routed.triton.FUSED_QUERY_ROWS=True", "--out", str(out)])
    assert rc == 0
    assert routed.FUSED_QUERY_ROWS is False
    assert set(seen) == {False, True} and seen.count(True) >= bench.AB_ROUNDS  # both values, every round
    result = json.loads(out.read_text())
    assert result["environment"]["ab"] == {"vizattn.kernels.routed.triton.FUSED_QUERY_ROWS": True}
    (row,) = result["routed"]
    assert row["impl"] == "vizattn" and row["ab_fwd_ms"] > 0 and row["ab_fwdbwd_ms"] > 0
    for key in ("fwd", "fwdbwd"):
        assert row[f"ab_{key}_change"] == pytest.approx(row[f"ab_{key}_ms"] / row[f"ab_base_{key}_ms"] - 1)
    assert row["ab_max_rel_diff"] < 1e-2
    assert "vizattn A/B (vizattn.kernels.routed.triton.FUSED_QUERY_ROWS=True)" in capsys.readouterr().out
