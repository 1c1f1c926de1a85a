"""The matter catalog: lookup, merging of rows, routing with region walk-up, overlap detection."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Catalog, Matter, Region, RouteError, load_config
from gateway.config.catalog import overlapping_routes

CONFIG = Path(__file__).resolve().parents[1] / "config" / "gateway.toml"
ENV = {"AMR_CALLBACK_SECRET": "s3cret", "AMR_API_TOKEN": "tok", "HRSS_API_KEY": "key"}

REGIONS = [
    Region(code="339900", name="示范市", kind="city"),
    Region(code="339901", name="东城区", kind="district", parent="339900"),
    Region(code="339902", name="西城区", kind="district", parent="339900"),
    Region(code="339901101", name="青石镇", kind="township", parent="339901"),
]


def matter(code: str, department: str, regions: list[str], name: str = "事项") -> Matter:
    return Matter(code=code, name=name, department=department, regions=regions, promised_days=5)


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(
        [
            matter("XK00123000", "amr", ["339900"], "食品经营许可证核发"),
            matter("QR00401000", "civil", ["339901", "339902"], "结婚登记"),
            matter("QR00201000", "amr", ["339902"], "个体工商户设立登记"),
            # one matter, two departments: each district has its own
            matter("GF00500000", "hrss", ["339901"], "高龄津贴给付"),
            matter("GF00500000", "civil", ["339902"], "高龄津贴给付"),
        ],
        REGIONS,
    )


def test_all_is_one_matter_per_code_sorted(catalog: Catalog) -> None:
    codes = [m.code for m in catalog.all()]
    assert codes == sorted(codes)
    assert codes == ["GF00500000", "QR00201000", "QR00401000", "XK00123000"]
    assert len(catalog) == 4
    merged = catalog.get("GF00500000")
    assert merged is not None
    assert merged.regions == ["339901", "339902"]
    assert [r.department for r in catalog.rows("GF00500000")] == ["hrss", "civil"]


def test_get_unknown_is_none(catalog: Catalog) -> None:
    assert catalog.get("XK99999000") is None
    assert "XK99999000" not in catalog
    assert "XK00123000" in catalog


def test_route_exact_region(catalog: Catalog) -> None:
    routed = catalog.route("QR00401000", "339902")
    assert routed.department == "civil"
    assert routed.code == "QR00401000"


def test_route_township_walks_up_to_district(catalog: Catalog) -> None:
    assert catalog.route("QR00401000", "339901101").department == "civil"


def test_route_township_walks_up_to_city(catalog: Catalog) -> None:
    assert catalog.route("XK00123000", "339901101").department == "amr"


def test_route_picks_the_row_for_the_region(catalog: Catalog) -> None:
    assert catalog.route("GF00500000", "339901").department == "hrss"
    assert catalog.route("GF00500000", "339901101").department == "hrss"
    assert catalog.route("GF00500000", "339902").department == "civil"


def test_route_unknown_matter(catalog: Catalog) -> None:
    with pytest.raises(RouteError) as info:
        catalog.route("XK99999000", "339901")
    assert info.value.field == "matter_code"
    assert "XK99999000" in info.value.message


def test_route_unknown_region(catalog: Catalog) -> None:
    with pytest.raises(RouteError) as info:
        catalog.route("XK00123000", "110101")
    assert info.value.field == "region"
    assert "110101" in info.value.message


def test_route_region_not_offered(catalog: Catalog) -> None:
    # offered in 西城区 only; 青石镇 lies in 东城区
    with pytest.raises(RouteError) as info:
        catalog.route("QR00201000", "339901101")
    assert info.value.field == "region"
    assert "339901101 青石镇" in info.value.message
    assert "339902 西城区" in info.value.message


def test_route_city_level_not_offered_for_district_matter(catalog: Catalog) -> None:
    # walking goes up, never down: a district matter is not offered city-wide
    with pytest.raises(RouteError) as info:
        catalog.route("QR00401000", "339900")
    assert info.value.field == "region"


def test_overlap_equal_region() -> None:
    found = overlapping_routes(
        [matter("XK00123000", "amr", ["339901"]), matter("XK00123000", "hrss", ["339901"])],
        REGIONS,
    )
    assert len(found) == 1
    index, message = found[0]
    assert index == 1
    assert "339901" in message and "amr" in message and "hrss" in message


def test_overlap_ancestor_and_descendant() -> None:
    found = overlapping_routes(
        [matter("XK00123000", "amr", ["339900"]), matter("XK00123000", "hrss", ["339901101"])],
        REGIONS,
    )
    assert [index for index, _ in found] == [1]
    assert "339901101" in found[0][1] and "339900" in found[0][1]


def test_overlap_region_listed_twice_in_a_row() -> None:
    found = overlapping_routes([matter("XK00123000", "amr", ["339901", "339901"])], REGIONS)
    assert [index for index, _ in found] == [0]
    assert "twice" in found[0][1]


def test_no_overlap_for_sibling_regions_or_other_codes() -> None:
    matters = [
        matter("XK00123000", "amr", ["339901"]),
        matter("XK00123000", "hrss", ["339902"]),
        matter("XK00124000", "hrss", ["339900"]),
    ]
    assert overlapping_routes(matters, REGIONS) == []


def test_example_catalog_routes() -> None:
    catalog = load_config(CONFIG, env=ENV).catalog
    # 结婚登记 is handled by the district registries; 青石镇 is under 东城区
    marriage = catalog.route("QR00401000", "339901101")
    assert marriage.department == "civil"
    assert marriage.pickup_anywhere is False
    # 乡村建设规划许可证 is offered in 东城区 only
    assert catalog.route("XK00304000", "339901101").department == "nrp"
    with pytest.raises(RouteError):
        catalog.route("XK00304000", "339902")
    food = catalog.get("XK00123000")
    assert food is not None and food.form_schema is not None
    assert food.form_schema["type"] == "object"
    assert "business_name" in food.form_schema["properties"]
