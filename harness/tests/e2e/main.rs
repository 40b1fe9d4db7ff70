//! The end-to-end tier: real MySQL donors and recipients in containers, the relay, chaos on the
//! links. Every test here is ignored unless selected (`--include-ignored`, as the README's full
//! command and CI run them, or `--ignored`), and one selected without Docker fails naming it.
//! One test binary on its own runner (`runner.rs`): the tree is linked once, the longest tests
//! start first, and the CPU-bound ones take turns.

use std::process::ExitCode;

use libtest_mimic::Trial;
use runner::Load::{Alone, Heavy, Light, Measuring};
use runner::Test;

mod busy_relay;
mod chaos_matrix;
mod clone_chaos;
mod clone_e2e;
mod clone_encrypted;
mod clone_limits;
mod clone_mixed_legs;
mod clone_sessions;
mod clone_tls;
mod drill;
mod host_cache;
mod hostile_sessions;
mod link_down;
mod link_drops;
mod path_probes;
mod protocol_versions;
mod relay_image;
mod relay_memory;
mod relay_pair;
mod relay_restart;
mod runner;
mod slow_peers;
mod tls_downgrade;
mod unknown_messages;

/// Each test with its load and the seconds it took in a run of the whole tier on 2 cores (two
/// tests at a time).
macro_rules! tests {
    ($($secs:literal $load:ident $module:ident :: $test:ident,)*) => {
        vec![$(Test::new(
            concat!(stringify!($module), "::", stringify!($test)),
            $load,
            $secs,
            $module::$test,
        ),)*]
    };
}

fn main() -> ExitCode {
    let mut args = libtest_mimic::Arguments::from_args();
    args.test_threads.get_or_insert(runner::UNITS as usize);
    let mut tests = tests![
        239 Light relay_pair::a_relay_pair_hides_link_drops_from_mysql,
        143 Light link_drops::a_blackhole_past_the_donors_patience_fails_clearly,
        127 Light slow_peers::a_slow_donor_is_not_reset,
        126 Light chaos_matrix::seeded_chaos_matrix,
        101 Heavy drill::the_drill_binary_passes_every_scenario_and_fails_what_it_must,
        92 Light link_down::flows_silenced_in_the_kernel_are_found_dead_within_five_seconds,
        85 Light link_drops::a_clone_survives_ten_resets,
        78 Light link_down::a_twenty_second_outage_is_waited_out_without_a_resume,
        77 Light slow_peers::a_slow_recipient_is_not_reset,
        47 Alone busy_relay::a_clone_through_a_busy_relay_is_unaffected,
        46 Measuring clone_limits::a_session_cap_holds_follows_a_live_change_and_counts_tls_on_the_wire,
        43 Light link_drops::a_clone_survives_a_twenty_second_blackhole,
        34 Heavy relay_memory::the_relay_stays_small_and_flat_over_repeated_full_speed_clones,
        31 Light relay_restart::a_resume_after_a_relay_restart_reaches_its_donor,
        30 Measuring clone_limits::two_clones_at_once_share_a_relay_cap_evenly,
        28 Light link_drops::silent_tls_connections_are_detected_and_the_clone_resumes,
        27 Light link_drops::silent_connections_are_detected_and_the_clone_resumes,
        25 Heavy clone_tls::ca_verification_passes_with_the_donors_own_ca,
        25 Heavy clone_tls::require_ssl_with_the_relays_ca_pinned_survives_a_relay_restart,
        22 Light link_drops::a_resumed_clone_returns_to_its_donor,
        20 Heavy clone_tls::full_authentication_passes_inside_tls,
        19 Heavy clone_tls::both_legs_use_tls_on_the_relays_defaults_and_the_data_is_hidden,
        19 Light clone_tls::a_certificate_reload_during_a_tls_clone_leaves_it_whole,
        17 Light clone_sessions::a_reset_mid_transfer_resumes_the_same_session,
        16 Light clone_chaos::a_clone_survives_latency_loss_and_slicing,
        16 Light clone_sessions::hostile_connections_do_not_disturb_a_clone,
        15 Light host_cache::clients_that_never_log_in_and_relay_starts_leave_the_donor_host_cache_clean,
        15 Light host_cache::the_same_against_a_donor_that_requires_secure_transport,
        15 Heavy clone_tls::a_donor_account_that_requires_x509_clones_through_the_relays_client_certificate,
        13 Light clone_tls::refusals_on_a_tls_donor_name_their_cause_and_forward_nothing,
        13 Light clone_tls::a_donor_without_tls_is_refused_when_the_donor_leg_requires_it,
        13 Light clone_encrypted::an_encrypted_tablespace_clones_over_a_tls_donor_leg_and_is_refused_over_a_plain_one,
        12 Light tls_downgrade::a_stripped_tls_offer_fails_a_require_ssl_clone_as_mysql_alone_would,
        11 Light tls_downgrade::full_authentication_across_one_tls_leg_completes_and_the_trace_log_keeps_no_password,
        11 Heavy clone_e2e::direct_clone_matches_donor,
        11 Light clone_chaos::a_clone_survives_real_packet_loss_at_the_donor,
        10 Heavy clone_e2e::clone_through_relay_matches_donor,
        10 Light clone_sessions::a_clone_is_one_session_with_main_aux_and_workers,
        9 Light hostile_sessions::clone_commands_for_clones_that_never_move_data_leave_the_relay_bounded,
        8 Light tls_downgrade::a_stripped_tls_offer_gives_a_default_clone_plaintext_on_both_legs,
        6 Light protocol_versions::the_real_donor_at_every_protocol_version_is_carried_and_followed,
        6 Light unknown_messages::an_unknown_response_from_a_real_donor_is_carried_and_no_longer_followed,
        5 Light tls_downgrade::donor_verification_refuses_a_stripped_tls_offer_under_every_mode,
        5 Light tls_downgrade::a_replaced_donor_key_is_refused_when_pinned_and_gets_nothing_it_can_read_otherwise,
        4 Light tls_downgrade::a_relay_pair_carries_the_stripped_offer_and_refuses_require_ssl,
        3 Light protocol_versions::a_donor_error_and_a_refused_reinit_end_as_mysql_ends_them,
        3 Light tls_downgrade::sha256_password_towards_a_plain_donor_leg_is_refused_for_a_tls_recipient,
        2 Light clone_e2e::clone_through_relay_to_a_dead_donor_fails_clearly,
        2 Light path_probes::probes_never_get_the_relay_blocked_by_max_connect_errors,
    ];
    tests.push(Test::blocking(
        "clone_mixed_legs::all_four_leg_combinations_clone_with_an_empty_and_a_warm_auth_cache",
        Measuring,
        32,
        clone_mixed_legs::all_four_leg_combinations_clone_with_an_empty_and_a_warm_auth_cache,
    ));
    tests.push(
        Test::new(
            "relay_image::the_image_runs_as_a_sidecar_in_the_recipients_namespace_and_clones",
            Heavy,
            136,
            relay_image::the_image_runs_as_a_sidecar_in_the_recipients_namespace_and_clones,
        )
        .prepared_by(relay_image::build_the_release_binary),
    );
    let mut trials = runner::trials(tests);
    trials.extend(runner::checks());
    trials.push(Trial::test(
        "chaos_matrix::a_clone_that_never_started_is_not_compared",
        || {
            chaos_matrix::a_clone_that_never_started_is_not_compared();
            Ok(())
        },
    ));
    libtest_mimic::run(&args, trials).exit_code()
}
