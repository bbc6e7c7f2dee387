"""conftest.py for FlashAttention 3's tests run against swattn (copied into .fa3-tests/ by scripts/fa3_dropin.py).

Two things, both driven by environment variables that ``fa3_dropin.py run`` sets:

- ``FA3_DROPIN_SAMPLE`` ("test_function=U+A,..."): a deterministic sample of FA3's parameter matrix (~110,000
  parametrizations; building them all takes most of a minute). Per test function, the U parametrizations of the
  whole matrix whose node id has the smallest sha1 ("matrix" sample: what a user switching imports meets, refused
  arguments included), then the A smallest among those whose arguments swattn accepts and that FA3's test does
  not skip ("accepted" sample: the numerical evidence). The product of the parametrize marks is enumerated as
  plain tuples and the marks are replaced by one parametrization of exactly the chosen ones; FA3's test bodies
  run unchanged.
- ``FA3_DROPIN_LOG``: one line per finished test, written as it happens (a run cut off by its time limit still
  says what it ran): outcome, phase, seconds, sample, node id, and a failure's exception (type and first line).
"""

import collections
import hashlib
import itertools
import os

import pytest

# FA3's dv loop (test_flash_attn_output, test_flash_attn_varlen_output, test_flash_attn_kvcache): dv in [128, d] for
# 128 < d <= 192, [256, 512, d] for d <= 64, [d] for fp8; swattn takes them all (a value head_dim of its own), the
# backward for dv <= 256 as FA3's tests run it.
# Test functions that call something swattn does not have (FA3's C++ op schemas, torch.ops.flash_attn_3).
_NOT_IN_SWATTN = ("test_flash3_bw_compatibility",)


def accepted(name: str, params: dict) -> bool:
    """Whether every call of this parametrization passes only arguments swattn accepts (docs/semantics.md)."""
    if name in _NOT_IN_SWATTN:
        return False
    # has_qv (MLA's qv, FA3's tests draw it at d = 64, dv 256 / 512, forward only): accepted by swattn.
    d = params.get("d")
    if d is not None and (d % 8 or d > 256):
        return False
    return not _skipped_by_fa3(name, params)


def _skipped_by_fa3(name: str, p: dict) -> bool:
    """The pytest.skip conditions at the top of FA3's test_flash_attn_kvcache."""
    if name != "test_flash_attn_kvcache":
        return False
    return ((p["page_size"] is not None and p["seqlen_k"] % p["page_size"] != 0)
            or (p["seqlen_q"] > p["seqlen_k"] and p["new_kv"])
            or (not p["new_kv"] and p["rotary_fraction"] > 0.0)
            or (p["rotary_fraction"] == 0.0 and p["has_rotary_seqlens"]))


def _sample() -> dict[str, tuple[int, int]]:
    counts = {}
    for part in filter(None, os.environ.get("FA3_DROPIN_SAMPLE", "").split(",")):
        name, _, count = part.partition("=")
        matrix, _, accepted_count = count.partition("+")
        counts[name.strip()] = (int(matrix), int(accepted_count or 0))
    return counts


def _rank(nodeid: str) -> str:
    return hashlib.sha1(nodeid.encode()).hexdigest()


def _value_id(argname: str, value, index: int) -> str:
    # pytest's ids for the value types FA3's tests use (numbers, bools, None, strings), else argname + index.
    if value is None or isinstance(value, (bool, int, float, str)):
        return str(value)
    return f"{argname}{index}"


def pytest_configure(config):
    config.addinivalue_line("markers", "fa3_sample(kind): which sample (matrix, accepted) drew this test")


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc):
    counts = _sample()
    name = metafunc.function.__name__
    marks = [mark for mark in metafunc.definition.own_markers if mark.name == "parametrize"]
    if not counts or not marks or any(mark.kwargs or len(mark.args) != 2 for mark in marks):
        return
    axes = []  # per mark: (argnames, [(id, values), ...]), ids as pytest writes them
    for mark in marks:
        argnames, argvalues = mark.args
        names = [n.strip() for n in argnames.split(",")] if isinstance(argnames, str) else list(argnames)
        options = []
        for index, value in enumerate(argvalues):
            values = tuple(value) if len(names) > 1 else (value,)
            options.append(("-".join(_value_id(n, v, index) for n, v in zip(names, values)), values))
        repeats = collections.Counter(option_id for option_id, _ in options)
        seen = collections.Counter()
        for i, (option_id, values) in enumerate(options):  # pytest's suffixes: "1024-1024_0", "1024-1024_1"
            if repeats[option_id] > 1:
                options[i] = (f"{option_id}_{seen[option_id]}", values)
                seen[option_id] += 1
        axes.append((names, options))
    argnames = [n for names, _ in axes for n in names]

    def node_id(combo):
        return "-".join(option_id for option_id, _ in combo)

    def values(combo):
        return tuple(v for _, option_values in combo for v in option_values)

    ranked = sorted(itertools.product(*(options for _, options in axes)),
                    key=lambda combo: _rank(f"{metafunc.definition.nodeid}[{node_id(combo)}]"))
    matrix_count, accepted_count = counts.get(name, (0, 0))
    chosen = [(combo, "matrix") for combo in ranked[:matrix_count]]
    extra = (combo for combo in ranked[matrix_count:] if accepted(name, dict(zip(argnames, values(combo)))))
    chosen += [(combo, "accepted") for combo in itertools.islice(extra, accepted_count)]
    metafunc.definition.own_markers[:] = [m for m in metafunc.definition.own_markers if m.name != "parametrize"]
    metafunc.parametrize(argnames, [pytest.param(*values(combo), id=node_id(combo), marks=pytest.mark.fa3_sample(kind))
                                    for combo, kind in chosen])


def pytest_collection_modifyitems(config, items):
    if not _sample():
        return
    kept = [item for item in items if item.get_closest_marker("fa3_sample") is not None]
    deselected = [item for item in items if item.get_closest_marker("fa3_sample") is None]
    if deselected:  # the functions sampled 0 times (pytest keeps one "empty parameter set" item for each)
        config.hook.pytest_deselected(items=deselected)
    # Round-robin over the test functions, so that a run cut off by its time limit has reached each of them.
    groups = collections.defaultdict(list)
    for item in kept:
        groups[item.originalname].append(item)
    items[:] = [item for batch in itertools.zip_longest(*groups.values()) for item in batch if item is not None]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    mark = item.get_closest_marker("fa3_sample")
    report.user_properties.append(("sample", mark.args[0] if mark else "all"))
    if call.excinfo is not None and report.failed:
        exc = call.excinfo.value
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        report.user_properties.append(("exception", f"{type(exc).__name__}: {first_line}"))


def pytest_runtest_logreport(report):
    log = os.environ.get("FA3_DROPIN_LOG")
    if not log or os.environ.get("PYTEST_XDIST_WORKER"):
        return  # under xdist the controller, which receives every worker's reports, writes the log
    if report.when != "call" and report.outcome == "passed":
        return
    properties = dict(report.user_properties)
    if report.skipped:
        detail = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    else:
        detail = properties.get("exception", "")
    fields = (report.outcome.upper(), report.when, f"{report.duration:.2f}", properties.get("sample", "all"),
              report.nodeid, detail.replace("\n", " ").replace("\t", " "))
    with open(log, "a") as out:
        out.write("\t".join(fields) + "\n")
