"""Handle and TimerHandle: reprs (same shape as asyncio's), when(), cancel."""

from __future__ import annotations

import asyncio

import functools
import math
import re
import sys

import pytest
from versions import repr_args


def callback(*args, **kwargs):
    pass


class Owner:
    def method(self):
        pass


def src(func):
    code = func.__code__
    return f"{code.co_filename}:{code.co_firstlineno}"


CALLBACK_CASES = {
    "function": (callback, (), f"callback() at {src(callback)}"),
    "function-with-args": (callback, (1, "x", None), "callback(" + repr_args("1, 'x', None") + f") at {src(callback)}"),
    # No source location for bound methods or builtins.
    "bound-method": (Owner().method, (), "Owner.method()"),
    "builtin": (print, (), "print()"),
    "partial": (
        functools.partial(callback, 1, k=2),
        (3,),
        f"callback({repr_args('1, k=2')})({repr_args('3')}) at {src(callback)}",
    ),
    "lambda": (lambda: None, (), None),  # checked against the oracle only
    "long-args": (
        callback,
        ("x" * 100, list(range(100))),
        "callback("
        + repr_args("'xxxxxxxxxxxx...xxxxxxxxxxxxx', [0, 1, 2, 3, 4, 5, ...]")
        + f") at {src(callback)}",
    ),
}


@pytest.mark.parametrize("case", list(CALLBACK_CASES))
def test_handle_repr(loop, oracle_loop, case):
    cb, args, expected = CALLBACK_CASES[case]
    h = loop.call_soon(cb, *args)
    oracle = oracle_loop.call_soon(cb, *args)
    assert repr(h) == repr(oracle)
    if expected is not None:
        assert repr(h) == f"<Handle {expected}>"
    h.cancel()
    oracle.cancel()


def test_cancelled_handle_repr(loop, oracle_loop):
    h = loop.call_soon(callback, 1)
    h.cancel()
    oracle = oracle_loop.call_soon(callback, 1)
    oracle.cancel()
    assert repr(h) == repr(oracle) == "<Handle cancelled>"


@pytest.mark.parametrize("case", list(CALLBACK_CASES))
def test_timer_handle_repr(loop, oracle_loop, case):
    cb, args, _ = CALLBACK_CASES[case]
    when = loop.time() + 100
    h = loop.call_at(when, cb, *args)
    oracle = oracle_loop.call_at(when, cb, *args)
    assert repr(h) == repr(oracle)
    assert repr(h).startswith(f"<TimerHandle when={when!r} ")
    h.cancel()
    oracle.cancel()
    assert repr(h) == repr(oracle) == f"<TimerHandle cancelled when={when!r}>"


def test_timer_handle_repr_from_call_later(loop):
    h = loop.call_later(10, callback, 7)
    assert repr(h) == f"<TimerHandle when={h.when()!r} callback({repr_args('7')}) at {src(callback)}>"
    h.cancel()


def test_handle_repr_after_it_ran(loop, oracle_loop):
    reprs = []
    for lp in (loop, oracle_loop):
        h = lp.call_soon(callback, "ran")
        lp.call_soon(lp.stop)
        lp.run_forever()
        reprs.append(repr(h))
    assert reprs[0] == reprs[1] == f"<Handle callback({repr_args(repr('ran'))}) at {src(callback)}>"


def test_debug_mode_reprs_show_where_the_handle_was_created(loop):
    loop.set_debug(True)
    line = None

    def make():
        nonlocal line
        line = make.__code__.co_firstlineno + 3
        return loop.call_soon(callback), loop.call_later(10, callback)

    h, th = make()
    here = __file__
    assert repr(h) == f"<Handle callback() at {src(callback)} created at {here}:{line}>"
    assert repr(th) == (
        f"<TimerHandle when={th.when()!r} callback() at {src(callback)} created at {here}:{line}>"
    )
    # In debug mode a cancelled handle keeps describing its callback.
    h.cancel()
    th.cancel()
    assert repr(h) == f"<Handle cancelled callback() at {src(callback)} created at {here}:{line}>"
    assert re.fullmatch(
        rf"<TimerHandle cancelled when=\S+ callback\(\) at {re.escape(src(callback))} "
        rf"created at {re.escape(here)}:{line}>",
        repr(th),
    )


def test_handle_type_names(loop):
    h = loop.call_soon(callback)
    th = loop.call_later(1, callback)
    assert type(h).__name__ == "Handle"
    assert type(th).__name__ == "TimerHandle"
    h.cancel()
    th.cancel()


def test_timer_handle_when(loop):
    when = loop.time() + 5.5
    th = loop.call_at(when, callback)
    assert th.when() == when
    th.cancel()
    assert th.when() == when


