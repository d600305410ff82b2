"""Memory buffer and round-decayed compression (no model, no ROS)."""
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dispider_ros.core.memory import (DialogueTurn, FrameTokens, MemoryBuffer, MemoryConfig,
                                      pool_frame)

HIDDEN = 8


def frame(stamp, camera="cam", grid=(3, 4), index=0, seed=None):
    g = torch.Generator().manual_seed(int(stamp * 1000) if seed is None else seed)
    tokens = torch.randn(grid[0] * grid[1], HIDDEN, generator=g)
    return FrameTokens(tokens=tokens, grid=grid, camera_id=camera, stamp=float(stamp), frame_index=index)


def frames_of(items):
    return [it for it in items if isinstance(it, FrameTokens)]


def rounds_of(items):
    """Frames grouped by round: the runs between dialogue turns."""
    rounds, current = [], []
    for it in items:
        if isinstance(it, DialogueTurn):
            if current:
                rounds.append(current)
            current = []
        else:
            current.append(it)
    if current:
        rounds.append(current)
    return rounds


# ---- records and config ------------------------------------------------------------------
def test_config_rejects_bad_values_by_name():
    for kwargs, name in [({"max_tokens": 0}, "max_tokens"), ({"pool_stride": 1}, "pool_stride"),
                         ({"protected_frames": -1}, "protected_frames"),
                         ({"target_ratio": 0.0}, "target_ratio"), ({"target_ratio": float("nan")}, "target_ratio"),
                         ({"max_tokens": 10.5}, "max_tokens")]:
        with pytest.raises(ValueError, match=name):
            MemoryConfig(**kwargs)


def test_frame_tokens_validate_shape_and_grid():
    with pytest.raises(ValueError, match="grid"):
        FrameTokens(tokens=torch.zeros(12, 4), grid=(3, 5))
    with pytest.raises(ValueError, match="2-D"):
        FrameTokens(tokens=torch.zeros(12), grid=(3, 4))
    with pytest.raises(ValueError, match="role"):
        DialogueTurn(role="robot", text="hi", stamp=0.0)


def test_pool_frame_averages_adjacent_tokens_along_longer_side():
    f = frame(0.0, grid=(2, 4))
    pooled = pool_frame(f, 2)
    assert pooled.grid == (2, 2) and pooled.level == 1 and pooled.n_tokens == 4
    x = f.tokens.view(2, 4, HIDDEN)
    expect = torch.stack([(x[:, 0] + x[:, 1]) / 2, (x[:, 2] + x[:, 3]) / 2], dim=1).reshape(4, HIDDEN)
    torch.testing.assert_close(pooled.tokens, expect)
    # Odd length: the last token is averaged alone; taller grids pool along rows.
    odd = pool_frame(frame(0.0, grid=(1, 3)), 2)
    assert odd.grid == (1, 2)
    torch.testing.assert_close(odd.tokens[1], frame(0.0, grid=(1, 3)).tokens[2])
    assert pool_frame(frame(0.0, grid=(5, 2)), 2).grid == (3, 2)
    assert pool_frame(frame(0.0, grid=(1, 9)), 3).grid == (1, 3)



def test_extra_rows_must_align_with_tokens():
    tokens = torch.zeros(12, HIDDEN)
    with pytest.raises(ValueError, match="extra"):
        FrameTokens(tokens=tokens, grid=(3, 4), extra=(torch.zeros(11, 5),))
    with pytest.raises(ValueError, match="extra"):
        FrameTokens(tokens=tokens, grid=(3, 4), extra=(torch.zeros(12),))
    ok = FrameTokens(tokens=tokens, grid=(3, 4), extra=[torch.zeros(12, 5), torch.ones(12, 5)])
    assert isinstance(ok.extra, tuple) and len(ok.extra) == 2 and frame(0.0).extra == ()


