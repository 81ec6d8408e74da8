"""The routing config: the issue's example is accepted verbatim; bad configs fail with one message naming the key."""

import subprocess
import sys
import textwrap

import pytest

from pacsflow_router.config import load_config, parse_config, render_config
from pacsflow_router.errors import ConfigError

ISSUE_EXAMPLE = textwrap.dedent(
    """\
    aeTitle: PACSFLOW
    port: 11112
    allowedCallingAETitles: [STORESCU, ORTHANC]
    spoolDir: /var/lib/pacsflow/spool
    completion: {stableSeconds: 5}
    destinations:
      - {name: pacs, aeTitle: ORTHANC, host: 127.0.0.1, port: 4242}
    inference: {backend: embedded, modelRepository: model_repository}
    audit: {url: "sqlite:////var/lib/pacsflow/audit.db"}
    metrics: {port: 9108}
    useCases:
      - name: ich-head-ct
        model: {name: ich_detector, version: 1}
        match: {modalities: [CT]}
        mode: assistive
        triage: {criticalThreshold: 0.85}
        outputs: {structuredReport: {destination: pacs}}
    """
)


def test_issue_example_is_accepted_verbatim(tmp_path):
    path = tmp_path / "router.yaml"
    path.write_text(ISSUE_EXAMPLE)
    cfg = load_config(path)
    assert cfg.ae_title == "PACSFLOW"
    assert cfg.allowed_calling_ae_titles == ["STORESCU", "ORTHANC"]
    assert cfg.completion.stable_seconds == 5
    assert cfg.destination("pacs").port == 4242
    uc = cfg.use_cases[0]
    assert (uc.name, uc.model.name, uc.model.version, uc.mode) == ("ich-head-ct", "ich_detector", 1, "assistive")
    assert uc.triage.critical_threshold == 0.85
    assert uc.outputs.structured_report.destination == "pacs"


def test_render_round_trips():
    import yaml

    cfg = parse_config(yaml.safe_load(ISSUE_EXAMPLE))
    assert parse_config(yaml.safe_load(render_config(cfg))) == cfg


@pytest.mark.parametrize("n_use_cases", [0, 1, 3])
def test_render_is_one_dump_of_the_whole_document(n_use_cases):
    """render_config keeps each use case's YAML block; the text is still exactly one yaml.dump of the document,
    also after a use case changed (its block is not reused) and with no use cases (``useCases: []``)."""
    import yaml

    doc = yaml.safe_load(ISSUE_EXAMPLE)
    first = doc["useCases"][0]
    doc["useCases"] = [{**first, "name": f"uc-{i}", "mode": "silent" if i % 2 else "assistive",
                        "match": {"modalities": ["CT"], "bodyPartsExamined": ["HEAD", "yes", "1.0", "a: b"]}}
                       for i in range(n_use_cases)]
    for mode in ("silent", "triage"):
        if doc["useCases"]:
            doc["useCases"][0]["mode"] = mode
        cfg = parse_config(doc)
        whole = yaml.dump(cfg.model_dump(by_alias=True, mode="json", exclude_none=True), Dumper=yaml.SafeDumper,
                          sort_keys=False)
        assert render_config(cfg) == whole
        assert parse_config(yaml.safe_load(render_config(cfg))) == cfg


def _bad(mutate):
    import yaml

    data = yaml.safe_load(ISSUE_EXAMPLE)
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


def test_unknown_key_is_named():
    msg = _bad(lambda d: d.update(aeTitel="X"))
    assert "aeTitel" in msg and "Extra inputs are not permitted" in msg


def test_unknown_nested_key_is_named():
    msg = _bad(lambda d: d["useCases"][0].update(modee="triage"))
    assert "useCases[0].modee" in msg


def test_wrong_type_is_named():
    msg = _bad(lambda d: d.update(port="eleven"))
    assert msg.count("port:") == 1 and "integer" in msg


def test_unknown_mode_is_named():
    msg = _bad(lambda d: d["useCases"][0].update(mode="autopilot"))
    assert "useCases[0].mode" in msg and "silent" in msg


def test_unknown_destination_is_named():
    msg = _bad(lambda d: d["useCases"][0]["outputs"]["structuredReport"].update(destination="vna"))
    assert "useCases[0].outputs.structuredReport.destination" in msg and "'vna'" in msg


def test_bad_regex_is_named():
    msg = _bad(lambda d: d["useCases"][0]["match"].update(seriesDescriptionPattern="(non"))
    assert "useCases[0].match.seriesDescriptionPattern" in msg and "regular expression" in msg


def test_triton_backend_needs_url():
    msg = _bad(lambda d: d.update(inference={"backend": "triton"}))
    assert "inference" in msg and "url" in msg


def test_router_refuses_to_start_on_bad_config(tmp_path):
    path = tmp_path / "router.yaml"
    path.write_text(ISSUE_EXAMPLE.replace("port: 11112", "port: 99999"))
    proc = subprocess.run(
        [sys.executable, "-m", "pacsflow_router", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "port" in proc.stderr and "less than or equal to 65535" in proc.stderr
    assert "Traceback" not in proc.stderr
