//! Adaptive concurrency: a limit on the requests in flight to each upstream cluster, shared by
//! every worker, that follows the latency the upstream shows, and sheds low-priority requests
//! first when the limit is reached.
//!
//! Why a limit on requests in flight rather than on requests per second: a backend that slows
//! down (CPU starvation, an exhausted pool, a full queue) still answers, only later, and every
//! request it holds makes the next one slower. Capping what is in flight at what the backend
//! answers quickly keeps its latency near the no-load latency and the rest is refused at once,
//! instead of queueing until everything times out.
//!
//! The algorithm is AIMD on latency, evaluated once per `window` from the answers that ended in
//! it: when their average latency exceeds the target (`latency.target`, or the lowest window
//! average seen, the no-load latency, times `latency.tolerance`) the limit is multiplied by
//! `backoff`; when it stays under and the window used the limit, the limit grows by one plus a
//! sixteenth. The limit stays within `limit.min`..`limit.max`.
//!
//! Priorities: each request has one of four classes (`critical`, `high`, `normal`, `low`), from
//! the first `classes` rule that matches it (`normal` otherwise). A class may fill only its share
//! of the limit: with the default shares (1, 0.9, 0.75, 0.5), low-priority requests are refused
//! once half the limit is in flight, and only critical ones may take the last slots, so under a
//! steady overload the highest class keeps being served.
//!
//! The state of one cluster is a small value ([`Limiter`]) the stage keeps in the cross-worker
//! store and updates with compare-and-swap: one update when a request is admitted, one when it
//! ends. Time is passed in.

mod config;
mod limiter;

pub use config::{Class, ConcurrencyConfig, ConcurrencyJson, ConcurrencyRule};
pub use limiter::{latency_sample, Admission, Limiter};
