"""How the Ray executor sizes its pools' CPU asks (embed_workers/executors/ray.py)."""

from __future__ import annotations

import pytest

from embed_workers.executors.ray import cpu_shares, fit_one_node


@pytest.mark.parametrize(("decoders", "actors", "smallest", "gpus"), [
    (2, 2, 1.0, False),   # benchmarks/scale.py: nodes of one CPU
    (2, 2, 2.0, False),   # the killed-node tests: two nodes of two CPUs, one gone
    (16, 1, 4.0, False),  # many decoders, small nodes
    (8, 4, 16.0, True),   # GPU actors keep one CPU each
    (64, 8, 64.0, True),  # one node: 8 GPUs, as many decoders as CPUs
])
def test_every_decode_and_encode_actor_fits_on_the_smallest_node(decoders, actors, smallest,
                                                                  gpus):
    """A run started while Ray still counts a dead node may place both pools on the one
    node left: all of both must fit there, or the run waits forever."""
    decode_cpu, actor_cpu = cpu_shares(2 * smallest, decoders, actors, gpus)
    decode_ask, actor_ask = fit_one_node(decode_cpu, decoders, actor_cpu, actors, gpus,
                                         smallest)
    assert not gpus or actor_ask == 1.0  # a GPU actor asks for one CPU
    encoders_on_node = actors * actor_ask
    assert decoders * decode_ask + encoders_on_node <= smallest + 1e-9
    assert decode_ask <= decode_cpu and (gpus or actor_ask <= actor_cpu)  # never up


def test_asks_that_fit_already_are_kept():
    assert fit_one_node(1.0, 4, 1.0, 2, False, 64.0) == (1.0, 1.0)
