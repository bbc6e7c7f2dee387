"""Argument checks paid once per call signature: ``replayed`` wraps a public function of ``swattn.interface``.

A public function checks its arguments, derives the op's arguments (window sides, softmax scale, PackGQA, split
count) and ends in one ``swattn.ops.run_*`` call. Everything but the data checks depends only on the call's
signature: which arguments were passed, each tensor's shape, strides, dtype and device, and the other arguments'
values. So the second call of a signature runs the function and records that op call: which of its arguments are
the caller's own tensors (by identity) and which are plain values; later calls of the signature make the same op
call with their own tensors, and return its result as the recorded call did. (The first call of a signature
only notes it: shapes that change on every call are never recorded.) The key also holds each tensor's 16-byte
alignment and ``ops.plan_settings()``, so that the recorded op call can be planned: ``ops.planned_op`` gives, for
the forward and KV-cache ops on the Triton path, a function that makes the op's launches from the kernels' plans
looked up once (no per-call keys below this one); it hands calls it cannot serve (a gradient needed, a dispatch
mode or functorch transform active, the fused-append setting changed) to the op.

A signature is not replayed (the function runs every time) when its op call holds a tensor the function made (a
copy of a strided q, ``cache_seqlens`` given as an int), when the function read tensor data for its checks
(``check_inputs``: those checks run again on every call), under ``torch.compile`` (which traces the function
itself) or when the function did not end in exactly one op call. Arguments that cannot be part of a key (lists)
take the function every time.
"""

from __future__ import annotations

import functools
import operator
import threading
from collections.abc import Callable

import torch

from swattn import _compat, ops
from swattn.kernels._launch import PlanCache

_recording = threading.local()


def note_data_checks(decide, tensor: torch.Tensor, check_inputs) -> bool:
    """``decide(tensor, check_inputs)``: whether the interface reads tensor data for its checks (it depends on the
    tracing state and the environment too, so a replay asks again, and runs the function when it says yes)."""
    read_data = decide(tensor, check_inputs)
    record = getattr(_recording, "record", None)
    if record is not None:
        record["data_checks"].append((decide, tensor, check_inputs, read_data))
    return read_data


_Tensor, _Parameter = torch.Tensor, torch.nn.Parameter


def _signature(values: tuple, names: tuple) -> tuple:
    """A call's signature: the keyword names, then per argument (positional, then keyword) a plain tensor's shape,
    strides, dtype, device and 16-byte alignment (the alignment Triton specializes pointers on: a planned op
    serves the whole signature); another tensor type's (fake tensors: no data pointer to ask) with its type; a
    tuple with its items' types; anything else with its type (True and 1, 1 and 1.0 are one key otherwise: the
    checks tell them apart). One loop, no call per argument: this is every replayed call's host cost."""
    items = [names]
    append = items.append
    for value in values:
        kind = type(value)
        if kind is _Tensor or kind is _Parameter:
            append((value.shape, value.stride(), value.dtype, value.device, value.data_ptr() % 16 == 0))
        elif kind is tuple:
            append((tuple, value, tuple(map(type, value))))
        elif isinstance(value, _Tensor):
            append((value.shape, value.stride(), value.dtype, value.device, kind))
        else:
            append((kind, value))
    return tuple(items)


def _picker(positions) -> Callable[[tuple], tuple]:
    """``values -> tuple(values[i] for i in positions)`` in one C call (``itemgetter`` returns a lone item bare)."""
    if len(positions) == 1:
        index = positions[0]
        return lambda values: (values[index],)
    return operator.itemgetter(*positions)


class _Replay:
    """One recorded op call: ``op``, its arguments picked from the call's values (positional, then keyword)
    followed by the recorded constants (``pick``); ``returns``: the op's result as is, its first element, or both
    as a pair; ``data_checks``: the interface's decision whether to read data, asked again on every call
    (``(decide, position of the tensor, check_inputs)``; the function runs instead when it says yes)."""

    __slots__ = ("op", "pick", "constants", "returns", "data_checks")

    def __init__(self, op, pick, constants, returns, data_checks, planned=None):
        # planned: ops.planned_op's function for this signature, called in place of the op (None: the op).
        self.op, self.pick, self.constants = planned or op, pick, constants
        self.returns, self.data_checks = returns, data_checks

    def reads_data(self, values: tuple) -> bool:
        return any(decide(values[position], check_inputs) for decide, position, check_inputs in self.data_checks)

    def __call__(self, values: tuple):
        result = self.op(*self.pick(values + self.constants))
        if self.returns == "out":
            return result[0]
        if self.returns == "pair":
            return result[0], result[1]
        return result


