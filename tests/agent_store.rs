//! The agent in production, on a real `redis-server` and real `tokentap`
//! processes: conversations shared by replicas and kept across restarts,
//! concurrent turns serialised across replicas, Redis going away and coming
//! back under traffic, expiry, and clients that go away mid-turn.

#[path = "support/blackbox/mod.rs"]
mod blackbox;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blackbox::child::Tokentap;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use support::redis::RedisServer;
use support::{Reply, send};

fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("json body ({e}): {:?}", String::from_utf8_lossy(&r.body)))
}

/// A `tokentap --demo` keeping conversations in `store`, plus `args`.
fn replica(store: &str, args: &[&str]) -> Tokentap {
    let mut all = vec![
        "--demo",
        "--demo-chunk-delay",
        "0ms",
        "--agent-store",
        store,
    ];
    all.extend_from_slice(args);
    Tokentap::start(&all)
}

async fn chat(tt: &Tokentap, body: serde_json::Value) -> Reply {
    send(
        &tt.url(),
        "POST",
        "/chat",
        &[("content-type", "application/json")],
        Bytes::from(body.to_string()),
    )
    .await
}

async fn say(tt: &Tokentap, id: &str, message: &str) -> Reply {
    chat(
        tt,
        serde_json::json!({"message": message, "conversation_id": id}),
    )
    .await
}

async fn summary(tt: &Tokentap, id: &str) -> Reply {
    let path = format!("/conversation-summary?conversation_id={id}");
    send(&tt.url(), "GET", &path, &[], Bytes::new()).await
}

async fn turns(tt: &Tokentap, id: &str) -> u64 {
    let r = summary(tt, id).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    json(&r)["conversation_turns"].as_u64().expect("turns")
}

/// A proxied call straight to the demo upstream (no store involved).
async fn proxied(tt: &Tokentap) -> StatusCode {
    send(
        &tt.url(),
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        Bytes::from_static(
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
        ),
    )
    .await
    .status
}

/// The history Redis holds for `id`: `(role, content)` in order.
fn stored(redis: &RedisServer, id: &str) -> Vec<(String, String)> {
    let raw = redis.cli(&["GET", &format!("tokentap:conversation:{id}")]);
    let v: serde_json::Value = serde_json::from_str(&raw).expect("stored history is JSON");
    v.as_array()
        .expect("an array")
        .iter()
        .map(|m| {
            (
                m["role"].as_str().expect("role").to_owned(),
                m["content"].as_str().expect("content").to_owned(),
            )
        })
        .collect()
}