@pytest.mark.parametrize("grid", [(2, 4), (5, 2), (1, 3), (3, 3)])
def test_pool_frame_pools_extra_rows_exactly_like_tokens(grid):
    """Side features (e.g. Qwen3-VL DeepStack rows) stay aligned with the pooled tokens."""
    f = frame(0.0, grid=grid)
    side = [frame(0.0, grid=grid, seed=s).tokens[:, :w].clone() for s, w in ((1, 3), (2, HIDDEN))]
    with_extra = FrameTokens(tokens=f.tokens, grid=grid, extra=tuple(side))
    pooled = pool_frame(with_extra, 2)
    assert pooled.grid == pool_frame(f, 2).grid and torch.equal(pooled.tokens, pool_frame(f, 2).tokens)
    for rows, pooled_rows in zip(side, pooled.extra):
        alone = pool_frame(FrameTokens(tokens=rows, grid=grid), 2)
        assert pooled_rows.shape == (pooled.n_tokens, rows.shape[1]) and torch.equal(pooled_rows, alone.tokens)
    # Through a compressing buffer too: every stored frame keeps one extra row per token.
    memory = MemoryBuffer(MemoryConfig(max_tokens=40, protected_frames=1))
    for i in range(6):
        memory.add_frame(FrameTokens(tokens=torch.randn(12, HIDDEN), grid=(3, 4), stamp=float(i),
                                     extra=(torch.randn(12, 3),)))
    stored = memory.snapshot()
    assert memory.stats()["pool_ops"] > 0
    assert all(f.extra[0].shape == (f.n_tokens, 3) for f in stored)


# ---- compression -------------------------------------------------------------------------
def test_compression_keeps_budget_and_pools_oldest_round_first():
    # Low water mark = high: each compression does just enough, to see the order it pools in.
    mem = MemoryBuffer(MemoryConfig(max_tokens=200, protected_frames=2, target_ratio=1.0))
    stamp = 0.0
    for round_index in range(3):
        for _ in range(5):
            mem.add_frame(frame(stamp))  # 12 tokens each
            stamp += 1.0
        mem.add_turn("user", f"question {round_index}", stamp, n_tokens=3)
        mem.add_turn("assistant", f"answer {round_index}", stamp, n_tokens=3)
    assert mem.token_count() == 15 * 12 + 6 * 3  # 198: not over budget yet, nothing pooled
    assert mem.counts["pool_ops"] == 0
    mem.add_frame(frame(stamp))  # 210 > 200
    stamp += 1.0
    rounds = rounds_of(mem.snapshot())
    assert mem.token_count() <= 200
    # The first compression touched only the oldest round.
    assert any(f.level > 0 for f in rounds[0])
    assert all(f.level == 0 for r in rounds[1:] for f in r)
    for _ in range(40):
        mem.add_frame(frame(stamp))
        stamp += 1.0
        assert mem.token_count() <= 200
        levels = [max(f.level for f in r) for r in rounds_of(mem.snapshot())]
        mins = [min(f.level for f in r) for r in rounds_of(mem.snapshot())]
        # Decay: every round is pooled at least as much as any newer round (within one sweep).
        for older, newer in zip(mins, levels[1:]):
            assert older >= newer - 1
    assert mem.token_count() == sum(it.n_tokens for it in mem.snapshot())


def test_newest_frames_stay_bit_identical_per_camera():
    mem = MemoryBuffer(MemoryConfig(max_tokens=100, protected_frames=3))
    originals = {}
    for i in range(30):
        for camera in ("front", "rear"):
            f = frame(i + (0.5 if camera == "rear" else 0.0), camera=camera, index=i)
            originals[(camera, i)] = f.tokens.clone()
            mem.add_frame(f)
    assert mem.token_count() <= 100
    items = mem.snapshot()
    for camera in ("front", "rear"):
        mine = [f for f in frames_of(items) if f.camera_id == camera]
        for f in mine[-3:]:
            assert f.level == 0 and f.grid == (3, 4)
            assert torch.equal(f.tokens, originals[(camera, f.frame_index)])
        assert {f.frame_index for f in mine[-3:]} == {27, 28, 29}


def test_dialogue_order_and_time_order_preserved():
    mem = MemoryBuffer(MemoryConfig(max_tokens=120, protected_frames=1))
    for i in range(20):
        mem.add_frame(frame(float(i)))
        if i % 5 == 4:
            mem.add_turn("user", f"q{i}", float(i), query_id="q", n_tokens=2)
            mem.add_turn("assistant", f"a{i}", float(i), query_id="q", n_tokens=2)
    items = mem.snapshot()
    stamps = [it.stamp for it in items]
    assert stamps == sorted(stamps)
    turns = [it.text for it in items if isinstance(it, DialogueTurn)]
    assert turns == [t for i in (4, 9, 14, 19) for t in (f"q{i}", f"a{i}")]
    # A turn placed at a past stamp lands between the frames around it.
    mem.add_turn("user", "late", 9.5, n_tokens=1)
    items = mem.snapshot()
    at = [i for i, it in enumerate(items) if isinstance(it, DialogueTurn) and it.text == "late"][0]
    assert items[at - 1].stamp <= 9.5 < items[at + 1].stamp


