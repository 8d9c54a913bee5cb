"""gptlab.training.batches: random windows, seeded and resumable, and the same global batch for any number of
processes."""

import numpy as np
import torch

from gptlab.training.batches import RandomWindows

TOKENS = np.arange(1000, dtype=np.uint16) % 251


def test_batches_y_is_x_shifted_by_one():
    b = RandomWindows(TOKENS, seq_len=8, batch_size=5, device="cpu", seed=0)
    for _ in range(3):
        x, y = b.next()
        assert x.shape == y.shape == (5, 8) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row_x, row_y in zip(x.tolist(), y.tolist()):  # each row is a real window of the tokens
            start = next(s for s in range(len(TOKENS)) if TOKENS[s:s + 8].tolist() == row_x)
            assert TOKENS[start + 1:start + 9].tolist() == row_y


def test_batches_reach_the_last_token():
    tokens = np.arange(12, dtype=np.uint16)
    b = RandomWindows(tokens, seq_len=8, batch_size=64, device="cpu", seed=0)
    x, y = b.next()
    assert y.max().item() == 11 and x.min().item() == 0  # starts 0..3 all drawn, never out of range


def test_batches_seeded_and_state_round_trip():
    a = RandomWindows(TOKENS, 8, 4, "cpu", seed=7)
    same = RandomWindows(TOKENS, 8, 4, "cpu", seed=7)
    other = RandomWindows(TOKENS, 8, 4, "cpu", seed=8)
    assert torch.equal(a.next()[0], same.next()[0])
    assert not torch.equal(a.next()[0], other.next()[0])
    state = a.state_dict()
    expected = [a.next() for _ in range(5)]
    restored = RandomWindows(TOKENS, 8, 4, "cpu", seed=999)
    restored.load_state_dict(state)
    for (x, y), (ex, ey) in zip([restored.next() for _ in range(5)], expected):
        assert torch.equal(x, ex) and torch.equal(y, ey)


def test_batches_state_survives_torch_save(tmp_path):
    a = RandomWindows(TOKENS, 8, 4, "cpu", seed=3)
    a.next()
    torch.save(a.state_dict(), tmp_path / "state.pt")
    expected = a.next()
    b = RandomWindows(TOKENS, 8, 4, "cpu", seed=0)
    b.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    assert all(torch.equal(u, v) for u, v in zip(b.next(), expected))


def test_memory_mapped_batches_equal_on_device_batches(tmp_path):
    path = tmp_path / "tokens.bin"
    TOKENS.tofile(path)
    mapped = np.memmap(path, dtype=np.uint16, mode="r", shape=(len(TOKENS),))
    on_device = RandomWindows(mapped, 8, 4, "cpu", seed=1, preload=True)
    streamed = RandomWindows(mapped, 8, 4, "cpu", seed=1)
    assert on_device.tokens is not None and streamed.tokens is None
    for _ in range(3):
        assert all(torch.equal(u, v) for u, v in zip(on_device.next(), streamed.next()))


def test_a_sibling_shares_the_tokens_and_draws_on_its_own(tmp_path):
    batches = RandomWindows(TOKENS, 8, 4, "cpu", seed=5, preload=True)
    sibling = batches.sibling()
    assert sibling.tokens is batches.tokens  # no second copy
    fresh = RandomWindows(TOKENS, 8, 4, "cpu", seed=5, preload=True)
    batches.next()  # the original's draws do not move the sibling's generator
    assert all(torch.equal(u, v) for u, v in zip(sibling.next(), fresh.next()))


def test_processes_split_the_global_batch_a_single_process_would_draw():
    """Rank r of N keeps rows r*B..(r+1)*B of the N*B windows one process draws with batch N*B, so the data
    order, and a resumed run's, does not depend on the number of processes."""
    single = RandomWindows(TOKENS, 8, 6, "cpu", seed=2)
    ranks = [RandomWindows(TOKENS, 8, 2, "cpu", seed=2, rank=r, world_size=3) for r in range(3)]
    for _ in range(4):
        x, y = single.next()
        parts = [b.next() for b in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    states = [b.state_dict()["generator"] for b in ranks]
    assert all(torch.equal(s, states[0]) for s in states)  # one data order, held by every process
