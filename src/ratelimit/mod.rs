//! Rate limiting: the algorithms, keys and headers behind the rate limiter filter.
//!
//! Everything here is a pure function of `(config, stored state, request view, now)`. The filter
//! keeps the state in Envoy's shared data and runs [`Algorithm::check`] inside a compare-and-swap
//! loop, which is what makes a limit exact however many workers Envoy runs: every worker sees,
//! and advances, the same bucket. Global rules ([`global`]) count in a rate limit service instead,
//! for a whole fleet; [`rls`] holds its wire messages.

mod algorithm;
pub(crate) mod config;
#[cfg(feature = "schema")]
pub(crate) use config::KeyPartJson;
pub mod global;
mod headers;
mod key;
pub mod rls;

pub mod lease;
mod verdict;

pub use algorithm::{sliding_window, token_bucket, Algorithm, Decision, Limit, State};
pub(crate) use config::key_part;
pub use config::{Apply, ClientIp, Contention, HeaderMatch, Mode, RateLimitConfig, RateLimitJson, Rule, RuleMatch};
pub use global::{Answer, Global, GlobalStatus, OnServiceError, OverLimitMemo, ServiceError, Target};
pub use headers::{policy_field, policy_header, quoted, ratelimit_field, ratelimit_header, retry_after_secs};
pub use key::{join_key, FixedRequest, KeyPart, RequestView, MISSING, SEPARATOR};
pub use verdict::{Outcome, Verdict};
