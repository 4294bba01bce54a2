"""A model of the Gluon forward's barrier protocol (``kernels/attention/gluon_kernels.py``),
run over random interleavings, which the emulator (``kernels._gluon_emu``, one OS schedule a
run) does not search: this is how its synchronization is checked in every order. The model transcribes the kernel's slot, phase and turn formulas
(keep them in step with it): the producer's waits on the K and V "empty" barriers at parity
``phase ^ 1``, the consumers' waits on "ready" at ``(i // NUM_STAGES) & 1``, the ping-pong
turns at ``(t + 1 - WG) & 1``, and where each consumer releases a slot. mbarriers follow
PTX: a phase completes when its arrivals (``expect`` is one) and transaction bytes are in;
waiting on parity P passes once the current phase's parity differs from P. Checked for modes
1-3, 2-4 stages and 0-12 key tiles: no deadlock (every agent finishes), and no TMA copy lands
in a slot while a consumer's GEMM still reads it. Its own sanity check: a producer waiting on
the wrong parity deadlocks, and one that releases V before the GEMM is done is caught. The
dK/dV pass's simpler ring (``gluon_bwd_kernels.py``) is modeled at the end the same way."""
from __future__ import annotations

import random

import pytest


class Barrier:
    def __init__(self, count):
        self.count, self.pending, self.tx, self.phase = count, count, 0, 0

    def arrive(self):
        self.pending -= 1
        assert self.pending >= 0, "more arrivals than the barrier's count"
        self._complete()

    def expect(self, nbytes):  # mbarrier.expect: one arrival plus transaction bytes
        self.tx += nbytes
        self.arrive()

    def land(self, nbytes):  # a TMA copy's bytes arrive
        self.tx -= nbytes
        self._complete()

    def _complete(self):
        if self.pending == 0 and self.tx == 0:
            self.phase, self.pending = self.phase + 1, self.count

    def passed(self, parity):
        return (self.phase & 1) != parity


