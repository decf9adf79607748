//! The callbacks a filter exports, looked up once per VM as typed functions.
//!
//! Calling through a `TypedFunc` skips the by-name lookup and the dynamic type checks of
//! `Func::call`. A callback the module does not export is skipped (as Envoy skips it: the
//! stream continues); one whose signature differs from ABI 0.2.1 (older ABIs) is called
//! dynamically with the arguments it takes.

use wasmtime::{Func, Instance, Store, TypedFunc, Val, ValType};

use crate::state::VmState;

/// One callback export.
pub(crate) enum Callback {
    Absent,
    V1(TypedFunc<i32, ()>),
    R1(TypedFunc<i32, i32>),
    V2(TypedFunc<(i32, i32), ()>),
    R2(TypedFunc<(i32, i32), i32>),
    V3(TypedFunc<(i32, i32, i32), ()>),
    R3(TypedFunc<(i32, i32, i32), i32>),
    V5(TypedFunc<(i32, i32, i32, i32, i32), ()>),
    Other(Func),
}

impl Callback {
    fn lookup(instance: &Instance, store: &mut Store<VmState>, name: &str) -> Callback {
        let Some(f) = instance.get_func(&mut *store, name) else { return Callback::Absent };
        let ty = f.ty(&*store);
        let all_i32 = ty.params().chain(ty.results()).all(|t| matches!(t, ValType::I32));
        let typed = match (all_i32, ty.params().len(), ty.results().len()) {
            (true, 1, 0) => f.typed(&*store).ok().map(Callback::V1),
            (true, 1, 1) => f.typed(&*store).ok().map(Callback::R1),
            (true, 2, 0) => f.typed(&*store).ok().map(Callback::V2),
            (true, 2, 1) => f.typed(&*store).ok().map(Callback::R2),
            (true, 3, 0) => f.typed(&*store).ok().map(Callback::V3),
            (true, 3, 1) => f.typed(&*store).ok().map(Callback::R3),
            (true, 5, 0) => f.typed(&*store).ok().map(Callback::V5),
            _ => None,
        };
        typed.unwrap_or(Callback::Other(f))
    }

    /// Calls with `args` (missing ones are 0, extra ones dropped); the first result, if any.
    pub fn call(&self, store: &mut Store<VmState>, args: &[i32]) -> wasmtime::Result<Option<i32>> {
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        Ok(match self {
            Callback::Absent => None,
            Callback::V1(f) => f.call(store, a(0)).map(|()| None)?,
            Callback::R1(f) => Some(f.call(store, a(0))?),
            Callback::V2(f) => f.call(store, (a(0), a(1))).map(|()| None)?,
            Callback::R2(f) => Some(f.call(store, (a(0), a(1)))?),
            Callback::V3(f) => f.call(store, (a(0), a(1), a(2))).map(|()| None)?,
            Callback::R3(f) => Some(f.call(store, (a(0), a(1), a(2)))?),
            Callback::V5(f) => f.call(store, (a(0), a(1), a(2), a(3), a(4))).map(|()| None)?,
            Callback::Other(f) => {
                let ty = f.ty(&*store);
                let params: Vec<Val> = ty
                    .params()
                    .enumerate()
                    .map(|(i, t)| match t {
                        ValType::I64 => Val::I64(i64::from(a(i) as u32)),
                        _ => Val::I32(a(i)),
                    })
                    .collect();
                let mut results = vec![Val::I32(0); ty.results().len()];
                f.call(&mut *store, &params, &mut results)?;
                results.first().and_then(|v| v.i32().or_else(|| v.i64().map(|x| x as i32)))
            }
        })
    }

    /// Whether the module exports it.
    pub fn exists(&self) -> bool {
        !matches!(self, Callback::Absent)
    }
}

macro_rules! exports {
    ($($field:ident = $name:literal,)*) => {
        /// Every callback this host calls.
        pub(crate) struct Exports {
            $(pub $field: Callback,)*
        }

        impl Exports {
            pub fn lookup(instance: &Instance, store: &mut Store<VmState>) -> Exports {
                Exports { $($field: Callback::lookup(instance, store, $name),)* }
            }
        }
    };
}

exports! {
    initialize = "_initialize",
    start = "_start",
    on_context_create = "proxy_on_context_create",
    on_vm_start = "proxy_on_vm_start",
    on_configure = "proxy_on_configure",
    on_tick = "proxy_on_tick",
    on_queue_ready = "proxy_on_queue_ready",
    on_new_connection = "proxy_on_new_connection",
    on_downstream_data = "proxy_on_downstream_data",
    on_upstream_data = "proxy_on_upstream_data",
    on_downstream_connection_close = "proxy_on_downstream_connection_close",
    on_upstream_connection_close = "proxy_on_upstream_connection_close",
    on_request_headers = "proxy_on_request_headers",
    on_request_body = "proxy_on_request_body",
    on_request_trailers = "proxy_on_request_trailers",
    on_response_headers = "proxy_on_response_headers",
    on_response_body = "proxy_on_response_body",
    on_response_trailers = "proxy_on_response_trailers",
    on_log = "proxy_on_log",
    on_done = "proxy_on_done",
    on_delete = "proxy_on_delete",
    on_http_call_response = "proxy_on_http_call_response",
    on_grpc_receive_initial_metadata = "proxy_on_grpc_receive_initial_metadata",
    on_grpc_receive = "proxy_on_grpc_receive",
    on_grpc_receive_trailing_metadata = "proxy_on_grpc_receive_trailing_metadata",
    on_grpc_close = "proxy_on_grpc_close",
    on_foreign_function = "proxy_on_foreign_function",
}
