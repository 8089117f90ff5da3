"""The speed benchmark runs end to end (on a tiny model) and reports every figure it promises."""
import json

from conftest import make_tiny_lm
from npdemo.bench.__main__ import main


def test_bench_reports_all_figures(tmp_path):
    tiny = make_tiny_lm()
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    main(["--model", str(tmp_path / "m"), "--new-tokens", "4", "--repeats", "1", "--latent", "8",
                "--json", str(tmp_path / "b.json")])
    out = json.loads((tmp_path / "b.json").read_text())
    assert [r["quant"] for r in out["rows"]] == ["int4", "nf4", "bf16"]
    assert set(out["ratios"]) == {"int4_over_bf16", "int4_over_nf4", "nf4_over_bf16"} and out["threads"] >= 1
    for r in out["rows"]:
        assert r["tok_s_steered"] > 0 and r["tok_s_unsteered"] > 0 and r["ttft_s_steered"] > 0
        assert r["tok_s_plain_hf"] > 0 and r["prefill_4_s"] > 0
        assert r["peak_rss_mb"] >= r["rss_mb"] > 0
        for how in ("serial", "batched"):
            c = r[f"concurrent_4_{how}"]
            assert c["ttft_max_s"] >= c["ttft_p50_s"] > 0 and c["total_tok_s"] > 0
    assert 0 < out["encode_10_pairs_s"] < 1
