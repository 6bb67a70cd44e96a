"""The splitter the Prometheus e2e test uses to check that alerts read live series."""

from tests.e2e.promql import operands, series_reading


def test_an_alert_is_split_at_its_top_level_comparisons_and_set_operators():
    expr = """sum by (service) (commission_consumer_lag_messages) > 1000
      and sum by (service) (delta(commission_consumer_lag_messages[10m])) > 0"""
    assert operands(expr) == ["sum by (service) (commission_consumer_lag_messages)", "1000",
                              "sum by (service) (delta(commission_consumer_lag_messages[10m]))",
                              "0"]
    assert series_reading(expr) == operands(expr)[0::2]


def test_matchers_ranges_and_groupings_stay_whole():
    expr = ('sum(rate(commission_api_requests_total{status=~"5..", x!="a>b"}[5m]))'
            " > 0.01 * sum(rate(commission_api_requests_total[5m]))")
    assert operands(expr) == [
        'sum(rate(commission_api_requests_total{status=~"5..", x!="a>b"}[5m]))',
        "0.01 * sum(rate(commission_api_requests_total[5m]))"]


def test_bare_numbers_and_time_are_not_series():
    assert series_reading("time() - commission_audit_last_run_timestamp_seconds > 3 * 3600") \
        == ["time() - commission_audit_last_run_timestamp_seconds"]
    assert series_reading('up{job="commission"} == 0') == ['up{job="commission"}']
    assert series_reading("commission_a >= bool 2 unless commission_errors_b") == [
        "commission_a", "commission_errors_b"]
    assert operands("commission_a") == ["commission_a"]
