//! Live events over WebSockets (`/api/v1/vms/{vm}/events`,
//! `/api/v1/system/events`): real service (real storage, namespace runtime,
//! agent, SQLite) on a loopback socket, a tokio-tungstenite client. Needs
//! root.

mod common;

use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use common::service::Service;
use rewind::events::EventKind;

/// Events kept for a lagging subscriber in this service.
const BUFFER: usize = 16;
/// How long any single wait for a message may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

struct Env {
    service: Service,
    port: u16,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let service = Service::start("events", common::busybox_rootfs(), |config| {
            config.events.buffer = BUFFER;
        });
        let (port, _) = service.listen();
        Env { service, port }
    })
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connect to `path` (under `/api/v1`), with `key` as `x-api-key` when given.
fn connect(key: Option<&str>, path: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let url = format!("ws://127.0.0.1:{}/api/v1{path}", env().port);
    let mut req = url.into_client_request().unwrap();
    if let Some(k) = key {
        req.headers_mut().insert("x-api-key", k.parse().unwrap());
    }
    env()
        .service
        .rt
        .block_on(tokio_tungstenite::connect_async(req))
        .map(|(ws, _)| ws)
}

/// The HTTP status a handshake was refused with.
fn refusal(key: Option<&str>, path: &str) -> u16 {
    match connect(key, path) {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {:?}", other.map(|_| ())),
    }
}

/// Read events until `stop` says so; every event read, in order.
fn read_until(ws: &mut Ws, mut stop: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let rt = &env().service.rt;
    let mut seen = Vec::new();
    loop {
        let msg = rt
            .block_on(async { tokio::time::timeout(PATIENCE, ws.next()).await })
            .expect("no event within the patience window")
            .expect("the event stream ended")
            .expect("the event stream failed");
        let Message::Text(text) = msg else { continue };
        let event: Value = serde_json::from_str(text.as_str()).unwrap();
        let done = stop(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

/// The slow-subscriber test floods the one shared bus, which drops every
/// subscriber that cannot keep up, not only its own: it runs alone.
static FLOOD: RwLock<()> = RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    FLOOD.read().unwrap_or_else(|p| p.into_inner())
}

fn finished_in(vm: &str) -> impl Fn(&Value) -> bool + '_ {
    move |e| e["event_type"] == "command_finished" && e["vm_name"] == vm
}

fn vms_of(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| e["vm_name"].as_str())
        .collect()
}

#[test]
fn subscribers_see_their_own_runs_and_nothing_of_another_owner() {
    let _shared = shared();
    let s = &env().service;
    let (a, b) = (s.user_key(), s.user_key());
    let (vm_a, vm_b) = (s.create_vm(&a, "eva"), s.create_vm(&b, "evb"));
    let mut system_a = connect(Some(&a), "/system/events").unwrap();
    let mut system_admin = connect(Some(&s.admin), "/system/events").unwrap();
    // B by query parameter, as a browser would.
    let mut vm_b_stream = connect(None, &format!("/vms/{vm_b}/events?token={b}")).unwrap();

    s.run(&b, &vm_b, "true");
    let ran = s.run(&a, &vm_a, "echo hi; exit 3");
    let (status, executed) = s.call(
        "POST",
        &format!("/api/v1/vms/{vm_b}/execute"),
        Some(&b),
        Some(json!({"command": "echo v1"})),
    );
    assert!(status.is_success(), "{status} {executed}");

    let seen_a = read_until(&mut system_a, finished_in(&vm_a));
    assert!(vms_of(&seen_a).iter().all(|vm| *vm == vm_a), "{seen_a:?}");
    let types: Vec<&str> = seen_a
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert_eq!(
        &types[types.len() - 2..],
        ["command_started", "command_finished"]
    );
    let finished = seen_a.last().unwrap();
    assert_eq!(finished["data"]["exit_code"], 3, "{finished}");
    assert_eq!(finished["data"]["snapshot"], ran["snapshot"], "{finished}");
    assert_eq!(finished["data"]["command"], "echo hi; exit 3");
    assert!(finished["timestamp"].as_str().unwrap().ends_with('Z'));

    let seen_b = read_until(&mut vm_b_stream, |e| {
        e["event_type"] == "command_finished" && e["data"]["command"] == "echo v1"
    });
    assert!(vms_of(&seen_b).iter().all(|vm| *vm == vm_b), "{seen_b:?}");
    let v1_finished = seen_b.last().unwrap();
    assert_eq!(v1_finished["data"]["snapshot"], executed["snapshot"]);

    // The admin sees both owners' runs.
    let mut pending = vec![vm_a.clone(), vm_b.clone()];
    read_until(&mut system_admin, |e| {
        if e["event_type"] == "command_finished" {
            pending.retain(|p| e["vm_name"] != p.as_str());
        }
        pending.is_empty()
    });
}

