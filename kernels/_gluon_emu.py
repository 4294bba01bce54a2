"""A CPU emulator for the sm_90 Gluon kernels: runs a ``@gluon.jit`` kernel's Python body on torch
CPU tensors, so its indexing, masks, online softmax and barrier protocol are checked without a GPU.

    launch(jit_fn, grid, *args, **kwargs)   as ``jit_fn[grid](*args, **kwargs)`` does on a GPU

Gluon has no interpreter (Triton's covers ``tl``, not ``gl``), and the Gluon kernels were written
for a chip this project's machines do not have. This is to Gluon what ``TRITON_INTERPRET=1`` is to
Triton, for the subset of the language the kernels use (``gl``, the Hopper ``mbarrier``, ``tma``
and ``warpgroup_mma``): each kernel function is re-bound to emulated modules and called per
program, as Triton's interpreter calls a ``@triton.jit`` body.

Model (what is checked, what is not):
- values are torch tensors with Triton's rules: int32 scalars and program ids (wrapping),
  truncating ``//`` and C ``%``, promotion by dtype (a 0-d int64 does not become int32 next to
  an int32 block, as torch would make it);
- pointers are (tensor, element offsets): a load or store outside the tensor that its mask
  lets through raises, as a GPU would fault;
- shared memory is a tensor; ``index``, ``slice``, ``reshape`` and ``permute`` are views of it;
- tensor descriptors copy whole boxes: a load zero-fills what lies outside the tensor and a
  store drops it; a copy completes its barrier's transaction bytes at once;
- mbarriers have the PTX phase semantics (pending arrivals and transaction bytes, parity
  waits; a fresh barrier's phase 1 counts as done); an arrival past the count raises;
- ``warp_specialize`` runs each partition in its own thread; a wait that every live
  partition of the program is blocked in is a deadlock and raises, naming the barrier;
- ``warpgroup_mma(is_async=True)`` is computed when a ``warpgroup_mma_wait`` completes it
  (the latest the tensor cores may read shared memory), in fp32 from the operands' values;
  using an accumulator a wait left in flight raises.
Not modeled: the warpgroups of one partition run in lockstep here (the barriers the compiler
puts between them, e.g. before a wgmma reads what both stored, show in the PTX), layouts
(``convert_layout`` is the identity), register and shared-memory limits, timing, the order
ptxas gives instructions, TMA alignment beyond the host-side descriptor's own checks. The barrier protocols' interleavings are searched in ``tests/test_gluon_protocol.py``;
here the threads interleave as the OS schedules them.
"""
from __future__ import annotations

import functools
import inspect
import linecache
import math
import sys
import threading
import types
from typing import Any

import torch

from ._platform import configure_triton_interpret

configure_triton_interpret()

from triton.experimental.gluon import language as _real_gl  # noqa: E402
from triton.experimental.gluon.language.nvidia import hopper as _real_hopper  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import mbarrier as _real_mbarrier  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import tma as _real_tma  # noqa: E402

WAIT_TIMEOUT_S = 120.0  # a wait this long without any barrier change fails (a livelock guard)

_TORCH = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64,
          "int1": torch.bool, "int8": torch.int8, "int16": torch.int16, "int32": torch.int32,
          "int64": torch.int64, "uint8": torch.uint8}
