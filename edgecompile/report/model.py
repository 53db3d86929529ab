"""The section model every rendering of a report shares: `Section(id, title, status, data)`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OK = "ok"


@dataclass
class Section:
    id: str
    title: str
    status: str          # "ok" or why it does not apply
    data: Any = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_dict(self) -> dict:
        return {"title": self.title, "status": self.status, "data": self.data}
