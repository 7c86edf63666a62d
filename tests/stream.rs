//! Streaming runs (SSE, WebSocket), `stdin`, and interactive terminals
//! (`GET /vms/:name/pty`) against the real service: real agent, real
//! loop-mounted Btrfs, real SQLite, served on a real loopback socket for the
//! WebSocket tests. Needs root. The one test that needs python3 from the
//! debootstrap base image is `#[ignore]`d; `scripts/test.sh` runs it with
//! `--ignored`.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use rewind::db::{Db, SandboxStatus};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tower::ServiceExt;

use common::service::Service;

/// How long any single wait for output may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

struct Env {
    service: Service,
    port: u16,
    /// Whether the image has python3 and bash (the debootstrap image).
    full_image: bool,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let (image, full_image) = common::debootstrap_or_busybox();
        let service = Service::start("stream", image, |config| {
            config.exec.pty_idle_timeout_secs = 5;
            config.exec.max_stdin_bytes = 64 * 1024;
        });
        let app = rewind::api::app(service.state.clone());
        let listener = service
            .rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let listener = axum::serve::ListenerExt::tap_io(listener, rewind::server::no_delay);
        service
            .rt
            .spawn(async move { axum::serve(listener, app).await });
        Env {
            service,
            port,
            full_image,
        }
    })
}

/// A new user key and a sandbox it owns.
fn sandbox(prefix: &str) -> (String, String) {
    let s = &env().service;
    let key = s.user_key();
    let vm = s.create_vm(&key, prefix);
    (key, vm)
}

fn snapshots(key: &str, vm: &str) -> Vec<Value> {
    env().service.snapshots(key, vm)
}

// ---------------------------------------------------------------- SSE

/// One server-sent event and when it arrived.
#[derive(Debug)]
struct Sse {
    event: String,
    data: Value,
    at: Instant,
}

fn sse_request(key: &str, vm: &str, query: &str, accept: bool, body: Value) -> Request<Body> {
    let mut req = Request::post(format!("/vms/{vm}/run{query}"))
        .header("x-api-key", key)
        .header("content-type", "application/json");
    if accept {
        req = req.header("accept", "text/event-stream");
    }
    req.body(Body::from(body.to_string())).unwrap()
}

/// Sends a streaming run and reads every event as it arrives.
async fn sse_events(req: Request<Body>) -> (StatusCode, String, Vec<Sse>) {
    let app = rewind::api::app(env().service.state.clone());
    let response = app.oneshot(req).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let mut body = response.into_body();
    let (mut buf, mut events) = (String::new(), Vec::new());
    while let Some(frame) = tokio::time::timeout(PATIENCE, body.frame()).await.unwrap() {
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        buf.push_str(std::str::from_utf8(&data).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            events.extend(parse_sse(&block, Instant::now()));
        }
    }
    (status, content_type, events)
}

/// The same over a real loopback socket (hyper's HTTP/1 encoder included),
/// reading the body as it arrives.
fn sse_events_over_socket(key: &str, vm: &str, body: Value) -> (StatusCode, Vec<Sse>) {
    use std::io::Read;
    let url = format!("http://127.0.0.1:{}/vms/{vm}/run", env().port);
    let mut response = reqwest::blocking::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap()
        .post(url)
        .header("x-api-key", key)
        .header("accept", "text/event-stream")
        .json(&body)
        .send()
        .unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let (mut buf, mut events, mut chunk) = (String::new(), Vec::new(), [0u8; 4096]);
    loop {
        let n = response.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        buf.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            events.extend(parse_sse(&block, Instant::now()));
        }
    }
    (status, events)
}

fn parse_sse(block: &str, at: Instant) -> Option<Sse> {
    let field = |name: &str| {
        block
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim_start().to_owned()))
    };
    let event = field("event:")?;
    let data = serde_json::from_str(&field("data:")?).unwrap();
    Some(Sse { event, data, at })
}

fn stdout_of(events: &[Sse]) -> String {
    events
        .iter()
        .filter(|e| e.event == "stdout")
        .map(|e| e.data["data"].as_str().unwrap())
        .collect()
}

