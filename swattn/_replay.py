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
take the function every time. A recording whose call passed one tensor as two arguments (a varlen
self-attention's ``cu_seqlens_q`` and ``cu_seqlens_k``) replays only calls that do the same (the function runs for
the others).
"""

from __future__ import annotations

import functools
import inspect
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


def note_length_choices(choose, *lengths: int):
    """``choose(*lengths)``: the choices of a call that depend on its lengths (``max_seqlen_q``, and
    ``max_seqlen_k`` where keys are packed: PackGQA, the split count), where everything else the function derives
    depends on its signature alone, the packed tensors' rows and these lengths aside (see ``replayed``'s
    ``lengths``). ``choose`` must depend on nothing of the call but values of its signature (it is kept with the
    recording and asked for later calls' lengths)."""
    choices = choose(*lengths)
    record = getattr(_recording, "record", None)
    if record is not None:
        record["lengths"].append((choose, lengths, choices))
    return choices


_Tensor, _Parameter = torch.Tensor, torch.nn.Parameter
_grad_enabled = torch.is_grad_enabled


def _signature(values: tuple, names: tuple) -> tuple:
    """A call's signature: the keyword names, then per argument (positional, then keyword) a plain tensor's shape,
    strides, dtype, device and 16-byte alignment (the alignment Triton specializes pointers on: a planned op
    serves the whole signature); another tensor type's (fake tensors: no data pointer to ask) with its type; a
    tuple with its items' types; anything else with its type (True and 1, 1 and 1.0 are one key otherwise: the
    checks tell them apart). Under grad mode (the last item) each tensor's ``requires_grad`` too: the function's
    checks read them (``out=`` is refused for a call that needs a gradient), so a signature recorded without a
    gradient must not serve one that needs it (without grad mode no call needs one: not read). One loop, no call per
    argument: this is every replayed call's host cost."""
    items = [names]
    append = items.append
    grad = _grad_enabled()
    for value in values:
        kind = type(value)
        if kind is _Tensor or kind is _Parameter:
            append((value.shape, value.stride(), value.dtype, value.device, value.data_ptr() % 16 == 0,
                    grad and value.requires_grad))
        elif kind is tuple:
            append((tuple, value, tuple(map(type, value))))
        elif isinstance(value, _Tensor):
            append((value.shape, value.stride(), value.dtype, value.device, kind, grad and value.requires_grad))
        else:
            append((kind, value))
    append(grad)
    return tuple(items)


def _picker(positions) -> Callable[[tuple], tuple]:
    """``values -> tuple(values[i] for i in positions)`` in one C call (``itemgetter`` returns a lone item bare)."""
    if len(positions) == 1:
        index = positions[0]
        return lambda values: (values[index],)
    return operator.itemgetter(*positions)


def _not_the_same(tensor: torch.Tensor, other: torch.Tensor) -> bool:
    """A ``_Replay`` data check (``decide(values[position], values[other position])``)."""
    return tensor is not other


class _Replay:
    """One recorded op call: ``op``, its arguments picked from the call's values (positional, then keyword)
    followed by the recorded constants (``pick``); ``returns``: the op's result as is, its first element, or both
    as a pair; ``data_checks``: the interface's decision whether to read data, asked again on every call
    (``(decide, position of the tensor, check_inputs)``; the function runs instead when it says yes), and the
    positions that held one tensor in the recorded call (``(_not_the_same, position, other position)``: the function
    runs for a call that passes two tensors there).
    ``lengths``: ``(choose, choices)`` when the call's ``max_seqlen_q`` is picked from the call's values and the
    replay serves other lengths with the same ``choose(max_seqlen_q)`` (``note_length_choices``), else None."""

    __slots__ = ("op", "other_op", "pick", "constants", "returns", "data_checks", "lengths")

    def __init__(self, op, pick, constants, returns, data_checks, planned=None, lengths=None):
        # planned: ops.planned_op's function for this signature, called in place of the op (None: the op); its
        # ``other_lengths``, where it has one, for the calls the replay serves up to their lengths (``other``).
        self.op, self.pick, self.constants = planned or op, pick, constants
        self.other_op = getattr(planned, "other_lengths", None) or self.op
        self.returns, self.data_checks, self.lengths = returns, data_checks, lengths

    def reads_data(self, values: tuple) -> bool:
        """Whether the function must run for this call: its checks read data, or it passes two tensors where the
        recorded call passed one."""
        return any(decide(values[position], values[argument] if decide is _not_the_same else argument)
                   for decide, position, argument in self.data_checks)

    def __call__(self, values: tuple):
        result = self.op(*self.pick(values + self.constants))
        if self.returns == "out":
            return result[0]
        if self.returns == "pair":
            return result[0], result[1]
        return result

    def other(self, values: tuple):
        """The replay of a call whose signature differs from the recorded one in its lengths (``replayed``'s
        ``lengths``): the planned op's variant that takes each call's plan for its lengths."""
        result = self.other_op(*self.pick(values + self.constants))
        if self.returns == "out":
            return result[0]
        if self.returns == "pair":
            return result[0], result[1]
        return result


# The positions of the lengths (max_seqlen_q, then max_seqlen_k) among the arguments of the ops whose calls may
# serve other lengths.
_LENGTH_ARGUMENTS = {"run_fwd_kvcache": (9,), "run_fwd_kvcache_into": (10,), "run_fwd": (7, 8),
                     "run_fwd_into": (8, 9)}
# The same for dense lengths (``replayed``'s ``dense``: each group's first tensor's dim 1), None for a length that is
# no argument of the op (a dense KV cache's: the op reads it from the cache's shape).
_DENSE_LENGTH_ARGUMENTS = {"run_fwd_kvcache": (None,), "run_fwd_kvcache_into": (None,), "run_fwd": (7, 8),
                           "run_fwd_into": (8, 9)}


def _dense_lengths_noted(record: dict, op, op_args: tuple, derived: tuple) -> bool:
    """Whether a recording of a function with dense lengths noted its choices for exactly the call's lengths
    (``derived``), and its op takes them where ``_DENSE_LENGTH_ARGUMENTS`` says (so a replay of other lengths passes
    its own there)."""
    if len(record["lengths"]) != 1:
        return False
    _, noted, _ = record["lengths"][0]
    indices = _DENSE_LENGTH_ARGUMENTS.get(getattr(op, "__name__", None))
    return (indices is not None and len(indices) == len(noted) == len(derived)
            and all(type(length) is int and length == found
                    and (index is None or (type(op_args[index]) is int and op_args[index] == found))
                    for length, found, index in zip(noted, derived, indices)))


def _record(function, args, kwargs, length_positions=None, derive=None):
    """Run ``function`` once, recording its op call; returns (its result, a ``_Replay`` or None).
    ``length_positions``: where the call's lengths are among its values, when they may be free (``replayed``'s
    ``lengths``): a recording that noted its length choices then picks them from the call's values. ``derive``:
    ``values -> lengths`` for a function with dense lengths (``replayed``'s ``dense``): a recording that noted its
    choices for them passes each call's own to its op (its picker appends them to the values and constants)."""
    record = {"data_checks": [], "calls": [], "lengths": []}
    _recording.record = record
    try:
        result = function(*args, **kwargs)
    finally:
        _recording.record = None
    if len(record["calls"]) != 1 or any(read_data for *_, read_data in record["data_checks"]):
        return result, None
    op, op_args, op_result = record["calls"][0]
    values = args + tuple(kwargs.values())
    derived = () if derive is None else derive(values)
    if derived and not _dense_lengths_noted(record, op, op_args, derived):
        derived = ()  # a plain recording of this signature (its lengths are constants)
    by_identity, data_checks = {}, []
    for position, value in enumerate(values):
        if isinstance(value, torch.Tensor):
            first = by_identity.setdefault(id(value), position)
            if first != position:
                # One tensor passed twice (a varlen self-attention's cu_seqlens_q and cu_seqlens_k): the op's
                # arguments take it from its first position, so the replay serves only calls that pass one tensor
                # there too.
                data_checks.append((_not_the_same, first, position))
    for decide, tensor, check_inputs, _ in record["data_checks"]:
        if id(tensor) not in by_identity:
            return result, None
        data_checks.append((decide, by_identity[id(tensor)], check_inputs))
    # The op's arguments: positions in the call's values, or in the constants that follow them (then, for dense
    # lengths, the call's lengths).
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
    if derived:
        # A dense-lengths replay passes each call's own lengths: after the values and the constants.
        choose, _, choices = record["lengths"][0]
        for offset, index in enumerate(_DENSE_LENGTH_ARGUMENTS[op.__name__]):
            if index is not None:
                positions[index] = len(values) + len(constants) + offset
    lengths = None
    if length_positions is not None and len(record["lengths"]) == 1:
        choose, noted, choices = record["lengths"][0]
        indices = _LENGTH_ARGUMENTS.get(getattr(op, "__name__", None))
        if (indices is not None and len(indices) == len(noted) == len(length_positions)
                and all(type(length) is int and values[position] is length and op_args[index] is length
                        for length, position, index in zip(noted, length_positions, indices))):
            for position, index in zip(length_positions, indices):
                positions[index] = position
            lengths = (choose, choices)
    if result is op_result:
        returns = "all"
    elif result is op_result[0]:
        returns = "out"
    elif type(result) is tuple and len(result) == 2 and result[0] is op_result[0] and result[1] is op_result[1]:
        returns = "pair"
    else:
        return result, None
    pick = _picker(positions)
    if derived:
        # (``derive`` reads only the values' positions, so it may be given the values and constants.)
        pick = (lambda values_and_constants, pick=pick:
                pick(values_and_constants + derive(values_and_constants)))
        lengths = (choose, choices)
    return result, _Replay(op, pick, tuple(constants), returns, tuple(data_checks), ops.planned_op(op, op_args),
                           lengths)


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


class _Lengths(dict):
    """The replays of one signature up to its packed tensors' rows and its lengths, by the length choices they were
    recorded with (``choose(*lengths)``, ``note_length_choices``)."""

    MAX_CHOICES = 64

    def __init__(self, choose):
        super().__init__()
        self.choose = choose


def _rows_free(item: tuple, rows: int, tokens: int) -> tuple:
    """A tensor's signature item without its rows (dim 0): the rest of its shape, its row class (0, 1, more: one
    row of any stride is contiguous) and whether it has ``tokens`` rows (its group's first tensor's)."""
    shape = item[0]
    return ("rows", shape[1:], min(rows, 2), rows == tokens, *item[1:])


def _lengths_getter(positions: tuple) -> Callable[[tuple], tuple]:
    """``values -> tuple(values[i].shape[1] for i in positions)``, for one or two positions without a loop (every
    replay of a function with dense lengths calls it)."""
    if len(positions) == 1:
        first, = positions
        return lambda values: (values[first].shape[1],)
    if len(positions) == 2:
        first, second = positions
        return lambda values: (values[first].shape[1], values[second].shape[1])
    return lambda values: tuple(values[position].shape[1] for position in positions)


def _position(parameters: tuple, name: str, count: int, names: tuple) -> int | None:
    """Where argument ``name`` is among a call's values (``count`` positional, then keyword ``names``), or None
    where the call does not pass it."""
    index = parameters.index(name)
    return index if index < count else count + names.index(name) if name in names else None


def _length_free(item: tuple, tensor: torch.Tensor, length: int) -> tuple:
    """A dense tensor's signature item without its length (dim 1) and strides: the rest of its shape, its length
    class (0, 1, more), whether it has ``length`` (its group's first tensor's), its last stride and contiguity (what
    the interface reads of its strides: a head dimension of unit stride, a contiguous ``out``), dtype, device and
    16-byte alignment."""
    shape = item[0]
    size = shape[1]
    return ("dense", shape[0], shape[2:], min(size, 2), size == length, item[1][-1], tensor.is_contiguous(),
            *item[2:])


def replayed(function=None, *, lengths: tuple | None = None, dense: tuple | None = None):
    """Wrap a public function whose every call ends in one ``swattn.ops`` call (see the module docstring).

    ``lengths``: ``(rows, names)`` for a function that notes its length choices (``note_length_choices``) where its
    call depends on the packed tensors' rows and on its lengths only through them. ``rows``: groups of tensor
    argument names, the first of each group the packed tensor whose rows the others must have (``("q", "out")``:
    out has q's rows); ``names``: the lengths' argument names (``max_seqlen_q``, ``max_seqlen_k``). A call whose
    signature differs from a recorded one only in those rows and lengths (ints >= 0 either way) replays that
    recording when its choices for its own lengths are the same, with its lengths (a serving engine's mixed batches,
    whose totals and longest counts change every step). Such signatures are recorded at their second sighting up
    to those rows and lengths, and at the first call of each new choice.

    ``dense``: groups of dense tensor argument names (``(("q", "out"), ("k", "v"))``) whose dim 1 is a length: each
    group's first tensor's (the others must have it), for a function that notes its length choices for those
    lengths in group order (``note_length_choices``) and depends on them, and on those tensors' strides, only
    through those choices, its op's ``max_seqlen_q`` / ``max_seqlen_k`` (``_DENSE_LENGTH_ARGUMENTS``) and the
    tensors' last stride and contiguity. A call whose signature differs from a recorded one only in those lengths
    and strides replays that recording when its choices are the same, its op taking the call's lengths (a
    prefill or a training step of a new length; a decode over a dense KV cache one token longer). Tried for calls
    that ``lengths`` does not serve."""
    if function is None:
        return functools.partial(replayed, lengths=lengths, dense=dense)
    plans = PlanCache()
    seen_once = PlanCache(4096)
    not_replayable = object()
    free_plans = PlanCache()
    free_seen = PlanCache(4096)
    parameters = tuple(inspect.signature(function).parameters)
    where_by_call: dict = {}

    def positions_of(count: int, names: tuple):
        """Where the row groups' tensors and the lengths are among a call's values (each group's positions, then the
        lengths'; None where a group's first tensor or a length is not passed: the exact signature only)."""
        found = where_by_call.get((count, names), False)
        if found is False:
            groups = tuple(tuple(_position(parameters, name, count, names) for name in group) for group in lengths[0])
            at = tuple(_position(parameters, name, count, names) for name in lengths[1])
            found = where_by_call[(count, names)] = (
                None if None in at or any(group[0] is None for group in groups) else (groups, at))
        return found

    def free_key(signature: tuple, key: tuple, values: tuple, count: int, names: tuple):
        """The call's key without the row groups' rows and the lengths (None where those are not plain: then only the
        exact signature is replayed), and where its lengths are."""
        where = positions_of(count, names)
        if where is None:
            return None, None
        groups, at = where
        items = list(signature)
        for group in groups:
            first = values[group[0]]
            if type(first) is not _Tensor or first.dim() == 0:
                return None, None
            tokens = first.shape[0]
            for position in group:
                if position is None:
                    continue
                tensor = values[position]
                if tensor is None:
                    continue
                if type(tensor) is not _Tensor or tensor.dim() == 0:
                    return None, None
                items[1 + position] = _rows_free(items[1 + position], tensor.shape[0], tokens)
        for position in at:
            length = values[position]
            if type(length) is not int:
                return None, None
            items[1 + position] = ("free length", length >= 0)
        return (tuple(items), key[1], key[2]), at

    dense_where: dict = {}

    def dense_positions(count: int, names: tuple):
        """Where the dense groups' tensors are among a call's values (None where a group's first tensor is not
        passed), and ``values -> lengths`` for them."""
        found = dense_where.get((count, names), False)
        if found is False:
            groups = tuple(tuple(_position(parameters, name, count, names) for name in group) for group in dense)
            found = None
            if all(group[0] is not None for group in groups):
                found = groups, _lengths_getter(tuple(group[0] for group in groups))
            dense_where[(count, names)] = found
        return found

    def dense_free_key(signature: tuple, key: tuple, values: tuple, count: int, names: tuple):
        """The call's key without the dense groups' lengths and strides (``_length_free``), and ``values ->
        lengths``; (None, None) where those are not plain tensors of at least two dimensions."""
        where = dense_positions(count, names)
        if where is None:
            return None, None
        groups, derive = where
        items = list(signature)
        for group in groups:
            first = values[group[0]]
            if type(first) is not _Tensor or first.dim() < 2:
                return None, None
            length = first.shape[1]
            for position in group:
                tensor = None if position is None else values[position]
                if tensor is None:
                    continue
                if type(tensor) is not _Tensor or tensor.dim() < 2:
                    return None, None
                items[1 + position] = _length_free(items[1 + position], tensor, length)
        return (tuple(items), key[1], key[2]), derive

    def record_free(args, kwargs, key, free, at, derive=None):
        result, plan = _record(function, args, kwargs, at, derive)
        plans.add(key, not_replayable if plan is None else plan)
        table = free_plans.get(free)
        if plan is not None and plan.lengths is not None:
            if table is None or table is not_replayable:
                table = free_plans.add(free, _Lengths(plan.lengths[0]))
            if len(table) >= _Lengths.MAX_CHOICES:
                table.clear()
            table[plan.lengths[1]] = plan
        elif table is None:
            free_plans.add(free, not_replayable)
        return result

    @functools.wraps(function)
    def call(*args, **kwargs):
        if torch.compiler.is_compiling():
            return function(*args, **kwargs)
        values = args + tuple(kwargs.values()) if kwargs else args
        try:
            names = tuple(kwargs)
            signature = _signature(values, names)
            key = (signature, ops.plan_settings(), _compat.CHECK_INPUTS)
            plan = plans.get(key)
        except TypeError:  # an unhashable argument (a list)
            return function(*args, **kwargs)
        if plan is None:
            free = None
            if lengths is not None:
                free, at = free_key(signature, key, values, len(args), names)
                if free is not None:
                    table = free_plans.get(free)
                    if table is None:
                        if free in free_seen:
                            return record_free(args, kwargs, key, free, at)
                        free_seen.add(free, True)
                    elif table is not not_replayable:
                        plan = table.get(table.choose(*[values[position] for position in at]))
                        if plan is None:
                            return record_free(args, kwargs, key, free, at)
                        if plan.data_checks and plan.reads_data(values):
                            return function(*args, **kwargs)
                        return plan.other(values)
            if dense is not None and free is None:
                # The same for the dense lengths (a call that ``lengths`` does not serve).
                free, derive = dense_free_key(signature, key, values, len(args), names)
                if free is not None:
                    table = free_plans.get(free)
                    if table is None:
                        if free in free_seen:
                            return record_free(args, kwargs, key, free, None, derive)
                        free_seen.add(free, True)
                    elif table is not not_replayable:
                        plan = table.get(table.choose(*derive(values)))
                        if plan is None or key in seen_once:
                            # A new choice, or this exact signature's second call (a repeated length: its own
                            # recording then serves it through the exact key, its plans looked up once).
                            return record_free(args, kwargs, key, free, None, derive)
                        seen_once.add(key, True)
                        if plan.data_checks and plan.reads_data(values):
                            return function(*args, **kwargs)
                        return plan.other(values)
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
    call.free_plans = free_plans
    return call