def _record(function, args, kwargs):
    """Run ``function`` once, recording its op call; returns (its result, a ``_Replay`` or None)."""
    record = {"data_checks": [], "calls": []}
    _recording.record = record
    try:
        result = function(*args, **kwargs)
    finally:
        _recording.record = None
    if len(record["calls"]) != 1 or any(read_data for *_, read_data in record["data_checks"]):
        return result, None
    op, op_args, op_result = record["calls"][0]
    values = args + tuple(kwargs.values())
    by_identity = {}
    for position, value in enumerate(values):
        if isinstance(value, torch.Tensor):
            if id(value) in by_identity:
                return result, None  # one tensor passed twice: another call may pass two
            by_identity[id(value)] = position
    data_checks = []
    for decide, tensor, check_inputs, _ in record["data_checks"]:
        if id(tensor) not in by_identity:
            return result, None
        data_checks.append((decide, by_identity[id(tensor)], check_inputs))
    # The op's arguments: positions in the call's values, or in the constants that follow them.
    positions, constants = [], []
    for value in op_args:
        if isinstance(value, torch.Tensor):
            if id(value) not in by_identity:
                return result, None  # a tensor the function made (a copy, a filled int): not replayable
            positions.append(by_identity[id(value)])
        elif value is None or type(value) in (bool, int, float):
            positions.append(len(values) + len(constants))
            constants.append(value)
        else:
            return result, None
    if result is op_result:
        returns = "all"
    elif result is op_result[0]:
        returns = "out"
    elif type(result) is tuple and len(result) == 2 and result[0] is op_result[0] and result[1] is op_result[1]:
        returns = "pair"
    else:
        return result, None
    return result, _Replay(op, _picker(positions), tuple(constants), returns, tuple(data_checks),
                           ops.planned_op(op, op_args))


class _RecordingOps:
    """``swattn.ops`` as the interface module sees it: while this thread records a call, its ``run_*``
    entry points are wrapped to record the call; otherwise (and for other names) the module's own. Setting or
    deleting an attribute (``mock.patch.object(interface.ops, ...)``) acts on the module."""

    def __setattr__(self, name, value):
        setattr(ops, name, value)

    def __delattr__(self, name):
        delattr(ops, name)

    def __getattr__(self, name):
        attribute = getattr(ops, name)
        record = getattr(_recording, "record", None)
        if record is None or not name.startswith("run_"):
            return attribute

        def op(*op_args):
            result = attribute(*op_args)
            record["calls"].append((attribute, op_args, result))
            return result
        return op


recording_ops = _RecordingOps()


def replayed(function):
    """Wrap a public function whose every call ends in one ``swattn.ops`` call (see the module docstring)."""
    plans = PlanCache()
    seen_once = PlanCache(4096)
    not_replayable = object()

    @functools.wraps(function)
    def call(*args, **kwargs):
        if torch.compiler.is_compiling():
            return function(*args, **kwargs)
        values = args + tuple(kwargs.values()) if kwargs else args
        try:
            key = (_signature(values, tuple(kwargs)), ops.plan_settings(), _compat.CHECK_INPUTS)
            plan = plans.get(key)
        except TypeError:  # an unhashable argument (a list)
            return function(*args, **kwargs)
        if plan is None:
            if key not in seen_once:
                # Recorded at a signature's second call: shapes that change on every call (a serving engine's
                # varlen batches) then cost a key, not a recording (25 us on the development CPU).
                seen_once.add(key, True)
                return function(*args, **kwargs)
            result, plan = _record(function, args, kwargs)
            plans.add(key, not_replayable if plan is None else plan)
            return result
        if plan is not_replayable or (plan.data_checks and plan.reads_data(values)):
            return function(*args, **kwargs)
        return plan(values)

    call.plans = plans
    return call