#[test]
fn sse_run_delivers_the_first_line_long_before_the_end() {
    let e = env();
    let (key, vm) = sandbox("sse");
    let command = "for i in 1 2 3; do echo $i; sleep 1; done";

    let (status, events) = sse_events_over_socket(&key, &vm, json!({ "command": command }));

    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds.last(), Some(&"exit"), "{events:?}");
    assert_eq!(stdout_of(&events), "1\n2\n3\n");
    let first = events
        .iter()
        .find(|e| e.event == "stdout")
        .expect("a stdout event");
    assert_eq!(first.data["data"], "1\n", "the first line is its own event");
    let exit = events.last().unwrap();
    assert!(
        exit.at.duration_since(first.at) > Duration::from_millis(1500),
        "the first line arrived only {:?} before the end",
        exit.at.duration_since(first.at)
    );
    assert_eq!(exit.data["exitCode"], 0);
    assert_eq!(exit.data["timedOut"], false);
    let snapshot = exit.data["snapshot"].as_str().unwrap();
    assert!(e
        .service
        .snapshot_names(&key, &vm)
        .contains(&snapshot.to_owned()));
}

#[test]
fn sse_run_with_stream_query_reports_stderr_and_exit_code() {
    let e = env();
    let (key, vm) = sandbox("sseq");
    let body = json!({ "command": "echo out; echo err >&2; exit 7" });
    let req = sse_request(&key, &vm, "?stream=true", false, body);

    let (status, content_type, events) = e.service.rt.block_on(sse_events(req));

    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    assert_eq!(stdout_of(&events), "out\n");
    let stderr: String = events
        .iter()
        .filter(|e| e.event == "stderr")
        .map(|e| e.data["data"].as_str().unwrap())
        .collect();
    assert_eq!(stderr, "err\n");
    assert_eq!(events.last().unwrap().data["exitCode"], 7);
}

#[test]
fn sse_run_bad_input_is_a_plain_400_and_records_nothing() {
    let e = env();
    let (key, vm) = sandbox("sse400");
    let before = e.service.snapshot_names(&key, &vm);
    let cases = [
        ("?stream=true", json!({ "command": "" }), "command"),
        (
            "?stream=true",
            json!({ "command": "cat", "stdin": "a", "stdinBase64": "YQ==" }),
            "stdin",
        ),
        (
            "?stream=true",
            json!({ "command": "cat", "stdinBase64": "not base64!" }),
            "stdinBase64",
        ),
        ("?stream=maybe", json!({ "command": "true" }), "stream"),
    ];

    for (query, body, field) in cases {
        let (status, body) = e
            .service
            .raw(sse_request(&key, &vm, query, false, body.clone()));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query} {body}");
        assert!(body["error"].as_str().unwrap().contains(field), "{body}");
    }

    assert_eq!(e.service.snapshot_names(&key, &vm), before);
}

#[test]
fn sse_run_client_disconnect_kills_the_command_and_still_snapshots() {
    let e = env();
    let (key, vm) = sandbox("ssegone");
    let command = "echo started; sleep 30; touch /workspace/finished";
    let req = sse_request(&key, &vm, "", true, json!({ "command": command }));

    e.service.rt.block_on(async {
        let app = rewind::api::app(e.service.state.clone());
        let mut body = app.oneshot(req).await.unwrap().into_body();
        let first = tokio::time::timeout(PATIENCE, body.frame()).await.unwrap();
        let text = first.unwrap().unwrap().into_data().unwrap();
        assert!(std::str::from_utf8(&text).unwrap().contains("started"));
        drop(body); // the client goes away
    });

    // The next run queues on the sandbox lock, so it sees the aftermath.
    let after = e.service.run(&key, &vm, "ls /workspace/finished");
    assert_ne!(
        after["exitCode"], 0,
        "the abandoned command finished: {after}"
    );
    let abandoned = snapshots(&key, &vm)
        .into_iter()
        .find(|s| s["command"] == command)
        .expect("the abandoned command has its snapshot");
    assert_eq!(abandoned["exit_code"], 137, "{abandoned}");
}

#[test]
fn run_stdin_text_and_base64_are_fed_to_the_command() {
    let e = env();
    let (key, vm) = sandbox("stdin");
    let run = |body: Value| {
        let (status, out) =
            e.service
                .call("POST", &format!("/vms/{vm}/run"), Some(&key), Some(body));
        assert_eq!(status, StatusCode::OK, "{out}");
        out
    };

    let text = run(json!({ "command": "cat", "stdin": "hello\nworld\n" }));
    let binary = run(json!({ "command": "od -An -tx1 | tr -d ' \\n'", "stdinBase64": "AP8K" }));
    let none = run(json!({ "command": "cat" }));

    assert_eq!(text["stdout"], "hello\nworld\n");
    assert_eq!(binary["stdout"], "00ff0a");
    assert_eq!(none["stdout"], "");
}

