"""The callback streamer reports progress ("", tokens so far) when no text is finalized."""
import torch

from dispider_ros.models import streaming, tiny


def test_tokens_without_a_word_boundary_still_report_progress(monkeypatch):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny.resolve_model_path("tiny:qwen2_vl"))
    calls = []
    streamer = streaming.callback_streamer(tokenizer, lambda text, tokens: calls.append((text, tokens)))
    word = tokenizer.encode("abcdefghij", add_special_tokens=False)  # no space: nothing finalized
    assert len(word) >= 2
    streamer.put(torch.tensor([tokenizer.encode("prompt", add_special_tokens=False)]))
    streamer.put(torch.tensor([word[0]]))
    assert calls == []  # within PROGRESS_SEC of the first token: quiet
    monkeypatch.setattr(streaming, "PROGRESS_SEC", 0.0)
    for token in word[1:]:
        streamer.put(torch.tensor([token]))
    assert calls == [("", n) for n in range(2, len(word) + 1)]  # progress only, tokens so far
    streamer.end()
    assert calls[-1] == ("abcdefghij", len(word)) and streamer.chunks == ["abcdefghij"]
