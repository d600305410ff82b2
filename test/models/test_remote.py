"""The remote reaction backend (models/remote.py) against a real OpenAI-compatible server:
`transformers serve` on a localhost port, serving a tiny LLaVA built here (served_vlm.py
says why LLaVA). Requests are captured at the HTTP level with httpx event hooks on the
backend's real client; nothing is mocked."""
import base64
import json
import math
import socket
import threading
import time

import numpy as np
import pytest
import torch
import yaml
from response_collector import Collector
from served_vlm import ServedVLM, build_tiny_llava, free_port

from dispider_ros import compose, settings
from dispider_ros.core import schema
from dispider_ros.core.memory import MemoryBuffer, MemoryConfig, pool_frame
from dispider_ros.core.protocols import PromptParts
from dispider_ros.core.reaction import ReactionConfig, ReactionEngine
from dispider_ros.core.types import ErrorCode, Frame, TriggerEvent
from dispider_ros.models.remote import (TOKEN_PIXELS, RemoteConfig, RemoteVLM,
                                        budget_grid, decode_jpeg)
from dispider_ros.models.vlm_config import ReactionVLMConfig

WAIT = 60.0
MAX_PIXELS = 112 * 112  # a 96x128 frame -> a (3, 5) grid, 15 visual tokens, an 84x140 JPEG


def image(i, size=(96, 128)):
    rng = np.random.default_rng(i)
    out = np.empty(size + (3,), np.uint8)
    out[:] = rng.integers(0, 256, 3)
    out[(5 * i) % 60:(5 * i) % 60 + 30, 20:60] = rng.integers(0, 256, 3)
    return out


def frame(i, camera="cam"):
    return Frame(camera_id=camera, stamp=float(i), index=i, image=image(i))


def trigger(n, query="q1", stamp=0.0, text="What is on the table now?"):
    return TriggerEvent(trigger_id=f"t{n}", query_id=query, query_text=text, camera_id="cam",
                        policy="now", score=1.0, stamp=stamp, frame_index=int(stamp), clip_index=0,
                        clip_start=0.0, clip_end=stamp)


class Capture:
    """httpx event hooks: every request body (parsed) and every response object."""

    def __init__(self, on_request=None):
        self.requests, self.responses, self.headers = [], [], []
        self.on_request = on_request

    def hooks(self):
        return {"request": [self._request], "response": [self.responses.append]}

    def _request(self, request):
        self.requests.append(json.loads(request.content))
        self.headers.append(dict(request.headers))
        if self.on_request is not None:
            self.on_request(request)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="module")
def server(llava_dir, tmp_path_factory):
    served = ServedVLM(llava_dir, log_path=tmp_path_factory.mktemp("serve") / "serve.log").start()
    yield served
    served.stop()


def serve_body(tokens: int, llava_dir) -> dict:
    """transformers serve's own request field: a generation config that runs `tokens` tokens
    (random weights may otherwise end an answer at once)."""
    from transformers import GenerationConfig

    base = GenerationConfig.from_pretrained(llava_dir)
    return {"generation_config": json.dumps({"min_new_tokens": tokens, "max_new_tokens": tokens,
                                             "do_sample": False, "eos_token_id": base.eos_token_id,
                                             "pad_token_id": base.pad_token_id})}


def make_vlm(base_url, llava_dir, capture=None, fallback=None, max_new_tokens=8, **remote):
    remote.setdefault("backoff_sec", 0.05)
    config = ReactionVLMConfig(model=f"openai:{llava_dir}", max_new_tokens=max_new_tokens,
                               max_pixels=MAX_PIXELS)
    return RemoteVLM(config, RemoteConfig(base_url=base_url, **remote), fallback=fallback,
                     http_hooks=capture.hooks() if capture else None)


def engine_for(vlm, **config):
    sink = Collector(timeout=WAIT)
    config.setdefault("evidence_timeout_sec", 0.0)
    config.setdefault("memory", MemoryConfig(max_tokens=4000))
    return ReactionEngine(ReactionConfig(**config), sink, vlm=vlm), sink


