#!/usr/bin/env python3
"""Opens N HTTP/1.1 keep-alive connections to 127.0.0.1:PORT, sends one GET on each
and reads its response, then holds them all open and idle. Prints "ready <open>" on
stdout once every connection has had its response, then waits until stdin closes
(or HOLD seconds pass) and exits, closing them. For hack/bench: the proxy's RSS with
that many idle client connections. Loopback only.

usage: idle-connections.py PORT N [HOLD_SECONDS]
"""

import asyncio
import os
import sys


async def one(port, opened, sem, failures):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), 10
            )
            writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await asyncio.wait_for(reader.readexactly(length), 10)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
        except Exception as e:  # noqa: BLE001 - counted and reported, never fatal
            failures.append(repr(e))
            return
    opened.append(writer)


async def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    hold = float(sys.argv[3]) if len(sys.argv) > 3 else 120.0
    opened, failures = [], []
    sem = asyncio.Semaphore(200)  # stay well inside every listener's accept backlog
    _tasks = [asyncio.create_task(one(port, opened, sem, failures)) for _ in range(n)]
    while len(opened) + len(failures) < n:
        await asyncio.sleep(0.05)
    if failures:
        print(f"failed {len(failures)}: {failures[0]}", file=sys.stderr)
    print(f"ready {len(opened)}", flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.read)
    try:
        await asyncio.wait_for(stdin_closed, hold)
    except asyncio.TimeoutError:
        pass
    os._exit(0)  # the kernel closes every socket; no executor thread to wait for


asyncio.run(main())
