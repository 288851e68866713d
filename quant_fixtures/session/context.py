"""What a pass receives: the run's settings, its inputs, the FP16 reference store, and the name of
the stage it is in (so that running out of memory can say where)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from quant_fixtures.session.inputs import RunInputs
from quant_fixtures.session.references import ReferenceStore
from quant_fixtures.settings import RunSettings


@dataclass
class PassContext:
    settings: RunSettings
    inputs: RunInputs
    references: ReferenceStore
    current_stage: str = "start"

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Names the stage an error (out of memory) happened in."""
        self.current_stage = name
        yield


def progress_bar(total: int, desc: str, unit: str) -> Any:
    """A tqdm bar on an interactive terminal, nothing otherwise."""
    import sys

    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


def close_bar(bar: Any) -> None:
    if bar is not None:
        bar.close()
