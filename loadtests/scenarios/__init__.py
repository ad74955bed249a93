"""The benchmark scenarios: each module has `run(params) -> result` and `table(result) -> str`."""

__all__: list[str] = []