def dead_url():
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there


# ---- no server needed ------------------------------------------------------------------
@pytest.mark.parametrize("height,width,max_pixels", [(480, 640, 100352), (96, 128, MAX_PIXELS),
                                                     (720, 1280, 200704), (20, 30, 100352),
                                                     (1080, 1920, 3136)])
def test_the_frame_grid_is_qwen2_vl_processors_resize(height, width, max_pixels):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    h, w = smart_resize(height, width, factor=TOKEN_PIXELS, min_pixels=3136, max_pixels=max_pixels)
    assert budget_grid(height, width, 3136, max_pixels) == (h // TOKEN_PIXELS, w // TOKEN_PIXELS)


def test_a_pooled_frame_is_sent_downscaled_to_its_grid_with_a_new_id(llava_dir):
    vlm = make_vlm(dead_url(), llava_dir)
    try:
        encoded = vlm.encode_frame(image(3), camera_id="cam", stamp=3.0)
        assert encoded.grid == (3, 5) and encoded.tokens.shape == (15, 0)
        assert decode_jpeg(encoded.media).shape == (3 * 28, 5 * 28, 3)
        memory = MemoryBuffer(MemoryConfig(max_tokens=1000))
        stored = memory.add_frame(encoded)
        pooled = pool_frame(stored, 2)
        assert pooled.media is stored.media and pooled.grid == (3, 3)  # pooling keeps the JPEG
        parts = [vlm.messages(PromptParts([f], "q"))[1][0]["content"][-1] for f in (stored, pooled)]
        sizes = [decode_jpeg(base64.b64decode(p["image_url"]["url"].split(",", 1)[1])).shape
                 for p in parts]
        assert sizes == [(84, 140, 3), (84, 84, 3)]
        assert parts[0]["uuid"] != parts[1]["uuid"]
        assert vlm.messages(PromptParts([stored], "q"))[1][0]["content"][-1] is parts[0]  # built once
    finally:
        vlm.close()


def test_config_names_bad_values():
    with pytest.raises(ValueError, match="remote_base_url 'localhost:8000'"):
        RemoteConfig(base_url="localhost:8000")
    with pytest.raises(ValueError, match="must be a local model"):
        RemoteConfig(fallback_model="openai:other")
    with pytest.raises(ValueError, match="remote_retries -1"):
        RemoteConfig(retries=-1)


def test_a_stop_wakes_a_read_blocked_on_a_silent_server():
    """A server that streams one chunk and then goes silent (stuck in a long prefill or
    decode step): a stop must not wait out the read timeout. The peer is a raw socket that
    speaks just enough HTTP/SSE; it reports when it sees the connection drop."""
    listener = socket.create_server(("127.0.0.1", 0))
    dropped = threading.Event()

    def peer():
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, body = data.split(b"\r\n\r\n", 1)
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            while len(body) < length:
                body += conn.recv(65536)
            event = b"data: " + json.dumps({"id": "1", "object": "chat.completion.chunk", "created": 0,
                                            "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"},
                                                                       "finish_reason": None}]}).encode() + b"\n\n"
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(event), event))
            conn.settimeout(WAIT)
            if conn.recv(1) == b"":  # the client closed the connection
                dropped.set()

    threading.Thread(target=peer, daemon=True).start()
    port = listener.getsockname()[1]
    vlm = RemoteVLM(ReactionVLMConfig(model="openai:m"),
                    RemoteConfig(base_url=f"http://127.0.0.1:{port}/v1", read_timeout_sec=WAIT))
    try:
        stop = threading.Event()
        timer = threading.Timer(0.5, stop.set)
        timer.start()
        started = time.perf_counter()
        result = vlm.generate(PromptParts([], "q"), stop=stop)
        assert result.stop_reason == "stopped" and result.text == "hi"
        assert time.perf_counter() - started < 5.0  # not the 60 s read timeout
        assert dropped.wait(5.0)
    finally:
        vlm.close()
        listener.close()


