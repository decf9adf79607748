//! Envoy's core response flags: bit positions (as `response.flags` carries them) and short names
//! (as access logs print them).

/// One core response flag. The discriminant is the bit position in `response.flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Flag {
    FailedLocalHealthCheck = 0,
    NoHealthyUpstream = 1,
    UpstreamRequestTimeout = 2,
    LocalReset = 3,
    UpstreamRemoteReset = 4,
    UpstreamConnectionFailure = 5,
    UpstreamConnectionTermination = 6,
    UpstreamOverflow = 7,
    NoRouteFound = 8,
    DelayInjected = 9,
    FaultInjected = 10,
    RateLimited = 11,
    UnauthorizedExternalService = 12,
    RateLimitServiceError = 13,
    DownstreamConnectionTermination = 14,
    UpstreamRetryLimitExceeded = 15,
    StreamIdleTimeout = 16,
    InvalidEnvoyRequestHeaders = 17,
    DownstreamProtocolError = 18,
    UpstreamMaxStreamDurationReached = 19,
    ResponseFromCacheFilter = 20,
    NoFilterConfigFound = 21,
    DurationTimeout = 22,
    UpstreamProtocolError = 23,
    NoClusterFound = 24,
    OverloadManager = 25,
    DnsResolutionFailed = 26,
    DropOverload = 27,
    DownstreamRemoteReset = 28,
    UnconditionalDropOverload = 29,
}

impl Flag {
    /// Every core flag, in bit order.
    pub const ALL: [Flag; 30] = [
        Flag::FailedLocalHealthCheck,
        Flag::NoHealthyUpstream,
        Flag::UpstreamRequestTimeout,
        Flag::LocalReset,
        Flag::UpstreamRemoteReset,
        Flag::UpstreamConnectionFailure,
        Flag::UpstreamConnectionTermination,
        Flag::UpstreamOverflow,
        Flag::NoRouteFound,
        Flag::DelayInjected,
        Flag::FaultInjected,
        Flag::RateLimited,
        Flag::UnauthorizedExternalService,
        Flag::RateLimitServiceError,
        Flag::DownstreamConnectionTermination,
        Flag::UpstreamRetryLimitExceeded,
        Flag::StreamIdleTimeout,
        Flag::InvalidEnvoyRequestHeaders,
        Flag::DownstreamProtocolError,
        Flag::UpstreamMaxStreamDurationReached,
        Flag::ResponseFromCacheFilter,
        Flag::NoFilterConfigFound,
        Flag::DurationTimeout,
        Flag::UpstreamProtocolError,
        Flag::NoClusterFound,
        Flag::OverloadManager,
        Flag::DnsResolutionFailed,
        Flag::DropOverload,
        Flag::DownstreamRemoteReset,
        Flag::UnconditionalDropOverload,
    ];

    /// The flag's bit in `response.flags`.
    pub const fn bit(self) -> u64 {
        1u64 << (self as u8)
    }

