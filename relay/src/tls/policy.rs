//! What the TLS modes mean for one connection, decided here and nowhere else: whether the
//! greeting offers TLS to the recipient, whether the donor leg has TLS, and which auth plugins
//! may answer across the legs. The rule is that the relay is never weaker than MySQL alone:
//!
//! - With `--server-tls-mode as-client` (the default) or `preferred`, the recipient is offered
//!   TLS exactly when the donor's greeting offers it, and a recipient on TLS gets a donor leg on
//!   TLS or a refusal, never a plaintext donor leg. A recipient that requires TLS from a donor
//!   without it fails as it would without the relay.
//! - `required`, and `--server-tls-verify ca|identity`, mean a TLS donor leg or a refusal.
//! - Only `disabled` gives a recipient on TLS a plain donor leg (the relay offers its own TLS
//!   whatever the donor offers); the relay says so at start.
//! - A relay pair's tunnel is a TLS leg when it is mutual TLS and a plain one with
//!   `--tunnel-plain`. The donor side passes the donor's TLS offer across a TLS tunnel as it is,
//!   so the recipient side applies the same rule to the real donor, and the login's CLIENT_SSL
//!   tells the donor side whether the donor leg must have TLS.
//! - Auth plugins that put the password on the wire in clear (`sha256_password` over TLS,
//!   `mysql_clear_password`) never answer towards a plain donor leg for a recipient on TLS.

use crate::config::{ClientTlsMode, Config, ServerTlsMode, ServerTlsVerify};

/// Auth plugins whose answer on a TLS connection is the password in clear.
const CLEARTEXT_PLUGINS: [&str; 2] = ["sha256_password", "mysql_clear_password"];

/// What a leg towards the other relay of a pair is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// A TCP connection of this relay's own (to the recipient or to the donor).
    Socket,
    /// A stream of the pair's tunnel: `tls` when the tunnel is mutual TLS.
    Tunnel { tls: bool },
}

impl Leg {
    pub fn is_tunnel(self) -> bool {
        matches!(self, Leg::Tunnel { .. })
    }
}

/// The TLS rule of one relay, from its settings and what its TLS material allows.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    client: ClientTlsMode,
    server: ServerTlsMode,
    verify: ServerTlsVerify,
    /// The relay accepts recipients' TLS (it has a certificate towards them).
    terminates: bool,
    /// The relay dials TLS to donors.
    dials: bool,
    /// The recipient side of a relay pair.
    recipient_side: bool,
}

impl Policy {
    pub fn new(config: &Config) -> Self {
        let client = config.client_tls_mode;
        Policy {
            client,
            server: config.server_tls_mode,
            verify: config.server_tls_verify,
            terminates: matches!(client, ClientTlsMode::Preferred | ClientTlsMode::Required),
            dials: config.server_tls_mode != ServerTlsMode::Disabled
                && client != ClientTlsMode::Passthrough,
            recipient_side: config.peer.is_some(),
        }
    }

    /// Whether the relay terminates recipients' TLS, so needs a certificate towards them.
    pub fn terminates(&self) -> bool {
        self.terminates
    }

    /// Whether the relay dials TLS to donors, so needs a connector.
    pub fn dials(&self) -> bool {
        self.dials
    }

    /// Whether a recipient leg without TLS can meet a donor leg with it (a pair's recipient
    /// side counts its tunnel as one), where the relay serves an RSA key of its own for
    /// caching_sha2_password's full authentication.
    pub fn needs_rsa_key(&self) -> bool {
        let plain_recipients = matches!(
            self.client,
            ClientTlsMode::Disabled | ClientTlsMode::Preferred
        );
        plain_recipients
            && (self.recipient_side
                || matches!(
                    self.server,
                    ServerTlsMode::Preferred | ServerTlsMode::Required
                )
                || (self.dials && self.verify != ServerTlsVerify::Disabled))
    }

    /// Whether the donor leg must have TLS, whatever the recipient does.
    fn donor_tls_required(&self) -> bool {
        self.server == ServerTlsMode::Required || self.verify != ServerTlsVerify::Disabled
    }

