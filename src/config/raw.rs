//! The config files as written: serde types with the YAML's names.
//!
//! Every struct denies unknown fields, so a typo is an error with a line number rather than a
//! silently ignored setting. Values that can be parsed are parsed here (addresses, durations,
//! networks), so their errors carry the position serde_yaml reports. Cross-references
//! (upstream names, files) are checked in [`super::compile`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

mod authn;
mod features;
mod listener;
mod policy;
mod server;

pub use authn::*;
pub use features::*;
pub use listener::*;
pub use policy::*;
pub use server::*;

/// The gateway config file (`config/portcullis.yaml`).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where client traffic is accepted. Restart-only: a reload that changes a listener's
    /// address fails.
    pub listeners: Vec<RawListener>,
    /// The admin listener: health, readiness, metrics, config status and reload.
    #[serde(default)]
    pub admin: RawAdmin,
    /// Connection and request limits shared by all listeners.
    #[serde(default)]
    pub server: RawServer,
    /// Named upstreams that rules forward to.
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// Where the route policies live.
    #[serde(default)]
    pub policies: RawPolicies,
    /// Logs and access logs.
    #[serde(default)]
    pub logging: RawLogging,
    /// Named authenticators; a rule lists, in order, the ones it accepts.
    #[serde(default)]
    pub authenticators: BTreeMap<String, RawAuthenticator>,
    /// Headers set on every allowed request, rendered from templates: `{principal.id}`,
    /// `{principal.kind}`, `{principal.authenticator}`, `{principal.issuer}`,
    /// `{principal.tenant}`, `{principal.scopes}` (space-separated), `{principal.roles}`
    /// (comma-separated), `{apikey.id}`, `{claims.<path>}` (arrays comma-joined),
    /// `{client.ip}`, `{rule.name}`. A header whose variable is absent is not set. Every name
    /// listed here or in any rule is removed from every client request first.
    #[serde(default)]
    pub identity_headers: BTreeMap<String, String>,
    /// Settings shared by every authenticator.
    #[serde(default)]
    pub authn: RawAuthn,
    /// Named rate limits; a rule applies one with `rate_limit: NAME`.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RawRateLimit>,
    /// The Redis server that `backend: redis` rate limits share across gateways.
    #[serde(default)]
    pub redis: Option<RawRedis>,
    /// External authorization services a rule may ask (`delegate: NAME`), over Envoy's
    /// ext_authz gRPC protocol: OPA-Envoy, another Portcullis, a policy service of your own.
    #[serde(default)]
    pub delegates: BTreeMap<String, RawDelegate>,
    /// A short-lived JWT the gateway signs for each allowed, authenticated request and sends
    /// upstream, so upstreams verify (against `/.well-known/jwks.json` on the admin
    /// listener, or on the read-only `admin.public_address`) instead of trusting headers. A
    /// request whose assertion cannot be signed gets 503 rather than going upstream without
    /// it.
    #[serde(default)]
    pub identity_assertion: Option<RawAssertion>,
    /// W3C trace context and OpenTelemetry spans.
    #[serde(default)]
    pub tracing: RawTracing,
}

/// Trace context (W3C `traceparent`/`tracestate`) and span export.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawTracing {
    /// Propagate `traceparent` upstream with a new span id per hop: a client's well-formed
    /// one keeps its trace id, an absent or malformed one is replaced by a new trace.
    pub propagate: bool,
    /// Export a span per request over OTLP (HTTP, protobuf encoding). Off when absent.
    pub otlp: Option<RawOtlp>,
}

impl Default for RawTracing {
    fn default() -> Self {
        Self {
            propagate: true,
            otlp: None,
        }
    }
}

/// An OTLP/HTTP collector.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    /// The collector's traces URL, `http://host:4318/v1/traces`.
    pub endpoint: String,
    /// `service.name` of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Spans are sent in batches at least this often.
    #[serde(
        default = "default_otlp_interval",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// Spans waiting to be sent, at most; more are dropped (and counted) rather than held.
    #[serde(default = "default_otlp_queue")]
    pub max_queue: usize,
}

fn default_service_name() -> String {
    "portcullis".to_owned()
}

