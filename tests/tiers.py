"""The two tiers of the suite: `bash scripts/test` runs both, `--fast` only the first.

A test is slow, and left out by ``--fast`` (``-m "not slow"``), when its whole module needs
a system that takes seconds to start or run (Autobahn, Chromium, nginx, a Redis Cluster,
a package build, the benchmark, chaos runs), or when it alone takes more than about two
and a half seconds on a 2-core machine (one parametrized case may be named alone).
Everything else, the live socket tests included, is the fast tier. CI runs both: the
fast tier on four workers, the slow tier on two, and its ``SOLO`` tests (which measure
the machine) alone at the end.
``tests/test_tiers.py`` checks that every name here still names a test.
"""

from __future__ import annotations

import pytest

SLOW_MODULES = frozenset({
    "test_autobahn.py",
    "test_bench_smoke.py",
    "test_browser.py",
    "test_browser_resume.py",
    "test_channels_examples.py",
    "test_chaos.py",
    "test_first_hour.py",
    "test_nginx.py",
    "test_packaging.py",
    "test_page_channels.py",
    "test_pusher_browser.py",
    "test_pusher_cluster.py",
    "test_pusher_reconnect.py",
    "test_pytest_plugin.py",
    "test_redis_cluster.py",
    "test_redis_restart.py",
})

SLOW_TESTS = frozenset({
    "test_abuse.py::test_a_client_that_never_reads_cannot_grow_server_memory",
    "test_auth_live.py::test_config_errors_through_the_cli",
    "test_auth_live.py::test_expiry_closes_with_3000",
    "test_channels_input.py::test_a_client_that_answers_pings_stays_and_a_silent_one_is_closed_3012",
    "test_channels_input.py::test_a_connection_that_never_sends_connect_is_closed_3502",
    "test_channels_input.py::test_a_refreshed_connection_is_not_closed",
    "test_channels_input.py::test_an_expired_connection_is_closed_3005",
    "test_channels_proxy_live.py::test_the_refresh_proxy_extends_or_ends_a_proxied_connection",
    "test_channels_proxy_live.py::test_the_sub_refresh_proxy_extends_or_ends_a_subscription",
    "test_channels_scaleout.py::test_cluster_disconnect_by_user_reaches_every_instance",
    "test_channels_scaleout.py::test_cluster_publications_reach_both_instances_in_one_order",
    "test_channels_scaleout.py::test_redis_centrifuge_python_recovers_by_itself_across_a_gateway_restart",
    "test_channels_scaleout.py::test_redis_recovery_across_a_gateway_restart",
    "test_cli_stumbles.py::test_redis_broker_without_the_redis_package",
    "test_close_delivery.py::test_flood_node_ws_sees_rate_limit_close",
    "test_docs.py::test_python_samples_run",
    "test_gateway_ws.py::test_server_shutdown_closes_with_1001",
    "test_lifecycle.py::test_a_hanging_on_disconnect_does_not_outlive_shutdown_timeout",
    "test_lifecycle.py::test_a_hanging_shutdown_hook_does_not_outlive_shutdown_timeout",
    "test_lifecycle.py::test_clients_that_never_answer_do_not_hold_the_exit",
    "test_lifecycle.py::test_second_sigterm_during_a_slow_drain_exits_at_once",
    "test_lifecycle.py::test_sigterm_drains_hundreds_of_clients_with_1001",
    "test_log_safety.py::test_text_log_of_a_real_process_has_no_forged_lines_and_no_secrets",
    "test_metrics_logs.py::test_json_access_log_has_one_line_per_open_and_close_and_no_secrets",
    "test_presence.py::test_a_disconnect_burst_leaves_no_name_claimed",
    "test_presence.py::test_kill_9_keeps_a_user_whose_other_tab_is_on_the_survivor",
    "test_presence.py::test_kill_9_of_an_instance_announces_its_users_leave_within_presence_ttl",
    "test_presence.py::test_redis_a_hold_keeps_a_member_whose_claimer_died",
    "test_presence.py::test_redis_a_member_lives_while_its_holder_refreshes_it",
    "test_presence.py::test_the_chat_retries_a_failed_release_and_announces_the_leave_once",
    "test_properties_config.py::test_deep_nesting_is_a_config_error",
    "test_properties_config.py::test_structured_documents",
    "test_properties_config.py::test_valid_documents_load_describe_and_round_trip",
    "test_properties_wire.py::test_any_request_head_gets_an_http_answer_or_a_close",
    "test_properties_wire.py::test_arbitrary_bytes_after_the_handshake",
    "test_properties_wire.py::test_chat_takes_any_text_and_refuses_binary",
    "test_properties_wire.py::test_scripted_frames_get_their_echoes_and_the_rfc_close_code",
    "test_properties_wire.py::test_unfinished_or_idle_requests_are_dropped_after_the_handshake_timeout",
    "test_publish_api.py::test_publish_reaches_the_room_on_every_instance",
    "test_pusher_sdk.py::test_the_members_of_an_instance_that_died_are_removed_once",
    "test_pusher_webhooks.py::test_one_channel_vacated_across_two_instances",
    "test_pusher_webhooks.py::test_the_last_instance_with_subscribers_dies_one_channel_vacated",
    "test_publish_api.py::test_token_from_the_environment",
    "test_recovery.py::test_resume_edge_cases_never_close",
    "test_recovery.py::test_resume_on_another_instance_and_after_a_redis_restart",
    "test_redis_outbox.py::test_a_restarted_redis_is_not_taken_for_an_outage",
    "test_resume_bound.py::test_a_resume_reads_at_most_max_bytes_from_the_broker[redis-cluster]",
    "test_scaleout.py::test_chat_across_two_instances",
    "test_scaleout.py::test_each_instance_subscribes_only_to_rooms_with_local_members",
    "test_scaleout.py::test_ids_are_gap_free_and_ordered_under_concurrent_senders",
    "test_scaleout.py::test_redis_outage_keeps_local_chat_and_connections",
    "test_scaleout.py::test_two_workers_share_one_port_and_chat_across",
    "test_testing_kit.py::test_leaving_run_gateway_closes_connections_with_1001",
    "test_testing_kit.py::test_the_fixture_in_a_user_project_stops_its_gateway",
    "test_testing_kit.py::test_the_plugin_marks_only_unmarked_coroutine_tests",
    "test_tls.py::test_files_that_do_not_load_are_config_errors",
})


# Slow tests that measure the machine (a benchmark's figures, a memory bound) or race
# its clock (Redis Cluster failovers): they run alone after the rest of the slow tier,
# which runs on two workers.
SOLO = frozenset({
    "test_bench_smoke.py",
    "test_abuse.py::test_a_client_that_never_reads_cannot_grow_server_memory",
    "test_redis_cluster.py",  # failovers and reshards on a 1 s node timeout
    "test_pusher_cluster.py",  # a Redis Cluster and two gateways on a 1 s node timeout
})


def _listed(item: pytest.Item, modules: frozenset[str], tests: frozenset[str]) -> bool:
    module = item.path.name
    names = {item.name, getattr(item, "originalname", item.name)}
    return module in modules or any(f"{module}::{name}" in tests for name in names)


def is_slow(item: pytest.Item) -> bool:
    """Whether ``item`` is in the slow tier: by its module, its name, or its name with parameters."""
    return _listed(item, SLOW_MODULES, SLOW_TESTS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if is_slow(item):
            item.add_marker(pytest.mark.slow)
        if _listed(item, SOLO, SOLO):
            item.add_marker(pytest.mark.solo)
