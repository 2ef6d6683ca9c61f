//! The heartbeat of a session upgraded from polling to websocket runs in the
//! websocket connection's task: the polling session's heartbeat task stops at
//! the upgrade, and exactly one heartbeat goes on.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use engineioxide::{
    Str,
    handler::EngineIoHandler,
    socket::{DisconnectReason, Socket},
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

mod fixture;

use fixture::{create_polling_connection, create_server};

#[derive(Debug, Clone)]
struct Handler {
    disconnect_tx: mpsc::Sender<DisconnectReason>,
}

impl EngineIoHandler for Handler {
    type Data = ();

    fn on_connect(self: Arc<Self>, _socket: Arc<Socket<()>>) {}
    fn on_disconnect(&self, _socket: Arc<Socket<()>>, reason: DisconnectReason) {
        self.disconnect_tx.try_send(reason).unwrap();
    }
    fn on_message(self: &Arc<Self>, _msg: Str, _socket: Arc<Socket<()>>) {}
    fn on_binary(self: &Arc<Self>, _data: Bytes, _socket: Arc<Socket<()>>) {}
}

/// Opens a polling session (ping every 300 ms, 200 ms to answer) and upgrades
/// it to websocket through the probe handshake.
async fn upgraded(
    disconnect_tx: mpsc::Sender<DisconnectReason>,
) -> tokio_tungstenite::WebSocketStream<fixture::StreamImpl> {
    let mut svc = create_server(Handler { disconnect_tx }).await;
    let sid = create_polling_connection(&mut svc).await;
    fixture::upgrade_to_ws(&mut svc, sid.parse().unwrap()).await
}

#[tokio::test]
async fn an_upgraded_client_that_stops_answering_pings_is_closed_by_the_heartbeat() {
    let (disconnect_tx, mut rx) = mpsc::channel(10);
    let _ws = upgraded(disconnect_tx).await;

    let reason = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("the heartbeat closes a silent upgraded client")
        .unwrap();
    assert_eq!(reason, DisconnectReason::HeartbeatTimeout);
}

#[tokio::test]
async fn an_upgraded_client_that_answers_is_kept_and_pinged_by_one_heartbeat() {
    let (disconnect_tx, mut rx) = mpsc::channel(10);
    let mut ws = upgraded(disconnect_tx).await;

    let mut pings = 0;
    let window = tokio::time::sleep(Duration::from_millis(1500));
    tokio::pin!(window);
    loop {
        tokio::select! {
            () = &mut window => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) if text.as_str() == "2" => {
                    pings += 1;
                    ws.send(Message::text("3")).await.unwrap();
                }
                Some(Ok(_)) => {}
                other => panic!("the connection ended: {other:?}"),
            },
        }
    }
    assert!(rx.try_recv().is_err(), "an answering client is kept");
    // One heartbeat pings every 300 ms: 5 in 1.5 s, and one right after the
    // upgrade; two heartbeats (the polling session's task left running) would
    // send about twice as many.
    assert!((3..=7).contains(&pings), "{pings} pings in 1.5 s");
}
