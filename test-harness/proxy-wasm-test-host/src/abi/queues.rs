//! Shared queues: `proxy_register_shared_queue`, `proxy_resolve_shared_queue`,
//! `proxy_enqueue_shared_queue`, `proxy_dequeue_shared_queue`, and the queues behind them.
//!
//! Queues are host-wide and named per VM id, as in Envoy; an id is the queue's index plus one.
//! Unknown ids are `NotFound`, an empty queue is `Empty`. Envoy tells the registering VM
//! `proxy_on_queue_ready` on its own thread; here the test says when, with
//! [`Worker::queue_ready`](crate::Worker::queue_ready).

use std::collections::VecDeque;
use std::sync::Mutex;

use wasmtime::Linker;

use super::memory::{give_with, slice, with, write_u32, HostResult, C};
use crate::state::VmState;
use crate::types::Status;

/// One queue: VM id, name, items.
type Queue = (Vec<u8>, Vec<u8>, VecDeque<Vec<u8>>);

/// The host-wide queues.
#[derive(Debug, Default)]
pub(crate) struct Queues(Mutex<Vec<Queue>>);

impl Queues {
    fn find(queues: &[Queue], vm: &[u8], name: &[u8]) -> Option<usize> {
        queues.iter().position(|(v, n, _)| v == vm && n == name)
    }

    /// Items waiting in queue `vm`/`name`, oldest first (for the test).
    pub fn items(&self, vm: &[u8], name: &[u8]) -> Option<Vec<Vec<u8>>> {
        let q = self.0.lock().ok()?;
        Queues::find(&q, vm, name).map(|i| q[i].2.iter().cloned().collect())
    }
}

fn proxy_register_shared_queue(c: &mut C<'_>, np: i32, nl: i32, ret: i32) -> HostResult {
    let id = with(c, |data, s| {
        let name = slice(data, np, nl)?;
        let mut q = s.shared.queues.0.lock().map_err(|_| Status::InternalFailure)?;
        Ok(match Queues::find(&q, &s.vm_id, name) {
            Some(i) => i,
            None => {
                q.push((s.vm_id.clone(), name.to_vec(), VecDeque::new()));
                q.len() - 1
            }
        })
    })?;
    write_u32(c, ret, id as u32 + 1)
}

fn proxy_resolve_shared_queue(c: &mut C<'_>, vp: i32, vl: i32, np: i32, nl: i32, ret: i32) -> HostResult {
    let id = with(c, |data, s| {
        let (vm, name) = (slice(data, vp, vl)?, slice(data, np, nl)?);
        let q = s.shared.queues.0.lock().map_err(|_| Status::InternalFailure)?;
        Queues::find(&q, vm, name).ok_or(Status::NotFound)
    })?;
    write_u32(c, ret, id as u32 + 1)
}

fn proxy_dequeue_shared_queue(c: &mut C<'_>, id: i32, ret_ptr: i32, ret_len: i32) -> HostResult {
    give_with(c, ret_ptr, ret_len, |_, s, out| {
        let mut q = s.shared.queues.0.lock().map_err(|_| Status::InternalFailure)?;
        let (_, _, items) = q.get_mut((id as u32 as usize).wrapping_sub(1)).ok_or(Status::NotFound)?;
        out.extend_from_slice(&items.pop_front().ok_or(Status::Empty)?);
        Ok(())
    })
}

fn proxy_enqueue_shared_queue(c: &mut C<'_>, id: i32, ptr: i32, len: i32) -> HostResult {
    with(c, |data, s| {
        let item = slice(data, ptr, len)?.to_vec();
        let mut q = s.shared.queues.0.lock().map_err(|_| Status::InternalFailure)?;
        let (_, _, items) = q.get_mut((id as u32 as usize).wrapping_sub(1)).ok_or(Status::NotFound)?;
        items.push_back(item);
        Ok(())
    })
}

/// Adds this area's host functions to `linker`.
pub fn add_to_linker(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    host_fn!(l, ProxyRegisterSharedQueue, proxy_register_shared_queue, (np: i32, nl: i32, ret: i32));
    host_fn!(l, ProxyResolveSharedQueue, proxy_resolve_shared_queue, (vp: i32, vl: i32, np: i32, nl: i32, ret: i32));
    host_fn!(l, ProxyDequeueSharedQueue, proxy_dequeue_shared_queue, (id: i32, ret_ptr: i32, ret_len: i32));
    host_fn!(l, ProxyEnqueueSharedQueue, proxy_enqueue_shared_queue, (id: i32, ptr: i32, len: i32));
    Ok(())
}