# ---- against the server ----------------------------------------------------------------
@pytest.mark.remote_server
def test_a_streamed_answer_end_to_end_through_the_engine(server, llava_dir):
    capture = Capture()
    vlm = make_vlm(server.base_url, llava_dir, capture, extra_body=serve_body(6, llava_dir))
    engine, sink = engine_for(vlm)
    try:
        for i in range(3):
            engine.ingest(frame(i))
        rid = engine.submit(trigger(0, stamp=2.0))
        final = sink.wait_final(rid)
        chunks = sink.chunks(rid)
        assert final.error_code == ErrorCode.OK, final.error
        assert chunks and [c.sequence for c in chunks] == list(range(len(chunks)))
        assert final.text == "".join(c.text for c in chunks) and final.text
        assert final.extras["answered_by"] == f"openai:{llava_dir}"
        assert final.extras["token_counts"] == "estimated"  # transformers serve reports no usage
        assert final.extras["frames_in_prompt"] == 3 and final.extras["prompt_tokens"] > 3 * 15
        body = capture.requests[-1]
        assert body["stream"] is True and body["model"] == str(llava_dir)
        roles = [m["role"] for m in body["messages"]]
        assert roles == ["system", "user", "user", "user", "user"]
        images = [p for m in body["messages"][1:4] for p in m["content"] if p["type"] == "image_url"]
        assert len(images) == 3 and all(p["image_url"]["url"].startswith("data:image/jpeg;base64,")
                                        and len(p["uuid"]) == 32 for p in images)
        assert body["messages"][-1]["content"] == [{"type": "text", "text": "What is on the table now?"}]
        assert engine.memory.stats()["turns"] == 2  # question and answer remembered
    finally:
        engine.close()
        vlm.close()


@pytest.mark.remote_server
def test_each_request_extends_the_last_except_right_after_a_compression_batch(server, llava_dir):
    """Request N's message list is a prefix of request N+1's, unless a compression batch ran
    in between: then the list changed at its first pooled (or dropped) frame."""
    batches = []  # the memory's compression count when each request left

    capture = Capture(on_request=lambda request: batches.append(engine.memory.counts["compressions"]))
    vlm = make_vlm(server.base_url, llava_dir, capture, max_new_tokens=3)
    # A round (2 frames of 15 visual + ~9 overhead tokens, a question and an answer) adds ~75
    # tokens: the first batch after ~6 rounds, then one every ~3 (from 450 down to 225).
    engine, sink = engine_for(vlm, memory=MemoryConfig(max_tokens=450, protected_frames=2,
                                                       target_ratio=0.5))
    rounds = 14
    try:
        for n in range(rounds):
            for i in (2 * n, 2 * n + 1):
                engine.ingest(frame(i))
            final = sink.wait_final(engine.submit(trigger(n, query=f"q{n % 2}", stamp=2 * n + 1.0)))
            assert final.error_code == ErrorCode.OK, final.error
    finally:
        engine.close()
        vlm.close()
    messages = [body["messages"] for body in capture.requests]
    assert len(messages) == rounds == len(batches)
    kept = broken = 0
    for n in range(rounds - 1):
        before, after = messages[n], messages[n + 1]
        if batches[n + 1] == batches[n]:
            assert after[:len(before)] == before, f"request {n + 1} does not extend request {n}"
            kept += 1
        else:  # pooled frames were re-encoded smaller (new ids), the oldest items dropped
            assert after[:len(before)] != before and after[0] == before[0]
            broken += 1
    assert broken >= 2 and kept >= 8, (kept, broken)
    sizes = {decode_jpeg(base64.b64decode(p["image_url"]["url"].split(",", 1)[1])).shape[:2]
             for body in messages for m in body[1:] if isinstance(m["content"], list)
             for p in m["content"] if p["type"] == "image_url"}
    assert (84, 140) in sizes and any(h * w < 84 * 140 for h, w in sizes), sizes  # pooled ones sent smaller


