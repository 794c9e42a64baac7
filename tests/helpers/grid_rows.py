"""Rows of a grid report as finished runs give them, for the report and figure tests."""


def finished_row(study: str, cell: str, seed: int) -> dict:
    """The identity every results row of a finished run carries: its study, cell name with the seed,
    setting, best-of-lr group, seed and status (a row adds what the run measured)."""
    return {"study": study, "cell": f"{cell}_seed={seed}", "setting": cell, "group": cell, "seed": seed, "status": "done"}