def simulate(n_iter, stages, mode, seed, *, producer_parity_flip=1, release_v_early=False):
    rnd = random.Random(seed)
    consumers = 2 if mode == 3 else 1
    q_bar = Barrier(1)
    k_ready, v_ready = [Barrier(1) for _ in range(stages)], [Barrier(1) for _ in range(stages)]
    empty = [Barrier(consumers) for _ in range(2 * stages)]  # K slots, then V slots, as the kernel
    turn = [Barrier(1), Barrier(1)]
    held = {"k": [None] * stages, "v": [None] * stages}
    reading = {}
    landings = []

    def copy(kind, slot, tile, bar):
        assert not reading.get((kind, slot)), f"TMA into {kind} slot {slot} while {reading[(kind, slot)]} read it"

        def land():
            held[kind][slot] = tile
            bar.land(1)
        landings.append(land)

    def producer():
        q_bar.expect(1)
        landings.append(lambda: q_bar.land(1))
        for i in range(n_iter):
            slot, phase = i % stages, (i // stages) & 1
            while not empty[slot].passed(phase ^ producer_parity_flip):
                yield
            k_ready[slot].expect(1)
            copy("k", slot, i, k_ready[slot])
            while not empty[stages + slot].passed(phase ^ producer_parity_flip):
                yield
            v_ready[slot].expect(1)
            copy("v", slot, i, v_ready[slot])

    def consumer(wg):
        pingpong, overlap = mode == 3, mode >= 2

        def my_turn(t):
            while pingpong and not turn[wg].passed((t + 1 - wg) & 1):
                yield

        def pass_turn():
            if pingpong:
                turn[1 - wg].arrive()

        def start_read(kind, i):  # wait for the tile, then a GEMM reads its slot
            slot, bars = i % stages, k_ready if kind == "k" else v_ready
            while not bars[slot].passed((i // stages) & 1):
                yield
            assert held[kind][slot] == i, f"{kind} slot {slot} holds tile {held[kind][slot]}, not {i}"
            reading.setdefault((kind, slot), set()).add(wg)
            return slot

        def done_reading(kind, slot):
            reading[(kind, slot)].discard(wg)
            empty[slot + (stages if kind == "v" else 0)].arrive()

        while not q_bar.passed(0):
            yield
        if overlap and n_iter > 0:
            yield from my_turn(0)
            ks = yield from start_read("k", 0)
            pass_turn()
            yield  # S_0 runs
            done_reading("k", ks)
            for i in range(1, n_iter):
                yield from my_turn(i)
                ks = yield from start_read("k", i)
                vs = yield from start_read("v", i - 1)
                pass_turn()
                if release_v_early:  # the bug this guards against: V freed before P V is done
                    empty[stages + vs].arrive()
                yield  # S_i done (wait 1)
                done_reading("k", ks)
                yield  # P V done (wait 0)
                if release_v_early:
                    reading[("v", vs)].discard(wg)
                else:
                    done_reading("v", vs)
            yield from my_turn(n_iter)
            vs = yield from start_read("v", n_iter - 1)
            pass_turn()
            yield
            done_reading("v", vs)
        elif not overlap:
            for i in range(n_iter):
                ks = yield from start_read("k", i)
                yield
                done_reading("k", ks)
                vs = yield from start_read("v", i)
                yield
                done_reading("v", vs)

    _interleave([producer()] + [consumer(w) for w in range(consumers)], landings, rnd,
                f"mode {mode}, {stages} stages, {n_iter} tiles, seed {seed}")


def _interleave(agents, landings, rnd, what):
    """Step random agents and land random copies until all finish; a bound on steps is a deadlock."""
    for _ in range(100_000):
        if not agents and not landings:
            return
        if landings and (not agents or rnd.random() < 0.3):
            landings.pop(rnd.randrange(len(landings)))()
            continue
        agent = rnd.choice(agents)
        try:
            next(agent)
        except StopIteration:
            agents.remove(agent)
    raise AssertionError(f"deadlock: {what}")


@pytest.mark.parametrize("mode", [1, 2, 3])
@pytest.mark.parametrize("stages", [2, 3, 4])
def test_protocol_never_deadlocks_nor_overwrites_a_slot_in_use(mode, stages):
    for n_iter in (0, 1, 2, 3, 5, 12):
        for seed in range(40):
            simulate(n_iter, stages, mode, seed)


def test_the_model_catches_a_wrong_parity_and_an_early_release():
    with pytest.raises(AssertionError, match="deadlock"):
        for seed in range(10):
            simulate(5, 2, 3, seed, producer_parity_flip=0)
    with pytest.raises(AssertionError, match="while"):
        for seed in range(200):
            simulate(6, 2, 2, seed, release_v_early=True)


def simulate_dkdv(n_iter, stages, seed, *, release_early=False):
    """The dK/dV pass's protocol (``gluon_bwd_kernels.py``): K and V once on their own barrier,
    then each row block's q and dO tiles into a ring slot with one ready barrier (both copies'
    bytes) and one empty barrier (the consumer releases the slot after dV and dK's GEMMs)."""
    rnd = random.Random(seed)
    kv_bar = Barrier(1)
    ready, empty = [Barrier(1) for _ in range(stages)], [Barrier(1) for _ in range(stages)]
    held, reading, landings = [None] * stages, set(), []

    def producer():
        kv_bar.expect(2)
        landings.extend([lambda: kv_bar.land(1)] * 2)
        for i in range(n_iter):
            slot = i % stages
            while not empty[slot].passed(((i // stages) & 1) ^ 1):
                yield
            assert slot not in reading, f"TMA into slot {slot} while a GEMM reads it"
            ready[slot].expect(2)

            def land(slot=slot, i=i):
                held[slot] = i
                ready[slot].land(1)
            landings.extend([land, lambda slot=slot: ready[slot].land(1)])

    def consumer():
        while not kv_bar.passed(0):
            yield
        for i in range(n_iter):
            slot = i % stages
            while not ready[slot].passed((i // stages) & 1):
                yield
            assert held[slot] == i
            reading.add(slot)
            if release_early:  # the bug this guards against: the slot freed before its GEMMs end
                empty[slot].arrive()
            yield  # S^T, dP^T, then dV and dK read q and dO
            reading.discard(slot)
            if not release_early:
                empty[slot].arrive()

    _interleave([producer(), consumer()], landings, rnd, f"dK/dV, {stages} stages, {n_iter} row blocks, seed {seed}")


@pytest.mark.parametrize("stages", [2, 3])
def test_dkdv_protocol_never_deadlocks_nor_overwrites_a_slot_in_use(stages):
    for n_iter in (0, 1, 2, 5, 12):
        for seed in range(40):
            simulate_dkdv(n_iter, stages, seed)
    with pytest.raises(AssertionError, match="while a GEMM reads it"):
        for seed in range(200):
            simulate_dkdv(6, stages, seed, release_early=True)
