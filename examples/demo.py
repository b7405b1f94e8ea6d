"""A small asyncio program: it runs unchanged on any loop. `make demo` runs it on ferroloop."""

import asyncio
import contextvars
import time

request_id = contextvars.ContextVar("request_id", default="-")


async def worker(name: str, delay: float, results: list[str]) -> None:
    request_id.set(name)
    await asyncio.sleep(delay)
    results.append(f"{request_id.get()} woke after {delay * 1000:.0f} ms")


async def main() -> None:
    loop = asyncio.get_running_loop()
    print(f"running on {type(loop).__module__}.{type(loop).__qualname__}")

    results: list[str] = []
    async with asyncio.TaskGroup() as tg:
        for i, delay in enumerate((0.03, 0.01, 0.02)):
            tg.create_task(worker(f"task-{i}", delay, results))
    print("\n".join(results))

    total = await loop.run_in_executor(None, sum, range(1_000_000))
    print(f"sum computed in a worker thread: {total}")

    start = time.perf_counter()
    for _ in range(100_000):
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - start
    print(f"100,000 task switches in {elapsed * 1000:.0f} ms")

    try:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)
    except TimeoutError:
        print("asyncio.timeout works")


if __name__ == "__main__":
    asyncio.run(main())