/// Retries `f` until it returns `Some` (bounded: a recovery that never comes fails).
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < until, "{what}: never happened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_conversations_and_a_restart_keeps_them() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), &[]);
    let b = replica(&redis.url(), &[]);
    let r = say(&a, "shared", "first, on replica a").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(json(&r)["conversation_turn"], 1);
    let r = say(&b, "shared", "second, on replica b").await;
    assert_eq!(
        json(&r)["conversation_turn"],
        2,
        "b continues a's conversation"
    );
    assert_eq!(turns(&a, "shared").await, 2, "a sees b's turn");
    // the lab's default conversation is shared too
    say(&a, "default", "x").await;
    assert_eq!(
        json(&chat(&b, serde_json::json!({"message": "y"})).await)["conversation_turn"],
        2
    );

    drop((a, b));
    let c = replica(&redis.url(), &[]);
    assert_eq!(turns(&c, "shared").await, 2, "kept across a restart");
    let r = say(&c, "shared", "third, after the restart").await;
    assert_eq!(json(&r)["conversation_turn"], 3);
    let history = stored(&redis, "shared");
    let users: Vec<&str> = history
        .iter()
        .filter(|(role, _)| role == "user")
        .map(|(_, c)| c.as_str())
        .collect();
    assert_eq!(
        users,
        [
            "first, on replica a",
            "second, on replica b",
            "third, after the restart"
        ]
    );
    // /new-conversation on one replica clears it for all
    let r = send(
        &c.url(),
        "POST",
        "/new-conversation",
        &[("content-type", "application/json")],
        Bytes::from_static(br#"{"conversation_id": "shared"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let d = replica(&redis.url(), &[]);
    assert_eq!(turns(&d, "shared").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_concurrent_turns_on_two_replicas_land_once_each_in_order() {
    let redis = RedisServer::start();
    let replicas = [replica(&redis.url(), &[]), replica(&redis.url(), &[])];
    let urls: Vec<String> = replicas.iter().map(Tokentap::url).collect();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let base = urls[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let message = format!("message {i} via replica {}", i % 2);
            let body = serde_json::json!({"message": message, "conversation_id": "race"});
            let r = send(
                &base,
                "POST",
                "/chat",
                &[("content-type", "application/json")],
                Bytes::from(body.to_string()),
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            let turn = json(&r)["conversation_turn"].as_u64().expect("turn");
            let answer = json(&r)["response"].as_str().expect("answer").to_owned();
            (turn, message, answer)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task"));
    }
    results.sort();
    let numbers: Vec<u64> = results.iter().map(|r| r.0).collect();
    assert_eq!(
        numbers,
        (1..=10).collect::<Vec<_>>(),
        "each turn number once"
    );

    // Redis holds exactly those turns, each once, in the order their numbers say,
    // every answer right after its question
    let history = stored(&redis, "race");
    assert_eq!(history.len(), 20);
    for (k, (_, message, answer)) in results.iter().enumerate() {
        assert_eq!(history[2 * k], ("user".to_owned(), message.clone()));
        assert_eq!(history[2 * k + 1], ("assistant".to_owned(), answer.clone()));
    }
    assert_eq!(turns(&replicas[1], "race").await, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_is_a_503_naming_the_store_then_the_agent_recovers_and_proxying_never_stops() {
    let mut redis = RedisServer::start();
    let a = replica(&redis.url(), &[]);
    assert_eq!(say(&a, "c", "before").await.status, StatusCode::OK);

    // proxied traffic runs throughout
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (addr, stop) = (a.url(), stop.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = send(
                    &addr,
                    "POST",
                    "/v1/chat/completions",
                    &[("content-type", "application/json")],
                    Bytes::from_static(
                        br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
                    ),
                )
                .await;
                statuses.push(r.status);
            }
            statuses
        })
    };

    redis.kill();
    let store = format!("redis at 127.0.0.1:{}", redis.port);
    for r in [
        say(&a, "c", "while redis is down").await,
        summary(&a, "c").await,
        send(
            &a.url(),
            "POST",
            "/new-conversation",
            &[],
            Bytes::from_static(br#"{"conversation_id": "c"}"#),
        )
        .await,
    ] {
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
        let detail = json(&r)["detail"].as_str().expect("detail").to_owned();
        assert!(detail.contains(&store), "{detail:?} names {store}");
    }
    // a replica started while Redis is down starts, proxies, and answers 503
    let b = replica(&redis.url(), &[]);
    assert_eq!(proxied(&b).await, StatusCode::OK);
    assert_eq!(
        say(&b, "c", "b while down").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    redis.restart(); // empty: nothing was persisted
    for tt in [&a, &b] {
        let r = eventually("the agent recovers", || async {
            let r = say(tt, "c", "after redis came back").await;
            (r.status == StatusCode::OK).then_some(r)
        })
        .await;
        assert!(json(&r)["conversation_turn"].as_u64().is_some());
    }
    assert_eq!(turns(&a, "c").await, 2, "one turn from each replica");

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let statuses = traffic.await.expect("traffic");
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "proxied calls all answered 200: {statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_password_never_shows() {
    let mut redis = RedisServer::start_with(&["--requirepass", "hunter2-secret"]);
    let url = format!("redis://:hunter2-secret@127.0.0.1:{}", redis.port);
    let a = replica(&url, &[]);
    assert_eq!(say(&a, "p", "hello").await.status, StatusCode::OK);
    redis.kill();
    let r = say(&a, "p", "down").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let detail = String::from_utf8_lossy(&r.body).into_owned();
    assert!(detail.contains(&format!("redis at 127.0.0.1:{}", redis.port)));
    for text in [detail, a.stdout(), a.stderr()] {
        assert!(!text.contains("hunter2"), "password shown: {text}");
    }
    // a wrong password is a 503 too, not a crash
    redis.restart();
    let wrong = replica(
        &format!("redis://:wrong-pass@127.0.0.1:{}", redis.port),
        &[],
    );
    let r = say(&wrong, "p", "x").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(!String::from_utf8_lossy(&r.body).contains("wrong-pass"));
}

#[tokio::test(flavor = "multi_thread")]
async fn conversations_expire_after_the_ttl() {
    let redis = RedisServer::start();
    let a = replica(&redis.url(), &["--agent-conversation-ttl", "3s"]);
    let m = replica("memory", &["--agent-conversation-ttl", "3s"]);
    for tt in [&a, &m] {
        assert_eq!(say(tt, "brief", "hello").await.status, StatusCode::OK);
    }
    let pttl: i64 = redis
        .cli(&["PTTL", "tokentap:conversation:brief"])
        .parse()
        .expect("PTTL");
    assert!(
        (1..=3000).contains(&pttl),
        "Redis expires it with the TTL: {pttl}"
    );
    for tt in [&a, &m] {
        eventually("the conversation expires", || async {
            (turns(tt, "brief").await == 0).then_some(())
        })
        .await;
        // an expired conversation starts again at turn 1
        let r = say(tt, "brief", "again").await;
        assert_eq!(json(&r)["conversation_turn"], 1);
    }
}

/// Sends `body` to `/chat` on a connection of its own, in a task: the returned
/// receiver gets the response status once its head arrives; aborting the task
/// closes the connection (the client goes away).
fn start_chat(
    addr: SocketAddr,
    body: serde_json::Value,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Receiver<StatusCode>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        let req = http::Request::post("/chat")
            .header("host", "tokentap.test")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let client = async move {
            let resp = send.send_request(req).await.expect("response head");
            let _ = tx.send(resp.status());
            let _body = resp.into_body(); // held, unread, until the task is aborted
            std::future::pending::<()>().await;
        };
        let _ = tokio::join!(conn, client);
    });
    (task, rx)
}

/// While a client's turn runs, another turn on its conversation is refused
/// (`409` after the lock wait); once the client goes away the next turn
/// proceeds and the history is as it was.
async fn a_client_gone_frees_its_conversation(store: &str, redis: Option<&RedisServer>) {
    // streams pause 10 s between chunks; turns wait at most 3 s for a conversation
    let tt = Tokentap::start(&[
        "--demo",
        "--demo-chunk-delay",
        "10s",
        "--agent-store",
        store,
        "--agent-models",
        "*",
        "--agent-lock-wait",
        "3s",
    ]);
    let id = "cancel";
    assert_eq!(say(&tt, id, "kept").await.status, StatusCode::OK);
    let before = summary(&tt, id).await.body;
    let history = redis.map(|r| stored(r, id));

    for (what, body) in [
        (
            "streamed",
            serde_json::json!({"message": "abandoned stream", "conversation_id": id, "stream": true}),
        ),
        (
            "not streamed",
            serde_json::json!({"message": "abandoned call", "conversation_id": id, "model": "demo-slow-60000"}),
        ),
    ] {
        let (client, head) = start_chat(tt.addr, body);
        if what == "streamed" {
            assert_eq!(head.await.expect("head"), StatusCode::OK);
        } else if let Some(r) = redis {
            // the slow model holds its answer back for 60 s; the turn has its lease
            // (once the previous turn's lease, released as it ended, is surely gone)
            tokio::time::sleep(Duration::from_millis(300)).await;
            eventually("the turn takes the conversation", || async {
                (r.cli(&["EXISTS", &format!("tokentap:lock:{id}")]) == "1").then_some(())
            })
            .await;
        } else {
            // the slow model holds its answer back for 60 s; give the turn time to start
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        let r = say(&tt, id, "too early").await;
        assert_eq!(
            r.status,
            StatusCode::CONFLICT,
            "{what}: held while the client waits"
        );
        assert!(
            json(&r)["detail"]
                .as_str()
                .is_some_and(|d| d.contains("busy"))
        );

        client.abort();
        let r = say(&tt, id, &format!("after the {what} client left")).await;
        assert_eq!(r.status, StatusCode::OK, "{what}: {:?}", r.body);
        assert_eq!(
            json(&r)["conversation_turn"],
            2,
            "{what}: nothing was added"
        );
        // back to the state before, for the next case
        let r = send(
            &tt.url(),
            "POST",
            "/new-conversation",
            &[],
            Bytes::from(serde_json::json!({"conversation_id": id}).to_string()),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(say(&tt, id, "kept").await.status, StatusCode::OK);
        assert_eq!(summary(&tt, id).await.body, before);
        if let (Some(r), Some(h)) = (redis, &history) {
            assert_eq!(&stored(r, id), h);
        }
    }
    // the model calls were cancelled, not left running: recorded as such
    let page =
        blackbox::wire::metrics_until(tt.addr, |p| p.contains("error_type=\"cancelled\"")).await;
    assert!(page.contains("error_type=\"cancelled\""), "{page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_gone_mid_chat_frees_a_redis_conversation() {
    let redis = RedisServer::start();
    a_client_gone_frees_its_conversation(&redis.url(), Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_gone_mid_chat_frees_a_memory_conversation() {
    a_client_gone_frees_its_conversation("memory", None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_turn_longer_than_its_lease_keeps_the_conversation_to_the_end() {
    // a's streams pause 500 ms between chunks: its answer takes longer than the
    // 10 s lease, which must be extended while the turn runs
    let redis = RedisServer::start();
    let a = Tokentap::start(&[
        "--demo",
        "--demo-chunk-delay",
        "500ms",
        "--agent-store",
        &redis.url(),
    ]);
    let b = replica(&redis.url(), &[]);
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    let addr = a.addr;
    let long = tokio::spawn(async move {
        use http_body_util::BodyExt;
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let body =
            serde_json::json!({"message": "a long one", "conversation_id": "long", "stream": true});
        let req = http::Request::post("/chat")
            .header("host", "tokentap.test")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let resp = send.send_request(req).await.expect("head");
        let _ = head_tx.send(resp.status());
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8(bytes.to_vec()).expect("utf8")
    });
    assert_eq!(head_rx.await.expect("head"), StatusCode::OK);
    // b's turn waits for a's to finish, however long, then follows it
    let r = say(&b, "long", "b's turn").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(json(&r)["conversation_turn"], 2);
    let events = long.await.expect("stream");
    let done = events
        .split("\n\n")
        .find_map(|e| e.strip_prefix("event: done\ndata: "))
        .unwrap_or_else(|| panic!("a's turn completed: {events}"));
    let done: serde_json::Value = serde_json::from_str(done).expect("done event");
    assert_eq!(done["conversation_turn"], 1);
    let users: Vec<String> = stored(&redis, "long")
        .into_iter()
        .filter(|(role, _)| role == "user")
        .map(|(_, c)| c)
        .collect();
    assert_eq!(users, ["a long one", "b's turn"]);
}