@pytest.mark.remote_server
def test_a_stop_closes_the_stream(server, llava_dir):
    capture = Capture()
    vlm = make_vlm(server.base_url, llava_dir, capture, max_new_tokens=300,
                   extra_body=serve_body(300, llava_dir))
    try:
        parts = PromptParts([vlm.encode_frame(image(1), "cam", 1.0)], "Describe the scene.")
        stop, heard = threading.Event(), []

        def on_text(text, tokens):
            heard.append(text)
            stop.set()  # as a pre-emption or a cancel does

        result = vlm.generate(parts, on_text=on_text, stop=stop)
        assert result.stop_reason == "stopped" and heard == [result.text] and result.token_count == 1
        assert capture.responses[-1].is_closed
        again = vlm.generate(parts)  # the server serves the next request
        assert again.stop_reason in ("eos", "max_new_tokens") and again.token_count > 1
        assert vlm.stats()["stopped"] == 1
    finally:
        vlm.close()


@pytest.mark.remote_server
def test_preemption_and_cancel_close_the_answers_stream(server, llava_dir):
    capture = Capture()
    vlm = make_vlm(server.base_url, llava_dir, capture, max_new_tokens=300,
                   extra_body=serve_body(300, llava_dir))
    engine, sink = engine_for(vlm)
    try:
        engine.ingest(frame(0))
        seen = threading.Event()
        sink_call = sink.__call__

        def on_response(event):
            sink_call(event)
            if not event.final and event.response_id == "resp-t1":
                seen.set()

        engine.on_response = on_response
        engine.submit(trigger(1, stamp=0.0))
        assert seen.wait(WAIT)
        engine.submit(trigger(2, stamp=0.0))  # same query: pre-empts t1
        first, second = sink.wait_final("resp-t1"), sink.wait_final("resp-t2")
        assert first.error_code == ErrorCode.PREEMPTED and second.revises_response_id == "resp-t1"
        assert first.token_count < 300
        assert capture.responses[0].is_closed
        seen.clear()
        engine.on_response = lambda e: (sink_call(e), (not e.final and e.response_id == "resp-t3") and seen.set())
        engine.submit(trigger(3, query="q2", stamp=0.0))
        assert seen.wait(WAIT)
        assert engine.cancel("q2") == 1
        canceled = sink.wait_final("resp-t3")
        assert canceled.error_code == ErrorCode.CANCELED and canceled.token_count < 300
        assert all(response.is_closed for response in capture.responses)
    finally:
        engine.close()
        vlm.close()


@pytest.mark.remote_server
def test_a_server_that_is_down_gives_a_clear_error_and_the_engine_carries_on(llava_dir):
    url = dead_url()
    vlm = make_vlm(url, llava_dir, retries=2, connect_timeout_sec=1.0)
    engine, sink = engine_for(vlm)
    try:
        engine.ingest(frame(0))
        started = time.perf_counter()
        first = sink.wait_final(engine.submit(trigger(1, stamp=0.0)))
        assert first.error_code == ErrorCode.GENERATION_FAILED
        assert first.error.startswith("RemoteUnavailable: VLM server " + url) and "3 attempt(s)" in first.error
        assert time.perf_counter() - started >= 0.05 + 0.1  # backed off twice
        second = sink.wait_final(engine.submit(trigger(2, query="q2", stamp=0.0)))
        assert second.error_code == ErrorCode.GENERATION_FAILED and "1 attempt(s)" in second.error
        assert engine.stats()["errors"] == 2 and vlm.stats()["retries"] == 2 and vlm.stats()["server_down"]
        # ...and reaches the node's /diagnostics through the engine's stats
        assert engine.stats()["vlm_retries"] == 2 and engine.stats()["vlm_server_down"] is True
    finally:
        engine.close()
        vlm.close()