    /// The short name Envoy's access log prints (`%RESPONSE_FLAGS%`).
    pub const fn short_name(self) -> &'static str {
        match self {
            Flag::FailedLocalHealthCheck => "LH",
            Flag::NoHealthyUpstream => "UH",
            Flag::UpstreamRequestTimeout => "UT",
            Flag::LocalReset => "LR",
            Flag::UpstreamRemoteReset => "UR",
            Flag::UpstreamConnectionFailure => "UF",
            Flag::UpstreamConnectionTermination => "UC",
            Flag::UpstreamOverflow => "UO",
            Flag::NoRouteFound => "NR",
            Flag::DelayInjected => "DI",
            Flag::FaultInjected => "FI",
            Flag::RateLimited => "RL",
            Flag::UnauthorizedExternalService => "UAEX",
            Flag::RateLimitServiceError => "RLSE",
            Flag::DownstreamConnectionTermination => "DC",
            Flag::UpstreamRetryLimitExceeded => "URX",
            Flag::StreamIdleTimeout => "SI",
            Flag::InvalidEnvoyRequestHeaders => "IH",
            Flag::DownstreamProtocolError => "DPE",
            Flag::UpstreamMaxStreamDurationReached => "UMSDR",
            Flag::ResponseFromCacheFilter => "RFCF",
            Flag::NoFilterConfigFound => "NFCF",
            Flag::DurationTimeout => "DT",
            Flag::UpstreamProtocolError => "UPE",
            Flag::NoClusterFound => "NC",
            Flag::OverloadManager => "OM",
            Flag::DnsResolutionFailed => "DF",
            Flag::DropOverload => "DO",
            Flag::DownstreamRemoteReset => "DR",
            Flag::UnconditionalDropOverload => "UDO",
        }
    }

    /// Flags that describe how a response was produced, not that anything failed.
    pub const fn is_informational(self) -> bool {
        matches!(self, Flag::DelayInjected | Flag::ResponseFromCacheFilter)
    }
}

/// The `response.flags` bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResponseFlags(pub u64);

impl ResponseFlags {
    /// True when `flag` is set.
    pub const fn has(self, flag: Flag) -> bool {
        self.0 & flag.bit() != 0
    }

    /// The set flags, in bit order.
    pub fn iter(self) -> impl Iterator<Item = Flag> {
        Flag::ALL.into_iter().filter(move |f| self.has(*f))
    }

    /// Bits Envoy may set in a later version that this table does not know yet.
    pub const fn unknown_bits(self) -> u64 {
        self.0 & !((1u64 << Flag::ALL.len()) - 1)
    }

    /// True when any flag other than the informational ones is set (unknown bits count: a flag
    /// newer than this table is more likely a failure than not).
    pub const fn any_failure(self) -> bool {
        self.0 & !(Flag::DelayInjected.bit() | Flag::ResponseFromCacheFilter.bit()) != 0
    }

    /// Short names joined by `,`, as Envoy's access log writes them (`UF,URX`); unknown bits are
    /// written as `0x…` so nothing is lost. Empty when no flag is set.
    pub fn short_names(self) -> String {
        let mut out = String::new();
        for f in self.iter() {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(f.short_name());
        }
        if self.unknown_bits() != 0 {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(&format!("0x{:x}", self.unknown_bits()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_sits_at_its_documented_bit() {
        for (i, f) in Flag::ALL.iter().enumerate() {
            assert_eq!(f.bit(), 1 << i, "{f:?}");
        }
        assert_eq!(Flag::UpstreamConnectionFailure.bit(), 0x20);
        assert_eq!(Flag::UpstreamRetryLimitExceeded.bit(), 0x8000);
        assert_eq!(Flag::UnconditionalDropOverload.bit(), 0x2000_0000);
    }

    #[test]
    fn every_flag_has_a_unique_short_name() {
        let names: std::collections::HashSet<_> = Flag::ALL.iter().map(|f| f.short_name()).collect();
        assert_eq!(names.len(), Flag::ALL.len());
    }

    #[test]
    fn short_names_follow_bit_order_and_keep_unknown_bits() {
        assert_eq!(ResponseFlags(0x20).short_names(), "UF");
        assert_eq!(ResponseFlags(0x20 | 0x8000).short_names(), "UF,URX");
        assert_eq!(ResponseFlags(1 << 40).short_names(), "0x10000000000");
        assert_eq!(ResponseFlags(0).short_names(), "");
    }

    #[test]
    fn informational_flags_are_not_failures() {
        assert!(!ResponseFlags(Flag::ResponseFromCacheFilter.bit()).any_failure());
        assert!(!ResponseFlags(Flag::DelayInjected.bit()).any_failure());
        assert!(ResponseFlags(Flag::UpstreamOverflow.bit()).any_failure());
        assert!(ResponseFlags(1 << 33).any_failure());
    }
}
