"""A module a bus imports lazily, when it first closes: 400 functions made at import time, like a
library's backend loaded on first use (anyio's asyncio backend under FastStream)."""

for _i in range(400):
    exec(f"def handler_{_i}(x):\n    return x + {_i}", globals())
