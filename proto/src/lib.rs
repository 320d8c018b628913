//! Isoflow's gRPC API, `isoflow.v1`: the public API (`Isoflow`: integrations
//! and runs) and tenant administration (`Admin`: tenants, their tokens and
//! quotas); with the `cluster` feature, also `isoflow.cluster.v1`, the
//! protocol by which workers take work from the coordinator (internal: the
//! client does not enable it).
//!
//! The code is generated from `isoflow/**/*.proto` and committed under
//! `src/gen`, so that building it needs no `protoc`; the test
//! `tests/generated.rs` checks that it is current. Times and durations are
//! `prost_types::Timestamp` and `prost_types::Duration`, re-exported here.
//!
//! This crate is the only thing the client crate depends on, so it stays
//! free of engine dependencies.

#![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]

pub use prost_types;

pub mod v1 {
    include!("gen/isoflow.v1.rs");
}

#[cfg(feature = "cluster")]
pub mod cluster {
    pub mod v1 {
        include!("gen/isoflow.cluster.v1.rs");
    }
}

/// Between the API's times and the milliseconds since 1970 the engine keeps.
pub mod time {
    use prost_types::Timestamp;

    /// The time `ms` milliseconds after 1970; `None` for 0, which the
    /// engine's records use for "none".
    pub fn from_ms(ms: u64) -> Option<Timestamp> {
        (ms != 0).then(|| Timestamp {
            seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
            // Below 1,000,000,000: at most 999 ms.
            nanos: ((ms % 1000) * 1_000_000) as i32,
        })
    }

    /// Milliseconds since 1970 (rounded down); 0 for `None` and for times
    /// before 1970.
    pub fn to_ms(time: Option<&Timestamp>) -> u64 {
        let Some(time) = time else { return 0 };
        let seconds = u64::try_from(time.seconds).unwrap_or(0);
        let millis = u64::try_from(time.nanos / 1_000_000).unwrap_or(0);
        seconds.saturating_mul(1000).saturating_add(millis)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn milliseconds_go_there_and_back() {
            for ms in [1, 999, 1000, 1_764_400_000_123] {
                assert_eq!(to_ms(from_ms(ms).as_ref()), ms);
            }
            assert_eq!(from_ms(0), None);
            assert_eq!(to_ms(None), 0);
            let before_1970 = Timestamp {
                seconds: -5,
                nanos: 0,
            };
            assert_eq!(to_ms(Some(&before_1970)), 0);
        }
    }
}

/// The largest chunk of a payload in one message (1 MiB).
pub const CHUNK_BYTES: usize = 1 << 20;

/// The largest message either side accepts: a chunk plus room for the
/// message around it. Payloads never travel in one piece, so nothing larger
/// is needed.
pub const MAX_MESSAGE_BYTES: usize = 4 * CHUNK_BYTES;

/// The messages that carry a secret print without it.
mod hidden {
    use std::fmt;

    use super::v1;

    impl fmt::Debug for v1::BearerCredential {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("BearerCredential { token: … }")
        }
    }

    impl fmt::Debug for v1::BasicCredential {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("BasicCredential")
                .field("username", &self.username)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for v1::HeaderCredential {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("HeaderCredential")
                .field("header", &self.header)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for v1::QueryCredential {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("QueryCredential")
                .field("param", &self.param)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for v1::RotateCredentialRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RotateCredentialRequest")
                .field("name", &self.name)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for v1::OAuth2Credential {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("OAuth2Credential")
                .field("token_url", &self.token_url)
                .field("client_id", &self.client_id)
                .field("scopes", &self.scopes)
                .field("grant", &self.grant())
                .field("authorize_url", &self.authorize_url)
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for v1::IssuedToken {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("IssuedToken")
                .field("info", &self.info)
                .finish_non_exhaustive()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::v1;

        #[test]
        fn secrets_do_not_print() {
            let request = v1::SetCredentialRequest {
                name: "erp".into(),
                kind: Some(v1::set_credential_request::Kind::Basic(
                    v1::BasicCredential {
                        username: "svc".into(),
                        password: "pa55word".into(),
                    },
                )),
                origins: vec![],
                allow_plain_http: false,
            };
            let shown = format!("{request:?}");
            assert!(
                shown.contains("svc") && !shown.contains("pa55word"),
                "{shown}"
            );
            let rotate = v1::RotateCredentialRequest {
                name: "erp".into(),
                secret: "n3w".into(),
            };
            assert!(!format!("{rotate:?}").contains("n3w"));
            let oauth2 = v1::OAuth2Credential {
                client_id: "client".into(),
                client_secret: "cl13nt-s3cret".into(),
                refresh_token: "r3fresh".into(),
                ..Default::default()
            };
            let shown = format!("{oauth2:?}");
            assert!(
                shown.contains("client") && !shown.contains("s3cret") && !shown.contains("r3fresh"),
                "{shown}"
            );
            let issued = v1::IssuedToken {
                info: None,
                token: "ifl_s3cret".into(),
            };
            assert!(!format!("{issued:?}").contains("s3cret"));
        }
    }
}
