"""The compute ceiling `bench.worker` reports: nominal FLOP per cycle by CPU, measured matmul shapes."""

from __future__ import annotations

import math

import pytest

from bench.forward import CEILING_SHAPES, openvino_matmul
from bench.worker import nominal_flops_per_cycle


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


def test_the_ceiling_shapes_include_a_chain_of_small_products_for_tile_units() -> None:
    assert any(chain > 1 and n <= 1024 for n, chain in CEILING_SHAPES)
    assert any(chain == 1 and n >= 2048 for n, chain in CEILING_SHAPES)


@pytest.mark.parametrize("chain", [1, 3])
def test_a_chained_matmul_counts_every_product_and_stays_finite(chain: int) -> None:
    pytest.importorskip("openvino")
    call, flop = openvino_matmul("f32", 1, 64, chain)
    assert flop == 2.0 * 64 ** 3 * chain
    (out,) = call().values()
    assert out.shape == (64, 64)
    assert all(math.isfinite(v) for v in out.ravel()) and 0.1 < float(abs(out).mean()) < 10.0


def test_the_fastest_forward_pass_is_taken_over_batches_and_layouts_but_never_the_worker_path() -> None:
    from bench.worker import Results, best_forward

    results = Results()
    for key, value in [("forward_b1/ov", 150.0), ("forward_b8/ov", 220.0), ("layout_2x1/ov", 200.0),
                       ("layout_b8_2x1/ov", 250.0), ("layout_path_2x1/ov", 900.0), ("forward_b8/tf", 999.0),
                       ("worker_path/ov", 800.0)]:
        results.add(key, value)
    assert best_forward(results, "ov") == (250.0, "layout_b8_2x1")


def test_stage_means_add_up_to_the_studies_mean_time() -> None:
    from bench.worker import mean_stage_ms

    rows = [{"decode": 1.0, "forward": 30.0, "write": 0.5}, {"decode": 5.0, "forward": 34.0}]
    assert mean_stage_ms(rows) == {"decode": 3.0, "forward": 32.0, "write": 0.25}
    assert mean_stage_ms([]) == {}


def test_a_studys_time_is_split_into_its_stages_and_the_rest_per_process() -> None:
    from bench.worker import Results, study_time

    results = Results()
    # 2 processes: the bare pass at 50 images/s in all is 40 ms per image and process, the path at
    # 40 studies/s 50 ms per study and process.
    for key, value in [("layout_2x1/ov", 50.0), ("layout_path_2x1/ov", 40.0), ("layout_path_2x1/tf", 1.0),
                       ("path_stage_ms_2x1/ov/forward", 41.0), ("path_stage_ms_2x1/ov/forward_batch", 41.0),
                       ("path_stage_ms_2x1/ov/decode", 3.0), ("path_stage_ms_2x1/ov/write", 1.0),
                       ("path_stage_ms_2x1/ov/read", 0.5), ("path_stage_ms_2x1/ov/preprocess", 0.5),
                       ("path_stage_ms_2x1/ov/cam", 0.75), ("path_stage_ms_2x1/ov/heatmap", 0.25)]:
        results.add(key, value)
    row = study_time(results, "ov", "2x1", 2)
    assert row["bare"] == pytest.approx(40.0)
    assert row["path"] == pytest.approx(50.0)
    assert (row["forward"], row["decode"], row["write"], row["other"]) == (41.0, 3.0, 1.0, 2.0)
    assert row["rest"] == pytest.approx(3.0)  # forward_batch is not counted twice
