//! Round trips through two connection machines in one thread, as the `connection` bench, the
//! `rt` example (instruction counts) and the `machine_alloc` test (allocation counts) all run
//! them.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use remora_core::{Command, Config, Connection, Event, Instant, SerializeType};

/// A client and a server machine with the default configuration.
pub fn pair() -> (Connection, Connection) {
    (
        Connection::new(Config::default()),
        Connection::new(Config::default()),
    )
}

/// One step: `batch` `SEND_MESSAGE_V2` requests (no fields) carrying `body` from `client` to
/// `server`, each answered with a response echoing its body, and the responses back (bytes
/// moved with `take_transmit` + `handle_input`, one copy per direction that a transport's read
/// would make anyway). Returns the responses matched; each must carry `body`'s length.
#[inline]
pub fn round_trips(
    client: &mut Connection,
    server: &mut Connection,
    batch: usize,
    ty: SerializeType,
    body: &Bytes,
) -> usize {
    let now = Instant::ZERO;
    let deadline = now + Duration::from_secs(3600);
    for _ in 0..batch {
        let request = Command::request(310)
            .with_serialize_type(ty)
            .with_body(body.clone());
        client.send_request(request, deadline, now).unwrap();
    }
    while let Some(bytes) = client.take_transmit() {
        server.handle_input(&bytes, now);
    }
    while let Some(event) = server.poll_event() {
        if let Event::Request { request, command } = event {
            let body = command.body_bytes();
            server
                .send_response(request, command.response(0).with_body(body))
                .unwrap();
        }
    }
    while let Some(bytes) = server.take_transmit() {
        client.handle_input(&bytes, now);
    }
    let mut answered = 0;
    while let Some(event) = client.poll_event() {
        if let Event::Response { response, .. } = event {
            assert_eq!(response.body().len(), body.len());
            black_box(response);
            answered += 1;
        }
    }
    answered
}