def test_timer_handle_when_is_what_call_at_was_given(loop):
    """asyncio keeps call_at's `when` as given: an int stays an int, in when(), in the
    repr and in the hash; call_later's is a float."""
    when = int(loop.time()) + 3600
    th = loop.call_at(when, callback)
    assert type(th.when()) is int and th.when() == when
    assert repr(th).startswith(f"<TimerHandle when={when} ")
    assert hash(th) == hash(when)
    later = loop.call_later(3600, callback)
    assert type(later.when()) is float
    assert hash(later) == hash(later.when())
    assert th < later
    th.cancel()
    later.cancel()
    assert repr(th) == f"<TimerHandle cancelled when={when}>"


def test_timer_handle_with_an_int_deadline_fires(loop):
    fired = []
    loop.call_at(int(loop.time()), fired.append, "int")
    loop.call_at(loop.time(), fired.append, "float")
    loop.run_until_complete(asyncio.sleep(0.01))
    assert fired == ["int", "float"]


def test_timer_handles_compare_by_when(loop):
    base = loop.time() + 100
    early = loop.call_at(base, callback)
    late = loop.call_at(base + 1, callback)
    assert early < late
    assert late > early
    assert early <= late
    assert not late < early
    early.cancel()
    late.cancel()


ODD_DEADLINES = {
    # how: (schedule, str(when()))
    "call_at(nan)": (lambda loop: loop.call_at(math.nan, callback), "nan"),
    "call_later(nan)": (lambda loop: loop.call_later(math.nan, callback), "nan"),
    "call_at(inf)": (lambda loop: loop.call_at(math.inf, callback), "inf"),
    "call_later(inf)": (lambda loop: loop.call_later(math.inf, callback), "inf"),
    "call_at(-inf)": (lambda loop: loop.call_at(-math.inf, callback), "-inf"),
    "call_later(-inf)": (lambda loop: loop.call_later(-math.inf, callback), "-inf"),
    "call_at(max)": (lambda loop: loop.call_at(sys.float_info.max, callback), "1.7976931348623157e+308"),
    "call_later(max)": (lambda loop: loop.call_later(sys.float_info.max, callback), "1.7976931348623157e+308"),
    "call_later(1e300)": (lambda loop: loop.call_later(1e300, callback), "1e+300"),
    "call_later(-1e300)": (lambda loop: loop.call_later(-1e300, callback), "-1e+300"),
    "call_at(2**1023)": (lambda loop: loop.call_at(2**1023, callback), str(2**1023)),
    "call_at(-10**300)": (lambda loop: loop.call_at(-(10**300), callback), str(-(10**300))),
}


@pytest.mark.parametrize("how", list(ODD_DEADLINES))
def test_timer_handle_when_and_repr_with_odd_deadlines(loop, oracle_loop, how):
    schedule, text = ODD_DEADLINES[how]
    h = schedule(loop)
    oracle = schedule(oracle_loop)
    assert type(h.when()) is type(oracle.when())
    assert str(h.when()) == str(oracle.when()) == text
    assert repr(h) == repr(oracle) == f"<TimerHandle when={text} callback() at {src(callback)}>"
    # The hash is the deadline's, and stays: for a NaN (whose hash is its identity's)
    # because when() gives the same object each time.
    assert hash(h) == hash(h.when()) == hash(h)
    assert h in {h}
    if text == "nan":
        assert h.when() is h.when()
    h.cancel()
    oracle.cancel()
    assert repr(h) == repr(oracle) == f"<TimerHandle cancelled when={text}>"


def test_timer_handle_comparisons_with_odd_deadlines(loop):
    nan = loop.call_at(math.nan, callback)
    inf = loop.call_at(math.inf, callback)
    ninf = loop.call_at(-math.inf, callback)
    num = loop.call_at(5.0, callback)
    # A NaN deadline compares false with every deadline, its own included.
    assert not nan == nan and nan != nan
    assert not nan <= nan and not nan >= nan
    assert not nan < num and not nan > num and not nan <= num and not nan >= num
    assert not num < nan and not num > nan and nan != num
    assert ninf < num < inf and inf > num > ninf
    assert ninf <= ninf and inf >= inf and inf == inf and not inf != inf
    # Equal deadlines are equal handles only with equal callbacks, arguments and state.
    same = loop.call_at(5.0, callback)
    other = loop.call_at(5.0, print)
    assert num == same and num <= same and num >= same
    assert num != other and not num <= other and not num >= other
    same.cancel()
    assert num != same
    for h in (nan, inf, ninf, num, other):
        h.cancel()


def test_plain_handle_methods_return_none(loop):
    h = loop.call_soon(callback)
    assert h.cancel() is None
    assert h.cancelled() is True
