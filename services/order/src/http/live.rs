//! `/api/orders/ws`: status changes pushed over a WebSocket.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::HeaderMap;
use axum::response::Response;
use common::error::Problem;
use common::extract::Query;
use common::{ApiError, ErrorCode};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::AppState;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LiveParams {
    /// For clients that can't set headers on a WebSocket (browsers): the access token.
    #[param(pattern = r"^[^\u0000]*$")]
    access_token: Option<String>,
}

/// How long a message may take to reach a client before it counts as gone.
pub(super) const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Status changes of your orders, live: a WebSocket that pushes
/// `{"type":"order.status_changed","order_id","status","at"}`, pings every so often and
/// closes a client that stops answering or falls too far behind.
#[utoipa::path(
    get, path = "/api/orders/ws", tag = "orders",
    params(LiveParams),
    security(("bearer" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket handshake", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token (header or `access_token`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all)]
pub(super) async fn order_updates(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<LiveParams>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let token = common::auth::bearer(&headers)
        .map(str::to_owned)
        .or(params.access_token)
        .ok_or_else(|| ApiError::unauthorized("a bearer access token (header or access_token) is required"))?;
    let claims = state.auth().verify(&token).await?;
    let upgrade = upgrade.map_err(|_| ApiError::bad_request("this endpoint speaks WebSocket only"))?;
    if state.live.hub().count(claims.sub) >= MAX_SOCKETS_PER_USER {
        return Err(ApiError::new(ErrorCode::RateLimited)
            .with_detail(format!("at most {MAX_SOCKETS_PER_USER} live connections per user")));
    }
    let socket = Socket { live: state.live.clone(), auth: state.auth().clone(), token, heartbeat: state.ws_heartbeat };
    Ok(upgrade.on_upgrade(move |ws| serve_socket(ws, socket, claims.sub)))
}

/// Open sockets one user may hold (tabs, devices), so one token can't hold unbounded tasks.
pub(super) const MAX_SOCKETS_PER_USER: usize = 10;

/// What a socket's task needs.
pub(super) struct Socket {
    live: crate::live::Live,
    auth: std::sync::Arc<common::auth::Authenticator>,
    /// Checked again at every heartbeat: a socket ends with its token (expiry, logout).
    token: String,
    heartbeat: Duration,
}

pub(super) async fn serve_socket(ws: WebSocket, socket: Socket, user_id: Uuid) {
    let Socket { live, auth, token, heartbeat } = socket;
    let mut registration = live.hub().register(user_id);
    let (mut sink, mut stream) = ws.split();
    let mut ping = tokio::time::interval(heartbeat);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let close = |code, reason: &'static str| Message::Close(Some(CloseFrame { code, reason: reason.into() }));
    loop {
        tokio::select! {
            queued = registration.messages.recv() => match queued {
                Some(text) => {
                    let sent = tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Text(text.as_ref().into()))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        break;
                    }
                }
                None => {
                    // The hub dropped this socket: its client fell too far behind.
                    let _ = tokio::time::timeout(SEND_TIMEOUT, sink.send(close(close_code::AGAIN, "too slow; reconnect"))).await;
                    break;
                }
            },
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                // Pongs, and anything else the client says, show it is alive.
                Some(Ok(_)) => last_heard = Instant::now(),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > heartbeat * 2 {
                    let _ = tokio::time::timeout(SEND_TIMEOUT, sink.send(close(close_code::POLICY, "no pong"))).await;
                    break;
                }
                if auth.verify(&token).await.is_err() {
                    let reason = "the access token expired or was revoked";
                    let _ = tokio::time::timeout(SEND_TIMEOUT, sink.send(close(close_code::POLICY, reason))).await;
                    break;
                }
                if !matches!(tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Ping(Default::default()))).await, Ok(Ok(()))) {
                    break;
                }
            }
        }
    }
    live.hub().unregister(&registration);
}