#[test]
fn lifecycle_and_snapshot_operations_publish_events() {
    let _shared = shared();
    let s = &env().service;
    let key = s.user_key();
    let mut stream = connect(Some(&key), "/system/events").unwrap();
    let vm = s.create_vm(&key, "evlife");
    let snaps = format!("/vms/{vm}/snapshots");
    let (st, body) = s.call("POST", &snaps, Some(&key), Some(json!({"name": "keep"})));
    assert!(st.is_success(), "{body}");
    let (st, body) = s.call("POST", &format!("{snaps}/keep/restore"), Some(&key), None);
    assert!(st.is_success(), "{body}");
    let (st, body) = s.call("POST", &format!("/vms/{vm}/stop"), Some(&key), None);
    assert!(st.is_success(), "{body}");
    let (st, body) = s.call("DELETE", &format!("/vms/{vm}"), Some(&key), None);
    assert!(st.is_success(), "{body}");

    let seen = read_until(&mut stream, |e| e["event_type"] == "vm_deleted");

    let types: Vec<&str> = seen
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert_eq!(
        types,
        [
            "vm_created",
            "status_change",
            "snapshot_created",
            "snapshot_restored",
            "status_change",
            "vm_deleted"
        ],
        "{seen:?}"
    );
    assert_eq!(
        seen[1]["data"],
        json!({"old_status": "creating", "new_status": "running"})
    );
    assert_eq!(
        seen[4]["data"],
        json!({"old_status": "running", "new_status": "stopped"})
    );
    assert_eq!(seen[2]["data"]["snapshot"], "keep");
}

#[test]
fn event_streams_authenticate_on_the_upgrade() {
    let _shared = shared();
    let s = &env().service;
    let (a, b) = (s.user_key(), s.user_key());
    let vm_b = s.create_vm(&b, "evauth");

    assert_eq!(refusal(None, "/system/events"), 401);
    assert_eq!(refusal(None, "/system/events?token=ws_nope"), 401);
    assert_eq!(refusal(Some(&a), &format!("/vms/{vm_b}/events")), 404);
    assert_eq!(refusal(Some(&a), "/vms/no-such-vm/events"), 404);
}

#[test]
fn a_slow_subscriber_is_dropped_with_a_close_frame_and_runs_go_on() {
    let _alone = FLOOD.write().unwrap_or_else(|p| p.into_inner());
    let s = &env().service;
    let key = s.user_key();
    let vm = s.create_vm(&key, "evslow");
    let mut slow = connect(Some(&key), "/system/events").unwrap();
    let bus = &s.state.sandboxes.events;
    let owner_id = owner_of(&key, &vm);

    // Far more events than the buffer, faster than any socket takes them,
    // while this subscriber reads nothing.
    for i in 0..BUFFER * 100 {
        let command = format!("burst {i}");
        bus.publish(owner_id, &vm, EventKind::CommandStarted { command });
    }
    // Runs are not held up by the subscriber that fell behind.
    let ran = s.run(&key, &vm, "echo still-running");
    assert_eq!(ran["stdout"], "still-running\n");

    let rt = &s.rt;
    let close = loop {
        let msg = rt
            .block_on(async { tokio::time::timeout(PATIENCE, slow.next()).await })
            .expect("the slow subscriber was never dropped");
        match msg {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let frame = close.expect("a close frame with a code");
    assert_eq!(frame.code, CloseCode::Again, "{frame:?}");
    assert!(frame.reason.contains("too slow"), "{frame:?}");

    // A fresh subscriber is served as usual.
    let mut fresh = connect(Some(&key), &format!("/vms/{vm}/events")).unwrap();
    s.run(&key, &vm, "true");
    read_until(&mut fresh, finished_in(&vm));
}

fn admin_caller() -> rewind::auth::Caller {
    rewind::auth::Caller {
        key_id: 0,
        admin: true,
    }
}

/// The owner id of `vm` (as the events carry it).
fn owner_of(key: &str, vm: &str) -> i64 {
    let s = &env().service;
    let (status, body) = s.call("GET", &format!("/vms/{vm}"), Some(key), None);
    assert!(status.is_success(), "{body}");
    let rows =
        s.rt.block_on(s.state.sandboxes.list(&admin_caller()))
            .unwrap();
    rows.iter().find(|r| r.name == vm).unwrap().owner_key_id
}
