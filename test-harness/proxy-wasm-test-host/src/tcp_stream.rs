//! Driving an L4 (TCP) connection through a network filter: the new connection, data each
//! way, each side closing, `on_log`, done.
//!
//! Data the filter holds back (it returned `Pause`) stays in its buffer (`DownstreamData` or
//! `UpstreamData`) and the next chunk is added to it, as Envoy's connection read buffer does;
//! when the filter continues, the data goes on to the other side. The filter can read and
//! rewrite both buffers.

use crate::state::Kind;
use crate::stream::{property_methods, Core};
use crate::types::{Action, HostError, PeerType};
use crate::worker::Worker;

/// One L4 connection on a worker.
pub struct TcpStream<'w> {
    core: Core<'w>,
}

impl Worker {
    /// Starts an L4 connection (creates its context); call
    /// [`TcpStream::new_connection`] next.
    pub fn tcp_stream(&self) -> TcpStream<'_> {
        TcpStream { core: Core::new(self, Kind::Tcp) }
    }
}

impl<'w> TcpStream<'w> {
    property_methods!();

    /// `on_new_connection`.
    pub fn new_connection(&mut self) -> Result<Action, HostError> {
        let id = self.core.id as i32;
        self.core.callback(|e| &e.on_new_connection, &[id])
    }

    /// `on_downstream_data`: the client sent `chunk`.
    pub fn downstream_data(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action, HostError> {
        self.core.data_callback(|d| &mut d.downstream, |e| &e.on_downstream_data, chunk, end_of_stream)
    }

    /// `on_upstream_data`: the upstream sent `chunk`.
    pub fn upstream_data(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action, HostError> {
        self.core.data_callback(|d| &mut d.upstream, |e| &e.on_upstream_data, chunk, end_of_stream)
    }

    /// `on_downstream_connection_close`: the client side closed.
    pub fn downstream_close(&mut self, peer: PeerType) -> Result<(), HostError> {
        let args = [self.core.id as i32, peer as i32];
        self.core.callback(|e| &e.on_downstream_connection_close, &args).map(drop)
    }

    /// `on_upstream_connection_close`: the upstream side closed.
    pub fn upstream_close(&mut self, peer: PeerType) -> Result<(), HostError> {
        let args = [self.core.id as i32, peer as i32];
        self.core.callback(|e| &e.on_upstream_connection_close, &args).map(drop)
    }

    /// What the filter let through to the upstream so far.
    pub fn sent_upstream(&self) -> Vec<u8> {
        self.core.data(|d| d.downstream.sent.clone())
    }

    /// What the filter let through to the client so far.
    pub fn sent_downstream(&self) -> Vec<u8> {
        self.core.data(|d| d.upstream.sent.clone())
    }

    /// Client data the filter holds back now (its `DownstreamData` buffer).
    pub fn held_downstream(&self) -> Vec<u8> {
        self.core.data(|d| d.downstream.pending.clone())
    }

    /// Upstream data the filter holds back now (its `UpstreamData` buffer).
    pub fn held_upstream(&self) -> Vec<u8> {
        self.core.data(|d| d.upstream.pending.clone())
    }
}
