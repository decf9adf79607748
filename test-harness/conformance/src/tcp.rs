//! The L4 side (plugin configuration `"tcp"`): a line-oriented network filter. Client data is
//! held back until a full line (or the end) arrived, then uppercased; upstream data gets a
//! `> ` prefix; a client line `close` closes the client side; upstream data `go` releases
//! whatever client data is held back.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::{Action, MetricType, PeerType};

#[derive(Default)]
pub struct Connection {
    lines: u32,
}

impl Context for Connection {}

impl StreamContext for Connection {
    fn on_new_connection(&mut self) -> Action {
        let peer = self.get_property(vec!["source", "address"]).unwrap_or_default();
        log::info!("tcp new connection from {}", String::from_utf8_lossy(&peer));
        Action::Continue
    }

    fn on_downstream_data(&mut self, size: usize, end_of_stream: bool) -> Action {
        let data = self.get_downstream_data(0, size).unwrap_or_default();
        if !data.contains(&b'\n') && !end_of_stream {
            return Action::Pause;
        }
        self.lines += 1;
        if data.starts_with(b"close") {
            self.close_downstream();
        }
        self.set_downstream_data(0, size, &data.to_ascii_uppercase());
        Action::Continue
    }

    fn on_upstream_data(&mut self, size: usize, _end_of_stream: bool) -> Action {
        let data = self.get_upstream_data(0, size).unwrap_or_default();
        if data == b"go" {
            self.resume_downstream();
        }
        self.set_upstream_data(0, 0, b"> ");
        Action::Continue
    }

    fn on_downstream_close(&mut self, peer: PeerType) {
        log::info!("tcp downstream closed by {peer:?} after {} lines", self.lines);
        let id = hostcalls::define_metric(MetricType::Counter, "conf.tcp.closed").unwrap();
        hostcalls::increment_metric(id, 1).unwrap();
    }

    fn on_upstream_close(&mut self, peer: PeerType) {
        log::info!("tcp upstream closed by {peer:?}");
    }

    fn on_log(&mut self) {
        log::info!("tcp log");
    }
}
