import math

import pytest
import torch
from torch import nn

from hf_mixssl.models.momentum import KeyQueue, make_momentum_copy, momentum_schedule, update_momentum


class TestSchedule:
    def test_constant(self):
        assert momentum_schedule(0.7, base=0.99) == 0.99

    def test_cosine_endpoints_and_midpoint(self):
        assert momentum_schedule(0.0, base=0.99, kind="cosine") == pytest.approx(0.99)
        assert momentum_schedule(1.0, base=0.99, kind="cosine") == pytest.approx(1.0)
        # MoCo v3: m = 1 - 0.5 * (1 + cos(pi t / T)) * (1 - m0)
        t = 0.3
        assert momentum_schedule(t, base=0.99, kind="cosine") == pytest.approx(
            1 - 0.5 * (1 + math.cos(math.pi * t)) * (1 - 0.99))

    def test_unknown_kind(self):
        with pytest.raises(ValueError, match="cosine"):
            momentum_schedule(0.1, base=0.9, kind="linear")


class TestUpdate:
    def test_ema_formula_parameters_only(self):
        online = nn.BatchNorm1d(3)
        ema = make_momentum_copy(online)
        with torch.no_grad():
            online.weight.fill_(2.0)
            online.running_mean.fill_(5.0)
        update_momentum(ema, online, m=0.9)
        assert torch.allclose(ema.weight, torch.full((3,), 0.9 * 1.0 + 0.1 * 2.0))
        assert torch.equal(ema.running_mean, torch.zeros(3))  # buffers untouched
        assert not any(p.requires_grad for p in ema.parameters())


class TestKeyQueue:
    def test_fifo_order(self):
        q = KeyQueue(6, 2)
        q.enqueue(torch.ones(4, 2))
        assert int(q.ptr) == 4
        q.enqueue(2 * torch.ones(2, 2))
        assert int(q.ptr) == 0
        assert torch.equal(q.queue[:4], torch.ones(4, 2)) and torch.equal(q.queue[4:], 2 * torch.ones(2, 2))

    def test_wrap_around_replaces_oldest(self):
        q = KeyQueue(5, 1)
        q.enqueue(torch.arange(4.0).view(4, 1))        # slots 0-3
        q.enqueue(torch.tensor([[10.0], [11.0], [12.0]]))  # slot 4, then wraps to 0, 1
        assert q.queue.view(-1).tolist() == [11.0, 12.0, 2.0, 3.0, 10.0]
        assert int(q.ptr) == 2

    def test_more_keys_than_slots_keeps_newest(self):
        q = KeyQueue(3, 1)
        q.enqueue(torch.arange(5.0).view(5, 1))
        assert sorted(q.queue.view(-1).tolist()) == [2.0, 3.0, 4.0]

    def test_queue_is_saved_in_state_dict(self):
        q = KeyQueue(4, 2)
        assert set(q.state_dict()) == {"queue", "ptr"}

    def test_rejects_bad_size(self):
        with pytest.raises(ValueError, match="queue_size"):
            KeyQueue(0, 2)