_GL = {v: getattr(_real_gl, {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp64": "float64"}.get(k, k))
       for k, v in _TORCH.items()}  # torch dtype -> gl dtype


class EmulationError(RuntimeError):
    """A kernel did something a GPU would fault, hang or compute garbage on."""


class Deadlock(EmulationError):
    pass


class _Aborted(Exception):
    """Another partition of the program failed: this one stops."""


def _torch_dtype(dtype) -> torch.dtype:
    dtype = getattr(dtype, "value", dtype)  # a constexpr
    if isinstance(dtype, torch.dtype):
        return dtype
    return _TORCH[dtype.name]


# --- values --------------------------------------------------------------------------------

def _t(x) -> torch.Tensor:
    return x.v if isinstance(x, T) else x


def _scalar_tensor(x, like: torch.Tensor) -> torch.Tensor:
    """A Python scalar next to a tensor, as Triton types it: weak (the tensor's dtype), except a
    float next to an integer tensor (fp32)."""
    if isinstance(x, bool):
        return torch.tensor(x, dtype=torch.bool if like.dtype == torch.bool else like.dtype)
    if isinstance(x, float) and not like.is_floating_point():
        return torch.tensor(x, dtype=torch.float32)
    return torch.tensor(x, dtype=like.dtype)


def _operands(a, b):
    a, b = _t(a), _t(b)
    if not isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor):
            return _wrap_py(a), _wrap_py(b)
        a = _scalar_tensor(a, b)
    elif not isinstance(b, torch.Tensor):
        b = _scalar_tensor(b, a)
    dt = torch.promote_types(a.dtype, b.dtype)
    return a.to(dt), b.to(dt)


def _wrap_py(x) -> torch.Tensor:
    if isinstance(x, bool):
        return torch.tensor(x)
    if isinstance(x, int):
        return torch.tensor(x, dtype=torch.int32 if -2**31 <= x < 2**31 else torch.int64)
    return torch.tensor(x, dtype=torch.float32)


def _floordiv(a, b):
    if a.is_floating_point():
        return torch.floor(a / b)
    if (b == 0).any():
        raise EmulationError("integer division by zero")
    return torch.div(a, b, rounding_mode="trunc")  # C's division, as the GPU's


def _mod(a, b):
    if not a.is_floating_point() and (b == 0).any():
        raise EmulationError("integer remainder by zero")
    return torch.fmod(a, b)  # the sign of the dividend, as C's %


def _truediv(a, b):
    if not a.is_floating_point():
        a, b = a.float(), b.float()
    return a / b


def _binop(fn):
    def op(self, other):
        a, b = _operands(self, other)
        return T(fn(a, b))

    def rop(self, other):
        a, b = _operands(other, self)
        return T(fn(a, b))
    return op, rop


class T:
    """A Gluon register tensor (or scalar): a torch tensor with Triton's arithmetic."""

    __slots__ = ("v",)

    def __init__(self, v: torch.Tensor):
        self.v = v

    @property
    def dtype(self):
        return _GL[self.v.dtype]

    @property
    def shape(self):
        return list(self.v.shape)

    def to(self, dtype, bitcast: bool = False):
        dt = _torch_dtype(dtype)
        if bitcast:
            return T(self.v.view(dt))
        return T(self.v.to(dt))

    def __bool__(self):
        if self.v.numel() != 1:
            raise EmulationError(f"a branch on a block of shape {list(self.v.shape)}")
        return bool(self.v)

    def __index__(self):
        if self.v.is_floating_point() or self.v.numel() != 1:
            raise EmulationError(f"an integer scalar was expected, got {self.v.dtype} {list(self.v.shape)}")
        return int(self.v)

    __int__ = __index__

    def __float__(self):
        return float(self.v)

    def __neg__(self):
        return T(-self.v)

    def __invert__(self):
        return T(~self.v)

    def __repr__(self):
        return f"T({self.v!r})"

    __add__, __radd__ = _binop(torch.add)
    __sub__, __rsub__ = _binop(torch.sub)
    __mul__, __rmul__ = _binop(torch.mul)
    __truediv__, __rtruediv__ = _binop(_truediv)
    __floordiv__, __rfloordiv__ = _binop(_floordiv)
    __mod__, __rmod__ = _binop(_mod)
    __and__, __rand__ = _binop(torch.bitwise_and)
    __or__, __ror__ = _binop(torch.bitwise_or)
    __xor__, __rxor__ = _binop(torch.bitwise_xor)
    __lshift__, __rlshift__ = _binop(torch.bitwise_left_shift)
    __rshift__, __rrshift__ = _binop(torch.bitwise_right_shift)
    __lt__ = _binop(torch.lt)[0]
    __le__ = _binop(torch.le)[0]
    __gt__ = _binop(torch.gt)[0]
    __ge__ = _binop(torch.ge)[0]
    __eq__ = _binop(torch.eq)[0]
    __ne__ = _binop(torch.ne)[0]
    __hash__ = None


class _PointerType:
    def __init__(self, element_ty):
        self.element_ty = element_ty


class Ptr:
    """A block of pointers into one tensor: its elements, as a flat view of its storage, and
    element offsets from its first element."""

    def __init__(self, flat: torch.Tensor, offsets, name: str):
        self.flat, self.offsets, self.name = flat, offsets, name

    @classmethod
    def of(cls, t: torch.Tensor, name: str) -> "Ptr":
        n = t.untyped_storage().nbytes() // t.element_size() - t.storage_offset()
        return cls(torch.as_strided(t, (n,), (1,)), torch.tensor(0, dtype=torch.int64), name)

    @property
    def dtype(self):
        return _PointerType(_GL[self.flat.dtype])

    def __add__(self, other):
        off = _t(other) if isinstance(other, T) else _wrap_py(other)
        if off.is_floating_point():
            raise EmulationError(f"pointer {self.name} + a float offset")
        return Ptr(self.flat, self.offsets.to(torch.int64) + off.to(torch.int64), self.name)

    __radd__ = __add__

    def __sub__(self, other):
        return self + (-_t(other) if isinstance(other, T) else -other)

    def _index(self, mask, what: str):
        offs = self.offsets
        if mask is not None:
            m = _t(mask)
            m = m if isinstance(m, torch.Tensor) else torch.tensor(bool(m))
            offs, m = torch.broadcast_tensors(offs, m)
        else:
            m = torch.ones_like(offs, dtype=torch.bool)
        bad = m & ((offs < 0) | (offs >= self.flat.numel()))
        if bad.any():
            raise EmulationError(f"{what} of {self.name} out of bounds: offset {int(offs[bad].flatten()[0])} "
                                 f"outside [0, {self.flat.numel()})")
        return offs, m


def _load(ptr: Ptr, mask=None, other=None, **_):
    offs, m = ptr._index(mask, "load")
    other = _t(other)
    if other is None:
        vals = torch.zeros(offs.shape, dtype=ptr.flat.dtype)
    elif isinstance(other, torch.Tensor):
        vals = torch.broadcast_to(other.to(ptr.flat.dtype), offs.shape).clone()
    else:
        vals = torch.full(offs.shape, other, dtype=ptr.flat.dtype)
    vals[m] = ptr.flat[offs[m]]
    return T(vals)


def _store(ptr: Ptr, value, mask=None, **_):
    offs, m = ptr._index(mask, "store")
    v = _t(value)
    v = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    if list(v.shape) != list(offs.shape):
        v, offs, m = torch.broadcast_tensors(v, offs, m)
    with _context().lock:
        ptr.flat[offs[m]] = v[m].to(ptr.flat.dtype)


def _atomic_add(ptr: Ptr, value, mask=None, sem=None, scope=None):
    """Adds ``value`` at each unmasked pointer (duplicates add up); returns the old values."""
    offs, m = ptr._index(mask, "atomic_add")
    v = _t(value)
    v = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    v, offs, m = torch.broadcast_tensors(v, offs, m)
    with _context().lock:
        old = torch.zeros(offs.shape, dtype=ptr.flat.dtype)
        old[m] = ptr.flat[offs[m]]
        ptr.flat.index_add_(0, offs[m], v[m].to(ptr.flat.dtype))
    return T(old)


# --- shared memory and barriers ------------------------------------------------------------

class _SmemType:
    def __init__(self, shape):
        self.shape = list(shape)


class SMem:
    """A shared-memory descriptor: a (view of a) torch tensor; ``slot`` names its allocation."""

    def __init__(self, t: torch.Tensor, dtype, layout, name: str):
        self.t, self.dtype, self.layout, self.name = t, dtype, layout, name

    @property
    def type(self):
        return _SmemType(self.t.shape)

    @property
    def shape(self):
        return list(self.t.shape)

    def index(self, i):
        i = int(i)
        if not 0 <= i < self.t.shape[0]:
            raise EmulationError(f"{self.name}.index({i}) outside [0, {self.t.shape[0]})")
        return SMem(self.t[i], self.dtype, self.layout, f"{self.name}[{i}]")

    def slice(self, start, length, dim=0):
        start, length = int(start), int(length)
        if start < 0 or start + length > self.t.shape[dim]:
            raise EmulationError(f"{self.name}.slice({start}, {length}, dim={dim}) outside {list(self.t.shape)}")
        return SMem(self.t.narrow(dim, start, length), self.dtype, self.layout, self.name)

    def reshape(self, shape):
        return SMem(self.t.view([int(s) for s in shape]), self.dtype, self.layout, self.name)

    def permute(self, order):
        return SMem(self.t.permute(tuple(int(o) for o in order)), self.dtype, self.layout, self.name)

    def load(self, layout=None):
        return T(self.t.clone())

    def store(self, value):
        v = _t(value)
        if list(v.shape) != list(self.t.shape):
            raise EmulationError(f"store of {list(v.shape)} into {self.name} {list(self.t.shape)}")
        self.t.copy_(v.to(self.t.dtype))


class _Barrier:
    def __init__(self, name):
        self.name, self.count, self.pending, self.tx, self.phase = name, None, 0, 0, 0

    def _complete_if_done(self):
        if self.pending == 0 and self.tx == 0:
            self.phase += 1
            self.pending = self.count


class Bars:
    """Barrier allocation ([n, 1] or [1] int64 with MBarrierLayout); ``index`` gives one."""

    def __init__(self, bars: list, name: str):
        self.bars, self.name = bars, name

    def index(self, i):
        i = int(i)
        if not 0 <= i < len(self.bars):
            raise EmulationError(f"{self.name}.index({i}) outside [0, {len(self.bars)})")
        return Bars([self.bars[i]], self.bars[i].name)

    def one(self) -> _Barrier:
        if len(self.bars) != 1:
            raise EmulationError(f"a barrier operation on {self.name}, which holds {len(self.bars)} barriers")
        return self.bars[0]


_MBAR_LAYOUT = _real_mbarrier.MBarrierLayout


def _assigned_name(frame) -> str | None:
    """``x`` of the caller's line ``x = gl.allocate_shared_memory(...)``, for error messages."""
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
    head = line.split("=", 1)[0].strip() if "=" in line else ""
    return head if head.isidentifier() else None


def _allocate_shared_memory(element_ty, shape, layout=None, value=None):
    shape = [int(s) for s in shape]
    ctx = _context()
    ctx.n_alloc += 1
    name = _assigned_name(sys._getframe(1)) or f"smem{ctx.n_alloc}"
    if isinstance(layout, _MBAR_LAYOUT):
        n = math.prod(shape)
        return Bars([_Barrier(f"{name}[{i}]") for i in range(n)], name)
    t = torch.zeros(shape, dtype=_torch_dtype(element_ty))
    s = SMem(t, _GL[t.dtype], layout, name)
    if value is not None:
        s.store(value)
    return s


def _bar_init(bar: Bars, count):
    b = bar.one()
    with _context().cond:
        b.count, b.pending, b.tx, b.phase = int(count), int(count), 0, 0


def _check_init(b: _Barrier):
    if b.count is None:
        raise EmulationError(f"barrier {b.name} used before mbarrier.init")


def _bar_arrive(bar: Bars, *, count=1, pred=True, tx: int = 0):
    """mbarrier.arrive (count arrivals); with ``tx`` (expect), those bytes to come first."""
    if not pred:
        return
    b = bar.one()
    ctx = _context()
    with ctx.cond:
        _check_init(b)
        b.tx += tx
        b.pending -= int(count)
        if b.pending < 0:
            raise EmulationError(f"barrier {b.name}: more arrivals than its count {b.count} in phase {b.phase}")
        b._complete_if_done()
        ctx.changed()
        if not tx:
            ctx.settle()


def _bar_expect(bar: Bars, nbytes, pred=True):
    """mbarrier.arrive.expect_tx: the bytes to come, and one arrival."""
    _bar_arrive(bar, count=1, pred=pred, tx=int(nbytes))


def _bar_complete_tx(b: _Barrier, nbytes: int):
    ctx = _context()
    with ctx.cond:
        _check_init(b)
        b.tx -= nbytes
        if b.tx < 0:
            raise EmulationError(f"barrier {b.name}: {-b.tx} bytes landed beyond those expected")
        b._complete_if_done()
        ctx.changed()


def _bar_wait(bar: Bars, phase, pred=True, deps=()):
    """Until the phase of parity ``phase`` has completed (the barrier's current phase parity differs)."""
    if not pred:
        return
    b = bar.one()
    parity = int(phase) & 1
    ctx = _context()
    ctx.wait_until(lambda: (_check_init(b), b.phase & 1 != parity)[1],
                   f"mbarrier.wait({b.name}, phase parity {parity}) in {threading.current_thread().name}")


# --- TMA -----------------------------------------------------------------------------------

class _BlockType:
    def __init__(self, shape, nbytes):
        self.shape, self.nbytes = list(shape), nbytes


class Desc:
    """A tensor descriptor: the tensor's logical view and the box one copy moves."""

    def __init__(self, d):
        base = d.base
        self.view = torch.as_strided(base, list(d.shape), list(d.strides), base.storage_offset())
        self.block_shape = [int(s) for s in d.block_shape]
        self.layout = d.layout
        self.dtype = _GL[base.dtype]
        self.block_type = _BlockType(self.block_shape, math.prod(self.block_shape) * base.element_size())

    def _box(self, coord):
        coord = [int(c) for c in coord]
        if len(coord) != len(self.block_shape):
            raise EmulationError(f"a {len(coord)}-d coordinate for a {len(self.block_shape)}-d descriptor")
        src, dst = [], []
        for c, n, size in zip(coord, self.block_shape, self.view.shape):
            lo, hi = max(c, 0), min(c + n, size)
            if hi <= lo:
                return None, None
            src.append(slice(lo, hi))
            dst.append(slice(lo - c, hi - c))
        return tuple(src), tuple(dst)


def _tma_load(desc: Desc, coord, barrier: Bars, result: SMem, pred=True):
    if not pred:
        return
    if list(result.t.shape) != desc.block_shape:
        raise EmulationError(f"TMA load of box {desc.block_shape} into {result.name} {list(result.t.shape)}")
    box = torch.zeros(desc.block_shape, dtype=result.t.dtype)  # outside the tensor: zeros
    src, dst = desc._box(coord)
    if src is not None:
        box[dst] = desc.view[src]
    with _context().lock:
        result.t.copy_(box)
    _bar_complete_tx(barrier.one(), desc.block_type.nbytes)


def _tma_store(desc: Desc, coord, src_smem: SMem):
    if list(src_smem.t.shape) != desc.block_shape:
        raise EmulationError(f"TMA store of {src_smem.name} {list(src_smem.t.shape)} as box {desc.block_shape}")
    src, dst = desc._box(coord)
    if src is not None:  # outside the tensor: dropped
        with _context().lock:
            desc.view[src] = src_smem.t[dst].to(desc.view.dtype)


def _store_wait(pendings=0):
    pass


def _fence_async_shared(cluster=False):
    pass


# --- warpgroup MMA -------------------------------------------------------------------------

class Pending:
    """An async wgmma's accumulator: computed when a wait completes it."""

    def __init__(self, a, b: SMem, acc, use_acc, shape):
        self.a, self.b, self.acc, self.use_acc, self.shape = a, b, acc, use_acc, shape
        self.done, self.value = False, None

    def result(self) -> T:
        if self.value is None:
            a = self.a.t if isinstance(self.a, SMem) else _t(self.a)
            acc = self.acc.result() if isinstance(self.acc, Pending) else _t(self.acc)
            out = a.float() @ self.b.t.float()
            if self.use_acc:
                out = out + acc.float()
            self.value = T(out.to(acc.dtype))
        return self.value

    def __getattr__(self, name):
        raise EmulationError(f"an async wgmma accumulator used ({name}) before warpgroup_mma_wait completed it")


def _wgmma(a, b, acc, *, use_acc=True, precision=None, max_num_imprecise_acc=None, is_async=False):
    if not isinstance(b, SMem):
        raise EmulationError("warpgroup_mma's b operand must be in shared memory")
    a_shape = a.shape if isinstance(a, (SMem, T)) else None
    acc_shape = acc.shape
    if a_shape is None or len(a_shape) != 2 or a_shape[1] != b.shape[0] or acc_shape != [a_shape[0], b.shape[1]]:
        raise EmulationError(f"warpgroup_mma shapes: a {a_shape} b {b.shape} acc {acc_shape}")
    use = bool(use_acc)
    p = Pending(a, b, acc, use, acc_shape)
    if not is_async:
        return p.result()
    _context().local().outstanding.append(p)
    return p


def _wgmma_wait(num_outstanding=0, deps=None):
    if deps is None:
        raise EmulationError("warpgroup_mma_wait deps must be given")
    local = _context().local()
    n = int(num_outstanding)
    keep = local.outstanding[len(local.outstanding) - n:] if n else []
    for p in local.outstanding[:len(local.outstanding) - n]:
        p.result()
        p.done = True
    local.outstanding = keep
    out = []
    for d in deps:
        if isinstance(d, Pending):
            if not d.done:
                raise EmulationError("warpgroup_mma_wait returns an accumulator still in flight "
                                     f"(num_outstanding={n} leaves the newest {n} groups running)")
            out.append(d.result())
        else:
            out.append(d)
    return out[0] if len(out) == 1 else tuple(out)


# --- programs and partitions ---------------------------------------------------------------

class _Local(threading.local):
    """Per thread: the program it runs a partition of, and its wgmma groups in flight (both set
    wherever a thread starts running kernel code: ``_launch`` and each worker partition)."""
    ctx = None
    outstanding: list


class _Program:
    """One program's shared state: ids, the barrier condition, the live partitions and which
    of them wait with nothing changed since they last looked."""

    def __init__(self, pid, grid):
        self.pid, self.grid = pid, grid
        self.cond = threading.Condition()
        self.lock = threading.Lock()
        self.alive, self.waiting, self.settling, self.error, self.n_alloc = 1, set(), set(), None, 0

    @staticmethod
    def local():
        return _LOCAL

    def changed(self):  # under cond: a barrier moved or a partition ended; every waiter re-checks
        self.waiting.clear()
        self.cond.notify_all()

    def wait_until(self, ready, what: str):
        me = threading.get_ident()
        with self.cond:
            while True:
                if self.error is not None:
                    raise _Aborted()
                if ready():
                    return
                if me not in self.waiting:
                    self.waiting.add(me)
                    self.cond.notify_all()  # a partition settling (see settle)
                if len(self.waiting) >= self.alive:
                    self.error = Deadlock(f"deadlock: every live partition of program {self.pid} waits; "
                                          f"last: {what}")
                    self.cond.notify_all()
                    raise self.error
                if not self.cond.wait(WAIT_TIMEOUT_S):
                    self.error = Deadlock(f"no barrier changed for {WAIT_TIMEOUT_S} s: {what}")
                    self.cond.notify_all()
                    raise self.error

    def settle(self):
        """Under cond, after this partition's arrival: let every other partition run until it
        waits, settles or ends, so a released buffer is refilled before this one goes on (the
        most adversarial order for a release that comes too early, and a repeatable one)."""
        me = threading.get_ident()
        self.settling.add(me)
        self.cond.notify_all()
        try:
            while self.error is None and len((self.waiting | self.settling) - {me}) < self.alive - 1:
                if not self.cond.wait(WAIT_TIMEOUT_S):
                    self.error = Deadlock(f"partitions of program {self.pid} neither waited nor ended "
                                         f"for {WAIT_TIMEOUT_S} s")
                    self.cond.notify_all()
        finally:
            self.settling.discard(me)

    def fail(self, e):
        with self.cond:
            if self.error is None:
                self.error = e
            self.cond.notify_all()

    def exit(self):
        with self.cond:
            self.alive -= 1
            self.changed()


_LOCAL = _Local()


def _context() -> _Program:
    ctx = _LOCAL.ctx
    if ctx is None:
        raise EmulationError("a Gluon operation outside an emulated launch")
    return ctx


def _warp_specialize(functions_and_args, worker_num_warps, worker_num_regs):
    ctx = _context()
    (default_fn, default_args), workers = functions_and_args[0], functions_and_args[1:]
    if len(worker_num_warps) != len(workers) or len(worker_num_regs) != len(workers):
        raise EmulationError(f"{len(workers)} worker partitions, {len(worker_num_warps)} warp counts, "
                             f"{len(worker_num_regs)} register counts")
    with ctx.cond:
        ctx.alive += len(workers)

    def run(fn, args):
        _LOCAL.ctx, _LOCAL.outstanding = ctx, []
        try:
            with torch.no_grad():  # grad mode is per thread
                fn(*args)
            if _LOCAL.outstanding:
                raise EmulationError(f"{fn.__name__} ended with {len(_LOCAL.outstanding)} wgmma groups never waited on")
        except _Aborted:
            pass
        except BaseException as e:  # noqa: BLE001 -- re-raised by the launching thread
            ctx.fail(e)
        finally:
            ctx.exit()

    threads = [threading.Thread(target=run, args=(fn, args), name=f"worker{i}:{fn.__name__}", daemon=True)
               for i, (fn, args) in enumerate(workers)]
    for t in threads:
        t.start()
    try:
        result = default_fn(*default_args)
        if _LOCAL.outstanding:
            raise EmulationError(f"{default_fn.__name__} ended with wgmma groups never waited on")
    except _Aborted:
        result = None
    except BaseException as e:  # noqa: BLE001
        ctx.fail(e)
        result = None
    finally:
        ctx.exit()
    for t in threads:
        t.join()
    with ctx.cond:
        ctx.alive = 1
    if ctx.error is not None:
        raise ctx.error
    return result


def _program_id(axis):
    return T(torch.tensor(_context().pid[int(axis)], dtype=torch.int32))


def _num_programs(axis):
    return T(torch.tensor(_context().grid[int(axis)], dtype=torch.int32))


# --- the emulated language -----------------------------------------------------------------

class _Layout:
    """Any layout: the emulator keeps no layouts."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _unwrap(x):
    x = getattr(x, "value", x) if type(x).__name__ == "constexpr" else x
    return _t(x)


def _as_tensor(x):
    x = _unwrap(x)
    return x if isinstance(x, torch.Tensor) else _wrap_py(x)


def _arange(start, end, layout=None):
    return T(torch.arange(int(start), int(end), dtype=torch.int32))


def _full(shape, value, dtype, layout=None):
    return T(torch.full([int(s) for s in shape], _unwrap(value), dtype=_torch_dtype(dtype)))


def _zeros(shape, dtype, layout=None):
    return T(torch.zeros([int(s) for s in shape], dtype=_torch_dtype(dtype)))


def _where(cond, a, b):
    c = _as_tensor(cond).to(torch.bool)
    a, b = _operands(_unwrap(a), _unwrap(b))
    return T(torch.where(c, a, b))


def _elementwise2(fn):
    def op(a, b, *args, **kwargs):
        x, y = _operands(a, b)
        return T(fn(x, y))
    return op


def _reduce(fn):
    def op(x, axis=None, keep_dims=False, **_):
        v = _t(x)
        if axis is None:
            return T(fn(v.flatten(), 0))
        return T(fn(v, int(axis), keepdim=bool(keep_dims)))
    return op


def _unary(fn):
    def op(x, **_):
        v = _t(x)
        return T(fn(v if v.is_floating_point() else v.float()))
    return op


def _static_range(*args):
    return range(*(int(a) for a in args))


class NotEmulated(EmulationError, AttributeError):
    """An operation the emulator does not cover (an AttributeError too, so hasattr still works)."""


class _Namespace(types.SimpleNamespace):
    """An emulated module: a name it lacks is an operation the emulator does not cover yet."""

    def __getattr__(self, name):
        raise NotEmulated(f"{self.__name__}.{name} is not emulated (kernels/_gluon_emu.py covers the "
                             f"operations the project's Gluon kernels use; add it there)")


def _module(name: str, **attrs) -> types.SimpleNamespace:
    return _Namespace(__name__=name, **attrs)


_GL_DTYPES = {n: getattr(_real_gl, n) for n in ("float16", "bfloat16", "float32", "float64", "int1", "int8",
                                                "int16", "int32", "int64", "uint8")}

GL = _module(
    "gl(emulated)", constexpr=_real_gl.constexpr, **_GL_DTYPES,
    program_id=_program_id, num_programs=_num_programs, arange=_arange, full=_full, zeros=_zeros,
    where=_where, maximum=_elementwise2(torch.maximum), minimum=_elementwise2(torch.minimum),
    max=_reduce(lambda v, d, keepdim=False: torch.amax(v, d, keepdim=keepdim)),
    min=_reduce(lambda v, d, keepdim=False: torch.amin(v, d, keepdim=keepdim)),
    sum=_reduce(lambda v, d, keepdim=False: torch.sum(v, d, keepdim=keepdim)),
    exp2=_unary(torch.exp2), log2=_unary(torch.log2), exp=_unary(torch.exp), log=_unary(torch.log),
    sqrt=_unary(torch.sqrt), abs=lambda x: T(torch.abs(_t(x))),
    expand_dims=lambda x, axis: T(_t(x).unsqueeze(int(axis))),
    convert_layout=lambda x, layout, assert_trivial=False: _no_pending(x, "convert_layout"),
    load=_load, store=_store, atomic_add=_atomic_add, allocate_shared_memory=_allocate_shared_memory, static_range=_static_range,
    warp_specialize=_warp_specialize,
    NVMMADistributedLayout=_Layout, SliceLayout=_Layout, DotOperandLayout=_Layout, BlockedLayout=_Layout,
    NVMMASharedLayout=_real_gl.NVMMASharedLayout,
)
MBARRIER = _module("mbarrier(emulated)", MBarrierLayout=_MBAR_LAYOUT, init=_bar_init, expect=_bar_expect,
                   wait=_bar_wait, arrive=_bar_arrive)
TMA = _module("tma(emulated)", async_copy_global_to_shared=_tma_load, async_copy_shared_to_global=_tma_store,
              store_wait=_store_wait)


def _no_pending(x, what):
    if isinstance(x, Pending):
        raise EmulationError(f"{what} of an async wgmma accumulator before warpgroup_mma_wait")
    return x


# real object -> its emulation, for re-binding a kernel module's globals
_SUBSTITUTES = {id(_real_gl): GL, id(_real_mbarrier): MBARRIER, id(_real_tma): TMA,
                id(_real_hopper.warpgroup_mma): _wgmma, id(_real_hopper.warpgroup_mma_wait): _wgmma_wait,
                id(_real_hopper.fence_async_shared): _fence_async_shared}


@functools.lru_cache(maxsize=None)
def _emulated_globals(module_name: str) -> dict:
    """The kernel module's globals with Gluon replaced by its emulation and every jit function by
    its re-bound body (shared by all of them, so calls between them stay emulated)."""
    from triton.experimental.gluon._runtime import GluonJITFunction

    mod = sys.modules[module_name]
    env: dict = {}
    for name, value in vars(mod).items():
        env[name] = _SUBSTITUTES.get(id(value), value)
    for name, value in vars(mod).items():
        if isinstance(value, GluonJITFunction):
            fn = value.fn
            env[name] = types.FunctionType(fn.__code__, env, fn.__name__, fn.__defaults__, fn.__closure__)
    return env


def emulated(jit_fn):
    """The Python body of ``jit_fn`` re-bound to the emulated language."""
    return _emulated_globals(jit_fn.fn.__module__)[jit_fn.fn.__name__]


_LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def _argument(name: str, value):
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    if isinstance(value, TensorDescriptor):
        return Desc(value)
    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu":
            raise ValueError(f"{name}: the Gluon emulator runs on CPU tensors, got one on {value.device}")
        return Ptr.of(value, name)
    if isinstance(value, (bool, int, float)):
        return T(_wrap_py(value))
    if value is None:
        return None
    raise ValueError(f"{name}: the Gluon emulator takes tensors, descriptors and scalars, got {type(value).__name__}")


def launch(jit_fn, grid, *args, **kwargs) -> None:
    """Run ``jit_fn[grid](*args, **kwargs)`` on the CPU, one program after another (each
    program's partitions in threads). Raises EmulationError (or Deadlock) where a GPU would
    fault, hang or read what it must not."""
    with torch.no_grad():
        _launch(jit_fn, grid, *args, **kwargs)


def _launch(jit_fn, grid, *args, **kwargs) -> None:
    fn = emulated(jit_fn)
    params = {p.name: p for p in jit_fn.params}
    call = {k: v for k, v in kwargs.items() if k in params}
    unknown = set(kwargs) - set(call) - set(_LAUNCH_OPTIONS)
    if unknown:
        raise TypeError(f"{jit_fn.fn.__name__}: unknown arguments {sorted(unknown)}")
    bound = inspect.signature(jit_fn.fn).bind(*args, **call)
    bound.apply_defaults()
    values = {}
    for name, value in bound.arguments.items():
        values[name] = value if params[name].is_constexpr else _argument(name, value)
    grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    for z in range(grid[2]):
        for y in range(grid[1]):
            for x in range(grid[0]):
                prog = _Program((x, y, z), grid)
                _LOCAL.ctx, _LOCAL.outstanding = prog, []
                try:
                    fn(**values)
                    if _LOCAL.outstanding:
                        raise EmulationError(f"program {prog.pid} ended with wgmma groups never waited on")
                finally:
                    _LOCAL.ctx = None


class Launcher:
    """``Launcher(jit_fn)[grid](...)``: the emulated stand-in for ``jit_fn[grid](...)``."""

    def __init__(self, jit_fn):
        self.jit_fn = jit_fn

    def __getitem__(self, grid):
        return functools.partial(launch, self.jit_fn, grid)


def launcher(jit_fn, device: torch.device) -> Any:
    """``jit_fn`` itself on a GPU; its emulation for CPU tensors (where Gluon cannot run)."""
    return Launcher(jit_fn) if device.type == "cpu" else jit_fn