@pytest.mark.remote_server
def test_retries_with_backoff_reach_a_server_started_late(llava_dir, tmp_path):
    port = free_port()
    late = ServedVLM(llava_dir, port=port, log_path=tmp_path / "late.log")
    vlm = make_vlm(late.base_url, llava_dir, retries=12, backoff_sec=0.2, connect_timeout_sec=1.0)
    try:
        late.start(wait=False)  # loads transformers for seconds: the first attempts are refused
        result = vlm.generate(PromptParts([vlm.encode_frame(image(1), "cam", 1.0)], "What now?"))
        assert result.stop_reason in ("eos", "max_new_tokens")
        assert result.extras["answered_by"] == f"openai:{llava_dir}"
        assert vlm.stats()["retries"] >= 1 and not vlm.stats()["server_down"]
    finally:
        vlm.close()
        late.stop()


@pytest.mark.remote_server
def test_the_local_fallback_answers_when_the_server_is_unreachable(llava_dir):
    """Through the composition root: settings -> compose -> registry -> RemoteVLM + fallback."""
    torch.set_num_threads(1)
    url = dead_url()
    node = settings.node_settings("reaction_node", overrides={
        "vlm_model": "openai:Qwen/Qwen2.5-VL-3B-Instruct", "remote_base_url": url, "remote_retries": 1,
        "remote_fallback_model": "tiny:qwen2_vl", "min_new_tokens": 4, "max_new_tokens": 4})
    vlm = compose.load_reaction_vlm(node)
    assert isinstance(vlm, RemoteVLM) and vlm.fallback is not None
    engine, sink = engine_for(vlm)
    try:
        for i in range(10):
            engine.ingest(frame(i))
        final = sink.wait_final(engine.submit(trigger(1, stamp=9.0)))
        assert final.error_code == ErrorCode.OK, final.error
        assert final.text and final.token_count == 4
        assert final.extras["answered_by"] == "fallback:tiny:qwen2_vl"
        assert url in final.extras["fallback_reason"]
        assert vlm.stats()["fallbacks"] == 1
    finally:
        engine.close()
        vlm.close()


@pytest.mark.remote_server
def test_the_api_key_comes_from_the_environment_and_never_from_a_parameter(server, llava_dir, monkeypatch):
    secret = "sk-test-7f3a9c"
    monkeypatch.setenv("DISPIDER_TEST_VLM_KEY", secret)
    node = settings.node_settings("reaction_node", overrides={
        "vlm_model": f"openai:{llava_dir}", "remote_base_url": server.base_url,
        "remote_api_key_env": "DISPIDER_TEST_VLM_KEY"})
    # What `ros2 param dump` would print: the declared parameters' values.
    assert secret not in yaml.safe_dump(node)
    assert not [p.name for p in schema.params("reaction_node")
                if "key" in p.name.split("_") and p.name != "remote_api_key_env"]  # not keyframe_*
    vlm = compose.load_reaction_vlm(node)
    capture = Capture()
    vlm.client._client.event_hooks["request"].append(capture._request)
    try:
        vlm.generate(PromptParts([vlm.encode_frame(image(1), "cam", 1.0)], "What now?"))
        assert capture.headers[-1]["authorization"] == f"Bearer {secret}"
        assert secret not in repr(vlm.remote) and secret not in repr(vlm.config)
    finally:
        vlm.close()
    monkeypatch.delenv("DISPIDER_TEST_VLM_KEY")
    unset = compose.load_reaction_vlm(node)
    try:
        assert unset.client.api_key == "EMPTY"
    finally:
        unset.close()


@pytest.mark.remote_server
def test_frame_tokens_count_what_the_served_model_spends(server, llava_dir):
    """The budget's visual tokens are the grid; the request sends the JPEG at that grid."""
    capture = Capture()
    vlm = make_vlm(server.base_url, llava_dir, capture)
    try:
        frames = [vlm.encode_frame(image(i), "cam", float(i)) for i in range(2)]
        result = vlm.generate(PromptParts(frames, "What changed?"))
        messages = vlm.messages(PromptParts(frames, "What changed?"))
        assert result.prompt_tokens == sum(tokens for _, tokens in messages)
        assert all(f.n_tokens == 15 and not math.isnan(f.encode_ms) for f in frames)
        assert vlm.stats()["request_bytes"] > sum(len(f.media) for f in frames)
    finally:
        vlm.close()
