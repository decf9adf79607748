//! The harness's throw-away Redis: separate stores side by side, stop (port refused), restart
//! empty on the same port, freeze and thaw.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpStream;
use std::time::Duration;

use test_harness::redis::Redis;

#[test]
fn redis_runs_side_by_side_stops_restarts_empty_and_freezes() {
    let mut a = Redis::start().unwrap();
    let b = Redis::start().unwrap();
    assert_ne!(a.addr(), b.addr());
    assert!(a.is_up() && b.is_up());
    assert_eq!(a.url(), format!("redis://{}/", a.addr()));
    assert_eq!(a.command("SET k 1").unwrap(), "OK");
    assert_eq!(a.command("INCRBY k 2").unwrap(), "3");
    assert_eq!(a.command("GET k").unwrap(), "3");
    assert_eq!(b.command("GET k").unwrap(), "", "b is a store of its own");
    assert!(a.command("NO-SUCH-COMMAND").is_err());

    a.freeze().unwrap();
    assert!(!a.is_up(), "a frozen Redis answers nothing");
    a.thaw().unwrap();
    assert!(a.is_up());

    a.stop();
    assert!(!a.is_up());
    assert!(TcpStream::connect_timeout(&a.addr(), Duration::from_secs(2)).is_err(), "the port refuses");
    a.restart().unwrap();
    assert_eq!(a.command("GET k").unwrap(), "", "nothing was kept");
    assert!(b.is_up(), "stopping one does not touch the other");
}