    /// Why a donor leg without TLS is refused under these settings.
    fn required_by(&self) -> &'static str {
        if self.verify != ServerTlsVerify::Disabled {
            "--server-tls-verify checks the donor's certificate"
        } else {
            "--server-tls-mode is required"
        }
    }

    /// Whether the donor, as its greeting reached this relay over `upstream`, offers TLS the
    /// donor leg can have: a TLS tunnel carries the real donor's offer, a plain one none.
    pub fn donor_offers(&self, greeting_offers: bool, upstream: Leg) -> bool {
        greeting_offers
            && match upstream {
                Leg::Socket => self.dials,
                Leg::Tunnel { tls } => tls,
            }
    }

    /// CLIENT_SSL in the greeting the recipient gets: `None` leaves the donor's greeting as it
    /// is (passthrough), or why the connection cannot go on.
    pub fn greeting_offer(
        &self,
        donor: &str,
        donor_offers: bool,
        downstream: Leg,
    ) -> Result<Option<bool>, String> {
        if self.client == ClientTlsMode::Passthrough {
            return Ok(None);
        }
        if self.donor_tls_required() && !donor_offers {
            return Err(format!(
                "clone-relay: the donor {donor} offers no TLS and {}",
                self.required_by()
            ));
        }
        let offer = match downstream {
            // The donor side of a pair: the recipient side decides what its recipient is
            // offered, from the donor's own offer.
            Leg::Tunnel { tls } => tls && donor_offers,
            Leg::Socket => match (self.client, self.server) {
                (ClientTlsMode::Disabled, _) => false,
                (_, ServerTlsMode::Disabled) => self.terminates,
                _ => self.terminates && donor_offers,
            },
        };
        if !offer && self.client == ClientTlsMode::Required && downstream == Leg::Socket {
            return Err(format!(
                "clone-relay: the donor {donor} offers no TLS, and the relay offers recipients \
                 TLS only when the donor does (--client-tls-mode required)"
            ));
        }
        Ok(Some(offer))
    }

    /// Whether the donor leg has TLS, once the recipient's leg is known (`recipient_tls`: the
    /// recipient's own leg has TLS, as the login's CLIENT_SSL says over a tunnel), or why the
    /// connection cannot go on. Over a tunnel upstream this is what the donor side is asked
    /// for.
    pub fn donor_leg(
        &self,
        donor: &str,
        recipient_tls: bool,
        donor_offers: bool,
    ) -> Result<bool, String> {
        let tls = match self.server {
            ServerTlsMode::Disabled => return Ok(false),
            _ if self.donor_tls_required() => true,
            ServerTlsMode::AsClient => recipient_tls,
            ServerTlsMode::Preferred => recipient_tls || donor_offers,
            ServerTlsMode::Required => true,
        };
        if tls && !donor_offers {
            return Err(if recipient_tls && !self.donor_tls_required() {
                format!(
                    "clone-relay: the recipient's leg has TLS and the donor {donor} offers none: \
                     the relay never carries a TLS login onto a plain donor leg"
                )
            } else {
                format!(
                    "clone-relay: the donor {donor} offers no TLS and {}",
                    self.required_by()
                )
            });
        }
        Ok(tls)
    }

    /// Whether the auth plugin `plugin` may answer across these legs: a plugin whose answer is
    /// the password in clear is refused from a TLS recipient leg towards a plain donor leg.
    pub fn plugin_may_answer(
        plugin: &str,
        recipient_tls: bool,
        donor_tls: bool,
    ) -> Result<(), String> {
        if recipient_tls && !donor_tls && CLEARTEXT_PLUGINS.contains(&plugin) {
            return Err(format!(
                "clone-relay: the donor asks for {plugin}, which sends the password in clear, and \
                 the donor leg has no TLS: refused, nothing of the password was sent"
            ));
        }
        Ok(())
    }

    /// Whether the recipient is offered TLS exactly when the donor offers it (all modes but
    /// `--client-tls-mode disabled|passthrough` and `--server-tls-mode disabled`).
    pub fn follows_donor_offer(&self) -> bool {
        matches!(
            self.client,
            ClientTlsMode::Preferred | ClientTlsMode::Required
        ) && self.server != ServerTlsMode::Disabled
            && self.terminates
    }

    /// `--client-tls-mode passthrough`: the recipient's own TLS goes to the donor undecoded.
    pub fn passthrough(&self) -> bool {
        self.client == ClientTlsMode::Passthrough
    }

    /// `--client-tls-mode required`: a recipient on its own socket must log in over TLS.
    pub fn recipient_tls_required(&self) -> bool {
        self.client == ClientTlsMode::Required
    }

    /// Whether these settings can give a recipient on TLS a plain donor leg (`disabled` only).
    pub fn allows_plain_donor_under_tls(&self) -> bool {
        self.server == ServerTlsMode::Disabled && self.terminates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DONOR: &str = "donor:3306";

    fn policy(client: ClientTlsMode, server: ServerTlsMode, verify: ServerTlsVerify) -> Policy {
        let mut config = Config::new(DONOR);
        config.client_tls_mode = client;
        config.server_tls_mode = server;
        config.server_tls_verify = verify;
        Policy::new(&config)
    }

    fn defaults() -> Policy {
        policy(
            ClientTlsMode::Preferred,
            ServerTlsMode::AsClient,
            ServerTlsVerify::Disabled,
        )
    }

    #[test]
    fn on_the_defaults_the_recipient_is_offered_tls_exactly_when_the_donor_offers_it() {
        let p = defaults();
        assert_eq!(p.greeting_offer(DONOR, true, Leg::Socket), Ok(Some(true)));
        assert_eq!(p.greeting_offer(DONOR, false, Leg::Socket), Ok(Some(false)));
        // A recipient on TLS gets TLS to the donor; a plain one a plain leg, as MySQL alone.
        assert_eq!(p.donor_leg(DONOR, true, true), Ok(true));
        assert_eq!(p.donor_leg(DONOR, false, true), Ok(false));
        assert_eq!(p.donor_leg(DONOR, false, false), Ok(false));
        // A TLS recipient and a donor without TLS: refused, never a plain donor leg.
        let e = p.donor_leg(DONOR, true, false).unwrap_err();
        assert!(e.contains("offers none"), "{e}");
    }

    #[test]
    fn preferred_uses_the_donors_tls_for_any_recipient_and_never_downgrades() {
        let p = policy(
            ClientTlsMode::Preferred,
            ServerTlsMode::Preferred,
            ServerTlsVerify::Disabled,
        );
        assert_eq!(p.greeting_offer(DONOR, false, Leg::Socket), Ok(Some(false)));
        assert_eq!(p.donor_leg(DONOR, false, true), Ok(true));
        assert_eq!(p.donor_leg(DONOR, false, false), Ok(false));
        assert!(p.donor_leg(DONOR, true, false).is_err());
    }

    #[test]
    fn required_and_verification_mean_a_tls_donor_leg_or_a_refusal_whatever_the_modes() {
        for server in [
            ServerTlsMode::AsClient,
            ServerTlsMode::Preferred,
            ServerTlsMode::Required,
        ] {
            for verify in [ServerTlsVerify::Ca, ServerTlsVerify::Identity] {
                let p = policy(ClientTlsMode::Preferred, server, verify);
                let e = p.greeting_offer(DONOR, false, Leg::Socket).unwrap_err();
                assert!(e.contains("offers no TLS") && e.contains("verify"), "{e}");
                // A plain recipient still gets a verified TLS donor leg.
                assert_eq!(p.donor_leg(DONOR, false, true), Ok(true), "{server:?}");
            }
        }
        let p = policy(
            ClientTlsMode::Disabled,
            ServerTlsMode::Required,
            ServerTlsVerify::Disabled,
        );
        let e = p.greeting_offer(DONOR, false, Leg::Socket).unwrap_err();
        assert!(e.contains("--server-tls-mode is required"), "{e}");
        assert_eq!(p.greeting_offer(DONOR, true, Leg::Socket), Ok(Some(false)));
        assert_eq!(p.donor_leg(DONOR, false, true), Ok(true));
    }

    #[test]
    fn a_required_recipient_leg_needs_a_donor_with_tls_unless_the_donor_leg_is_disabled() {
        let p = policy(
            ClientTlsMode::Required,
            ServerTlsMode::AsClient,
            ServerTlsVerify::Disabled,
        );
        let e = p.greeting_offer(DONOR, false, Leg::Socket).unwrap_err();
        assert!(e.contains("--client-tls-mode required"), "{e}");
        assert_eq!(p.greeting_offer(DONOR, true, Leg::Socket), Ok(Some(true)));

        let p = policy(
            ClientTlsMode::Required,
            ServerTlsMode::Disabled,
            ServerTlsVerify::Disabled,
        );
        assert_eq!(p.greeting_offer(DONOR, false, Leg::Socket), Ok(Some(true)));
        assert_eq!(p.donor_leg(DONOR, true, true), Ok(false));
        assert!(p.allows_plain_donor_under_tls());
        assert!(!p.follows_donor_offer());
        assert!(!defaults().allows_plain_donor_under_tls());
        assert!(defaults().follows_donor_offer());
    }

    #[test]
    fn only_an_explicitly_disabled_donor_leg_gives_a_tls_recipient_a_plain_one() {
        let p = policy(
            ClientTlsMode::Preferred,
            ServerTlsMode::Disabled,
            ServerTlsVerify::Disabled,
        );
        assert_eq!(p.greeting_offer(DONOR, false, Leg::Socket), Ok(Some(true)));
        assert_eq!(p.greeting_offer(DONOR, true, Leg::Socket), Ok(Some(true)));
        assert_eq!(p.donor_leg(DONOR, true, true), Ok(false));
        assert_eq!(p.donor_leg(DONOR, true, false), Ok(false));
    }

    #[test]
    fn a_tunnel_carries_the_donors_offer_when_it_is_tls_and_none_when_it_is_plain() {
        let p = defaults();
        // Recipient side: the greeting came across the tunnel.
        let tls = Leg::Tunnel { tls: true };
        let plain = Leg::Tunnel { tls: false };
        assert!(p.donor_offers(true, tls));
        assert!(!p.donor_offers(true, plain));
        assert!(!p.donor_offers(false, tls));
        // Donor side: what it passes on across the tunnel.
        assert_eq!(p.greeting_offer(DONOR, true, tls), Ok(Some(true)));
        assert_eq!(p.greeting_offer(DONOR, false, tls), Ok(Some(false)));
        assert_eq!(p.greeting_offer(DONOR, true, plain), Ok(Some(false)));
        // A donor side asked for TLS (the recipient's leg has it) by a donor without it.
        assert!(p.donor_leg(DONOR, true, false).is_err());
    }

    #[test]
    fn passthrough_leaves_the_greeting_alone() {
        let p = policy(
            ClientTlsMode::Passthrough,
            ServerTlsMode::AsClient,
            ServerTlsVerify::Disabled,
        );
        assert_eq!(p.greeting_offer(DONOR, false, Leg::Socket), Ok(None));
        assert_eq!(p.greeting_offer(DONOR, true, Leg::Socket), Ok(None));
    }

    #[test]
    fn cleartext_plugins_never_answer_towards_a_plain_donor_leg_from_a_tls_recipient() {
        for plugin in CLEARTEXT_PLUGINS {
            let e = Policy::plugin_may_answer(plugin, true, false).unwrap_err();
            assert!(e.contains(plugin), "{e}");
            assert_eq!(Policy::plugin_may_answer(plugin, true, true), Ok(()));
            assert_eq!(Policy::plugin_may_answer(plugin, false, false), Ok(()));
        }
        for plugin in ["caching_sha2_password", "mysql_native_password"] {
            assert_eq!(Policy::plugin_may_answer(plugin, true, false), Ok(()));
        }
    }
}