#[test]
fn run_stdin_over_the_cap_is_400_and_records_nothing() {
    let e = env();
    let (key, vm) = sandbox("stdincap");
    let before = e.service.snapshot_names(&key, &vm);
    let cap = e.service.state.sandboxes.config.exec.max_stdin_bytes;
    let body = json!({ "command": "cat", "stdin": "x".repeat(cap + 1) });
    let req = Request::post(format!("/vms/{vm}/run"))
        .header("x-api-key", &key)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();

    let (status, body) = e.service.raw(req);

    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("stdin:"),
        "{body}"
    );
    assert_eq!(e.service.snapshot_names(&key, &vm), before);
}

// ---------------------------------------------------------------- WebSockets

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(key: &str, path: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let url = format!("ws://127.0.0.1:{}{path}", env().port);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("x-api-key", key.parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

/// The HTTP status a WebSocket handshake was refused with.
fn ws_refusal(key: &str, path: &str) -> (u16, Value) {
    let refused = env()
        .service
        .rt
        .block_on(ws_connect(key, path))
        .map(|_| ())
        .unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = refused else {
        panic!("expected an HTTP refusal, got {refused:?}");
    };
    let body = response.body().clone().unwrap_or_default();
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (response.status().as_u16(), body)
}

/// The next text message as JSON (binary messages are skipped).
async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next()).await.unwrap()?;
        match msg.unwrap() {
            Message::Text(text) => return Some(serde_json::from_str(&text).unwrap()),
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

#[test]
fn run_ws_streams_output_then_exit() {
    let e = env();
    let (key, vm) = sandbox("runws");
    let command = "for i in 1 2 3; do echo $i; sleep 1; done; echo bye >&2";

    let messages = e.service.rt.block_on(async {
        let mut ws = ws_connect(&key, &format!("/vms/{vm}/run/ws"))
            .await
            .unwrap();
        let request = json!({ "command": command }).to_string();
        ws.send(Message::Text(request.into())).await.unwrap();
        let mut messages = Vec::new();
        while let Some(m) = next_json(&mut ws).await {
            messages.push((m, Instant::now()));
        }
        messages
    });

    let kinds: Vec<&str> = messages
        .iter()
        .map(|(m, _)| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["stdout", "stdout", "stdout", "stderr", "exit"]);
    let (first, last) = (&messages[0], messages.last().unwrap());
    assert_eq!(first.0["data"], "1\n");
    assert!(last.1.duration_since(first.1) > Duration::from_millis(1500));
    assert_eq!(last.0["exitCode"], 0);
    let snapshot = last.0["snapshot"].as_str().unwrap().to_owned();
    assert!(e.service.snapshot_names(&key, &vm).contains(&snapshot));
}

#[test]
fn run_ws_bad_first_message_is_an_error_event_and_records_nothing() {
    let e = env();
    let (key, vm) = sandbox("runws400");
    let before = e.service.snapshot_names(&key, &vm);

    let reply = e.service.rt.block_on(async {
        let mut ws = ws_connect(&key, &format!("/vms/{vm}/run/ws"))
            .await
            .unwrap();
        let request = json!({ "command": "true", "bogus": 1 }).to_string();
        ws.send(Message::Text(request.into())).await.unwrap();
        next_json(&mut ws).await.unwrap()
    });

    assert_eq!(reply["type"], "error");
    assert_eq!(reply["status"], 400);
    assert!(
        reply["error"].as_str().unwrap().contains("bogus"),
        "{reply}"
    );
    assert_eq!(e.service.snapshot_names(&key, &vm), before);
}

#[test]
fn streams_and_terminals_refuse_unknown_and_failed_sandboxes() {
    let e = env();
    let (key, vm) = sandbox("refuse");
    let other = e.service.user_key();

    let foreign_pty = ws_refusal(&other, &format!("/vms/{vm}/pty"));
    let foreign_ws = ws_refusal(&other, &format!("/vms/{vm}/run/ws"));
    mark_failed(&vm);
    let failed_pty = ws_refusal(&key, &format!("/vms/{vm}/pty"));
    let failed_ws = ws_refusal(&key, &format!("/vms/{vm}/run/ws"));
    let body = json!({ "command": "true" });
    let (failed_sse, _) = e.service.raw(sse_request(&key, &vm, "", true, body));

    assert_eq!((foreign_pty.0, foreign_ws.0), (404, 404));
    assert_eq!((failed_pty.0, failed_ws.0), (409, 409), "{failed_pty:?}");
    assert!(failed_pty.1["error"].as_str().unwrap().contains("failed"));
    assert_eq!(failed_sse, StatusCode::CONFLICT);
}

/// Records the sandbox as failed, as the service does when its runtime dies.
fn mark_failed(vm: &str) {
    let s = &env().service;
    let name = vm.to_owned();
    s.rt.block_on(s.state.sandboxes.db.call(move |c| {
        let row = Db::sandbox_by_name(c, &name)?.unwrap();
        Db::set_sandbox_status(c, row.id, SandboxStatus::Failed, Some("test"))
    }))
    .unwrap();
}

#[test]
fn pty_bad_query_is_400() {
    let (key, vm) = sandbox("pty400");

    let zero = ws_refusal(&key, &format!("/vms/{vm}/pty?cols=0"));
    let unknown = ws_refusal(&key, &format!("/vms/{vm}/pty?colour=1"));

    assert_eq!((zero.0, unknown.0), (400, 400));
    assert!(
        zero.1["error"].as_str().unwrap().contains("cols"),
        "{zero:?}"
    );
}

// ---------------------------------------------------------------- PTY

/// Reads terminal output until `needle` shows up; panics with what came.
async fn read_until(ws: &mut Ws, seen: &mut String, needle: &str) {
    let found = tokio::time::timeout(PATIENCE, async {
        while !seen.contains(needle) {
            match ws.next().await {
                Some(Ok(Message::Binary(data))) => seen.push_str(&String::from_utf8_lossy(&data)),
                Some(Ok(Message::Text(text))) => seen.push_str(&text),
                Some(Ok(_)) => {}
                other => panic!("terminal closed ({other:?}) before {needle:?}; got {seen:?}"),
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no {needle:?} in terminal output {seen:?}");
    let at = seen.find(needle).unwrap() + needle.len();
    seen.drain(..at);
}

async fn type_in(ws: &mut Ws, text: &str) {
    let data = text.as_bytes().to_vec();
    ws.send(Message::Binary(data.into())).await.unwrap();
}

/// The final text message after the terminal output.
async fn final_message(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next()).await.unwrap();
        match msg.expect("a final message").unwrap() {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(frame) => panic!("closed without a final message: {frame:?}"),
            _ => {}
        }
    }
}

#[test]
#[ignore = "needs the debootstrap base image; scripts/test.sh runs it"]
fn pty_python_repl_and_stty_size_follow_a_resize() {
    let e = env();
    assert!(
        e.full_image,
        "needs python3 from the debootstrap base image (REWIND_TEST_BASE_IMAGE)"
    );
    let (key, vm) = sandbox("pty");

    let end = e.service.rt.block_on(async {
        let mut ws = ws_connect(&key, &format!("/vms/{vm}/pty?cols=80&rows=24"))
            .await
            .unwrap();
        let mut seen = String::new();
        type_in(&mut ws, "stty size; echo size-done\n").await;
        read_until(&mut ws, &mut seen, "24 80").await;
        let resize = json!({ "resize": { "cols": 120, "rows": 40 } }).to_string();
        ws.send(Message::Text(resize.into())).await.unwrap();
        type_in(&mut ws, "stty size\n").await;
        read_until(&mut ws, &mut seen, "40 120").await;
        type_in(&mut ws, "python3 -q\n").await;
        read_until(&mut ws, &mut seen, ">>> ").await;
        type_in(&mut ws, "6 * 7\n").await;
        read_until(&mut ws, &mut seen, "42").await;
        type_in(
            &mut ws,
            "open('/workspace/from-pty.txt', 'w').write('hi')\n",
        )
        .await;
        read_until(&mut ws, &mut seen, ">>> ").await;
        type_in(&mut ws, "exit()\n").await;
        type_in(&mut ws, "exit 3\n").await;
        final_message(&mut ws).await
    });

    assert_eq!(end["type"], "exit", "{end}");
    assert_eq!(
        (end["exitCode"].as_i64(), end["reason"].as_str()),
        (Some(3), Some("exited"))
    );
    let snapshot = end["snapshot"].as_str().unwrap().to_owned();
    let row = snapshots(&key, &vm)
        .into_iter()
        .find(|s| s["snapshot_name"] == snapshot.as_str())
        .expect("the session's snapshot is listed");
    assert_eq!(row["command"], "pty: login shell");
    let after = e.service.run(&key, &vm, "cat /workspace/from-pty.txt");
    assert_eq!(after["stdout"], "hi");
}

#[test]
fn pty_holds_the_sandbox_other_operations_get_409() {
    let e = env();
    let (key, vm) = sandbox("ptybusy");

    let (during, second, end) = e.service.rt.block_on(async {
        let mut ws = ws_connect(&key, &format!("/vms/{vm}/pty?command=cat"))
            .await
            .unwrap();
        let mut seen = String::new();
        type_in(&mut ws, "ping\n").await;
        read_until(&mut ws, &mut seen, "ping").await;
        let run = json!({ "command": "true" });
        let during = common::service::call_app(
            &e.service.state,
            "POST",
            &format!("/vms/{vm}/run"),
            Some(&key),
            Some(run),
        )
        .await;
        let second = ws_connect(&key, &format!("/vms/{vm}/pty"))
            .await
            .map(|_| ());
        type_in(&mut ws, "\x04").await; // ^D: cat sees EOF and exits
        (during, second, final_message(&mut ws).await)
    });

    assert_eq!(during.0, StatusCode::CONFLICT, "{}", during.1);
    assert!(during.1["error"].as_str().unwrap().contains("terminal"));
    let Err(tokio_tungstenite::tungstenite::Error::Http(refused)) = second else {
        panic!("a second session was accepted: {second:?}");
    };
    assert_eq!(refused.status().as_u16(), 409);
    assert_eq!(
        (end["exitCode"].as_i64(), end["reason"].as_str()),
        (Some(0), Some("exited"))
    );
    let after = e.service.run(&key, &vm, "echo free");
    assert_eq!(after["stdout"], "free\n");
}

#[test]
fn pty_idle_session_is_ended_and_snapshotted() {
    let e = env();
    let (key, vm) = sandbox("ptyidle");

    let end = e.service.rt.block_on(async {
        let mut ws = ws_connect(&key, &format!("/vms/{vm}/pty?command=sleep%20600"))
            .await
            .unwrap();
        final_message(&mut ws).await
    });

    assert_eq!(end["reason"], "idle_timeout", "{end}");
    assert_eq!(end["exitCode"], 137);
    let snapshot = end["snapshot"].as_str().unwrap().to_owned();
    assert!(e.service.snapshot_names(&key, &vm).contains(&snapshot));
}

#[test]
fn pty_client_disconnect_ends_the_session_and_frees_the_sandbox() {
    let e = env();
    let (key, vm) = sandbox("ptygone");

    e.service.rt.block_on(async {
        let mut ws = ws_connect(&key, &format!("/vms/{vm}/pty?command=cat"))
            .await
            .unwrap();
        let mut seen = String::new();
        type_in(&mut ws, "ping\n").await;
        read_until(&mut ws, &mut seen, "ping").await;
        drop(ws); // no close frame: the connection just goes away
    });

    let freed = poll_until_not_conflict(&key, &vm);
    assert_eq!(freed["stdout"], "free\n");
    let recorded = snapshots(&key, &vm)
        .into_iter()
        .any(|s| s["command"] == "pty: cat" && s["exit_code"] == 137);
    assert!(recorded, "{:?}", snapshots(&key, &vm));
}

/// Runs `echo free` until the ending session stops answering 409.
fn poll_until_not_conflict(key: &str, vm: &str) -> Value {
    let s = &env().service;
    let started = Instant::now();
    loop {
        let body = json!({ "command": "echo free" });
        let (status, out) = s.call("POST", &format!("/vms/{vm}/run"), Some(key), Some(body));
        if status != StatusCode::CONFLICT {
            assert_eq!(status, StatusCode::OK, "{out}");
            return out;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the session never ended: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pty_session_is_ended_when_its_sandbox_is_deleted() {
    let e = env();
    let (key, vm) = sandbox("ptydel");

    let (end, deleted) = e.service.rt.block_on(async {
        let mut ws = ws_connect(&key, &format!("/vms/{vm}/pty?command=cat"))
            .await
            .unwrap();
        let mut seen = String::new();
        type_in(&mut ws, "ping\n").await;
        read_until(&mut ws, &mut seen, "ping").await;
        let state = e.service.state.clone();
        let path = format!("/vms/{vm}");
        let key = key.clone();
        let delete = tokio::spawn(async move {
            common::service::call_app(&state, "DELETE", &path, Some(&key), None).await
        });
        let end = final_message(&mut ws).await;
        (end, delete.await.unwrap())
    });

    assert_eq!(end["reason"], "sandbox_deleted", "{end}");
    assert_eq!(deleted.0, StatusCode::OK, "{}", deleted.1);
    assert!(!e.service.vm_names(&key).contains(&vm));
}