fn default_otlp_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_otlp_queue() -> usize {
    4096
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `ip:port` to bind. Loopback by default: the admin listener has no authentication.
    /// Restart-only.
    #[serde(default = "default_admin_address", deserialize_with = "socket_addr")]
    #[schemars(with = "String")]
    pub address: SocketAddr,
    /// `ip:port` of an optional second, read-only listener that serves only `GET`/`HEAD`
    /// `/healthz`, `/readyz` and `/.well-known/jwks.json`: for upstreams fetching the identity
    /// assertion's keys and for load balancers, which then never reach `POST /reload`,
    /// `/config` or `/metrics`. Off by default. Restart-only.
    #[serde(default, deserialize_with = "opt_socket_addr")]
    #[schemars(with = "Option<String>")]
    pub public_address: Option<SocketAddr>,
    /// Host names the admin listener answers to besides IP literals and `localhost` (a
    /// Service name a scraper uses, say). Any other `Host` is refused (403), so a web page
    /// whose name was rebound to the gateway's address cannot read `/config` or `/metrics`.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            address: default_admin_address(),
            public_address: None,
            allowed_hosts: Vec::new(),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawLogging {
    /// `human` or `json`. Restart-only.
    pub format: LogFormat,
    /// Filter in `RUST_LOG` syntax, e.g. `info` or `portcullis=debug`. Restart-only.
    pub level: String,
    /// One line per request at target `access`.
    pub access_log: bool,
}

impl Default for RawLogging {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".to_owned(),
            access_log: true,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable text.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

// === single-key enums ===

/// Deserialises an enum written as one of its unit variants (`bearer`) or as a map with exactly
/// one key naming the variant (`cookie: session`), the form ops expect. serde_yaml only reads
/// YAML tags (`!cookie session`) for enums, which nobody writes by hand.
macro_rules! single_key_enum {
    ($ty:ident, $expecting:literal,
     units { $($uname:literal => $uvar:ident),* $(,)? },
     maps { $($name:literal => $var:ident($inner:ty)),* $(,)? }) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                const VARIANTS: &[&str] = &[$($uname,)* $($name,)*];
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    #[allow(clippy::allow_attributes, unreachable_code, reason = "enums without unit variants")]
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        $(if v == $uname { return Ok($ty::$uvar); })*
                        // Why: the bare name of a variant that takes a value was "unknown",
                        // with the very name listed as expected.
                        $(if v == $name {
                            return Err(E::custom(format!("`{v}` needs a value: {}", $expecting)));
                        })*
                        Err(E::unknown_variant(v, VARIANTS))
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<$ty, A::Error> {
                        use serde::de::Error as _;
                        let Some(key) = m.next_key::<String>()? else {
                            return Err(A::Error::custom(concat!("expected ", $expecting)));
                        };
                        let out = match key.as_str() {
                            $($name => $ty::$var(m.next_value::<$inner>()?),)*
                            // A variant without a value, given one (`bearer: {}`).
                            $($uname => return Err(A::Error::custom(format!(
                                "`{0}` takes no value: write `{0}` alone", $uname
                            ))),)*
                            other => return Err(A::Error::unknown_variant(other, VARIANTS)),
                        };
                        if m.next_key::<String>()?.is_some() {
                            return Err(A::Error::custom(concat!("exactly one key expected: ", $expecting)));
                        }
                        Ok(out)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

single_key_enum!(RawAuthenticator, "an authenticator: `jwt`, `api_key`, `introspection`, `trusted_headers` or `mtls`",
units {},
maps {
    "jwt" => Jwt(RawJwt),
    "api_key" => ApiKey(RawApiKeyAuth),
    "introspection" => Introspection(Box<RawIntrospection>),
    "trusted_headers" => TrustedHeaders(RawTrustedHeaders),
    "mtls" => Mtls(RawMtls),
});
single_key_enum!(RawDoor, "a door: `proxy`, `envoy_grpc`, `envoy_http` or `forward_auth`",
units { "proxy" => Proxy },
maps {
    "envoy_grpc" => EnvoyGrpc(RawEnvoyGrpc),
    "envoy_http" => EnvoyHttp(RawEnvoyHttp),
    "forward_auth" => ForwardAuth(RawForwardAuth),
});
single_key_enum!(RawCredentialSource, "`bearer`, `header: NAME`, `cookie: NAME` or `query: NAME`",
    units { "bearer" => Bearer },
    maps { "header" => Header(String), "cookie" => Cookie(String), "query" => Query(String) });
single_key_enum!(RawKey, "a key source: `pem`, `pem_file`, `jwk`, `jwks_file`, `jwks_url`, `oidc_discovery` or `hmac`",
units {},
maps {
    "pem" => Pem(RawPemText),
    "pem_file" => PemFile(RawPemFile),
    "jwk" => Jwk(RawJwkText),
    "jwks_file" => JwksFile(RawJwksFile),
    "jwks_url" => JwksUrl(RawJwksUrl),
    "oidc_discovery" => OidcDiscovery(RawJwksUrl),
    "hmac" => Hmac(RawHmacKey),
});
single_key_enum!(RawClaimCheck, "`equals: VALUE`, `one_of: [VALUES]` or `contains: VALUE`",
units {},
maps {
    "equals" => Equals(serde_json::Value),
    "one_of" => OneOf(Vec<serde_json::Value>),
    "contains" => Contains(serde_json::Value),
});
// Why its own: the macro's errors quote what was written (`unknown variant `s3cr3t``, serde's
// `invalid type: integer `8675309``), and a secret written inline where `{env:}` or `{file:}`
// belongs then reached `check`, the `POST /reload` answer, `GET /config` and the log.
// Nothing written in a secret's place is ever shown. Regression: tests::inline_secrets_are_not_shown
impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const INLINE: &str = "a secret is `env: VARIABLE` or `file: PATH`, never written inline (what was written is not shown)";
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawSecret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(INLINE)
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<RawSecret, E> {
                Err(E::custom(INLINE))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<RawSecret, E> {
                Err(E::custom(INLINE))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<RawSecret, E> {
                Err(E::custom(INLINE))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<RawSecret, E> {
                Err(E::custom(INLINE))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<RawSecret, E> {
                Err(E::custom(INLINE))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<RawSecret, A::Error> {
                use serde::de::Error as _;
                let key = m.next_key::<String>()?;
                let out = match key.as_deref() {
                    Some("env") => RawSecret::Env(m.next_value()?),
                    Some("file") => RawSecret::File(m.next_value()?),
                    // The key itself may be the secret (`{s3cr3t: x}`): not shown either.
                    _ => return Err(A::Error::custom(INLINE)),
                };
                if m.next_key::<String>()?.is_some() {
                    return Err(A::Error::custom(
                        "exactly one key expected: `env: VARIABLE` or `file: PATH`",
                    ));
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}
single_key_enum!(RawMachineRule, "`client_id_without_sub`, `claim_present: CLAIM` or `claim_equals: {claim, value}`",
    units { "client_id_without_sub" => ClientIdWithoutSub },
    maps { "claim_present" => ClaimPresent(String), "claim_equals" => ClaimEquals(RawClaimEquals) });

// === defaults and field parsers shared by the sections ===

fn yes() -> bool {
    true
}

fn default_admin_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

/// Durations are written `500ms`, `10s`, `1m`.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as `500ms`, `10s` or `1m`")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            humantime::parse_duration(v)
                .map_err(|e| match v.len() <= 16 && v.starts_with(|c: char| c.is_ascii_digit()) {
                    true => E::custom(format_args!("invalid duration `{v}`: {e}")),
                    // Not a duration at all (a secret pasted here): not quoted back.
                    false => E::custom("invalid duration (not shown): expected a number and a unit, such as `30s` or `5m`"),
                })
        }
    }
    d.deserialize_str(Visitor)
}

/// A default duration as the schema shows it: in the words a config takes (`90s`, `5m`,
/// `24h`), not serde's `{secs, nanos}`, which the loader refuses.
///
/// Why: `schema config` offered `{"secs": 60, "nanos": 0}` as each duration's default, and an
/// editor filling defaults in wrote a config that `check` refused.
/// Regression: config::raw::tests::schema_defaults_are_values_the_loader_takes
fn duration_text<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    let nanos = d.as_nanos();
    let text = if !nanos.is_multiple_of(1_000_000) {
        humantime::format_duration(*d).to_string()
    } else if !nanos.is_multiple_of(1_000_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        match d.as_secs() {
            0 => "0s".to_owned(),
            s if s.is_multiple_of(3600) => format!("{}h", s / 3600),
            s if s.is_multiple_of(60) => format!("{}m", s / 60),
            s => format!("{s}s"),
        }
    };
    s.serialize_str(&text)
}

/// `ip:port`.
fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = SocketAddr;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an address `ip:port` such as `127.0.0.1:8080` or `[::1]:8443`")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SocketAddr, E> {
            // A value that reads like no address (a secret pasted here) is not quoted back.
            let looks = crate::secret::reads_like_a_name(v)
                || (v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".:[]-%".contains(&b))
                    && v.split(['.', ':', '[', ']', '-', '%'])
                        .all(|run| run.len() < 16));
            v.parse().map_err(|_| match looks {
                true => E::custom(format_args!(
                    "invalid address `{v}`: expected `ip:port` such as `127.0.0.1:8080` or `[::1]:8443`"
                )),
                false => E::custom(
                    "invalid address (not shown): expected `ip:port` such as `127.0.0.1:8080` or `[::1]:8443`",
                ),
            })
        }
    }
    d.deserialize_str(Visitor)
}

/// A network in CIDR notation (`10.0.0.0/8`, `fd00::/8`); a bare address is a single host.
/// An IPv4-mapped network (`::ffff:10.0.0.0/104`) is read as the IPv4 one it maps.
///
/// Why: every address the gateway compares (the peer, forwarded hops, Envoy's `source`) is
/// read IPv4 when it is IPv4-mapped, so a mapped network matched nothing: `trusted_proxies:
/// ["::ffff:127.0.0.1"]` left the proxy untrusted, and the proxy itself became the client,
/// inside a `require.networks` meant for the clients behind it.
/// Regression: tests::mapped_networks_are_read_as_ipv4, tests (it)
/// proxy::a_trusted_proxy_written_ipv4_mapped_is_trusted
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(with = "String")]
pub struct Network(pub IpNet);

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, so the error is raised while the parser is at the value and carries its
        // position and index.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Network;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a network such as `10.0.0.0/8` or `fd00::/8`")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Network, E> {
                if let Ok(n) = s.parse::<IpNet>() {
                    // Why: `10.0.0.1/8` was read as `10.0.0.0/8` without a word; meant as the
                    // one address (a slip for /32), it let in the whole /8.
                    // Regression: tests::a_network_with_host_bits_is_refused
                    if n.addr() != n.network() {
                        return Err(E::custom(format_args!(
                            "`{s}` has bits set past its /{len}: write the network `{}` or the one address `{}`",
                            n.trunc(),
                            n.addr(),
                            len = n.prefix_len()
                        )));
                    }
                    return Ok(Network(unmapped(n)));
                }
                if let Ok(ip) = s.parse::<std::net::IpAddr>() {
                    return Ok(Network(unmapped(IpNet::from(ip))));
                }
                // A value that reads like no network (a secret pasted here) is not quoted back.
                let looks = s.len() <= 64
                    && s.bytes()
                        .all(|b| b.is_ascii_hexdigit() || b".:/[]".contains(&b));
                match looks {
                    true => Err(E::custom(format_args!(
                        "invalid network `{s}`: expected CIDR notation such as `10.0.0.0/8` or `fd00::/8`"
                    ))),
                    false => Err(E::custom(
                        "invalid network (not shown): expected CIDR notation such as `10.0.0.0/8` or `fd00::/8`",
                    )),
                }
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// `n` as IPv4 when it lies within the IPv4-mapped range `::ffff:0:0/96`.
fn unmapped(n: IpNet) -> IpNet {
    match n {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => {
                ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(n, |v4| IpNet::V4(v4.trunc()))
            }
            None => n,
        },
        _ => n,
    }
}