def test_out_of_order_frames_are_inserted_by_stamp():
    mem = MemoryBuffer(MemoryConfig(max_tokens=10_000))
    for s in (0.0, 2.0, 1.0, 3.0, 0.5):
        mem.add_frame(frame(s))
    assert [f.stamp for f in mem.snapshot()] == [0.0, 0.5, 1.0, 2.0, 3.0]


def test_multi_camera_items_carry_camera_and_filter():
    mem = MemoryBuffer(MemoryConfig(max_tokens=10_000))
    mem.add_frame(frame(0.0, camera="a"))
    mem.add_frame(frame(0.1, camera="b"))
    mem.add_turn("user", "q", 0.2, camera_id="a")
    mem.add_frame(frame(0.3, camera="b"))
    assert [(type(it).__name__, it.camera_id) for it in mem.snapshot()] == [
        ("FrameTokens", "a"), ("FrameTokens", "b"), ("DialogueTurn", "a"), ("FrameTokens", "b")]
    only_a = mem.snapshot(cameras=["a"])
    assert [it.camera_id for it in only_a] == ["a", "a"] and isinstance(only_a[1], DialogueTurn)
    assert mem.latest_stamp("b") == 0.3 and mem.latest_stamp("zzz") == float("-inf")


def test_floor_drops_oldest_and_warns_when_only_protected_frames_remain(caplog):
    mem = MemoryBuffer(MemoryConfig(max_tokens=30, protected_frames=2))
    for i in range(50):
        mem.add_frame(frame(float(i), grid=(2, 2)))
        assert mem.token_count() <= 30
    assert mem.counts["frames_dropped"] > 0
    frames = frames_of(mem.snapshot())
    assert frames[-1].stamp == 49.0 and frames[-1].level == 0
    assert all(f.n_tokens == 1 for f in frames[:-2])  # everything else at the floor
    # Protected frames alone over budget: stays over, warns once.
    mem.set_max_tokens(5)
    assert mem.token_count() == 8 and len(frames_of(mem.snapshot())) == 2
    assert "only protected frames" in caplog.text


def test_set_max_tokens_compresses_at_once_and_target_ratio_overshoots():
    mem = MemoryBuffer(MemoryConfig(max_tokens=10_000, protected_frames=0))
    for i in range(20):
        mem.add_frame(frame(float(i)))
    assert mem.token_count() == 240
    mem.set_max_tokens(120)
    assert mem.token_count() <= 120
    with pytest.raises(ValueError, match="max_tokens"):
        mem.set_max_tokens(0)
    hyst = MemoryBuffer(MemoryConfig(max_tokens=120, protected_frames=0, target_ratio=0.5))
    for i in range(11):
        hyst.add_frame(frame(float(i)))
    assert hyst.token_count() <= 60  # went down to half the budget, not just under it


def _stream_work(max_tokens, n=2000, protected=4):
    mem = MemoryBuffer(MemoryConfig(max_tokens=max_tokens, protected_frames=protected))
    for i in range(n):
        mem.add_frame(frame(float(i), grid=(4, 4), seed=i % 7))
        if i % 97 == 0:
            mem.add_turn("user", "q", float(i), n_tokens=2)
            mem.add_turn("assistant", "a", float(i), n_tokens=2)
        assert mem.token_count() <= max_tokens
    return mem


