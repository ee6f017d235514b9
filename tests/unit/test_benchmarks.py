"""The benchmark scripts measure what docs/benchmarks.md says they do (never their timings: those go in
benchmarks/results). Optimizer state and collective payloads are checked against counts known a priori."""

import torch
import torch.distributed as dist

from benchmarks import bench_engines, bench_step


def test_bench_step_reports_every_method_and_its_state_bytes(tmp_path, capsys):
    result = bench_step.main(["--repeats", "2", "--warmup", "1", "--no-flush", "--json", str(tmp_path / "r.json")])
    assert set(result["median_ms"]) == {"AGD", "AdamW", "SGD", "HyperSGD", "HyperAdam", "ECCO"}
    assert result["params"] == 11_678_912  # ResNet-18's conv and linear weights, no biases or BN affine
    state = result["state_bytes_per_param"]
    # fp32 buffers per element: AdamW m, v; HyperSGD (momentum) b_t, b_{t-1}; HyperAdam m, v, d, dd/db1,
    # dd/db2; ECCO its two element-wise buffers; AGD and plain SGD none. (AdamW's and ECCO's per-tensor
    # step counters add a few bytes per tensor, not per element.)
    expected = {"AGD": 0, "AdamW": 8, "SGD": 0, "HyperSGD": 8, "HyperAdam": 20, "ECCO": 8}
    for name, want in expected.items():
        assert abs(state[name] - want) < 1e-4, (name, state[name])
    assert (tmp_path / "r.json").stat().st_size > 500


def test_gloo_traffic_counts_collectives_and_payload_bytes(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        def traffic():
            dist.all_reduce(torch.zeros(157))  # AGD's statistics on ResNet-18: 157 taps, fp32
            out = torch.empty(10, dtype=torch.float64)
            dist.all_gather_into_tensor(out, torch.ones(10, dtype=torch.float64))
            dist.broadcast(torch.zeros(3, dtype=torch.bfloat16), 0)

        assert bench_engines.gloo_traffic(traffic) == (3, 157 * 4 + 10 * 8 + 3 * 2)
        assert bench_engines.gloo_traffic(lambda: None) == (0, 0)
    finally:
        dist.destroy_process_group()
