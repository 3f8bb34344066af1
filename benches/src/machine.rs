//! Round trips through two connection machines in one thread, as the `connection` bench, the
//! `rt` example (instruction counts) and the `machine_alloc` test (allocation counts) all run
//! them.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use remora_core::{Command, Config, Connection, Event, Instant, SerializeType};

/// How a round trip moves a machine's output to its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// `take_transmit`: the bytes leave as an owned `Bytes` (what a driver that writes outside
    /// a lock or hands buffers to the kernel does), then `handle_input` on the peer.
    Take,
    /// `poll_transmit` + `handle_written`: the bytes are written from the machine's buffer in
    /// place (what a driver that writes synchronously does), here by `handle_input` on the peer.
    Write,
    /// `take_transmit_buffer`: the machine's buffer exchanged for one the round trip keeps
    /// per side (what a driver that hands owned buffers on and alternates two does), then
    /// `handle_input` on the peer and `handle_sent`.
    Swap,
}

impl Transmit {
    /// `"take"` or `"write"`.
    pub fn name(self) -> &'static str {
        match self {
            Transmit::Take => "take",
            Transmit::Write => "write",
            Transmit::Swap => "swap",
        }
    }
}

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
    round_trips_with(client, server, batch, ty, body, Transmit::Take)
}

/// [`round_trips`] with the bytes moved as `transmit` says.
#[inline]
pub fn round_trips_with(
    client: &mut Connection,
    server: &mut Connection,
    batch: usize,
    ty: SerializeType,
    body: &Bytes,
    transmit: Transmit,
) -> usize {
    let now = Instant::ZERO;
    let deadline = now + Duration::from_secs(3600);
    for _ in 0..batch {
        let request = Command::request(310)
            .with_serialize_type(ty)
            .with_body(body.clone());
        client.send_request(request, deadline, now).unwrap();
    }
    flow(client, server, transmit);
    while let Some(event) = server.poll_event() {
        if let Event::Request { request, command } = event {
            let body = command.body_bytes();
            server
                .send_response(request, command.response(0).with_body(body))
                .unwrap();
        }
    }
    flow(server, client, transmit);
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

/// Moves everything `from` has to write into `to`.
#[inline(always)]
fn flow(from: &mut Connection, to: &mut Connection, transmit: Transmit) {
    let now = Instant::ZERO;
    match transmit {
        Transmit::Take => {
            while let Some(bytes) = from.take_transmit() {
                to.handle_input(&bytes, now);
            }
        }
        Transmit::Write => {
            while let Some(bytes) = from.poll_transmit() {
                let n = bytes.len();
                to.handle_input(bytes, now);
                from.handle_written(n);
            }
        }
        Transmit::Swap => SPARE.with_borrow_mut(|spare| loop {
            let n = from.take_transmit_buffer(spare);
            if n > 0 {
                to.handle_input(spare, now);
                from.handle_sent(n);
                continue;
            }
            // Chunks queued (a large body): one at a time.
            let Some(bytes) = from.take_transmit() else {
                return;
            };
            to.handle_input(&bytes, now);
            from.handle_sent(bytes.len());
        }),
    }
}

std::thread_local! {
    /// The buffer [`Transmit::Swap`] hands the machines, one per thread (each round trip's
    /// sides use it in turn; a driver would keep one per connection).
    static SPARE: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
}
