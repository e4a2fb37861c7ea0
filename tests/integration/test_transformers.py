"""Hugging Face transformers' flash_attention_2 path runs on this package unchanged.

transformers accepts attn_implementation="flash_attention_2" only on a GPU and only when the
distribution flash_attn (>= 2.1.0) is installed; it then imports flash_attn_func,
flash_attn_varlen_func and flash_attn.bert_padding and inspects their signatures. A tiny randomly
initialised Llama (GQA) must give the logits of its own SDPA implementation, with and without
padding (the padded batch goes through unpad_input + flash_attn_varlen_func).
"""
import pytest
import torch

transformers = pytest.importorskip("transformers")
if not torch.cuda.is_available():
    pytest.skip("transformers enables flash_attention_2 on GPUs only", allow_module_level=True)


def _model(impl: str, seed: int):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=1000)
    model = transformers.LlamaForCausalLM._from_config(config, attn_implementation=impl)
    return model.to("cuda", torch.bfloat16).eval().requires_grad_(False)


def test_llama_flash_attention_2_matches_sdpa():
    ours, sdpa = _model("flash_attention_2", 0), _model("sdpa", 0)
    assert ours.config._attn_implementation == "flash_attention_2"
    ids = torch.randint(0, 1000, (2, 77), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :20] = 0  # left padding: exercises unpad_input + the varlen function
    for attention_mask in (None, mask):
        a = ours(ids, attention_mask=attention_mask).logits.float()
        b = sdpa(ids, attention_mask=attention_mask).logits.float()
        valid = (attention_mask if attention_mask is not None else torch.ones_like(ids)).bool()
        err = (a - b).abs()[valid].max().item()
        assert err < 0.1 * b.abs()[valid].max().item(), f"logits differ by {err}"
