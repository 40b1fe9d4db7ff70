//! Kernel-level faults inside a network namespace, as shell commands to run there (for example
//! with `docker exec` in a container started with NET_ADMIN): real packet loss with real TCP
//! retransmits through netfilter's random drop, and netem delay where the kernel has it.

/// Commands that drop incoming packets at random with `probability` (0..1).
pub fn loss_commands(probability: f64) -> Vec<String> {
    vec![format!(
        "iptables -A INPUT -m statistic --mode random --probability {probability:.4} -j DROP"
    )]
}

/// Commands that remove the loss rules again.
pub fn clear_loss_commands() -> Vec<String> {
    vec!["iptables -F INPUT".to_string()]
}

/// Commands that add `delay_ms` of delay on `device` with netem.
pub fn delay_commands(device: &str, delay_ms: u64) -> Vec<String> {
    vec![format!(
        "tc qdisc replace dev {device} root netem delay {delay_ms}ms"
    )]
}

/// What a failed netem command means: this kernel may lack the qdisc.
pub fn explain_tc_failure(stderr: &str) -> String {
    if stderr.contains("Specified qdisc kind is unknown") || stderr.contains("No such file") {
        "this kernel has no netem qdisc: delay, duplicate, reorder and corrupt are unavailable \
         (packet loss through iptables still works)"
            .to_string()
    } else {
        format!("tc failed: {}", stderr.trim())
    }
}
