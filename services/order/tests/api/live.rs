//! `GET /api/orders/ws`: status changes pushed to the order's owner, on any replica.

use common::revocations::Revoked;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::helpers::{TestApp, id_of, problem};

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: std::net::SocketAddr, token: &str, in_header: bool) -> Result<Socket, WsError> {
    let url = if in_header {
        format!("ws://{addr}/api/orders/ws")
    } else {
        format!("ws://{addr}/api/orders/ws?access_token={token}")
    };
    let mut request = url.into_client_request()?;
    if in_header {
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(socket)
}

/// The next text message, within `wait`.
async fn next_text(socket: &mut Socket, wait: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next()).await.expect("a message in time");
        match message.expect("the socket is open").expect("a frame") {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_owner_hears_of_each_status_change_and_nobody_else_does() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.customer(), app.customer());
    let product = app.product("1.00", 5).await;
    let mut alices = connect(app.server.addr, &alice.token, true).await.unwrap();
    let mut bobs = connect(app.server.addr, &bob.token, false).await.unwrap();
    let id = id_of(&app.order(&alice.token, json!([{"product_id": product, "quantity": 1}])).await);
    let res = app.post(&format!("/api/orders/{id}/cancel"), &json!({}), &alice.token).await;
    let cancelled: Value = res.json().await.unwrap();
    let message = next_text(&mut alices, Duration::from_secs(2)).await;
    assert_eq!(
        message,
        json!({"type": "order.status_changed", "order_id": id, "status": "cancelled", "at": cancelled["updated_at"]})
    );
    assert!(tokio::time::timeout(Duration::from_millis(300), bobs.next()).await.is_err(), "Bob hears nothing");
    alices.close(None).await.unwrap();
}

#[tokio::test]
async fn a_change_made_on_one_replica_reaches_a_socket_on_another() {
    let app = TestApp::spawn().await;
    let other = app.replica().await;
    let alice = app.customer();
    let product = app.product("1.00", 5).await;
    let mut socket = connect(other.addr, &alice.token, true).await.unwrap();
    // Give the replica's subscription a moment to be in place.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = id_of(&app.order(&alice.token, json!([{"product_id": product, "quantity": 1}])).await);
    let started = tokio::time::Instant::now();
    assert_eq!(app.post(&format!("/api/orders/{id}/cancel"), &json!({}), &alice.token).await.status(), 200);
    let message = next_text(&mut socket, Duration::from_secs(1)).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        (message["order_id"].as_str(), message["status"].as_str()),
        (Some(id.to_string().as_str()), Some("cancelled"))
    );
}

#[tokio::test]
async fn sockets_need_a_valid_token_and_a_websocket_handshake() {
    let app = TestApp::spawn().await;
    for (token, in_header) in [("not-a-token", true), ("not-a-token", false)] {
        let err = connect(app.server.addr, token, in_header).await.unwrap_err();
        assert!(matches!(&err, WsError::Http(res) if res.status() == 401), "{err:?}");
    }
    let service = app.services.shared.auth.service_token("order").unwrap();
    let err = connect(app.server.addr, &service, true).await.unwrap_err();
    assert!(matches!(&err, WsError::Http(res) if res.status() == 401), "a service token is not a user: {err:?}");

    let res = app.server.get("/api/orders/ws", None).await;
    assert_eq!(res.status(), 401);
    let alice = app.customer();
    let res = app.get("/api/orders/ws", &alice.token).await;
    assert_eq!(res.status(), 400, "a plain GET is not a handshake");
    assert_eq!(problem(res).await["detail"], "this endpoint speaks WebSocket only");
}

#[tokio::test]
async fn clients_are_pinged_and_one_that_stops_answering_is_closed() {
    let app = TestApp::spawn_with(&[("WS_HEARTBEAT", "200ms")]).await;
    let alice = app.customer();
    let mut socket = connect(app.server.addr, &alice.token, true).await.unwrap();
    // Reading answers pings (tungstenite pongs on its own): the socket stays up.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(900);
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(until, socket.next()).await {
        if matches!(message, Message::Ping(_)) {
            pings += 1;
        }
    }
    assert!(pings >= 3, "pinged every 200 ms: {pings}");
    socket.send(Message::Text("hello".into())).await.unwrap();

    // Not reading means not answering: the server gives up after two missed beats.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The server has closed the connection: its close frame arrives, or (when answering the
    // pings queued meanwhile fails first) the connection is found gone. Only the server can
    // have closed it; a socket still open would time out here.
    loop {
        match tokio::time::timeout(Duration::from_secs(2), socket.next()).await.expect("closed by the server") {
            Some(Ok(Message::Close(frame))) => {
                assert_eq!(frame.map(|f| f.reason.to_string()).as_deref(), Some("no pong"));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break,
        }
    }
}

#[tokio::test]
async fn a_socket_ends_when_its_token_is_revoked_and_a_user_holds_at_most_ten() {
    let app = TestApp::spawn_with(&[("WS_HEARTBEAT", "200ms")]).await;
    let user = uuid::Uuid::now_v7();
    let issued = app.services.shared.auth.issue(user, common::auth::Role::Customer, uuid::Uuid::now_v7()).unwrap();
    let mut socket = connect(app.server.addr, &issued.token, true).await.unwrap();
    let until = chrono::Utc::now() + chrono::Duration::minutes(1);
    app.services.shared.auth.revocations().revoked(&[Revoked { session_id: issued.claims.sid, until }]).await;
    let mut reason = None;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(2), socket.next()).await {
        if let Message::Close(frame) = frame {
            reason = frame.map(|f| f.reason.to_string());
            break;
        }
    }
    assert_eq!(reason.as_deref(), Some("the access token expired or was revoked"));

    let alice = app.customer();
    let mut open = Vec::new();
    for _ in 0..10 {
        open.push(connect(app.server.addr, &alice.token, true).await.unwrap());
    }
    let err = connect(app.server.addr, &alice.token, true).await.unwrap_err();
    assert!(matches!(&err, WsError::Http(res) if res.status() == 429), "{err:?}");
    drop(open);
}

#[tokio::test]
async fn without_redis_changes_reach_sockets_in_the_same_process() {
    // An empty REDIS_URL is unset: the in-process cache and fan-out, as in `shop` alone.
    let app = TestApp::spawn_with(&[("REDIS_URL", "")]).await;
    let alice = app.customer();
    let product = app.product("1.00", 5).await;
    let mut socket = connect(app.server.addr, &alice.token, false).await.unwrap();
    let id = id_of(&app.order(&alice.token, json!([{"product_id": product, "quantity": 1}])).await);
    assert_eq!(app.post(&format!("/api/orders/{id}/cancel"), &json!({}), &alice.token).await.status(), 200);
    let message = next_text(&mut socket, Duration::from_secs(1)).await;
    assert_eq!(
        (message["order_id"].as_str(), message["status"].as_str()),
        (Some(id.to_string().as_str()), Some("cancelled"))
    );
}
