//! Host-call accounting: how many times a filter called each host function, how many guest
//! allocations the host made to hand data back, and how large the guest's memory is.
//!
//! Per-request cost budgets are written in these units (host calls and allocations per request
//! are what a wasm filter pays for in Envoy), so they are counted on every call. Counting must
//! cost next to nothing: every host function has a fixed slot in an array, indexed by the
//! [`Import`] it implements; names are only looked at when a test asks for a snapshot.

use std::collections::BTreeMap;

macro_rules! imports {
    ($($variant:ident = $module:literal $name:literal,)*) => {
        /// Every host function this host implements, in module `env` (proxy-wasm) or
        /// `wasi_snapshot_preview1` (WASI).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Import {
            $(#[doc = concat!("`", $module, "::", $name, "`")] $variant,)*
        }

        impl Import {
            /// Every import, in slot order.
            pub const ALL: &'static [Import] = &[$(Import::$variant,)*];

            /// The import's name (`proxy_log`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Import::$variant => $name,)*
                }
            }

            /// The import's module (`env` or `wasi_snapshot_preview1`).
            pub const fn module(self) -> &'static str {
                match self {
                    $(Import::$variant => $module,)*
                }
            }
        }
    };
}

imports! {
    ProxyLog = "env" "proxy_log",
    ProxyGetLogLevel = "env" "proxy_get_log_level",
    ProxyGetCurrentTimeNanoseconds = "env" "proxy_get_current_time_nanoseconds",
    ProxySetTickPeriodMilliseconds = "env" "proxy_set_tick_period_milliseconds",
    ProxyGetBufferBytes = "env" "proxy_get_buffer_bytes",
    ProxyGetBufferStatus = "env" "proxy_get_buffer_status",
    ProxySetBufferBytes = "env" "proxy_set_buffer_bytes",
    ProxyGetHeaderMapPairs = "env" "proxy_get_header_map_pairs",
    ProxySetHeaderMapPairs = "env" "proxy_set_header_map_pairs",
    ProxyGetHeaderMapValue = "env" "proxy_get_header_map_value",
    ProxyReplaceHeaderMapValue = "env" "proxy_replace_header_map_value",
    ProxyRemoveHeaderMapValue = "env" "proxy_remove_header_map_value",
    ProxyAddHeaderMapValue = "env" "proxy_add_header_map_value",
    ProxyGetHeaderMapSize = "env" "proxy_get_header_map_size",
    ProxyGetProperty = "env" "proxy_get_property",
    ProxySetProperty = "env" "proxy_set_property",
    ProxyGetSharedData = "env" "proxy_get_shared_data",
    ProxySetSharedData = "env" "proxy_set_shared_data",
    ProxyRegisterSharedQueue = "env" "proxy_register_shared_queue",
    ProxyResolveSharedQueue = "env" "proxy_resolve_shared_queue",
    ProxyDequeueSharedQueue = "env" "proxy_dequeue_shared_queue",
    ProxyEnqueueSharedQueue = "env" "proxy_enqueue_shared_queue",
    ProxyContinueStream = "env" "proxy_continue_stream",
    ProxyCloseStream = "env" "proxy_close_stream",
    ProxyContinueRequest = "env" "proxy_continue_request",
    ProxyContinueResponse = "env" "proxy_continue_response",
    ProxySendLocalResponse = "env" "proxy_send_local_response",
    ProxyClearRouteCache = "env" "proxy_clear_route_cache",
    ProxyHttpCall = "env" "proxy_http_call",
    ProxyGrpcCall = "env" "proxy_grpc_call",
    ProxyGrpcStream = "env" "proxy_grpc_stream",
    ProxyGrpcSend = "env" "proxy_grpc_send",
    ProxyGrpcCancel = "env" "proxy_grpc_cancel",
    ProxyGrpcClose = "env" "proxy_grpc_close",
    ProxyGetStatus = "env" "proxy_get_status",
    ProxySetEffectiveContext = "env" "proxy_set_effective_context",
    ProxyDone = "env" "proxy_done",
    ProxyCallForeignFunction = "env" "proxy_call_foreign_function",
    ProxyDefineMetric = "env" "proxy_define_metric",
    ProxyIncrementMetric = "env" "proxy_increment_metric",
    ProxyRecordMetric = "env" "proxy_record_metric",
    ProxyGetMetric = "env" "proxy_get_metric",
    ArgsGet = "wasi_snapshot_preview1" "args_get",
    ArgsSizesGet = "wasi_snapshot_preview1" "args_sizes_get",
    EnvironGet = "wasi_snapshot_preview1" "environ_get",
    EnvironSizesGet = "wasi_snapshot_preview1" "environ_sizes_get",
    ClockResGet = "wasi_snapshot_preview1" "clock_res_get",
    ClockTimeGet = "wasi_snapshot_preview1" "clock_time_get",
    FdWrite = "wasi_snapshot_preview1" "fd_write",
    FdPrestatGet = "wasi_snapshot_preview1" "fd_prestat_get",
    RandomGet = "wasi_snapshot_preview1" "random_get",
    SchedYield = "wasi_snapshot_preview1" "sched_yield",
    ProcExit = "wasi_snapshot_preview1" "proc_exit",
}

const SLOTS: usize = Import::ALL.len();

/// A snapshot of one worker's host-call accounting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostCalls {
    /// Calls per import name (only names called at least once), including imports this host
    /// does not implement (answered by a stub).
    pub by_name: BTreeMap<String, u64>,
    /// Allocations the host made in the guest (`proxy_on_memory_allocate` or `malloc`) to
    /// return data.
    pub allocations: u64,
    /// Bytes those allocations asked for.
    pub allocated_bytes: u64,
    /// The guest's linear memory size now, in bytes.
    pub memory_bytes: u64,
}

impl HostCalls {
    /// Calls of `name`, 0 if none.
    pub fn calls(&self, name: &str) -> u64 {
        self.by_name.get(name).copied().unwrap_or(0)
    }

    /// Every host call, all names together.
    pub fn total(&self) -> u64 {
        self.by_name.values().sum()
    }
}

/// The live counters of one worker.
#[derive(Debug, Clone)]
pub(crate) struct CallCounts {
    slots: [u64; SLOTS],
    /// Imports answered by a stub, by name.
    others: BTreeMap<String, u64>,
    pub allocations: u64,
    pub allocated_bytes: u64,
}

impl Default for CallCounts {
    fn default() -> Self {
        CallCounts { slots: [0; SLOTS], others: BTreeMap::new(), allocations: 0, allocated_bytes: 0 }
    }
}

impl CallCounts {
    /// One call of `import`.
    #[inline]
    pub fn hit(&mut self, import: Import) {
        self.slots[import as usize] += 1;
    }

    /// One call of an import this host answers with a stub.
    pub fn hit_other(&mut self, name: &str) {
        match self.others.get_mut(name) {
            Some(n) => *n += 1,
            None => {
                self.others.insert(name.to_string(), 1);
            }
        }
    }

    /// One allocation of `bytes` in the guest.
    #[inline]
    pub fn allocation(&mut self, bytes: usize) {
        self.allocations += 1;
        self.allocated_bytes += bytes as u64;
    }

    /// The snapshot, with the guest's memory size.
    pub fn snapshot(&self, memory_bytes: u64) -> HostCalls {
        let mut by_name = self.others.clone();
        for (import, n) in Import::ALL.iter().zip(self.slots) {
            if n > 0 {
                *by_name.entry(import.name().to_string()).or_default() += n;
            }
        }
        HostCalls { by_name, allocations: self.allocations, allocated_bytes: self.allocated_bytes, memory_bytes }
    }
}