fn opt_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    socket_addr(d).map(Some)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_network_with_host_bits_is_refused() {
        let read = |s: &str| serde_yaml::from_str::<super::Network>(s);
        let e = read("10.0.0.1/8").unwrap_err().to_string();
        assert!(
            e.contains("`10.0.0.1/8` has bits set past its /8: write the network `10.0.0.0/8` or the one address `10.0.0.1`"),
            "{e}"
        );
        assert!(read("fd00::1/8").is_err());
        for fine in [
            "10.0.0.0/8",
            "10.0.0.1/32",
            "10.0.0.1",
            "fd00::/8",
            "::ffff:10.0.0.0/104",
        ] {
            assert!(read(fine).is_ok(), "{fine}");
        }
    }

    use super::*;

    #[test]
    fn mapped_networks_are_read_as_ipv4() {
        for (written, read) in [
            ("::ffff:127.0.0.1", "127.0.0.1/32"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::FFFF:10.1.0.0/112", "10.1.0.0/16"),
            ("::ffff:0.0.0.0/96", "0.0.0.0/0"),
            // Not within the mapped range: as written.
            ("::fffe:0:0/95", "::fffe:0:0/95"),
            ("::1", "::1/128"),
            ("64:ff9b::10.0.0.0/120", "64:ff9b::a00:0/120"),
            ("10.0.0.0/8", "10.0.0.0/8"),
        ] {
            let n: Network = serde_yaml::from_str(&format!("\"{written}\"")).unwrap();
            assert_eq!(n.0.to_string(), read, "{written}");
        }
        let n: Network = serde_yaml::from_str("\"::ffff:10.0.0.0/104\"").unwrap();
        assert!(n.0.contains(&"10.9.8.7".parse::<std::net::IpAddr>().unwrap()));
    }

    #[test]
    fn inline_secrets_are_not_shown() {
        for text in [
            "SuperSecretClientValue123",
            "8675309112233",
            "-8675309112233",
            "86753.09112233",
            "{SuperSecretClientValue123: x}",
            "{env: A, SuperSecretClientValue123: x}",
            "[SuperSecretClientValue123]",
        ] {
            let err = serde_yaml::from_str::<RawSecret>(text)
                .unwrap_err()
                .to_string();
            assert!(
                !err.contains("SuperSecret") && !err.contains("8675309") && !err.contains("86753"),
                "{text}: {err}"
            );
        }
        assert_eq!(
            serde_yaml::from_str::<RawSecret>("{env: X}").unwrap(),
            RawSecret::Env("X".into())
        );
        assert_eq!(
            serde_yaml::from_str::<RawSecret>("{file: s.txt}").unwrap(),
            RawSecret::File("s.txt".into())
        );
    }

    /// A variant written in the other form is named as such, not as "unknown" while listed
    /// as expected (`unknown variant `bearer`, expected one of `bearer`, …`).
    #[test]
    fn a_variant_in_the_wrong_form_says_so() {
        let err = |yaml: &str| {
            serde_yaml::from_str::<Vec<RawCredentialSource>>(yaml)
                .unwrap_err()
                .to_string()
        };
        assert!(err("[{bearer: {}}]").contains("`bearer` takes no value: write `bearer` alone"));
        assert!(err("[header]").contains("`header` needs a value: `bearer`, `header: NAME`"));
        assert!(err("[{headr: x}]").contains("unknown variant `headr`"));
        let ok: Vec<RawCredentialSource> = serde_yaml::from_str("[bearer, {query: t}]").unwrap();
        assert_eq!(
            ok,
            [
                RawCredentialSource::Bearer,
                RawCredentialSource::Query("t".into())
            ]
        );
    }

    /// Every default the schema offers has the type it declares, and a section written out
    /// from its defaults reads back as its defaults.
    #[test]
    fn schema_defaults_are_values_the_loader_takes() {
        fn kind(v: &serde_json::Value) -> &'static str {
            match v {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "boolean",
                serde_json::Value::Number(n) if n.is_f64() => "number",
                serde_json::Value::Number(_) => "integer",
                serde_json::Value::String(_) => "string",
                serde_json::Value::Array(_) => "array",
                serde_json::Value::Object(_) => "object",
            }
        }
        fn walk(at: &str, v: &serde_json::Value, wrong: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let (Some(default), Some(ty)) = (m.get("default"), m.get("type")) {
                        let declared: Vec<&str> = match ty {
                            serde_json::Value::Array(a) => {
                                a.iter().filter_map(|t| t.as_str()).collect()
                            }
                            t => t.as_str().into_iter().collect(),
                        };
                        let k = kind(default);
                        let fits = declared.contains(&k)
                            || (k == "integer" && declared.contains(&"number"));
                        if !fits {
                            wrong.push(format!("{at}: {declared:?} but default {default}"));
                        }
                    }
                    for (key, inner) in m {
                        walk(&format!("{at}/{key}"), inner, wrong);
                    }
                }
                serde_json::Value::Array(a) => {
                    for (i, inner) in a.iter().enumerate() {
                        walk(&format!("{at}[{i}]"), inner, wrong);
                    }
                }
                _ => {}
            }
        }
        let config = serde_json::to_value(schemars::schema_for!(RawConfig)).unwrap();
        let policy = serde_json::to_value(schemars::schema_for!(RawPolicyFile)).unwrap();
        let mut wrong = Vec::new();
        walk("config", &config, &mut wrong);
        walk("policy", &policy, &mut wrong);
        assert!(wrong.is_empty(), "{wrong:#?}");

        // `server:` written out from the schema's defaults is the default section.
        let props = &config["$defs"]["RawServer"]["properties"];
        let defaults: serde_json::Map<_, _> = props
            .as_object()
            .unwrap()
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.get("default")?.clone())))
            .collect();
        assert!(defaults.contains_key("idle_timeout"), "{defaults:?}");
        assert_eq!(defaults["idle_timeout"], "1m");
        let text = serde_yaml::to_string(&defaults).unwrap();
        let read: RawServer = serde_yaml::from_str(&text).unwrap();
        assert_eq!(read, RawServer::default());
    }
}
