"""Use-case matching on the study's order (config Match order criteria + analysis.matching.order_mismatch)."""

from __future__ import annotations

import pytest

from pacsflow_router.analysis.matching import order_mismatch
from pacsflow_router.config import ConfigError, Match, parse_config
from pacsflow_router.domain import Order

ED_ORDER = Order(accession="A1", patient_id="P1", patient_class="E", priority="S", procedure_code="CTHEADWO",
                 location="ED^BAY3")


def test_no_order_criteria_applies_with_or_without_order() -> None:
    assert order_mismatch(Match(), None) is None
    assert order_mismatch(Match(modalities=["CT"]), ED_ORDER) is None


def test_order_criteria_need_an_order() -> None:
    reason = order_mismatch(Match(patient_classes=["E"]), None)
    assert reason is not None and "no order" in reason


@pytest.mark.parametrize("match", [
    Match(patient_classes=["e"]),
    Match(order_priorities=["S", "A"]),
    Match(procedure_codes=["CTHEADWO"]),
    Match(ordering_location_pattern=r"^ED\b"),
    Match(patient_classes=["E"], order_priorities=["S"], procedure_codes=["CTHEADWO"], ordering_location_pattern="ED"),
])
def test_matching_orders_apply(match: Match) -> None:
    assert order_mismatch(match, ED_ORDER) is None


@pytest.mark.parametrize(("match", "says"), [
    (Match(patient_classes=["I", "O"]), "patient class"),
    (Match(order_priorities=["R"]), "order priority"),
    (Match(procedure_codes=["MRBRAIN"]), "procedure code"),
    (Match(ordering_location_pattern="^ICU"), "location"),
    (Match(patient_classes=["E"], order_priorities=["R"]), "order priority"),
])
def test_non_matching_orders_say_which_criterion(match: Match, says: str) -> None:
    reason = order_mismatch(match, ED_ORDER)
    assert reason is not None and says in reason
    assert "ED^BAY3" not in reason and "A1" not in reason  # no order values in the explanation


def test_bad_location_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="orderingLocationPattern"):
        parse_config({"useCases": [{"name": "a", "model": {"name": "m", "version": 1},
                                    "match": {"orderingLocationPattern": "("}}]})


def test_outputs_must_name_defined_hl7_destinations_and_webhooks() -> None:
    base = {"useCases": [{"name": "a", "model": {"name": "m", "version": 1}, "mode": "triage",
                          "outputs": {"hl7": {"destination": "ris"}, "webhooks": ["sectra"]}}]}
    with pytest.raises(ConfigError, match=r"outputs.hl7.destination: unknown HL7 destination 'ris'"):
        parse_config(base)
    with pytest.raises(ConfigError, match=r"outputs.webhooks: unknown webhook 'sectra'"):
        parse_config({**base, "hl7Destinations": [{"name": "ris", "host": "127.0.0.1", "port": 2575}]})
    config = parse_config({**base, "hl7Destinations": [{"name": "ris", "host": "127.0.0.1", "port": 2575}],
                           "webhooks": [{"name": "sectra", "url": "http://127.0.0.1:9/hook"}]})
    assert config.use_cases[0].outputs.hl7 is not None
    assert config.use_cases[0].outputs.hl7.messages == ["order-update", "alert"]
    assert config.hl7_destination("ris").version == "2.5.1"


def test_field_map_locations_are_checked() -> None:
    with pytest.raises(ConfigError, match="not a field location"):
        parse_config({"hl7Listener": {"fieldMap": {"accession": ["OBR18"]}}})


def test_completion_window_per_modality() -> None:
    config = parse_config({"completion": {"stableSeconds": 30, "stableSecondsByModality": {"MR": 120}}})
    assert config.completion.window("MR") == 120
    assert config.completion.window("CT") == 30
    assert config.completion.window(None) == 30
