//! What HTTP streams and L4 connections have in common: a context on one worker, its
//! properties, `on_log`, and `on_done` + `on_delete` when it ends (explicitly with `finish`, or
//! when dropped).

use crate::exports::{Callback, Exports};
use crate::state::{dotted_key, segments_key, Flow, StreamData};
use crate::types::{Action, HostError};
use crate::worker::Worker;

/// One stream context on a worker.
pub(crate) struct Core<'w> {
    pub worker: &'w Worker,
    pub id: u32,
    /// The error `proxy_on_context_create` gave, reported by the first callback.
    pub error: Option<HostError>,
    pub finished: bool,
}

impl<'w> Core<'w> {
    pub fn new(worker: &'w Worker, kind: crate::state::Kind) -> Core<'w> {
        let (id, error) = worker.new_context(kind);
        Core { worker, id, error, finished: false }
    }

    /// Runs `f` on this stream's data (a fresh one if the stream is gone).
    pub fn data<R>(&self, f: impl FnOnce(&mut StreamData) -> R) -> R {
        self.worker.with_state(|s| f(s.streams.entry(self.id).or_default()))
    }

    /// Calls a stream callback with this context effective.
    pub fn callback(&mut self, pick: impl Fn(&Exports) -> &Callback, args: &[i32]) -> Result<Action, HostError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let id = self.id;
        self.worker.with_state(|s| s.effective = id);
        let r = self.worker.call(pick, args)?;
        Ok(if r.unwrap_or(0) == 0 { Action::Continue } else { Action::Pause })
    }

    /// Adds `chunk` to the data the filter holds back in `flow`, calls the data callback with
    /// its size, and releases it if the filter continues.
    pub fn data_callback(
        &mut self,
        flow: fn(&mut StreamData) -> &mut Flow,
        pick: impl Fn(&Exports) -> &Callback,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        let len = self.data(|d| {
            let f = flow(d);
            f.pending.extend_from_slice(chunk);
            f.pending.len()
        });
        let action = self.callback(pick, &[self.id as i32, len as i32, i32::from(end_of_stream)])?;
        if action == Action::Continue {
            self.data(|d| flow(d).release());
        }
        Ok(action)
    }

    pub fn set_property_key(&self, key: Vec<u8>, value: &[u8]) {
        self.data(|d| d.properties.insert(key, value.to_vec()));
    }

    /// `on_log`; from here on a missing header map is `NotFound`, as in Envoy's access-log
    /// phase.
    pub fn log(&mut self) -> Result<(), HostError> {
        self.data(|d| d.log_phase = true);
        let id = self.id as i32;
        self.callback(|e| &e.on_log, &[id]).map(drop)
    }

    /// `on_done` then `on_delete`, then forgets the stream.
    pub fn finish(&mut self) -> Result<(), HostError> {
        self.finished = true;
        self.data(|d| d.log_phase = true);
        let id = self.id as i32;
        let r = self.callback(|e| &e.on_done, &[id]).and_then(|_| self.callback(|e| &e.on_delete, &[id]));
        let me = self.id;
        self.worker.with_state(|s| s.streams.remove(&me));
        r.map(drop)
    }
}

impl Drop for Core<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.finish();
        }
    }
}

/// The property setters and readers every stream kind has.
macro_rules! property_methods {
    () => {
        /// Sets a string property; dots separate segments (`"source.address"`).
        pub fn property(self, path: &str, value: &str) -> Self {
            self.core.set_property_key($crate::state::dotted_key(path), value.as_bytes());
            self
        }

        /// Sets an integer property (8 bytes little-endian, as Envoy encodes them).
        pub fn property_u64(self, path: &str, value: u64) -> Self {
            self.core.set_property_key($crate::state::dotted_key(path), &value.to_le_bytes());
            self
        }

        /// Sets a property to these exact bytes.
        pub fn property_bytes(self, path: &str, value: &[u8]) -> Self {
            self.core.set_property_key($crate::state::dotted_key(path), value);
            self
        }

        /// Sets a string property on a stream already under way (e.g. `response.code_details`).
        pub fn set_property(&mut self, path: &str, value: &str) {
            self.core.set_property_key($crate::state::dotted_key(path), value.as_bytes());
        }

        /// Sets an integer property on a stream already under way.
        pub fn set_property_u64(&mut self, path: &str, value: u64) {
            self.core.set_property_key($crate::state::dotted_key(path), &value.to_le_bytes());
        }

        /// Sets a property to these exact bytes on a stream already under way.
        pub fn set_property_bytes(&mut self, path: &str, value: &[u8]) {
            self.core.set_property_key($crate::state::dotted_key(path), value);
        }

        /// Sets a property whose path is given as segments (for segments that hold dots, such
        /// as `["metadata", "filter_metadata", "envoy.lb"]`).
        pub fn set_property_path(&mut self, path: &[&[u8]], value: &[u8]) {
            self.core.set_property_key($crate::state::segments_key(path), value);
        }

        /// This stream's own property at `path` (dots separate segments), as set by the test
        /// or by the filter.
        pub fn property_value(&self, path: &str) -> Option<Vec<u8>> {
            let key = $crate::state::dotted_key(path);
            self.core.data(|d| d.properties.get(&key).cloned())
        }

        /// This stream's own property whose path is given as segments (a filter that sets
        /// `upstream_guard.llm_cluster` as one segment is read back with
        /// `&[b"upstream_guard.llm_cluster"]`).
        pub fn property_value_path(&self, path: &[&[u8]]) -> Option<Vec<u8>> {
            let key = $crate::state::segments_key(path);
            self.core.data(|d| d.properties.get(&key).cloned())
        }

        /// The context id the filter sees for this stream.
        pub fn id(&self) -> u32 {
            self.core.id
        }

        /// `on_log`.
        pub fn log(&mut self) -> Result<(), HostError> {
            self.core.log()
        }

        /// `on_done` then `on_delete`, as when Envoy destroys the stream. Dropping the stream
        /// does the same, ignoring errors.
        pub fn finish(mut self) -> Result<(), HostError> {
            self.core.finish()
        }

        /// How many times the filter resumed a direction (`proxy_continue_stream` and the ABI
        /// 0.2.0 calls), all directions together.
        pub fn continued(&self) -> u32 {
            self.core.data(|d| d.continued.iter().sum())
        }

        /// How many times the filter resumed direction `t`.
        pub fn continued_in(&self, t: $crate::types::StreamType) -> u32 {
            self.core.data(|d| d.continued[t as usize])
        }

        /// How many times the filter closed (reset) direction `t` with `proxy_close_stream`.
        pub fn closed(&self, t: $crate::types::StreamType) -> u32 {
            self.core.data(|d| d.closed[t as usize])
        }
    };
}
pub(crate) use property_methods;

// Keep the helpers referenced from the macro reachable under their paths.
const _: fn(&str) -> Vec<u8> = dotted_key;
const _: fn(&[&[u8]]) -> Vec<u8> = segments_key;
