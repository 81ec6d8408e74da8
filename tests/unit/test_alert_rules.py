"""The shipped alert rules load in Prometheus's own checker and fire when they should (promtool, Debian)."""

import shutil
import subprocess
import textwrap
from pathlib import Path

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus-rules.yaml"


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/install-system-deps.sh installs Debian's prometheus package"
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_rules_are_valid():
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_undelivered_results_alert_fires_only_while_nothing_is_delivered(tmp_path):
    (tmp_path / "test.yaml").write_text(textwrap.dedent(f"""\
        rule_files: [{RULES}]
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - series: 'pacsflow_outbox_pending{{instance="r1"}}'
                values: '0 0 3x40'
              - series: 'pacsflow_sr_exports_total{{instance="r1",destination="pacs",outcome="delivered"}}'
                values: '5 6 6x40'
              - series: 'pacsflow_outbox_pending{{instance="r2"}}'
                values: '2x40'
              - series: 'pacsflow_sr_exports_total{{instance="r2",destination="pacs",outcome="delivered"}}'
                values: '0+1x40'
            alert_rule_test:
              - eval_time: 5m
                alertname: PacsflowResultsNotDelivered
                exp_alerts: []
              - eval_time: 30m
                alertname: PacsflowResultsNotDelivered
                exp_alerts:
                  - exp_labels: {{severity: critical, instance: r1}}
                    exp_annotations:
                      summary: "3 AI result(s) waiting for the PACS on r1"
                      runbook: docs/operations.md#results-not-delivered
        """))
    result = _promtool("test", "rules", "test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_outbound_refusal_alert_fires_per_channel_and_destination(tmp_path):
    (tmp_path / "test.yaml").write_text(textwrap.dedent(f"""\
        rule_files: [{RULES}]
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - series: 'pacsflow_outbound_messages_total{{instance="r1",channel="hl7",destination="ris",outcome="failed"}}'
                values: '0x10 1x30'
              - series: 'pacsflow_outbound_messages_total{{instance="r1",channel="webhook",destination="hook",outcome="retrying"}}'
                values: '0+1x40'
              - series: 'pacsflow_outbound_messages_total{{instance="r1",channel="webhook",destination="hook",outcome="sent"}}'
                values: '0+1x40'
            alert_rule_test:
              - eval_time: 9m
                alertname: PacsflowOutboundMessagesFailing
                exp_alerts: []
              - eval_time: 15m
                alertname: PacsflowOutboundMessagesFailing
                exp_alerts:
                  - exp_labels: {{severity: critical, instance: r1, channel: hl7, destination: ris}}
                    exp_annotations:
                      summary: "hl7 destination ris refused a message on r1"
                      runbook: docs/operations.md#outbound-messages-failing
              - eval_time: 40m
                alertname: PacsflowOutboundMessagesFailing
                exp_alerts: []
        """))
    result = _promtool("test", "rules", "test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_outbound_stuck_alert_fires_for_the_channel_whose_oldest_item_waits(tmp_path):
    # hl7: the receiver is down, its oldest item ages a minute per minute; webhook: drained every few seconds.
    (tmp_path / "test.yaml").write_text(textwrap.dedent(f"""\
        rule_files: [{RULES}]
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - series: 'pacsflow_outbound_oldest_pending_age_seconds{{instance="r1",channel="hl7"}}'
                values: '0+60x20'
              - series: 'pacsflow_outbound_oldest_pending_age_seconds{{instance="r1",channel="webhook"}}'
                values: '3x20'
            alert_rule_test:
              - eval_time: 6m
                alertname: PacsflowOutboundMessagesStuck
                exp_alerts: []
              - eval_time: 10m
                alertname: PacsflowOutboundMessagesStuck
                exp_alerts:
                  - exp_labels: {{severity: critical, instance: r1, channel: hl7}}
                    exp_annotations:
                      summary: "hl7 messages waiting 10m 0s on r1"
                      runbook: docs/operations.md#outbound-messages-stuck
        """))
    result = _promtool("test", "rules", "test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_positive_rate_alert_fires_when_the_rate_doubles_on_a_day_with_enough_results(tmp_path):
    (tmp_path / "test.yaml").write_text(textwrap.dedent(f"""\
        rule_files: [{RULES}]
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - series: 'pacsflow_evidence_positive_rate_ratio{{use_case="ich",model_version="2"}}'
                values: '1x10 2.5x60'
              - series: 'pacsflow_evidence_day_results{{use_case="ich",model_version="2"}}'
                values: '40x70'
              - series: 'pacsflow_evidence_positive_rate_ratio{{use_case="cxr",model_version="1"}}'
                values: '1.9x70'
              - series: 'pacsflow_evidence_day_results{{use_case="cxr",model_version="1"}}'
                values: '40x70'
              - series: 'pacsflow_evidence_positive_rate_ratio{{use_case="pe",model_version="1"}}'
                values: '4x70'
              - series: 'pacsflow_evidence_day_results{{use_case="pe",model_version="1"}}'
                values: '3x70'
            alert_rule_test:
              - eval_time: 30m
                alertname: PacsflowPositiveRateDoubled
                exp_alerts: []
              - eval_time: 45m
                alertname: PacsflowPositiveRateDoubled
                exp_alerts:
                  - exp_labels: {{severity: warning, use_case: ich, model_version: "2"}}
                    exp_annotations:
                      summary: "ich model v2 calls 2.5x its first week's positive rate"
                      runbook: docs/operations.md#positive-rate-doubled
        """))
    result = _promtool("test", "rules", "test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ppv_alert_fires_when_the_upper_bound_is_under_the_use_cases_floor(tmp_path):
    (tmp_path / "test.yaml").write_text(textwrap.dedent(f"""\
        rule_files: [{RULES}]
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - series: 'pacsflow_evidence_ppv_floor{{use_case="ich"}}'
                values: '0.5x70'
              - series: 'pacsflow_evidence_ppv{{use_case="ich",model_version="2",bound="upper"}}'
                values: '0.8x10 0.4x60'
              - series: 'pacsflow_evidence_ppv{{use_case="ich",model_version="2",bound="value"}}'
                values: '0.6x10 0.3x60'
              - series: 'pacsflow_evidence_ppv{{use_case="cxr",model_version="1",bound="upper"}}'
                values: '0.1x70'
            alert_rule_test:
              - eval_time: 30m
                alertname: PacsflowPpvUnderFloor
                exp_alerts: []
              - eval_time: 45m
                alertname: PacsflowPpvUnderFloor
                exp_alerts:
                  - exp_labels: {{severity: critical, use_case: ich, model_version: "2", bound: upper}}
                    exp_annotations:
                      summary: "ich model v2: PPV at most 0.4 (95% upper bound), under its floor"
                      runbook: docs/operations.md#ppv-under-floor
        """))
    result = _promtool("test", "rules", "test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_approval_waiting_alert_fires_per_use_case_after_15_minutes(tmp_path):
    (tmp_path / "test.yaml").write_text(textwrap.dedent(f"""\
        rule_files: [{RULES}]
        evaluation_interval: 1m
        tests:
          - interval: 1m
            input_series:
              - series: 'pacsflow_approval_oldest_age_seconds{{instance="r1",use_case="ich"}}'
                values: '0+60x30'
              - series: 'pacsflow_approval_oldest_age_seconds{{instance="r1",use_case="pe"}}'
                values: '0+60x5 0x25'
            alert_rule_test:
              - eval_time: 10m
                alertname: PacsflowApprovalWaiting
                exp_alerts: []
              - eval_time: 20m
                alertname: PacsflowApprovalWaiting
                exp_alerts:
                  - exp_labels: {{severity: warning, instance: r1, use_case: ich}}
                    exp_annotations:
                      summary: "a critical ich result has waited 20m 0s for approval on r1"
                      runbook: docs/operations.md#approval-waiting
        """))
    result = _promtool("test", "rules", "test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
