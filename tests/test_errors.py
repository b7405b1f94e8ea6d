"""The exception handler, and misuse raising the same exception type and message
as asyncio."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading

import pytest
from versions import repr_args


def run_one_batch(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


def source_of(func):
    code = func.__code__
    return f"{code.co_filename}:{code.co_firstlineno}"


def raise_value_error(*args):
    raise ValueError("callback failed")


def raises_exactly(exc_type, message, func, *args, **kwargs):
    with pytest.raises(exc_type) as excinfo:
        func(*args, **kwargs)
    assert type(excinfo.value) is exc_type
    assert str(excinfo.value) == message
    return excinfo.value


# -------------------------------------------------------- exception handler


def test_exception_in_callback_goes_to_the_handler(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append((lp, dict(ctx))))
    after = []
    h = loop.call_soon(raise_value_error, 1, "x")
    loop.call_soon(after.append, "still running")
    run_one_batch(loop)

    assert after == ["still running"]
    assert len(calls) == 1
    handler_loop, context = calls[0]
    assert handler_loop is loop
    assert set(context) == {"message", "exception", "handle"}
    assert context["message"] == (
        "Exception in callback raise_value_error(" + repr_args("1, 'x'") + ")"
        f" at {source_of(raise_value_error)}"
    )
    assert type(context["exception"]) is ValueError
    assert str(context["exception"]) == "callback failed"
    assert context["handle"] is h


def test_handler_sees_the_whole_handle_of_a_callback_nobody_kept(loop):
    # The handle call_soon returned is dropped at once: the loop is its only holder
    # when the callback runs, and the handler still gets it with callback and args.
    seen = []

    def handler(lp, ctx):
        h = ctx["handle"]
        seen.append((repr(h), h._callback, h._args, h.cancelled()))

    loop.set_exception_handler(handler)
    loop.call_soon(raise_value_error, 7)
    run_one_batch(loop)
    assert seen == [
        (
            f"<Handle raise_value_error({repr_args('7')}) at {source_of(raise_value_error)}>",
            raise_value_error,
            (7,),
            False,
        )
    ]


def test_handler_sees_the_whole_handle_of_an_unkept_callback_given_a_context(loop):
    # As above, with context= given (as Tasks and Futures give it).
    import contextvars

    seen = []

    def handler(lp, ctx):
        h = ctx["handle"]
        seen.append((repr(h), h._callback, h._args))

    loop.set_exception_handler(handler)
    loop.call_soon(raise_value_error, 8, context=contextvars.copy_context())
    loop.call_later(0, raise_value_error, 9, context=contextvars.copy_context())
    loop.run_until_complete(asyncio.sleep(0.01))
    src = source_of(raise_value_error)
    assert seen[0] == (
        f"<Handle raise_value_error({repr_args('8')}) at {src}>",
        raise_value_error,
        (8,),
    )
    assert seen[1][1:] == (raise_value_error, (9,))
    assert seen[1][0].startswith("<TimerHandle when=") and seen[1][0].endswith(
        f" raise_value_error({repr_args('9')}) at {src}>"
    )


def test_a_callback_sees_its_own_handle_whole_through_a_weak_reference(loop):
    import weakref

    seen = []

    def callback():
        h = ref()
        seen.append((repr(h), h._callback, h._args))

    ref = weakref.ref(loop.call_soon(callback))
    run_one_batch(loop)
    assert seen == [(f"<Handle {callback.__qualname__}() at {source_of(callback)}>", callback, ())]


def test_exception_in_timer_callback_goes_to_the_handler(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(dict(ctx)))
    h = loop.call_later(0.001, raise_value_error)
    loop.run_until_complete(asyncio.sleep(0.05))
    assert len(calls) == 1
    assert set(calls[0]) == {"message", "exception", "handle"}
    assert calls[0]["handle"] is h
    assert calls[0]["message"] == (
        f"Exception in callback raise_value_error() at {source_of(raise_value_error)}"
    )


def test_the_loop_keeps_running_after_many_failing_callbacks(loop):
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx["exception"]))
    ok = []
    for i in range(50):
        loop.call_soon(raise_value_error)
        loop.call_soon(ok.append, i)
    run_one_batch(loop)
    assert ok == list(range(50))
    assert len(errors) == 50


def test_base_exceptions_other_than_exit_and_interrupt_go_to_the_handler(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx["exception"]))

    def raise_cancelled():
        raise asyncio.CancelledError()

    class CustomBase(BaseException):
        pass

    def raise_custom():
        raise CustomBase()

    loop.call_soon(raise_cancelled)
    loop.call_soon(raise_custom)
    run_one_batch(loop)
    assert [type(e) for e in calls] == [asyncio.CancelledError, CustomBase]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_propagate_out_of_the_loop(loop, exc_type):
    handler_calls = []
    loop.set_exception_handler(lambda lp, ctx: handler_calls.append(ctx))
    order = []

    def boom():
        order.append("boom")
        raise exc_type()

    loop.call_soon(order.append, "before")
    loop.call_soon(boom)
    loop.call_soon(order.append, "after")
    with pytest.raises(exc_type):
        loop.run_forever()
    assert order == ["before", "boom"]
    assert handler_calls == []
    assert not loop.is_running()
    # The rest of the interrupted batch is still pending, and the loop works.
    run_one_batch(loop)
    assert order == ["before", "boom", "after"]


def test_keyboard_interrupt_propagates_out_of_run_until_complete(loop):
    async def main():
        await asyncio.sleep(0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(main())
    assert not loop.is_running()
    assert loop.run_until_complete(asyncio.sleep(0, "again")) == "again"


def test_non_callable_in_non_debug_mode_fails_when_run(loop):
    # Only debug mode checks the callback eagerly.
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(dict(ctx)))
    h = loop.call_soon(42)
    run_one_batch(loop)
    assert len(calls) == 1
    assert calls[0]["message"] == "Exception in callback 42()"
    assert type(calls[0]["exception"]) is TypeError
    assert calls[0]["handle"] is h


def test_get_and_set_exception_handler(loop):
    assert loop.get_exception_handler() is None

    def handler(lp, ctx):
        pass

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


@pytest.mark.parametrize("bad", [1, "handler", object()])
def test_set_exception_handler_rejects_non_callables(loop, bad):
    raises_exactly(
        TypeError,
        f"A callable object or None is expected, got {bad!r}",
        loop.set_exception_handler,
        bad,
    )
    assert loop.get_exception_handler() is None


def test_call_exception_handler_passes_the_context_to_the_handler(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append((lp, ctx)))
    context = {"message": "custom", "extra": 1}
    loop.call_exception_handler(context)
    assert calls == [(loop, context)]


def test_default_exception_handler_logs_callback_errors(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    h = loop.call_soon(raise_value_error)
    run_one_batch(loop)
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.ERROR
    message = f"Exception in callback raise_value_error() at {source_of(raise_value_error)}"
    assert record.getMessage() == f"{message}\nhandle: {h!r}"
    assert record.exc_info is not None
    assert record.exc_info[0] is ValueError
    assert str(record.exc_info[1]) == "callback failed"


def test_default_exception_handler_called_directly(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    exc = KeyError("k")
    loop.default_exception_handler({"message": "direct call", "exception": exc, "b": 2, "a": "x"})
    loop.default_exception_handler({})
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert [r.levelno for r in records] == [logging.ERROR, logging.ERROR]
    # Extra keys are appended sorted, as repr()s.
    assert records[0].getMessage() == "direct call\na: 'x'\nb: 2"
    assert records[0].exc_info[1] is exc
    assert records[1].getMessage() == "Unhandled exception in event loop"
    assert not records[1].exc_info


def test_call_exception_handler_without_a_handler_logs(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.call_exception_handler({"message": "no handler set", "foo": 1})
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert records[0].getMessage() == "no handler set\nfoo: 1"


def test_failing_custom_handler_falls_back_to_the_default_handler(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    handler_error = RuntimeError("handler is broken")

    def bad_handler(lp, ctx):
        raise handler_error

    loop.set_exception_handler(bad_handler)
    after = []
    loop.call_soon(raise_value_error)
    loop.call_soon(after.append, 1)
    run_one_batch(loop)
    assert after == [1]
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.ERROR
    lines = record.getMessage().split("\n")
    assert lines[0] == "Unhandled error in exception handler"
    assert lines[1].startswith("context: {'message': 'Exception in callback raise_value_error()")
    assert record.exc_info[1] is handler_error


def test_handler_may_schedule_callbacks(loop):
    order = []

    def handler(lp, ctx):
        order.append("handler")
        lp.call_soon(order.append, "from-handler")

    loop.set_exception_handler(handler)
    loop.call_soon(raise_value_error)
    loop.call_soon(order.append, "next")
    loop.run_until_complete(asyncio.sleep(0.01))
    assert order == ["handler", "next", "from-handler"]


# ------------------------------------------------------------------ misuse


def _noop():
    pass


async def _coro():
    pass


def closed_loop_operations():
    def create_task(loop):
        coro = _coro()
        try:
            loop.create_task(coro)
        finally:
            coro.close()

    def run_until_complete(loop):
        coro = _coro()
        try:
            loop.run_until_complete(coro)
        finally:
            coro.close()

    return {
        "call_soon": lambda loop: loop.call_soon(_noop),
        "call_later": lambda loop: loop.call_later(1, _noop),
        "call_at": lambda loop: loop.call_at(loop.time() + 1, _noop),
        "call_soon_threadsafe": lambda loop: loop.call_soon_threadsafe(_noop),
        "create_task": create_task,
        "run_forever": lambda loop: loop.run_forever(),
        "run_until_complete": run_until_complete,
        "run_in_executor": lambda loop: loop.run_in_executor(None, _noop),
        "run_in_explicit_executor": lambda loop: loop.run_in_executor(
            concurrent.futures.ThreadPoolExecutor(1), _noop
        ),
    }


@pytest.mark.parametrize("operation", list(closed_loop_operations()))
def test_operations_on_a_closed_loop_raise(loop, operation):
    loop.close()
    assert loop.is_closed()
    raises_exactly(RuntimeError, "Event loop is closed", closed_loop_operations()[operation], loop)


@pytest.mark.parametrize("debug", [False, True])
def test_call_soon_on_a_closed_loop_raises_in_debug_mode_too(loop, debug):
    loop.set_debug(debug)
    loop.close()
    raises_exactly(RuntimeError, "Event loop is closed", loop.call_soon, _noop)


def test_close_is_idempotent(loop):
    assert not loop.is_closed()
    loop.close()
    loop.close()
    assert loop.is_closed()


@pytest.mark.parametrize("how", ["run_forever", "run_until_complete"])
def test_running_a_running_loop_raises(loop, how):
    errors = []

    def reenter():
        try:
            if how == "run_forever":
                loop.run_forever()
            else:
                loop.run_until_complete(loop.create_future())
        except RuntimeError as exc:
            errors.append(exc)
        loop.stop()

    loop.call_soon(reenter)
    loop.run_forever()
    assert [str(e) for e in errors] == ["This event loop is already running"]
    assert [type(e) for e in errors] == [RuntimeError]
    assert not loop.is_running()


@pytest.mark.parametrize("how", ["run_forever", "run_until_complete"])
def test_running_a_loop_inside_another_running_loop_raises(loop, new_loop, how):
    inner = new_loop()
    errors = []

    def reenter():
        try:
            if how == "run_forever":
                inner.run_forever()
            else:
                inner.run_until_complete(inner.create_future())
        except RuntimeError as exc:
            errors.append(exc)
        loop.stop()

    loop.call_soon(reenter)
    loop.run_forever()
    assert [str(e) for e in errors] == [
        "Cannot run the event loop while another loop is running"
    ]
    assert [type(e) for e in errors] == [RuntimeError]
    assert not inner.is_running()
    # Both loops still work afterwards.
    assert inner.run_until_complete(asyncio.sleep(0, "inner")) == "inner"
    assert loop.run_until_complete(asyncio.sleep(0, "outer")) == "outer"


def test_closing_a_running_loop_raises(loop):
    errors = []

    def try_close():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(exc)
        loop.call_soon(loop.stop)

    loop.call_soon(try_close)
    loop.run_forever()
    assert [(type(e), str(e)) for e in errors] == [
        (RuntimeError, "Cannot close a running event loop")
    ]
    assert not loop.is_closed()
    loop.close()
    assert loop.is_closed()


def test_call_later_with_none_delay(loop):
    raises_exactly(TypeError, "delay must not be None", loop.call_later, None, _noop)


def test_call_at_with_none_when(loop):
    raises_exactly(TypeError, "when cannot be None", loop.call_at, None, _noop)


def test_set_default_executor_rejects_other_executors(loop):
    raises_exactly(
        TypeError,
        "executor must be ThreadPoolExecutor instance",
        loop.set_default_executor,
        object(),
    )

    class NotAThreadPool(concurrent.futures.Executor):
        pass

    raises_exactly(
        TypeError,
        "executor must be ThreadPoolExecutor instance",
        loop.set_default_executor,
        NotAThreadPool(),
    )


@pytest.mark.parametrize("bad", [1, "factory", object()])
def test_set_task_factory_rejects_non_callables(loop, bad):
    raises_exactly(TypeError, "task factory must be a callable or None", loop.set_task_factory, bad)
    assert loop.get_task_factory() is None


def test_run_until_complete_rejects_non_awaitables(loop):
    raises_exactly(
        TypeError,
        "An asyncio.Future, a coroutine or an awaitable is required",
        loop.run_until_complete,
        42,
    )


def test_run_until_complete_rejects_a_future_of_another_loop(loop, new_loop):
    other = new_loop()
    fut = other.create_future()
    raises_exactly(
        ValueError,
        "The future belongs to a different loop than the one specified as the loop argument",
        loop.run_until_complete,
        fut,
    )


def test_create_task_rejects_non_coroutines(loop):
    raises_exactly(TypeError, "a coroutine was expected, got 1", loop.create_task, 1)


def test_misuse_from_another_thread_is_not_checked_outside_debug_mode(loop):
    results = []

    def worker():
        try:
            h = loop.call_soon(lambda: None)
            results.append(type(h).__name__)
        except BaseException as exc:  # noqa: BLE001 - recorded and checked below
            results.append(exc)

    def start():
        th = threading.Thread(target=worker)
        th.start()
        th.join()
        loop.stop()

    loop.call_soon(start)
    loop.run_forever()
    assert results == ["Handle"]


# ------------------------------------------------------ call_soon arguments


def test_call_soon_argument_errors(loop):
    with pytest.raises(TypeError, match=r"call_soon\(\) missing 1 required positional argument: 'callback'"):
        loop.call_soon()
    with pytest.raises(TypeError, match=r"call_soon\(\) got an unexpected keyword argument 'ctx'"):
        loop.call_soon(print, ctx=None)
    with pytest.raises(TypeError, match=r"call_soon\(\) got multiple values for argument 'callback'"):
        loop.call_soon(print, callback=print)
    seen = []
    loop.call_soon(callback=lambda: seen.append(1))  # asyncio's callback is not positional-only
    loop.call_soon(callback=lambda: seen.append(2), context=None)
    run_one_batch(loop)
    assert seen == [1, 2]


def test_call_soon_passes_positional_arguments_and_context(loop):
    import contextvars

    var = contextvars.ContextVar("var", default="outer")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "inner")
    seen = []
    loop.call_soon(lambda *a: seen.append((a, var.get())), 1, "two", None, context=ctx)
    loop.call_soon(lambda *a: seen.append((a, var.get())), *range(20))
    loop.call_soon(lambda: seen.append(((), var.get())), context=None)
    run_one_batch(loop)
    assert seen == [((1, "two", None), "inner"), (tuple(range(20)), "outer"), ((), "outer")]


class CallableObject:
    """A callable instance: called through its type's tp_call (no vectorcall)."""

    def __init__(self, fail):
        self.fail = fail
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)
        if self.fail:
            raise ValueError("callable object failed")


def test_callable_objects_run_and_their_exceptions_reach_the_handler(loop):
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    ok, bad = CallableObject(False), CallableObject(True)
    loop.call_soon(ok)
    loop.call_soon(ok, 1, 2)
    h = loop.call_soon(bad)
    loop.call_soon(ok, "after")
    run_one_batch(loop)
    assert ok.calls == [(), (1, 2), ("after",)]
    assert bad.calls == [()]
    assert len(errors) == 1
    assert errors[0]["handle"] is h
    assert type(errors[0]["exception"]) is ValueError
    assert errors[0]["message"].startswith("Exception in callback ")