def test_compression_is_incremental_amortised_work():
    """Work per frame is bounded by the frame's size and the protected window, not the buffer."""
    n = 2000
    small, large = _stream_work(400, n), _stream_work(8000, n)
    for mem in (small, large):
        # A 16-token frame is pooled at most 4 times in its life (16 -> 8 -> 4 -> 2 -> 1).
        assert mem.counts["pool_ops"] <= 4 * n
        # Each pooling scans at most the protected window plus a couple of items.
        assert mem.counts["scan_steps"] <= 4 * (4 + 4) * n, mem.counts
    # A 20x larger buffer does not cost more per frame (a full recompute would cost 20x).
    assert large.counts["scan_steps"] <= 1.5 * small.counts["scan_steps"] + 2 * n
    assert large.counts["frames_dropped"] < small.counts["frames_dropped"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["frame", "frame", "frame", "turn"]),
                          st.sampled_from(["a", "b", "c"]),
                          st.integers(1, 4), st.integers(1, 5),
                          st.floats(0.0, 0.5)), min_size=1, max_size=80),
       st.integers(20, 200), st.integers(0, 3), st.integers(2, 3))
def test_budget_invariants_hold_for_any_stream(events, max_tokens, protected, stride):
    mem = MemoryBuffer(MemoryConfig(max_tokens=max_tokens, protected_frames=protected, pool_stride=stride))
    stamp = 0.0
    newest = {}
    for kind, camera, rows, cols, step in events:
        stamp += step
        if kind == "frame":
            f = frame(stamp, camera=camera, grid=(rows, cols), seed=len(newest))
            stored = mem.add_frame(f)
            newest.setdefault(camera, []).append((stored.key, f.tokens))
        else:
            mem.add_turn("user", "q", stamp, camera_id=camera, n_tokens=rows)
        items = mem.snapshot()
        total = sum(it.n_tokens for it in items)
        assert total == mem.token_count()
        protected_tokens = sum(f.n_tokens for f in frames_of(items)
                               if any(f.key == k for k, _ in newest.get(f.camera_id, [])[-protected:])) \
            if protected else 0
        assert total <= max(max_tokens, protected_tokens)
        assert [it.stamp for it in items] == sorted(it.stamp for it in items)
        by_key = {f.key: f for f in frames_of(items)}
        for camera, stored in newest.items():
            for key, tokens in stored[-protected:] if protected else []:
                assert key in by_key and torch.equal(by_key[key].tokens, tokens)


def test_wait_for_frame_wakes_on_arrival_and_times_out():
    mem = MemoryBuffer(MemoryConfig(max_tokens=1000))
    assert mem.wait_for_frame("cam", 1, timeout=0.01) is False and not mem.has_frame("cam", 0)
    arrived = threading.Event()

    def waiter():
        if mem.wait_for_frame("cam", 1, timeout=10.0):
            arrived.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    mem.add_frame(frame(0.5, index=0))
    assert not arrived.wait(0.01) and mem.has_frame("cam", 0) and not mem.has_frame("cam", 1)
    mem.add_frame(frame(1.0, index=1))
    assert arrived.wait(10.0)
    thread.join(10.0)
    assert not mem.has_frame("other", 0)


def test_clear_one_camera_keeps_the_others():
    mem = MemoryBuffer(MemoryConfig(max_tokens=10_000, protected_frames=2))
    for i in range(5):
        mem.add_frame(frame(float(i), camera="a", index=i))
        mem.add_frame(frame(float(i) + 0.5, camera="b", index=i))
    mem.add_turn("user", "what is on a", 5.0, camera_id="a", n_tokens=4)
    before_b = [it.key for it in mem.snapshot() if it.camera_id == "b"]
    mem.clear("a")
    items = mem.snapshot()
    assert [it.key for it in items] == before_b
    assert mem.token_count() == sum(it.n_tokens for it in items)
    assert mem.has_frame("a", 4)  # indices keep counting across a clear
    mem.add_frame(frame(0.1, camera="a", index=5))  # a's new timeline starts again
    assert mem.latest_stamp("a") == 0.1 and len(frames_of(mem.snapshot(["a"]))) == 1


def test_stats_and_clear():
    mem = MemoryBuffer(MemoryConfig(max_tokens=50, protected_frames=1))
    for i in range(10):
        mem.add_frame(frame(float(i)))
    mem.add_turn("user", "what is this", 10.0)  # estimated tokens: 12 bytes / 4 = 3
    s = mem.stats()
    assert s["frames"] + s["turns"] == len(mem) and s["tokens"] <= 50 and s["max_level"] >= 1
    mem.clear()
    assert mem.token_count() == 0 and len(mem) == 0 and mem.snapshot() == []
