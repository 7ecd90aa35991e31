"""`mvot bench decode` on the tiny memorising model: figures present and consistent."""

from mvot.bench_decode import bench_decode, format_table


def test_bench_decode_reports_all_three_decoders(tiny_overfit):
    params, model_dir, _, tok, _ = tiny_overfit
    r = bench_decode(params, "mvot", model_dir.parent.parent, tok, "frozenlake", n=2, n_batched=4, batch_size=4)
    assert r["single"]["instances"] == 2 and r["batched"]["instances"] == 4
    assert r["hf_generate"]["new_tokens"] == r["single"]["new_tokens"] > 0  # same work for both
    assert r["batched"]["new_tokens"] >= r["single"]["new_tokens"]
    for k in ("batched_vs_single", "single_vs_hf_generate", "batched_vs_hf_generate"):
        assert r[k] > 0
    assert "batched / single-stream" in format_table(r)
