"""The matter catalog and routing: ``(matter_code, region) -> Matter`` (whose ``department`` is
the route).

Several catalog rows may share a matter code: one matter ("same matter, same standard") may be
handled by different departments in different regions. A matter offered in a region is also
offered in that region's descendants (a township under a district), so routing walks up the
region parents until a row offers the matter there. The loader rejects rows whose regions overlap
(equal, or one an ancestor of the other), so a walk finds at most one row: routes are never
ambiguous and never guessed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from gateway.config.models import Matter, Region
from gateway.errors import GatewayError


class RouteError(GatewayError):
    """No route for a matter in a region. ``field`` names the request field at fault
    (``matter_code`` or ``region``); ``message`` is for the front-desk clerk."""

    def __init__(self, field: str, message: str, code: str = "not_routable", **params: str) -> None:
        self.field = field
        self.message = message
        #: stable machine code (unknown_matter, unknown_region, not_offered_here) and what
        #: fills its message in other languages
        self.code, self.params = code, params
        super().__init__(message)


class Catalog:
    """The catalog of matters and the city's regions, with routing."""

    def __init__(self, matters: Iterable[Matter], regions: Iterable[Region]) -> None:
        self.regions: dict[str, Region] = {r.code: r for r in regions}
        self._rows: dict[str, list[Matter]] = {}
        for matter in matters:
            self._rows.setdefault(matter.code, []).append(matter)
        self._merged = {code: _merge(rows) for code, rows in sorted(self._rows.items())}

    def __len__(self) -> int:
        return len(self._merged)

    def __contains__(self, code: object) -> bool:
        return code in self._merged

    def all(self) -> list[Matter]:
        """One matter per code, sorted by code. For a code with several rows the regions are
        the union of its rows' regions and the department is the first row's."""
        return list(self._merged.values())

    def get(self, code: str) -> Matter | None:
        """The matter with this code (merged over its rows, as in :meth:`all`), or None."""
        return self._merged.get(code)

    def rows(self, code: str) -> list[Matter]:
        """Every catalog row for this code, in file order (one per department/region set)."""
        return list(self._rows.get(code, []))

    def lineage(self, region: str) -> Iterator[str]:
        """``region`` then its parents up to the root (stops at an unknown code or a cycle)."""
        seen: set[str] = set()
        here: str | None = region
        while here is not None and here in self.regions and here not in seen:
            seen.add(here)
            yield here
            here = self.regions[here].parent

    def route(self, code: str, region: str) -> Matter:
        """The catalog row that handles matter ``code`` for an applicant in ``region``.

        Raises :class:`RouteError` for an unknown matter (field ``matter_code``), an unknown
        region, or a region the matter is not offered in (field ``region``).
        """
        rows = self._rows.get(code)
        if not rows:
            raise RouteError(
                "matter_code", f"unknown matter code {code!r}", "unknown_matter", matter=code
            )
        if region not in self.regions:
            raise RouteError(
                "region", f"unknown region {region!r}", "unknown_region", region=region
            )
        for here in self.lineage(region):
            for row in rows:
                if here in row.regions:
                    return row
        offered = ", ".join(self._region_label(r) for r in self._merged[code].regions)
        raise RouteError(
            "region",
            f"matter {code} ({rows[0].name}) is not offered in {self._region_label(region)}; "
            f"it is offered in: {offered}",
            "not_offered_here",
            matter=code,
            region=self._region_label(region),
            offered=offered,
        )

    def _region_label(self, code: str) -> str:
        region = self.regions.get(code)
        return f"{code} {region.name}" if region else code


def _merge(rows: list[Matter]) -> Matter:
    if len(rows) == 1:
        return rows[0]
    regions: list[str] = []
    for row in rows:
        regions.extend(r for r in row.regions if r not in regions)
    return rows[0].model_copy(update={"regions": regions})


def overlapping_routes(
    matters: Sequence[Matter], regions: Iterable[Region]
) -> list[tuple[int, str]]:
    """``(index into matters, message)`` for each catalog row whose regions overlap an earlier
    row of the same code (equal, or an ancestor and its descendant), which would make a route
    ambiguous. Empty when the catalog is sound."""
    catalog = Catalog([], regions)
    problems: list[tuple[int, str]] = []
    claimed: dict[str, dict[str, int]] = {}  # code -> region -> index of the row offering it
    for index, row in enumerate(matters):
        mine = claimed.setdefault(row.code, {})
        for region in row.regions:
            if mine.get(region) == index:
                problems.append((index, f"matter {row.code} lists region {region} twice"))
                continue
            other = _claimed(catalog, region, mine, index)
            if other is not None:
                region_b, index_b = other
                problems.append(
                    (
                        index,
                        f"matter {row.code}: region {region} ({row.department}) overlaps "
                        f"region {region_b} ({matters[index_b].department}); each region may "
                        "route to one department only",
                    )
                )
                continue
            mine[region] = index
    return problems


def _claimed(
    catalog: Catalog, region: str, claimed: dict[str, int], index: int
) -> tuple[str, int] | None:
    """A region claimed by another row that equals, contains or lies within ``region``."""
    for other, other_index in claimed.items():
        if other_index == index:
            continue
        if other == region or other in catalog.lineage(region) or region in catalog.lineage(other):
            return other, other_index
    return None


__all__ = ["Catalog", "RouteError", "overlapping_routes"]
