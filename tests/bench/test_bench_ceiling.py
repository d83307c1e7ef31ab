"""`bench.ceiling`: the nominal FLOP per cycle by CPU, the measured kernels and their FLOP counts."""

from __future__ import annotations

import math

import pytest

from bench.ceiling import CHAIN, KERNELS, nominal_flops_per_cycle, openvino_matmul, sustained


def cpuinfo(vendor: str, family: int, flags: str) -> str:
    return f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nflags\t\t: fpu sse2 {flags}\n"


@pytest.mark.parametrize(("vendor", "family", "flags", "expected"), [
    ("AuthenticAMD", 23, "avx2 fma", {"f32": 32, "bf16": 64}),  # Zen 2: AVX2 only
    ("AuthenticAMD", 25, "avx2 fma avx512f avx512_bf16", {"f32": 32, "bf16": 64}),  # Zen 4 halves AVX-512
    ("AuthenticAMD", 26, "avx2 fma avx512f avx512_bf16", {"f32": 64, "bf16": 128}),  # Zen 5: full width
    ("GenuineIntel", 6, "avx2 fma avx512f avx512_bf16", {"f32": 64, "bf16": 128}),  # Cooper Lake
    ("GenuineIntel", 6, "avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile", {"f32": 64, "bf16": 1024}),  # AMX
    ("GenuineIntel", 6, "avx2 fma", {"f32": 32, "bf16": 64}),
])
def test_nominal_flop_per_cycle_follows_the_vector_and_tile_units(vendor: str, family: int, flags: str,
                                                                  expected: dict[str, int]) -> None:
    assert nominal_flops_per_cycle(cpuinfo(vendor, family, flags)) == expected


def test_the_chained_kernels_are_small_products_for_tile_units() -> None:
    n, chain = CHAIN
    assert n <= 1024 and chain > 1
    assert {"openvino-f32-chain", "openvino-bf16-chain", "numpy-f32"} <= set(KERNELS)


@pytest.mark.parametrize("chain", [1, 3])
def test_a_chained_matmul_counts_every_product_and_stays_finite(chain: int) -> None:
    pytest.importorskip("openvino")
    call, flop = openvino_matmul("f32", 1, 64, chain)
    assert flop == 2.0 * 64 ** 3 * chain
    (out,) = call().values()
    assert out.shape == (64, 64)
    assert all(math.isfinite(v) for v in out.ravel()) and 0.1 < float(abs(out).mean()) < 10.0


def test_sustained_reports_the_median_and_best_of_at_least_three_calls() -> None:
    call, flop = KERNELS["numpy-f32"](64)
    result = sustained(call, flop, seconds=0.0)
    assert result["calls"] >= 3
    assert 0.0 < result["median_gflops"] <= result["best_gflops"]
