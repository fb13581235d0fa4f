"""GTFS-Fares v2 semantics, scenario by scenario.

The scenarios port the list of OpenTripPlanner's GTFS-Fares v2 service tests (free and costed
transfers in and across networks, the four duration limit types, transfer counts, timeframes
and ``rule_priority``, areas, rider categories, wildcards) to Yikatong's tap-time model: each
leg is ridden through validators in turn and the test pins what each leg finally costs, in fen.
Every tariff is a small synthetic one written here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from fares import FareError, Tap, TapKind, price_tap
from fares.errors import E_FARE_NO_ENTRY, E_FARE_NO_RULE
from tests.fares.test_fares_support import SATURDAY, Leg, Rider, at, fares, synthetic

TR = (
    "from_leg_group_id,to_leg_group_id,transfer_count,duration_limit,duration_limit_type,"
    "fare_transfer_type,fare_product_id\n"
)
LEG_A = "leg_group_id,network_id,fare_product_id\nlgA,A,A\n"
LEG_A_B = "leg_group_id,network_id,fare_product_id\nlgA,A,A\nlgB,B,B\n"
ACROSS = TR + "lgA,lgA,-1,,,0,\nlgB,lgB,-1,,,0,\nlgA,lgB,,,,0,T1\nlgB,lgA,,,,0,\n"
EVERY_DAY = "service_id,monday,tuesday,wednesday,thursday,friday,saturday,sunday,start_date,end_date\n"
EVERY_DAY += "all,1,1,1,1,1,1,1,20250101,20301231\nweekdays,1,1,1,1,1,0,0,20250101,20301231\n"


@dataclass(frozen=True)
class Scenario:
    name: str
    tables: dict[str, str]
    legs: tuple[Leg, ...]
    expected: tuple[int, ...]
    category: str | None = None
    notes: str = field(default="", compare=False)


def _legs(*specs: tuple[str, ...]) -> tuple[Leg, ...]:
    return tuple(Leg(spec[0], spec[1], spec[2] if len(spec) > 2 else None) for spec in specs)


def _time_limit(limit_type: int, limit_s: int) -> dict[str, str]:
    return {"fare_leg_rules": LEG_A, "fare_transfer_rules": TR + f"lgA,lgA,-1,{limit_s},{limit_type},0,T1\n"}


TIME_LIMIT_LEGS = _legs(("rA", "10:00", "10:05"), ("rA2", "10:10", "10:20"))

SCENARIOS = [
    # --- flat fares and networks (GtfsFaresV2ServiceTest) ----------------------------------
    Scenario("flat fare per network", {"fare_leg_rules": LEG_A_B}, _legs(("rA", "10:00"), ("rB", "12:00")), (100, 200)),
    Scenario(
        "empty network matches only networks not listed",
        {
            "fare_products": "fare_product_id,amount,currency\nsingle,1.00,CNY\nday_pass,5.00,CNY\n"
            "express_pass,50.00,CNY\nlocal_pass,20.00,CNY\n",
            "fare_leg_rules": "leg_group_id,network_id,fare_product_id\nlg1,,single\nlg1,,day_pass\n"
            "lg1,express,express_pass\nlg1,local,local_pass\n",
        },
        _legs(("rX", "08:00"), ("rL", "10:00"), ("rN", "12:00"), ("rA", "14:00")),
        (5000, 2000, 100, 100),
    ),
    # --- free transfers (FreeTransferInNetworkTest, FreeTransferAcrossNetworksTest) --------
    Scenario(
        "free transfer in network",
        {"fare_leg_rules": LEG_A, "fare_transfer_rules": TR + "lgA,lgA,-1,,,0,\n"},
        _legs(("rA", "10:00"), ("rA2", "10:20")),
        (100, 0),
    ),
    Scenario(
        "free transfer across networks",
        {"fare_leg_rules": LEG_A_B, "fare_transfer_rules": TR + "lgA,lgB,,,,0,\n"},
        _legs(("rA", "10:00"), ("rB", "10:15")),
        (100, 0),
    ),
    Scenario(
        "a transfer rule is one way",
        {"fare_leg_rules": LEG_A_B, "fare_transfer_rules": TR + "lgA,lgB,,,,0,\n"},
        _legs(("rB", "10:00"), ("rA", "10:15")),
        (200, 100),
    ),
    # --- costed transfers (CostedTransferInNetworkTest) -----------------------------------
    Scenario(
        "costed transfer in network, two legs",
        {
            "fare_leg_rules": "leg_group_id,network_id,fare_product_id\nlgA,A,A\nlgA,A,B\n",
            "fare_transfer_rules": TR + "lgA,lgA,-1,,,0,T1\n",
        },
        _legs(("rA", "10:00"), ("rA2", "10:21")),
        (100, 50),
    ),
    Scenario(
        "costed transfer in network, three legs, unlimited",
        {
            "fare_leg_rules": "leg_group_id,network_id,fare_product_id\nlgA,A,A\nlgA,A,B\n",
            "fare_transfer_rules": TR + "lgA,lgA,-1,,,0,T1\n",
        },
        _legs(("rA", "10:00"), ("rA2", "10:21"), ("rA", "10:41")),
        (100, 50, 50),
    ),
    Scenario(
        "costed transfer in network, third leg in another network pays in full",
        {
            "fare_leg_rules": "leg_group_id,network_id,fare_product_id\nlgA,A,A\nlgA,A,B\nlgB,B,B\n",
            "fare_transfer_rules": TR + "lgA,lgA,-1,,,0,T1\n",
        },
        _legs(("rA", "10:00"), ("rA2", "10:21"), ("rB", "10:41")),
        (100, 50, 200),
    ),
    # --- costed transfers across networks (CostedTransferAcrossNetworksTest) --------------
    *(
        Scenario(f"across networks {name}", {"fare_leg_rules": LEG_A_B, "fare_transfer_rules": ACROSS}, legs, want)
        for name, legs, want in (
            ("AAB", _legs(("rA", "10:00"), ("rA2", "10:11"), ("rB", "10:21")), (100, 0, 50)),
            ("AABA", _legs(("rA", "10:00"), ("rA2", "10:11"), ("rB", "10:21"), ("rA", "10:26")), (100, 0, 50, 0)),
            ("ABB", _legs(("rA", "10:00"), ("rB", "10:11"), ("rB2", "10:21")), (100, 50, 0)),
            ("ABA", _legs(("rA", "10:00"), ("rB", "10:11"), ("rA2", "10:21")), (100, 50, 0)),
            ("ABAB", _legs(("rA", "10:00"), ("rB", "10:11"), ("rA2", "10:21"), ("rB2", "10:25")), (100, 50, 0, 50)),
            ("BAB", _legs(("rB", "10:00"), ("rA", "10:11"), ("rB2", "10:21")), (200, 0, 50)),
        )
    ),
    # --- duration limit types (TimeLimitEvaluatorTest: 10:00-10:05 then 10:10-10:20) ------
    *(
        Scenario(
            f"duration limit type {kind} {limit_s} s within", _time_limit(kind, limit_s), TIME_LIMIT_LEGS, (100, 50)
        )
        for kind, limit_s in ((0, 1200), (0, 3600), (1, 660), (1, 3600), (3, 960), (2, 300), (2, 3600), (1, 600))
    ),
    *(
        Scenario(
            f"duration limit type {kind} {limit_s} s outside", _time_limit(kind, limit_s), TIME_LIMIT_LEGS, (100, 100)
        )
        for kind, limit_s in ((0, 1180), (1, 599), (3, 899), (2, 299))
    ),
    # --- departure to arrival, measured from the first leg of the run (DepartureToArrivalTimeLimitTest)
    Scenario(
        "departure to arrival, above the limit",
        _time_limit(0, 600),
        _legs(("rA", "10:00", "10:11"), ("rA2", "10:12", "10:22")),
        (100, 100),
    ),
    Scenario(
        "departure to arrival, below the limit",
        _time_limit(0, 600),
        _legs(("rA", "10:00", "10:03"), ("rA2", "10:03", "10:06")),
        (100, 50),
    ),
    Scenario(
        "departure to arrival, third leg beyond the limit of the run starts afresh",
        _time_limit(0, 600),
        _legs(("rA", "10:00", "10:03"), ("rA2", "10:03", "10:06"), ("rA", "10:09", "10:15")),
        (100, 50, 100),
    ),
    Scenario(
        "departure to arrival, four legs make two runs",
        _time_limit(0, 600),
        _legs(("rA", "10:00", "10:03"), ("rA2", "10:03", "10:06"), ("rA", "10:09", "10:15"), ("rA2", "10:15", "10:17")),
        (100, 50, 100, 50),
    ),
    Scenario(
        "departure to departure, measured from the first leg of the run",
        _time_limit(1, 600),
        _legs(("rA", "10:00"), ("rA2", "10:09"), ("rA", "10:11")),
        (100, 50, 100),
    ),
    Scenario(
        "arrival to departure, one second late",
        _time_limit(2, 300),
        _legs(("rA", "10:00", "10:05"), ("rA2", "10:10:01")),
        (100, 100),
    ),
    Scenario(
        "arrival to arrival, one second late",
        _time_limit(3, 900),
        _legs(("rA", "10:00", "10:05"), ("rA2", "10:10", "10:20:01")),
        (100, 100),
    ),
    # --- transfer counts (TransferCountTest, TransferCountWithTimeLimitTest) --------------
    Scenario(
        "transfer count 1: the second transfer pays in full",
        {"fare_leg_rules": LEG_A, "fare_transfer_rules": TR + "lgA,lgA,1,,,0,T1\n"},
        _legs(("rA", "10:00"), ("rA2", "10:20"), ("rA", "10:30")),
        (100, 50, 100),
    ),
    Scenario(
        "transfer count 2",
        {"fare_leg_rules": LEG_A, "fare_transfer_rules": TR + "lgA,lgA,2,,,0,T1\n"},
        _legs(("rA", "10:00"), ("rA2", "10:20"), ("rA", "10:30"), ("rA2", "10:40")),
        (100, 50, 50, 100),
    ),
    Scenario(
        "transfer count -1 is unlimited",
        {"fare_leg_rules": LEG_A, "fare_transfer_rules": TR + "lgA,lgA,-1,,,0,T1\n"},
        _legs(("rA", "10:00"), ("rA2", "10:20"), ("rA", "10:30"), ("rA2", "10:40"), ("rA", "10:50")),
        (100, 50, 50, 50, 50),
    ),
    Scenario(
        "transfer count 1 with a time limit: limit reached, a new journey, then its own transfer",
        {"fare_leg_rules": LEG_A, "fare_transfer_rules": TR + "lgA,lgA,1,7200,0,0,\n"},
        _legs(("rA", "10:00", "10:10"), ("rA2", "10:20", "10:30"), ("rA", "10:40", "10:50"), ("rA2", "10:50", "10:55")),
        (100, 0, 100, 0),
    ),
    Scenario(
        "the smallest transfer_count that covers the transfer is chosen",
        {"fare_leg_rules": LEG_A, "fare_transfer_rules": TR + "lgA,lgA,1,,,0,\nlgA,lgA,-1,,,0,T1\n"},
        _legs(("rA", "10:00"), ("rA2", "10:20"), ("rA", "10:30"), ("rA2", "10:40")),
        (100, 0, 50, 50),
    ),
    # --- timeframes and rule_priority (OverlappingTimeframe*, SameGroupIdPriorityTest) ----
    *(
        Scenario(
            f"overlapping timeframes without priority at {clock}: the cheapest",
            {
                "calendar": EVERY_DAY,
                "timeframes": "timeframe_group_id,start_time,end_time,service_id\nall_day,,,all\n"
                "three_to_five,15:00:00,17:00:00,all\n",
                "fare_leg_rules": "leg_group_id,from_timeframe_group_id,fare_product_id\nlg1,all_day,B\n"
                "lg2,three_to_five,A\n",
            },
            _legs(("rN", clock)),
            (want,),
        )
        for clock, want in (("15:00", 100), ("14:59", 200), ("17:00", 200))
    ),
    Scenario(
        "overlapping timeframes: rule_priority beats price",
        {
            "calendar": EVERY_DAY,
            "timeframes": "timeframe_group_id,start_time,end_time,service_id\nall_day,,,all\n"
            "three_to_five,15:00:00,17:00:00,all\n",
            "fare_leg_rules": "leg_group_id,from_timeframe_group_id,fare_product_id,rule_priority\n"
            "lg1,all_day,B,1\nlg1,three_to_five,A,0\n",
        },
        _legs(("rN", "15:00")),
        (200,),
    ),
    *(
        Scenario(
            f"weekday peak timeframe, {name}",
            {
                "calendar": EVERY_DAY,
                "timeframes": "timeframe_group_id,start_time,end_time,service_id\npeak,07:00:00,09:00:00,weekdays\n",
                "fare_leg_rules": "leg_group_id,from_timeframe_group_id,fare_product_id,rule_priority\n"
                "lg1,peak,B,1\nlg1,,A,0\n",
            },
            (leg,),
            (want,),
        )
        for name, leg, want in (
            ("Monday 08:00", Leg("rN", "08:00"), 200),
            ("Monday 09:00 (end excluded)", Leg("rN", "09:00"), 100),
            ("Saturday 08:00", Leg("rN", "08:00", day=SATURDAY), 100),
        )
    ),
    *(
        Scenario(
            f"to_timeframe by arrival, {name}",
            {
                "calendar": EVERY_DAY,
                "timeframes": "timeframe_group_id,start_time,end_time,service_id\npeak,07:00:00,09:00:00,weekdays\n",
                "fare_leg_rules": "leg_group_id,to_timeframe_group_id,fare_product_id,rule_priority\n"
                "lg1,peak,B,1\nlg1,,A,0\n",
            },
            (leg,),
            (want,),
        )
        for name, leg, want in (
            ("arriving in the peak", Leg("rN", "08:40", "08:55"), 200),
            ("arriving after the peak", Leg("rN", "08:50", "09:10"), 100),
            ("boarding before the peak, arriving in it", Leg("rN", "06:50", "07:05"), 200),
        )
    ),
    *(
        Scenario(
            f"same leg group and priority: {name}",
            {
                "areas": "area_id\na1\n",
                "stop_areas": "area_id,stop_id\na1,s1\na1,s2\n",
                "fare_leg_rules": header + rules,
            },
            _legs(("rA", "10:00")),
            want,
        )
        for name, header, rules, want in (
            (
                "priority picks the area rule",
                "leg_group_id,network_id,from_area_id,to_area_id,fare_product_id,rule_priority\n",
                "g,A,,,A,0\ng,,a1,a1,B,2\n",
                (200,),
            ),
            (
                "network wildcard, both match, the cheapest",
                "leg_group_id,network_id,from_area_id,to_area_id,fare_product_id\n",
                "g,,a1,a1,A\ng,,a1,a1,B\n",
                (100,),
            ),
            (
                "conflict resolved by priority",
                "leg_group_id,network_id,from_area_id,to_area_id,fare_product_id,rule_priority\n",
                "g,A,,,A,1\ng,A,,,B,2\n",
                (200,),
            ),
            ("no priority, both", "leg_group_id,network_id,fare_product_id\n", "g,A,A\ng,A,B\n", (100,)),
            (
                "equal priority, both",
                "leg_group_id,network_id,fare_product_id,rule_priority\n",
                "g,A,A,10\ng,A,B,10\n",
                (100,),
            ),
        )
    ),
    # --- areas (AreasTest), tap-on and tap-off ------------------------------------------
    *(
        Scenario(
            f"areas: {name}",
            {
                "areas": "area_id\ninner_zone\nouter_zone\n",
                "stop_areas": "area_id,stop_id\ninner_zone,inner\nouter_zone,outer\n",
                "fare_products": "fare_product_id,amount,currency\nto_outer,1.00,CNY\nfrom_outer,1.50,CNY\n"
                "inner_outer,5.00,CNY\n",
                "fare_leg_rules": "leg_group_id,from_area_id,to_area_id,fare_product_id\n"
                "g,,outer_zone,to_outer\ng,outer_zone,,from_outer\ng,inner_zone,outer_zone,inner_outer\n",
            },
            (leg,),
            (want,),
        )
        for name, leg, want in (
            ("two area ids", Leg("rN", "10:00", "10:50", "inner", "outer"), 500),
            ("only to_area_id", Leg("rN", "10:00", "10:50", "s1", "outer"), 100),
            ("only from_area_id", Leg("rN", "10:00", "10:50", "outer", "s1"), 150),
        )
    ),
    # --- fare transfer types ------------------------------------------------------------
    *(
        Scenario(
            f"fare_transfer_type {kind} with transfer product {amount}: {name}",
            {
                "fare_products": "fare_product_id,amount,currency\nA2,2.00,CNY\nB3,3.00,CNY\n"
                + (f"X,{amount},CNY\n" if amount else ""),
                "fare_leg_rules": "leg_group_id,network_id,fare_product_id\ngA,A,A2\ngB,B,B3\n",
                "fare_transfer_rules": TR
                + f"gA,gB,,,,{kind},{'X' if amount else ''}\ngB,gB,-1,,,{kind},{'X' if amount else ''}\n",
            },
            legs,
            want,
        )
        for name, kind, amount, legs, want in (
            ("A + AB", 0, "1.00", _legs(("rA", "10:00"), ("rB", "10:10")), (200, 100)),
            ("A + AB, free", 0, "", _legs(("rA", "10:00"), ("rB", "10:10")), (200, 0)),
            ("A + AB + B", 1, "1.00", _legs(("rA", "10:00"), ("rB", "10:10")), (200, 400)),
            ("A + AB + B with a discount", 1, "-1.00", _legs(("rA", "10:00"), ("rB", "10:10")), (200, 200)),
            ("AB", 2, "4.00", _legs(("rA", "10:00"), ("rB", "10:10")), (200, 200)),
            ("AB cheaper than A", 2, "1.50", _legs(("rA", "10:00"), ("rB", "10:10")), (200, 0)),
            (
                "A + AB, then S + BC",
                0,
                "1.00",
                _legs(("rA", "10:00"), ("rB", "10:10"), ("rB2", "10:20")),
                (200, 100, 100),
            ),
            (
                "A + AB + B, then S + BC + C",
                1,
                "1.00",
                _legs(("rA", "10:00"), ("rB", "10:10"), ("rB2", "10:20")),
                (200, 400, 400),
            ),
            ("AB, then S + BC", 2, "4.00", _legs(("rA", "10:00"), ("rB", "10:10"), ("rB2", "10:20")), (200, 200, 400)),
        )
    ),
    # --- wildcards (WildcardNetworkTransferTest, empty leg groups) ------------------------
    Scenario(
        "leg rules without network, free transfer within group A",
        {
            "fare_leg_rules": "leg_group_id,fare_product_id\nlgA,A\nlgB,B\n",
            "fare_transfer_rules": TR + "lgA,lgA,-1,,,0,\n",
        },
        _legs(("rN", "10:00"), ("rN", "10:20")),
        (100, 0),
    ),
    Scenario(
        "transfer rule with empty groups matches every group",
        {"fare_leg_rules": LEG_A_B, "fare_transfer_rules": TR + ",,-1,,,0,\n"},
        _legs(("rA", "10:00"), ("rB", "10:20")),
        (100, 0),
    ),
    Scenario(
        "an exact transfer rule excludes its group from the empty one; B to B takes the empty one",
        {"fare_leg_rules": LEG_A_B, "fare_transfer_rules": TR + "lgA,lgB,,,,0,T1\n,lgB,,,,0,\n"},
        _legs(("rA", "10:00"), ("rB", "10:20"), ("rB2", "12:00")),
        (100, 50, 0),
    ),
    Scenario(
        "a leg without a leg group never transfers",
        {"fare_leg_rules": "network_id,fare_product_id\nA,A\n", "fare_transfer_rules": TR + ",,-1,,,0,\n"},
        _legs(("rA", "10:00"), ("rA2", "10:20")),
        (100, 100),
    ),
]

CATEGORIES = (
    "rider_category_id,rider_category_name,is_default_fare_category\nadult,Adult,1\nyouth,Youth,0\nsenior,Senior,0\n"
)

SCENARIOS += [
    # --- rider categories (FreeTransferWithCategoryTest, FreeTransferWithoutEligibilityTest)
    *(
        Scenario(
            f"transfer product only for youth, {category}",
            {
                "rider_categories": CATEGORIES,
                "fare_products": "fare_product_id,rider_category_id,amount,currency\nA,,1.00,CNY\n"
                "youth_single,youth,4.00,CNY\nyouth_transfer,youth,0.00,CNY\n",
                "fare_leg_rules": "leg_group_id,fare_product_id\nlgA,A\nlgA,youth_single\n",
                "fare_transfer_rules": TR + "lgA,lgA,-1,,,0,youth_transfer\n",
            },
            _legs(("rN", "10:00"), ("rN", "11:00")),
            want,
            category,
        )
        for category, want in (("adult", (100, 100)), ("youth", (100, 0)))
    ),
    Scenario(
        "free transfer without a transfer product, two products in the group",
        {
            "fare_leg_rules": "leg_group_id,fare_product_id\nlgA,A\nlgA,B\n",
            "fare_transfer_rules": TR + "lgA,lgA,-1,,,0,\n",
        },
        _legs(("rN", "10:00"), ("rN", "11:00")),
        (100, 0),
    ),
    *(
        Scenario(
            f"category prices, {category}",
            {
                "rider_categories": CATEGORIES,
                "fare_products": "fare_product_id,rider_category_id,amount,currency\nP,adult,2.00,CNY\n"
                "P,youth,1.00,CNY\nQ,,1.00,CNY\nQ,youth,0.40,CNY\n",
                "fare_leg_rules": "leg_group_id,network_id,fare_product_id\ng,A,P\ng,B,Q\n",
            },
            _legs(("rA", "10:00"), ("rB", "12:00")),
            want,
            category,
        )
        for category, want in ((None, (200, 100)), ("adult", (200, 100)), ("youth", (100, 40)))
    ),
    *(
        Scenario(
            f"a product not sold to the category does not match, {category}",
            {
                "rider_categories": CATEGORIES,
                "fare_products": "fare_product_id,rider_category_id,amount,currency\nA,,1.00,CNY\n"
                "senior_free,senior,0.00,CNY\n",
                "fare_leg_rules": "leg_group_id,fare_product_id,rule_priority\ng,senior_free,1\ng,A,0\n",
            },
            _legs(("rN", "10:00")),
            want,
            category,
        )
        for category, want in (("senior", (0,)), ("adult", (100,)))
    ),
    # --- Yikatong daily cap -------------------------------------------------------------
    Scenario(
        "daily cap: the day's fares stop at the cap and start again the next day",
        {
            "rider_categories": CATEGORIES,
            "fare_leg_rules": LEG_A,
            "yikatong_caps": "rider_category_id,amount,currency\nadult,2.50,CNY\n",
        },
        (*_legs(("rA", "08:00"), ("rA", "10:00"), ("rA", "12:00"), ("rA", "14:00")), Leg("rA", "08:00", day=SATURDAY)),
        (100, 100, 50, 0, 100),
    ),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.name)
def test_scenario(scenario: Scenario) -> None:
    tariff = synthetic(**scenario.tables)
    assert fares(tariff, scenario.legs, scenario.category) == list(scenario.expected)


def test_transfer_names_the_leg_it_comes_from_by_terminal_sequence() -> None:
    tariff = synthetic(fare_leg_rules=LEG_A, fare_transfer_rules=TR + "lgA,lgA,-1,,,0,T1\n")
    rider = Rider(tariff)
    first = rider.tap(TapKind.SINGLE, "rA", "s1", at("10:00"))
    second = rider.tap(TapKind.SINGLE, "rA2", "s2", at("10:20"))
    assert first.transfer_of is None and first.transfer_count == 0
    assert second.transfer_of is not None and second.transfer_of.terminal_seq == 1
    assert second.transfer_of.time == at("10:00")
    assert (second.transfer_count, second.transfer_product_id) == (1, "T1")
    assert (second.full_fare_fen, second.fare_fen, second.discount_fen) == (100, 50, 50)


def test_tap_on_charges_the_most_any_exit_can_cost() -> None:
    tariff = synthetic(
        calendar=EVERY_DAY,
        timeframes="timeframe_group_id,start_time,end_time,service_id\npeak,07:00:00,09:00:00,weekdays\n",
        fare_leg_rules="leg_group_id,to_timeframe_group_id,fare_product_id,rule_priority\nlg1,peak,B,1\nlg1,,A,0\n",
    )
    rider = Rider(tariff)
    on = rider.tap(TapKind.TAP_ON, "rN", "s1", at("06:30"))
    off = rider.tap(TapKind.TAP_OFF, "rN", "s2", at("06:50"))
    assert (on.amount_fen, on.product_id) == (200, "B")  # the ride could still end in the peak
    assert (off.amount_fen, off.fare_fen, off.refund_due_fen, off.product_id) == (0, 100, 100, "A")


@pytest.mark.parametrize(
    ("history_legs", "tap_route", "tap_at", "why"),
    [
        ((), "rN", "10:30", "no tap-on at all"),
        ((("rA", "10:00"),), "rA", "10:30", "the last leg was a single tap"),
        (((TapKind.TAP_ON, "rA", "10:00"),), "rB", "10:30", "the tap-on was on another route"),
        (((TapKind.TAP_ON, "rA", "05:00"),), "rA", "09:01", "the tap-on is older than trip_duration_max_s"),
    ],
)
def test_tap_off_without_an_open_tap_on_is_refused(
    history_legs: tuple[tuple[object, ...], ...], tap_route: str, tap_at: str, why: str
) -> None:
    tariff = synthetic(fare_leg_rules=LEG_A_B)
    rider = Rider(tariff)
    for spec in history_legs:
        if spec[0] is TapKind.TAP_ON:
            rider.tap(TapKind.TAP_ON, str(spec[1]), "s1", at(str(spec[2])))
        else:
            rider.tap(TapKind.SINGLE, str(spec[0]), "s1", at(str(spec[1])))
    with pytest.raises(FareError) as caught:
        rider.tap(TapKind.TAP_OFF, tap_route, "s2", at(tap_at))
    assert caught.value.code == E_FARE_NO_ENTRY, why


def test_a_leg_no_rule_prices_is_refused_with_a_clear_error() -> None:
    tariff = synthetic(fare_leg_rules=LEG_A)
    with pytest.raises(FareError) as caught:
        price_tap(tariff, rider_category_id=None, tap=Tap(TapKind.SINGLE, "rB", "s1", at("10:00")), history=[])
    assert caught.value.code == E_FARE_NO_RULE
    assert "'rB'" in str(caught.value)


def test_mixed_area_and_network_rules_without_priority_match_nothing() -> None:
    """SameGroupIdPriorityTest: without rule_priority an empty field means "every value not
    listed", so neither rule matches a leg on network A inside area a1."""
    tariff = synthetic(
        areas="area_id\na1\n",
        stop_areas="area_id,stop_id\na1,s1\n",
        fare_leg_rules="leg_group_id,network_id,from_area_id,to_area_id,fare_product_id\ng,A,,,A\ng,,a1,a1,B\n",
    )
    with pytest.raises(FareError) as caught:
        price_tap(tariff, rider_category_id=None, tap=Tap(TapKind.SINGLE, "rA", "s1", at("10:00")), history=[])
    assert caught.value.code == E_FARE_NO_RULE
